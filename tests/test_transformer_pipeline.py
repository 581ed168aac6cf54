"""Transformers through the rest of the pipeline: head-level drawings, `modcircuit draw`, and a study
(train -> discover -> evaluate -> profile -> report) on a transformer task."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

import modcircuit as mc
from modcircuit.circuits.transformer_graph import discover_transformer
from modcircuit.cli import main
from modcircuit.errors import ModcircuitError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    task = mc.get_task("modular-addition-transformer", seed=0, p=11, n_layers=2, d_model=16, n_heads=2, d_head=4,
                       d_mlp=16)
    out = tmp_path_factory.mktemp("trun") / "run"
    mc.train(task, "bimt", seed=0, steps=40).save(out)
    return out


def collections(fig, gid):
    return [c for ax in fig.axes for c in ax.collections if c.get_gid() == gid]


def test_head_level_drawing_has_one_curve_per_edge(run_dir):
    from modcircuit.viz import draw

    run = mc.load(run_dir)
    task = run.task()
    clean, corrupt, _ = task.patching_pairs("test", 64, 0)
    c = discover_transformer(run.model, clean, corrupt, method="acdc", threshold=0.05, split_qkv=True)
    assert 0 < c.n_kept < c.n_edges
    fig = draw(run, c)
    (kept,), (faded,) = collections(fig, "circuit"), collections(fig, "faded")
    assert len(kept.get_segments()) == c.n_kept and len(faded.get_segments()) == c.n_edges - c.n_kept
    (nodes,) = collections(fig, "nodes")
    assert len(nodes.get_offsets()) == 1 + 2 * 3 + 1  # embed, 2 x (2 heads + MLP), output
    plain = draw(run.model)
    (edges,) = collections(plain, "edges")
    assert len(edges.get_segments()) == mc.circuits.transformer_graph.TransformerGraph.of(run.model).n_edges
    mlp_circuit = mc.discover(mc.MLP([2, 3, 2]), torch.randn(4, 2), torch.randn(4, 2), method="random")
    with pytest.raises(ModcircuitError, match="TransformerCircuit"):
        draw(run, mlp_circuit)


def test_draw_command_on_a_transformer_run(run_dir, tmp_path, capsys):
    circ = tmp_path / "c.json"
    assert main(["discover", str(run_dir), "--split-qkv", "--threshold", "0.05", "--out", str(circ)]) in (0, None)
    capsys.readouterr()
    assert json.loads(circ.read_text())["split_qkv"] is True
    png = tmp_path / "d.png"
    assert main(["draw", str(run_dir), "--circuit", str(circ), "-o", str(png), "--json"]) in (0, None)
    info = json.loads(capsys.readouterr().out)
    assert info["graph"] == "transformer" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert info["circuit_edges"] == json.loads(circ.read_text())["n_kept"]
    html = tmp_path / "d.html"
    assert main(["draw", str(run_dir), "-o", str(html)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "transformer" in err[0] and not html.exists()


def test_study_on_a_transformer_task_reports_circuits_and_drawings(tmp_path):
    from modcircuit.report import build_report
    from modcircuit.study import Store, run_study

    spec = tmp_path / "t.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "transformer"
        tasks = ["modular-addition-transformer"]
        regimes = ["vanilla", "bimt"]
        seeds = [0]
        methods = ["acdc", "eap"]
        thresholds = [0.01]
        split_qkv = true
        results = "{tmp_path / 'r.duckdb'}"
        [task_options.modular-addition-transformer]
        p = 11
        n_layers = 1
        d_model = 16
        n_heads = 2
        d_head = 4
        d_mlp = 16
        [train]
        steps = 30
        [profile]
        enabled = true
        fresh_process = false
        latency_repeats = 5
        throughput_batch = 64
        throughput_repeats = 3
    """))
    res = run_study(spec, progress=False, echo=lambda s: None)
    assert res.units_done == 2 and not res.failures
    with Store(res.results, read_only=True) as s:
        circuits, profiles = s.rows("circuits"), s.rows("profiles")
    assert len(circuits) == 4 and len(profiles) == 2
    for r in circuits:
        assert r["n_edges"] == 13 and 0 <= r["n_kept"] <= 13 and r["logit_gap"] >= 0  # q, k, v apart
        assert r["n_nodes"] == 5 and r.get("compact_n_params") is None  # head-level circuits do not compact
    build_report(res.results, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "failed" not in md and "modular-addition-transformer" in md
    assert md.count("network with the acdc circuit overlaid") == 2


def test_split_qkv_in_a_study_keys_only_transformer_cells():
    from modcircuit.study import parse_spec, plan
    from modcircuit.study.spec import CircuitCell, config_key

    cell = CircuitCell("run", "acdc", 0.01, None, "kl", "resample", True)
    old = config_key({"kind": "circuit", "run": "run", "method": "acdc", "threshold": 0.01, "edge_count": None,
                      "metric": "kl", "ablation": "resample", "curves": True})
    assert cell.key == old  # studies without split_qkv keep their cells
    assert CircuitCell("run", "acdc", 0.01, None, "kl", "resample", True, True).key != old
    spec = parse_spec({"name": "s", "tasks": ["two-moons", "modular-addition-transformer"], "regimes": ["bimt"],
                       "seeds": [0], "methods": ["acdc"], "split_qkv": True,
                       "task_options": {"modular-addition-transformer": {"p": 11}}})
    cells = plan(spec).circuits
    assert sorted(c.split_qkv for c in cells) == [False, True]
