import json
import math

import numpy as np
import pytest
import torch

import modcircuit.tasks.planted  # noqa: F401
from modcircuit.circuits import Circuit, discover, evaluate, load_circuit
from modcircuit.cli import main
from modcircuit.errors import ModcircuitError
from modcircuit.tasks import get_task
from circuit_helpers import pairs, random_mlp, train_quick


def test_circuit_json_round_trip(tmp_path):
    task = get_task("planted", seed=0)
    model = task.build_model()
    c = discover(model, task, method="acdc", threshold=1e-3, ablation="mean")
    path = c.save(tmp_path / "c.json")
    d = json.loads(path.read_text())
    assert d["n_edges"] == c.n_edges == len(d["edges"]) and d["n_kept"] == c.n_kept
    for key in ("method", "threshold", "metric", "ablation", "seconds", "forward_passes"):
        assert key in d
    e = d["edges"][0]
    assert set(e) >= {"source", "target", "score", "kept"} and e["source"].startswith("in:")
    back = load_circuit(path, model)
    assert all(torch.equal(a, b) for a, b in zip(back.mask, c.mask))
    assert all(torch.allclose(a, b) for a, b in zip(back.scores, c.scores))
    assert back.method == "acdc" and back.ablation == "mean" and back.metric == "mse"
    assert all(torch.allclose(a, b.double()) for a, b in zip(back.means, c.means))
    assert evaluate(model, back, task)["faithfulness"] == pytest.approx(evaluate(model, c, task)["faithfulness"])
    assert not list(tmp_path.glob(".c.json.*"))  # no temp file left


def test_circuit_file_errors(tmp_path):
    task = get_task("planted", seed=0)
    model = task.build_model()
    c = discover(model, task, method="magnitude")
    path = c.save(tmp_path / "c.json")
    with pytest.raises(ModcircuitError, match="widths"):
        Circuit.load(path, random_mlp([4, 5, 5, 2]))
    bad = tmp_path / "bad.json"
    bad.write_text(path.read_text()[:100])
    with pytest.raises(ModcircuitError, match="not valid JSON"):
        Circuit.load(bad)
    with pytest.raises(ModcircuitError, match="does not exist"):
        Circuit.load(tmp_path / "nope.json")
    d = json.loads(path.read_text())
    d["edges"] = d["edges"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(d))
    with pytest.raises(ModcircuitError, match="edges"):
        Circuit.load(tmp_path / "short.json")


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="acdcx"), "unknown method 'acdcx'"),
    (dict(metric="l1"), "unknown metric 'l1'"),
    (dict(ablation="noise"), "unknown ablation 'noise'"),
    (dict(threshold=-0.1), "threshold"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(threshold="abc"), "threshold"),
    (dict(top_k=-1), "top_k"),
])
def test_bad_arguments(kwargs, match):
    model = random_mlp([4, 5, 5, 2])
    clean, corrupt = pairs(4)
    with pytest.raises(ModcircuitError, match=match):
        discover(model, clean, corrupt, **kwargs)


def test_bad_data():
    model = random_mlp([4, 5, 5, 2])
    clean, corrupt = pairs(4)
    with pytest.raises(ModcircuitError, match="must match"):
        discover(model, clean, corrupt[:, :3])
    with pytest.raises(ModcircuitError, match="features"):
        discover(model, clean[:, :3], corrupt[:, :3])
    with pytest.raises(ModcircuitError, match="corrupt"):
        discover(model, clean)  # resample needs corrupt
    zero = discover(model, clean, method="magnitude", ablation="zero")  # zero ablation does not
    assert zero.n_edges == 4 * 5 + 5 * 5 + 5 * 2


def test_evaluate_report_on_a_trained_classifier():
    task = get_task("two-moons", seed=0)
    model = train_quick(task, steps=300)
    c = discover(model, task, method="acdc", threshold=0.01)
    rep = evaluate(model, c, task)
    assert rep["metric"] == "kl"
    for key in ("logit_gap", "kl", "mse", "faithfulness", "accuracy", "accuracy_model", "agreement",
                "edge_fraction", "node_fraction", "n_nodes_kept", "seconds", "forward_passes", "curve_area"):
        assert key in rep and rep[key] is not None, key
    assert rep["accuracy_model"] > 0.8
    curve = rep["curve"]
    assert curve["edges"][0] == 0 and curve["edges"][-1] == c.n_edges
    assert curve["faithfulness"][0] == pytest.approx(0.0, abs=1e-12)
    assert curve["faithfulness"][-1] == pytest.approx(1.0, abs=1e-9)
    assert rep["faithfulness"] == pytest.approx(1 - rep["kl"] / rep["divergence_empty"])
    # MIB's summaries: CPR + CMD >= 1 - x_0 (|1 - f| >= 1 - f), both in [0, 1] on a trained net
    x0 = rep["mib_curve"]["edges"][0] / c.n_edges
    assert 0 <= rep["cmd"] <= 1 and 0 <= rep["cpr"] <= 1 and rep["cpr"] + rep["cmd"] >= 1 - x0 - 1e-9
    json.dumps(rep, allow_nan=False)
    full = c.with_mask([torch.ones_like(m) for m in c.mask])
    rf = evaluate(model, full, task)
    assert rf["logit_gap"] < 1e-6 and rf["agreement"] == 1.0 and rf["faithfulness"] == pytest.approx(1.0)


