"""The code paths a GPU takes, run on a fake CUDA device (fake_cuda.py) so that they are tested on every
machine: the fake device refuses what CUDA refuses; training under every regime, discovery by every method
on both graph kinds, evaluation and the CLI give on it what they give on the CPU."""
import copy

import numpy as np
import pytest
import torch

import modcircuit as mc
import modcircuit.circuits.methods.mlp_acdc_kernel  # noqa: F401  (numba compiles outside the fake device)
import modcircuit.circuits.transformer_acdc_tail  # noqa: F401
from modcircuit.circuits import discover, evaluate
from modcircuit.cli import main
from modcircuit.nn.transformer import GeometricTransformer

from circuit_helpers import pairs, random_mlp
from fake_cuda import fake_cuda

torch.set_num_threads(1)


def _equal_circuits(a, b, atol=1e-9):
    masks = zip(a.mask, b.mask) if isinstance(a.mask, list) else [(a.mask, b.mask)]
    scores = zip(a.scores, b.scores) if isinstance(a.scores, list) else [(a.scores, b.scores)]
    assert all(torch.equal(x, y) for x, y in masks)
    for x, y in scores:
        both = ~torch.isnan(y)
        assert torch.equal(both, ~torch.isnan(x))
        assert torch.allclose(x[both], y[both], atol=atol, rtol=0)


def test_the_fake_device_refuses_what_cuda_refuses(monkeypatch):
    with fake_cuda(monkeypatch) as dev:
        a, host = torch.zeros(3, device="cuda"), torch.ones(3)
        assert a.device == torch.device("cuda", 0) and a.is_cuda and dev.on(a + 1) and not dev.on(host)
        with pytest.raises(RuntimeError, match="same device"):
            a + host
        with pytest.raises(RuntimeError, match="indices should be either on cpu"):
            host[torch.tensor([0], device="cuda")]
        with pytest.raises(TypeError, match="numpy"):
            a.numpy()
        assert dev.on(a[torch.tensor([0, 1])])  # CPU indices into a device tensor: allowed, as on CUDA
        assert dev.on(a * torch.tensor(2.0))  # a 0-dim CPU tensor is a scalar
        assert not dev.on(a.cpu()) and a.cpu().device.type == "cpu" and a.cpu().numpy().shape == (3,)
        assert dev.on(host.to("cuda")) and dev.on(host.to(a)) and not dev.on(host)
        lin = torch.nn.Linear(3, 2).to("cuda")
        assert all(dev.on(p) for p in copy.deepcopy(lin).double().parameters())
        with pytest.raises(RuntimeError, match="same device"):
            lin(host)
        assert torch.cuda.is_available()
    assert not torch.zeros(1).is_cuda  # gone after the block


MLP_METHODS = ["acdc", "acdc-plain", "eap", "eap-ig", "magnitude", "magnitude-act", "probing", "random"]


def test_mlp_discovery_and_evaluation_on_cuda_equal_the_cpu(monkeypatch):
    model = random_mlp([8, 16, 16, 4], seed=0)
    clean, corrupt = pairs(8, n=32, seed=1)
    for method in MLP_METHODS:
        ref = discover(model, clean, corrupt, method=method, threshold=1e-3)
        ref_eval = evaluate(model, ref, (clean, corrupt), curve_points=3)
        with fake_cuda(monkeypatch) as dev:
            m = copy.deepcopy(model).to("cuda")
            assert dev.on(next(m.parameters()))
            c = discover(m, clean, corrupt, method=method, threshold=1e-3)
            rep = evaluate(m, c, (clean, corrupt), curve_points=3)
        if method == "acdc":  # the GPU's kernel, the CPU's compiled one: the same circuit
            assert c.extra["kernel"] == "torch" and ref.extra["kernel"] == "compiled"
            assert 0 < c.n_kept < c.n_edges
        _equal_circuits(c, ref, atol=1e-5 if method == "probing" else 1e-9)
        for key in ("faithfulness", "kl", "curve_area"):
            assert rep[key] == pytest.approx(ref_eval[key], abs=1e-9), (method, key)


