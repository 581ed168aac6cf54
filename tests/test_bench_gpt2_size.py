"""benchmarks/bench_gpt2_size.py's machinery on a tiny configuration (the GPT-2-size run is not a test):
its measurements in-process, its table with the children run in-process, and its edge bookkeeping."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

tl = pytest.importorskip("transformer_lens")
if not hasattr(tl, "HookedTransformer"):
    pytest.skip("transformer-lens 3.x (the [tl] extra) is not installed", allow_module_level=True)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpt2_size.py"
TINY = ["--layers", "2", "--heads", "2", "--d-model", "16", "--d-mlp", "32", "--vocab", "11", "--batch", "4",
        "--seq", "4", "--steps", "2", "--acdc-blocks", "1", "--ac-sample", "3"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpt2_size", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def args(bench, *extra):
    return bench.parse_args(TINY + list(extra))


def test_gpt2_small_shape_has_the_documented_edge_count(bench):
    from modcircuit.circuits.graph import TransformerGraph

    g = TransformerGraph(n_layers=12, n_heads=12, split_qkv=True)
    assert g.n_edges == 32491
    last = bench.last_blocks(g, 2)
    assert "output" in last and "MLP10" in last and "A10.0.q" in last and "MLP9" not in last and "A9.11.v" not in last
    assert len(last) == 2 * (12 * 3 + 1) + 1


def test_measurements_in_process(bench):
    a = args(bench)
    for what in ("eap", "eap-ig", "acdc"):
        for pos in ("last", "all"):
            r = bench.ours(a, what, pos)
            assert r["finite"] and r["seconds"] > 0 and r["peak_rss_mb"] >= r["rss_before_mb"] > 0
            if what == "acdc":  # all but the 9 edges into block 0 (its 6 q/k/v inputs and its MLP)
                assert r["edges"] == 46 and r["visited"] == 46 - 9
            else:
                assert r["visited"] == r["edges"] == 46
    model, clean, corrupt = bench.build(a)
    assert model.n_layers == 2 and clean.shape == corrupt.shape == (4, 4) and not torch.equal(clean, corrupt)
    with torch.no_grad():  # the imported model is the TransformerLens one (same seed, same logits)
        from modcircuit.export.transformer_lens import to_transformer_lens
        assert (to_transformer_lens(model)(clean) - model.logits_all(clean)).abs().max() < 1e-4


def test_table_prints_every_row(bench, monkeypatch, capsys):
    a = args(bench, "--positions", "last", "--acdc-positions", "last")

    def in_process(_, spec):
        kind, what, pos = spec.split(":")
        if kind == "ours":
            return bench.ours(a, what, pos)
        return {"not_installed": "No module named 'auto_circuit'"}
    monkeypatch.setattr(bench, "run_child", in_process)
    bench.table(a)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| last |")]
    assert len(rows) == 6, out
    assert "46 edges" in out and "< 20 s: met" in out and "PROJECTED" in out and "not installed" in out


def test_child_protocol_and_auto_circuit_column(bench, capsys):
    a = args(bench, "--child", "ours:eap:last")
    bench.child(a)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("RESULT ") and json.loads(line[7:])["visited"] == 46
    r = bench.auto_circuit(a, "last", "last")
    try:
        import auto_circuit  # noqa: F401
    except ImportError:
        assert "not_installed" in r
    else:
        assert r["per_edge"] > 0 and r["sample"] == 3


def test_measure_option(bench, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        args(bench, "--measure", "eap,acdc-plain")
    a = args(bench, "--positions", "last,all", "--measure", "eap,auto-circuit", "--acdc-positions", "all")
    monkeypatch.setattr(bench, "run_child", lambda _, spec: {"not_installed": "x"} if spec.startswith("ac:")
                        else bench.ours(a, *spec.split(":")[1:]))
    bench.table(a)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]  # (the header)
    assert [r.split(" | ")[:2] for r in rows] == [["| last", "eap, all 46 edges"],
                                                   ["| last", "acdc (ours and auto-circuit's)"],
                                                   ["| all", "eap, all 46 edges"],
                                                   ["| all", "auto-circuit acdc, edges into the last 1 blocks + output"],
                                                   ["| all", "auto-circuit acdc, edges of the whole graph"]]


def test_measurements_on_cuda(bench, monkeypatch):
    """--device cuda on the fake CUDA device (fake_cuda.py): the same measurements, the model built there."""
    from fake_cuda import fake_cuda

    with fake_cuda(monkeypatch) as dev:
        a = args(bench, "--device", "cuda")
        model, clean, _ = bench.build(a)
        assert dev.on(next(model.parameters())) and dev.on(clean)
        for what in ("eap", "eap-ig", "acdc"):
            r = bench.ours(a, what, "all")
            assert r["finite"] and r["visited"] == (46 - 9 if what == "acdc" else 46) and "peak_gpu_mb" in r