def test_input_scores_follow_the_permutations():
    from modcircuit.circuits.metrics import input_scores

    model = random_mlp([3, 4, 4, 2], permute=True, seed=5)
    S = [lin.weight.detach().double().abs() for lin in model.linears]
    flow = input_scores(model, S)
    pos = S[2] @ S[1] @ S[0]
    for k in range(2):
        for f in range(3):
            p = int((model.out_perm == k).nonzero())
            q = int((model.in_perm == f).nonzero())
            assert torch.isclose(flow[k, f], pos[p, q], rtol=1e-12)
    # an input whose outgoing scores are all zero gets zero flow to every output
    S[0][:, int((model.in_perm == 1).nonzero())] = 0
    assert (input_scores(model, S)[:, 1] == 0).all()


def test_symbolic_input_level_auc():
    task = get_task("symbolic-independence", seed=0)
    model = train_quick(task, steps=600, lr=1e-2)
    c = discover(model, task, method="acdc", threshold=1e-3)
    rep = evaluate(model, c, task, curve_points=3)
    assert rep["auc_inputs"] is not None and 0.0 <= rep["auc_inputs"] <= 1.0
    assert rep["roc_inputs"]["fpr"][0] == 0.0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from modcircuit.train import train

    out = tmp_path_factory.mktemp("run")
    run = train("two-moons", regime="vanilla", seed=0, steps=200)
    run.save(out / "moons")
    return out / "moons"


def test_cli_discover_and_evaluate(run_dir, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["discover", str(run_dir), "--method", "acdc", "--threshold", "0.01", "--out", str(out), "--json"]) in (0, None)
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_edges"] == 2 * 20 + 20 * 20 + 20 * 2 and out.is_file()
    assert main(["evaluate", str(run_dir), str(out), "--json"]) in (0, None)
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_kept"] == summary["n_kept"] and "logit_gap" in rep
    # custom data
    x = np.random.default_rng(0).normal(size=(30, 2)).astype("float32")
    npz = tmp_path / "d.npz"
    np.savez(npz, clean=x, corrupt=x[::-1].copy(), labels=np.zeros(30, dtype="int64"))
    assert main(["discover", str(run_dir), "--data", str(npz), "--method", "eap", "--out", str(tmp_path / "e.json")]) in (0, None)
    assert main(["evaluate", str(run_dir), str(tmp_path / "e.json"), "--data", str(npz), "--json"]) in (0, None)
    assert "accuracy" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["eap", "acdc"])
def test_cli_discover_in_float32(run_dir, tmp_path, capsys, method):
    out64, out32 = tmp_path / "c64.json", tmp_path / "c32.json"
    for out, extra in ((out64, []), (out32, ["--precision", "float32"])):
        assert main(["discover", str(run_dir), "--method", method, "--threshold", "0.01", "--out", str(out), "--json",
                     *extra]) in (0, None)
    capsys.readouterr()
    c64, c32 = load_circuit(out64), load_circuit(out32)
    s64, s32 = torch.cat([s.flatten() for s in c64.scores]), torch.cat([s.flatten() for s in c32.scores])
    assert c64.extra["dtype"] == "float64"
    if method == "eap":  # float32 arithmetic, same scores
        assert c32.extra["dtype"] == "float32"
        assert torch.allclose(s32, s64, atol=1e-4) and not torch.equal(s32, s64)
    else:  # MLP ACDC on the CPU: the compiled kernel, float64 arithmetic (faster), and the circuit says so
        assert c32.extra["dtype"] == "float64" and c32.extra["kernel"] == "compiled"
        assert torch.equal(s32, s64)


@pytest.mark.parametrize("arrays,match", [
    (dict(clean=np.zeros((5, 2))), "needs 'clean' and 'corrupt'"),
    (dict(clean=np.zeros((5, 2)), corrupt=np.zeros((4, 2))), "must match"),
    (dict(clean=np.zeros((5, 3)), corrupt=np.zeros((5, 3))), "features"),
])
def test_cli_bad_npz(run_dir, tmp_path, capsys, arrays, match):
    npz = tmp_path / "bad.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "c.json"
    assert main(["discover", str(run_dir), "--data", str(npz), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_bad_values(run_dir, tmp_path, capsys):
    out = tmp_path / "c.json"
    for args, match in [(["--method", "nope"], "unknown method"), (["--threshold", "nan"], "threshold"),
                        (["--threshold=-1"], "threshold"), (["--metric", "l2"], "unknown metric"),
                        (["--precision", "float16"], "unknown precision 'float16'; allowed: float32, float64"),
                        (["--split-qkv"], "--split-qkv is for transformer runs")]:
        assert main(["discover", str(run_dir), "--out", str(out), *args]) == 2
        assert match in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "junk.npz").write_text("not a zip")
    assert main(["discover", str(run_dir), "--data", str(tmp_path / "junk.npz"), "--out", str(out)]) == 2
    assert "npz" in capsys.readouterr().err
    other = discover(random_mlp([4, 5, 5, 2]), *pairs(4), method="random")
    other.save(tmp_path / "other.json")
    assert main(["evaluate", str(run_dir), str(tmp_path / "other.json")]) == 2
    assert "widths" in capsys.readouterr().err