def _transformer(seed=3):
    torch.manual_seed(seed)
    m = GeometricTransformer(d_vocab=9, n_layers=3, d_model=16, n_heads=3, d_head=4, d_mlp=20, n_ctx=6, d_out=6)
    with torch.no_grad():
        m.W_U.mul_(4.0)  # outputs far from uniform: edge effects span the threshold
    return m, torch.randint(0, 9, (12, 6)), torch.randint(0, 9, (12, 6))


@pytest.mark.parametrize("positions", ["last", "all", "mask"])
def test_transformer_discovery_and_evaluation_on_cuda_equal_the_cpu(monkeypatch, positions):
    model, x, xc = _transformer()
    if positions == "mask":
        positions = torch.rand(12, 6, generator=torch.Generator().manual_seed(0)) < 0.4
        positions[0, 0] = True
    kw = dict(threshold=0.03, split_qkv=True, positions=positions)
    runs = [("acdc", {}), ("acdc", {"max_candidates": 2}), ("eap", {})]  # (max_candidates 2: many chains)
    if positions == "last":
        runs += [("acdc-plain", {}), ("eap-ig", {}), ("magnitude", {}), ("probing", {"steps": 20}), ("random", {})]
    for method, extra in runs:
        ref = discover(model, x, xc, method=method, **kw, **extra)
        ref_eval = evaluate(model, ref, (x, xc), curve_points=3)
        with fake_cuda(monkeypatch):
            m = copy.deepcopy(model).to("cuda")
            c = discover(m, x, xc, method=method, **kw, **extra)
            rep = evaluate(m, c, (x, xc), curve_points=3)
        if method == "acdc":
            assert 0 < c.n_kept < c.n_edges
        _equal_circuits(c, ref, atol=1e-5 if method == "probing" else 1e-9)
        for key in ("faithfulness", "cpr", "cmd", "curve_area"):
            assert rep[key] == pytest.approx(ref_eval[key], abs=1e-9), (method, key)


REGIMES = ["vanilla", "l1", "l2", "l1-local", "bimt", "weight-sparse", "clusterability", "group-lasso"]


@pytest.mark.parametrize("task,regimes", [
    ("two-moons", REGIMES),
    ("modular-addition-transformer", ["bimt"]),  # its own swaps; the penalties' device code is the MLP's
])
def test_training_on_cuda_equals_the_cpu(monkeypatch, task, regimes):
    for regime in regimes:
        kw = dict(steps=12, seed=0)
        if regime == "bimt":
            kw["swap_every"] = 4  # neuron swaps run on the device too
        if task == "modular-addition-transformer":
            kw["task_options"] = {"p": 7}
        ref = mc.train(task, regime=regime, **kw)
        with fake_cuda(monkeypatch) as dev:
            run = mc.train(task, regime=regime, device="cuda", **kw)
            assert all(dev.on(p) for p in run.model.parameters()), regime
        if regime == "bimt":
            assert run.timings["n_swaps"] > 0 and run.timings["n_swaps"] == ref.timings["n_swaps"]
        for key in ("train_loss", "test_loss", "connection_cost"):
            assert run.metrics[key] == pytest.approx(ref.metrics[key], rel=1e-4, abs=1e-6), (regime, key)


def test_cli_on_cuda(monkeypatch, tmp_path, capsys):
    """train --device cuda writes a checkpoint that discover and evaluate read onto the device or the CPU alike."""
    from modcircuit.circuits import load_circuit

    t = tmp_path / "t"
    with fake_cuda(monkeypatch):
        assert main(["train", "--task", "modular-addition-transformer", "--task-option", "p=7", "--regime", "bimt",
                     "--steps", "12", "--device", "cuda", "--out", str(t), "--no-progress"]) in (0, None)
    reports = {}
    for device in ("cpu", "cuda"):
        c = tmp_path / f"{device}.json"
        with fake_cuda(monkeypatch):
            assert main(["discover", str(t), "--split-qkv", "--positions", "all", "--device", device,
                         "--out", str(c), "--json"]) in (0, None)
            capsys.readouterr()
            assert main(["evaluate", str(t), str(c), "--device", device, "--json"]) in (0, None)
            reports[device] = __import__("json").loads(capsys.readouterr().out)
    cpu, cuda = load_circuit(tmp_path / "cpu.json"), load_circuit(tmp_path / "cuda.json")
    _equal_circuits(cuda, cpu)
    assert 0 < cuda.n_kept < cuda.n_edges
    for key in ("faithfulness", "cpr", "cmd", "curve_area"):
        assert reports["cuda"][key] == pytest.approx(reports["cpu"][key], abs=1e-9), key
    assert main(["export-mib", str(t), str(tmp_path / "cuda.json"), "-o", str(tmp_path / "mib.json")]) in (0, None)
    assert (tmp_path / "mib.json").exists()
    capsys.readouterr()


