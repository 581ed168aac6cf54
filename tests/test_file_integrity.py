"""Files prove what they belong to: model.json carries the SHA-256 of model.safetensors (verified on load), both
file kinds are validated against a schema (types, allowed values, versions, duplicates, totals), weights must
be finite, and a circuit records the fingerprint of its model, so evaluate / draw / compact refuse a circuit
from another model unless allow_other_model (API) / --allow-other-model (CLI). Every refusal is one line."""
from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

import modcircuit as mc
from modcircuit.circuits import Circuit, discover, evaluate, load_circuit, model_fingerprint
from modcircuit.circuits.circuit import TransformerCircuit
from modcircuit.cli import main
from modcircuit.errors import ModcircuitError
from modcircuit.train import REGIMES

torch.set_num_threads(1)


# ---- fixtures: two MLP runs of the same widths, two transformer runs of the same shape ------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        mc.train("two-moons", "vanilla", seed=seed, steps=30).save(root / f"moons{seed}")
    return root


@pytest.fixture(scope="module")
def mlp_circuit(runs):
    """A circuit found on moons0 (zero ablation, so it compacts) and its file."""
    run = mc.load(runs / "moons0")
    c = discover(run.model, run.task(), method="magnitude", threshold=0.3, ablation="zero")
    return c, c.save(runs / "c0.json")