@pytest.mark.parametrize("device,needle", [("gpu", "invalid device='gpu'"),
                                           ("cuda", "device 'cuda': CUDA is not available here")])
@pytest.mark.parametrize("command", ["discover", "evaluate"])
def test_cli_device_is_checked_before_any_work(tmp_path, capsys, monkeypatch, device, needle, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # (a machine without a GPU)
    out = tmp_path / "c.json"
    argv = ["discover", str(tmp_path / "no-run"), "--out", str(out)] if command == "discover" else \
        ["evaluate", str(tmp_path / "no-run"), str(tmp_path / "no-circuit.json")]
    assert main([*argv, "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and not out.exists()


def test_the_fake_device_finds_a_host_index_into_device_work(monkeypatch):
    """What the fake device is for: an index made on the host meeting device indices fails here, as on CUDA
    (the kind of mistake fast transformer ACDC once made in its chains)."""
    with fake_cuda(monkeypatch):
        hp = torch.tensor([2, 0, 1], device="cuda")
        inv = torch.arange(len(hp))  # the host index
        with pytest.raises(RuntimeError, match="indices should be either on cpu"):
            inv[hp == 0]
        assert torch.equal(torch.arange(len(hp), device=hp.device)[hp == 0].cpu(), torch.tensor([1]))
    assert np.array_equal(inv.numpy(), [0, 1, 2])


def test_a_study_on_cuda_records_what_the_cpu_records(monkeypatch, tmp_path):
    """device = "cuda" in a study file (one worker: in this process), profiling included."""
    import textwrap

    from modcircuit.study import Store, run_study
    from modcircuit.study.store import is_timing_column

    rows = {}
    for device in ("cpu", "cuda"):
        d = tmp_path / device
        d.mkdir()
        (d / "s.toml").write_text(textwrap.dedent(f"""
            name = "tiny"
            tasks = ["two-moons"]
            regimes = ["bimt"]
            seeds = [0]
            methods = ["acdc", "eap"]
            thresholds = [0.01]
            results = "{d / 'res.duckdb'}"
            device = "{device}"
            [train]
            steps = 60
            [profile]
            enabled = true
            fresh_process = false
        """))
        with fake_cuda(monkeypatch):
            r = run_study(d / "s.toml", progress=False, echo=lambda _: None)
        assert r.units_done == 1 and not r.failures
        with Store(r.results, read_only=True) as s:
            rows[device] = {t: sorted(({k: v for k, v in x.items() if not is_timing_column(k)} for x in s.rows(t)),
                                      key=lambda x: str(x.get("method"))) for t in ("runs", "circuits", "profiles")}
    assert rows["cuda"]["profiles"][0]["device"] == "cuda" and rows["cpu"]["profiles"][0]["device"] == "cpu"
    setting = {"key", "run_key", "device", "overrides", "config", "checkpoint", "artifact",
               "forward_passes"}  # name the device, or count the kernel's passes (compiled on the CPU)
    for table in ("runs", "circuits"):
        assert len(rows["cpu"][table]) == len(rows["cuda"][table]) > 0
        for a, b in zip(rows["cpu"][table], rows["cuda"][table]):
            for k in a.keys() - setting:
                if isinstance(a[k], float):
                    assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), (table, k)
                else:
                    assert b[k] == a[k], (table, k)
    assert any(0 < c["n_kept"] < c["n_edges"] for c in rows["cuda"]["circuits"])