@pytest.fixture(scope="module")
def truns(tmp_path_factory):
    root = tmp_path_factory.mktemp("truns")
    for seed in (0, 1):
        task = mc.get_task("modular-addition-transformer", seed=seed, p=11, n_layers=2, d_model=16, n_heads=2,
                           d_head=4, d_mlp=16)
        mc.train(task, "vanilla", seed=seed, steps=10).save(root / f"t{seed}")
    run = mc.load(root / "t0")
    c = discover(run.model, run.task(), method="acdc", threshold=0.05, examples=32)
    c.save(root / "tc0.json")
    return root


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def one_error_line(capsys) -> str:
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert cap.out == "" and len(lines) == 1 and lines[0].startswith("error: "), cap
    return lines[0]


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- checkpoints: the file hash ----------------------------------------------------------------------------------
def test_model_json_records_the_safetensors_hash_and_the_round_trip_is_exact(runs, tmp_path):
    run = mc.train("two-moons", "bimt", seed=2, steps=20)
    out = run.save(tmp_path / "r")
    meta = json.loads((out / "model.json").read_text())
    assert meta["version"] == 2
    assert meta["safetensors_sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    back = mc.load(out)
    for (k, a), (k2, b) in zip(run.model.state_dict().items(), back.model.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
    assert model_fingerprint(back.model) == model_fingerprint(run.model)
    back.save(tmp_path / "again")  # saving the loaded run writes the same bytes
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # inside the last tensor's values: the file still parses
    path.write_bytes(bytes(data))


def test_one_flipped_byte_is_refused_naming_the_file_and_both_hashes(runs, tmp_path):
    d = copy_run(runs / "moons0", tmp_path / "flip")
    recorded = json.loads((d / "model.json").read_text())["safetensors_sha256"]
    flip_one_byte(d / "model.safetensors")
    actual = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    with pytest.raises(ModcircuitError) as e:
        mc.load(d)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg and "model.safetensors" in msg
    assert actual[:12] in msg and recorded[:12] in msg and actual not in msg  # short hashes


def test_cli_refuses_a_flipped_byte(runs, mlp_circuit, tmp_path, capsys):
    d = copy_run(runs / "moons0", tmp_path / "flip")
    flip_one_byte(d / "model.safetensors")
    before = listing(tmp_path)
    assert main(["evaluate", str(d), str(mlp_circuit[1])]) == 2
    assert "SHA-256" in one_error_line(capsys)
    assert main(["draw", str(d), "-o", str(tmp_path / "net.png")]) == 2
    assert "SHA-256" in one_error_line(capsys)
    assert listing(tmp_path) == before


def test_version_1_checkpoints_without_a_hash_still_load(runs, tmp_path):
    d = copy_run(runs / "moons0", tmp_path / "v1")

    def to_v1(m):
        m["version"] = 1
        del m["safetensors_sha256"]

    edit_json(d / "model.json", to_v1)
    assert model_fingerprint(mc.load(d).model) == model_fingerprint(mc.load(runs / "moons0").model)
    flip_one_byte(d / "model.safetensors")
    mc.load(d)  # nothing to check the bytes against: accepted (documented)
    edit_json(d / "model.json", lambda m: m.update(version=2))
    with pytest.raises(ModcircuitError, match="version-2 checkpoints record safetensors_sha256"):
        mc.load(d)


# ---- checkpoints: the model.json schema ---------------------------------------------------------------------------
MODEL_JSON_CASES = [
    ("seed-type", lambda m: m.update(seed="zero"), r"seed='zero' is not allowed; expected an integer"),
    ("seed-bool", lambda m: m.update(seed=True), r"seed=True is not allowed; expected an integer"),
    ("regime", lambda m: m.update(regime="bogus"),
     r"regime: unknown regime 'bogus'; allowed: " + ", ".join(sorted(REGIMES))),
    ("version", lambda m: m.update(version=99), r"unknown checkpoint version 99; allowed: 1, 2"),
    ("format", lambda m: m.update(format="other"), r"is not a modcircuit checkpoint"),
    ("task-name", lambda m: m["task"].update(name=3), r"task\.name=3 is not allowed; expected a string"),
    ("task-missing", lambda m: m.pop("task"), r"required field 'task' is missing"),
    ("hyperparameters", lambda m: m.update(hyperparameters=[1]), r"hyperparameters=\[1\] .*a JSON object"),
    ("hash-form", lambda m: m.update(safetensors_sha256="abc"), r"expected 64 lowercase hex digits"),
    ("tensor-shape", lambda m: m["tensors"].update({"linears.0.weight": [3, 3]}),
     r"tensor 'linears.0.weight' has shape \[20, 2\], model.json says \[3, 3\]"),
    ("tensor-unlisted", lambda m: m["tensors"].pop("in_perm"), r"model.json does not list tensor 'in_perm'"),
    ("tensor-extra", lambda m: m["tensors"].update(ghost=[1]), r"model.json lists tensor 'ghost'"),
    ("model-kind", lambda m: m["model"].update(kind="cnn"), r"model: unknown model kind 'cnn'; allowed:"),
]


@pytest.mark.parametrize("name,fn,match", MODEL_JSON_CASES, ids=[c[0] for c in MODEL_JSON_CASES])
def test_model_json_schema(runs, tmp_path, name, fn, match):
    d = copy_run(runs / "moons0", tmp_path / "r")
    edit_json(d / "model.json", fn)
    with pytest.raises(ModcircuitError, match=match) as e:
        mc.load(d)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name,fn,match", [c for c in MODEL_JSON_CASES if c[0] in ("seed-type", "regime", "version")],
                         ids=["seed-type", "regime", "version"])
def test_cli_refuses_a_bad_model_json(runs, mlp_circuit, tmp_path, capsys, name, fn, match):
    d = copy_run(runs / "moons0", tmp_path / "r")
    edit_json(d / "model.json", fn)
    before = listing(tmp_path)
    assert main(["discover", str(d), "--method", "magnitude", "--out", str(tmp_path / "c.json")]) == 2
    assert re.search(match, one_error_line(capsys))
    assert listing(tmp_path) == before


# ---- checkpoints: finite weights ----------------------------------------------------------------------------------
def write_consistent(d, state):
    """Rewrite model.safetensors with `state` and record its hash, as a tool that forged it would."""
    save_file(state, str(d / "model.safetensors"))
    edit_json(d / "model.json", lambda m: m.update(
        safetensors_sha256=hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_inf_weight_is_refused_on_load_naming_the_tensor(runs, tmp_path, capsys, bad):
    d = copy_run(runs / "moons0", tmp_path / "r")
    state = {k: v.clone() for k, v in mc.load(d).model.state_dict().items()}
    state["linears.1.weight"][3, 4] = bad
    write_consistent(d, state)
    with pytest.raises(ModcircuitError, match=r"tensor 'linears.1.weight' holds 1 NaN/inf value\(s\) of 400"):
        mc.load(d)
    assert main(["discover", str(d), "--method", "magnitude", "--out", str(tmp_path / "c.json")]) == 2
    assert "linears.1.weight" in one_error_line(capsys)
    assert not (tmp_path / "c.json").exists()


def test_a_model_with_a_nan_weight_is_not_saved(tmp_path):
    run = mc.train("two-moons", "vanilla", seed=0, steps=5)
    with torch.no_grad():
        run.model.linears[0].bias[2] = float("nan")
    with pytest.raises(ModcircuitError, match="cannot save the model: tensor 'linears.0.bias' holds 1 NaN"):
        run.save(tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


# ---- the model fingerprint -----------------------------------------------------------------------------------------
def test_fingerprint_is_of_the_tensors_and_sees_every_change(runs):
    run = mc.load(runs / "moons0")
    m = run.model
    fp = model_fingerprint(m)
    assert len(fp) == 64 and fp == model_fingerprint(copy.deepcopy(m).double())  # float64 widening is exact
    assert fp != model_fingerprint(mc.load(runs / "moons1").model)
    w = copy.deepcopy(m)
    with torch.no_grad():
        w.linears[2].weight[0, 0] = torch.nextafter(w.linears[2].weight[0, 0], torch.tensor(1.0))  # one ulp
    assert model_fingerprint(w) != fp
    p = copy.deepcopy(m)
    p.out_perm.copy_(p.out_perm.flip(0))  # buffers count: the permutation says which output is which
    assert model_fingerprint(p) != fp


# ---- circuits from another model ---------------------------------------------------------------------------------
def test_api_refuses_a_circuit_from_another_model_unless_allowed(runs, mlp_circuit):
    from modcircuit.viz import draw, interactive

    c, path = mlp_circuit
    a, b = mc.load(runs / "moons0"), mc.load(runs / "moons1")
    assert c.model_fingerprint == model_fingerprint(a.model)
    assert load_circuit(path, a.model).model_fingerprint == c.model_fingerprint
    task = a.task()
    refused = r"was found on another model \(fingerprint [0-9a-f]{12}\.\.\., this model [0-9a-f]{12}\.\.\.\)"
    for call in (lambda **k: load_circuit(path, b.model, **k), lambda **k: evaluate(b.model, c, task, **k),
                 lambda **k: c.compact(b.model, **k), lambda **k: draw(b, c, **k), lambda **k: interactive(b, c, **k)):
        with pytest.raises(ModcircuitError, match=refused):
            call()
        call(allow_other_model=True)  # a deliberate transfer works
    transfer = evaluate(b.model, c, task, allow_other_model=True)
    assert transfer["n_kept"] == c.n_kept and transfer["faithfulness"] is not None
    small = c.compact(b.model, allow_other_model=True)
    x = task.x_test[:8]
    assert small(x).shape == b.model(x).shape
    assert evaluate(a.model, c, task)["n_kept"] == c.n_kept  # its own model: accepted


def test_cli_refuses_a_circuit_from_another_model_unless_allowed(runs, mlp_circuit, tmp_path, capsys):
    path = mlp_circuit[1]
    b = str(runs / "moons1")
    before = listing(tmp_path)
    assert main(["evaluate", b, str(path)]) == 2
    assert "--allow-other-model" in one_error_line(capsys)
    assert main(["draw", b, "--circuit", str(path), "-o", str(tmp_path / "net.png")]) == 2
    assert "found on another model" in one_error_line(capsys)
    assert main(["profile", b, "--circuit", str(path), "--train-repeats", "0", "--latency-repeats", "5",
                 "--throughput-batch", "8"]) == 2
    assert "found on another model" in one_error_line(capsys)
    assert listing(tmp_path) == before
    assert main(["evaluate", b, str(path), "--json", "--allow-other-model"]) == 0
    assert json.loads(capsys.readouterr().out)["n_kept"] == mlp_circuit[0].n_kept
    assert main(["draw", b, "--circuit", str(path), "-o", str(tmp_path / "net.png"), "--allow-other-model"]) == 0
    assert (tmp_path / "net.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["evaluate", str(runs / "moons0"), str(path), "--json"]) == 0  # its own model


def test_transformer_circuit_from_another_transformer_is_refused_unless_allowed(truns, tmp_path, capsys):
    a, b = mc.load(truns / "t0"), mc.load(truns / "t1")
    c = load_circuit(truns / "tc0.json", a.model)
    assert isinstance(c, TransformerCircuit) and c.model_fingerprint == model_fingerprint(a.model)
    with pytest.raises(ModcircuitError, match="found on another model"):
        load_circuit(truns / "tc0.json", b.model)
    with pytest.raises(ModcircuitError, match="found on another model"):
        evaluate(b.model, c, b.task(), examples=32)
    assert evaluate(b.model, c, b.task(), examples=32, allow_other_model=True)["n_kept"] == c.n_kept
    assert main(["evaluate", str(truns / "t1"), str(truns / "tc0.json")]) == 2
    assert "found on another model" in one_error_line(capsys)
    assert main(["draw", str(truns / "t1"), "--circuit", str(truns / "tc0.json"), "-o", str(tmp_path / "t.png")]) == 2
    assert "found on another model" in one_error_line(capsys) and not (tmp_path / "t.png").exists()
    assert main(["draw", str(truns / "t1"), "--circuit", str(truns / "tc0.json"), "-o", str(tmp_path / "t.png"),
                 "--allow-other-model"]) == 0


def test_old_and_hand_built_circuits_without_a_fingerprint_skip_the_model_check(runs, mlp_circuit, tmp_path):
    c, path = mlp_circuit
    b = mc.load(runs / "moons1").model
    v1 = tmp_path / "v1.json"
    shutil.copy(path, v1)

    def to_v1(d):
        d["version"] = 1
        del d["model_fingerprint"], d["graph"]

    edit_json(v1, to_v1)
    old = load_circuit(v1, b)  # version 1 has no fingerprint: only the widths can be checked
    assert old.model_fingerprint is None and torch.equal(old.mask[1], c.mask[1])
    assert evaluate(b, old, mc.load(runs / "moons1").task())["n_kept"] == c.n_kept
    hand = Circuit(c.scores, c.mask, "manual", widths=list(c.widths))
    hand.save(tmp_path / "hand.json")
    assert json.loads((tmp_path / "hand.json").read_text())["model_fingerprint"] is None
    assert load_circuit(tmp_path / "hand.json", b).model_fingerprint is None


def test_circuit_file_round_trip_is_bit_identical(runs, mlp_circuit, truns, tmp_path):
    for path in (mlp_circuit[1], truns / "tc0.json"):
        back = load_circuit(path)
        again = back.save(tmp_path / path.name)
        assert again.read_bytes() == path.read_bytes()
    c = mlp_circuit[0]
    back = load_circuit(mlp_circuit[1])
    assert all(torch.equal(a, b) for a, b in zip(back.mask, c.mask))
    for a, b in zip(back.scores, c.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# ---- the circuit file schema ---------------------------------------------------------------------------------------
def _set(key, value):
    return lambda d: d.update({key: value})


def _edge(n, key, value):
    return lambda d: d["edges"][n].update({key: value})


def _dup(d):
    d["edges"][1] = dict(d["edges"][0])


def _drop(key):
    return lambda d: d.pop(key)


def _bump_kept(d):
    d["n_kept"] += 1


COMMON_CASES = [  # (id, edit, message): for both the MLP and the transformer circuit file
    ("kept-yes", _edge(3, "kept", "yes"), r"edges\[3\]\.kept='yes' is not allowed; expected true or false"),
    ("duplicate-edge", _dup, r"edges\[1\] repeats edges\[0\] .*each edge is listed once"),
    ("n_kept", _bump_kept, r"n_kept=\d+ disagrees with the edges, which give \d+"),
    ("n_edges", _set("n_edges", 7), r"n_edges=7 disagrees with the edges"),
    ("version-99", _set("version", 99), r"unknown circuit file version 99; allowed: 1, 2"),
    ("version-str", _set("version", "2"), r"unknown circuit file version '2'; allowed: 1, 2"),
    ("format", _set("format", "x"), r"is not a modcircuit circuit file"),
    ("graph", _set("graph", "cnn"), r"unknown graph 'cnn'; allowed: mlp, transformer"),
    ("metric", _set("metric", "foo"), r"metric: unknown metric 'foo'; allowed: kl, logit-diff, mse"),
    ("ablation", _set("ablation", "noise"), r"ablation: unknown ablation 'noise'; allowed: mean, resample, zero"),
    ("seconds", _set("seconds", -1), r"seconds=-1 is not allowed; expected greater than or equal to 0"),
    ("seconds-inf", _set("seconds", float("inf")), r"seconds=inf is not allowed; expected a finite number"),
    ("score-str", _edge(2, "score", "high"), r"edges\[2\]\.score='high' is not allowed; expected a number"),
    ("unknown-key", _edge(2, "kep", True), r"unknown field 'edges\[2\]\.kep'; allowed: .*kept"),
    ("fingerprint-missing", _drop("model_fingerprint"), r"required field 'model_fingerprint' is missing"),
    ("fingerprint-form", _set("model_fingerprint", "zz"), r"model_fingerprint='zz' .*64 lowercase hex digits"),
    ("method-missing", _drop("method"), r"required field 'method' is missing"),
    ("edges-short", lambda d: d["edges"].pop(), r"lists \d+ edges; .* ha(ve|s) \d+"),
]
MLP_CASES = [
    ("layer-out-of-range", _edge(2, "layer", 7), r"edges\[2\] \(layer 7, target \d+, source \d+\) is outside widths"),
    ("widths-zero", _set("widths", [2, 0, 20, 2]), r"widths: widths \[2, 0, 20, 2\] must all be >= 1"),
    ("name-conflict", _edge(0, "source", "in:zz"),
     r"edges\[\d+\] names neuron 0 of layer 0 'in:\w+', an earlier edge 'in:zz'; a neuron has one name"),
    ("means-length", _set("means", [[0.0], [0.0], [0.0]]), r"means has lengths \[1, 1, 1\]; widths .* need \[2, 20, 20\]"),
]
TRANSFORMER_CASES = [
    ("split-qkv-str", _set("split_qkv", "no"), r"split_qkv='no' is not allowed; expected true or false"),
    ("not-in-graph", _edge(0, "source_index", 5), r"edges\[0\] .* is not in its graph"),
    ("n_heads", _set("n_heads", 0), r"n_heads=0 is not allowed"),
]


def _check_refused(path, fn, match, model=None):
    d = json.loads(path.read_text())
    fn(d)
    bad = path.parent / f"bad-{path.name}"
    bad.write_text(json.dumps(d))
    with pytest.raises(ModcircuitError, match=match) as e:
        load_circuit(bad, model)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    return bad


@pytest.mark.parametrize("name,fn,match", COMMON_CASES + MLP_CASES, ids=[c[0] for c in COMMON_CASES + MLP_CASES])
def test_mlp_circuit_file_schema(mlp_circuit, tmp_path, name, fn, match):
    src = shutil.copy(mlp_circuit[1], tmp_path / "c.json")
    _check_refused(src, fn, match)


@pytest.mark.parametrize("name,fn,match", COMMON_CASES + TRANSFORMER_CASES,
                         ids=[c[0] for c in COMMON_CASES + TRANSFORMER_CASES])
def test_transformer_circuit_file_schema(truns, tmp_path, name, fn, match):
    src = shutil.copy(truns / "tc0.json", tmp_path / "tc.json")
    d = json.loads(src.read_text())
    assert d["graph"] == "transformer"
    _check_refused(src, fn, match)


CLI_CASES = ["kept-yes", "duplicate-edge", "n_kept", "version-99"]


@pytest.mark.parametrize("name", CLI_CASES)
@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_cli_refuses_a_bad_circuit_file(runs, mlp_circuit, truns, tmp_path, capsys, name, kind):
    fn, match = next((c[1], c[2]) for c in COMMON_CASES if c[0] == name)
    src = mlp_circuit[1] if kind == "mlp" else truns / "tc0.json"
    run = runs / "moons0" if kind == "mlp" else truns / "t0"
    bad = _check_refused(shutil.copy(src, tmp_path / "c.json"), fn, match)
    before = listing(tmp_path)
    assert main(["evaluate", str(run), str(bad)]) == 2
    assert re.search(match, one_error_line(capsys))
    assert main(["draw", str(run), "--circuit", str(bad), "-o", str(tmp_path / "net.png")]) == 2
    assert re.search(match, one_error_line(capsys))
    assert listing(tmp_path) == before
