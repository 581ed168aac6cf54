"""The nonsense-target control: permuted labels, the logit-diff metric toward labels, the study's control cells
and the report's "Control: nonsense targets" section with its warning rule."""
from __future__ import annotations

import textwrap

import pandas as pd
import pytest
import torch

import modcircuit as mc
from modcircuit.circuits.inputs import permuted_labels
from modcircuit.circuits.patching import PatchContext, divergence
from modcircuit.errors import ModcircuitError
from modcircuit.report.build import Doc
from modcircuit.report.control import control_section, flagged, warnings


def test_permutation_is_a_seeded_derangement_unlike_the_corrupt_pairing():
    y = torch.arange(50)
    a, b, c = permuted_labels(y, 3), permuted_labels(y, 3), permuted_labels(y, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)  # deterministic per seed, and the seed matters
    assert torch.equal(a.sort().values, y) and not (a == y).any()  # a permutation; no example keeps its label
    # the same seed as a task's must not give the corrupt inputs' labels (the empty circuit's own answers)
    task = mc.get_task("modular-addition-transformer", seed=3, p=11)
    x, xc, labels = task.patching_pairs("test")
    corrupt_labels = (xc[:, 0] + xc[:, 1]) % 11
    assert (permuted_labels(labels, 3) != corrupt_labels).float().mean() > 0.5
    with pytest.raises(ModcircuitError, match="label seed"):
        permuted_labels(y, -1)


def test_logit_diff_metric_aims_at_the_labels_in_the_mlps_output_order():
    torch.manual_seed(0)
    model = mc.MLP([3, 8, 4])
    with torch.no_grad():  # output positions no longer in class order (as BIMT's output swaps leave them)
        model.out_perm.copy_(torch.tensor([2, 0, 3, 1]))
    x, xc = torch.randn(20, 3), torch.randn(20, 3)
    labels = torch.randint(0, 4, (20,))
    ctx = PatchContext(model, x, xc, metric="logit-diff", labels=labels)
    empty = ctx.forward(ctx.full_masks(False))
    assert ctx.metric(ctx.target).item() == 0
    # by hand, in class order: mean over examples of (y[label] - mean y), model minus empty circuit
    y_model, y_empty = model.readout(ctx.target), model.readout(empty)
    ld = lambda y: (y[torch.arange(20), labels] - y.mean(-1)).mean()  # noqa: E731
    assert abs(ctx.metric(empty).item() - (ld(y_model) - ld(y_empty)).item()) < 1e-12
    # without labels: toward the model's own classes
    own = PatchContext(model, x, xc, metric="logit-diff")
    c = ctx.target.argmax(-1)
    assert abs(own.metric(empty).item() - divergence("logit-diff", empty, ctx.target, c).item()) < 1e-12
    with pytest.raises(ModcircuitError, match="integer class labels"):
        PatchContext(model, x, xc, metric="logit-diff", labels=torch.rand(20))


def _rows(faithfulness: float, edge_fraction: float) -> pd.DataFrame:
    base = dict(task="t", regime="bimt", method="eap", selection="tau=0.01", n_edges=100)
    rows = []
    for seed in (0, 1):
        rows.append({**base, "seed": seed, "target": "labels", "label_seed": None, "n_kept": 30.0,
                     "edge_fraction": 0.3, "faithfulness": 0.95, "divergence_empty": 3.0})
        rows.append({**base, "seed": seed, "target": "permuted-labels", "label_seed": 0.0,
                     "n_kept": edge_fraction * 100, "edge_fraction": edge_fraction,
                     "faithfulness": faithfulness + 0.01 * seed, "divergence_empty": -0.2})
    return pd.DataFrame(rows)


def test_a_tiny_faithful_nonsense_circuit_triggers_the_warning():
    bad = _rows(faithfulness=0.9, edge_fraction=0.03)
    assert len(flagged(bad)) == 2
    doc = Doc()
    sentences = control_section(doc, bad)
    assert len(sentences) == 1 and sentences[0].startswith("WARNING: eap (tau=0.01) on t/bimt")
    assert "in 2 of 2 seeds" in sentences[0] and "faithfulness 0.91" in sentences[0]
    md = doc.markdown()
    assert "Control: nonsense targets" in md and "0.905 ± " in md  # the nonsense faithfulness, mean over seeds
    for fine in (_rows(faithfulness=0.9, edge_fraction=0.2), _rows(faithfulness=0.5, edge_fraction=0.03)):
        assert flagged(fine) == [] and warnings(fine) == []
        doc = Doc()
        control_section(doc, fine)
        assert "No method or regime found a nonsense circuit" in doc.markdown()


@pytest.mark.slow
def test_a_study_with_the_control_reports_true_and_nonsense_targets(tmp_path):
    from modcircuit.report import build_report
    from modcircuit.study import Store, run_study

    spec = tmp_path / "c.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "control"
        tasks = ["modular-addition-transformer"]
        regimes = ["vanilla"]
        seeds = [0]
        methods = ["acdc", "eap"]
        thresholds = [0.01]
        split_qkv = true
        control = "permuted-labels"
        control_seed = 5
        results = "{tmp_path / 'r.duckdb'}"
        [task_options.modular-addition-transformer]
        p = 7
        n_layers = 1
        d_model = 16
        n_heads = 2
        d_head = 8
        d_mlp = 32
        [train]
        steps = 150
        lr = 0.003
        optimizer = "adamw"
        weight_decay = 1.0
        [profile]
        enabled = false
    """))
    res = run_study(spec, progress=False, echo=lambda s: None)
    assert res.units_done == 1 and not res.failures
    with Store(res.results, read_only=True) as s:
        circuits = s.rows("circuits")
    control = [r for r in circuits if r.get("target")]
    assert len(circuits) == 6 and len(control) == 4  # per method: the study's circuit, true and nonsense labels
    assert {(r["method"], r["target"]) for r in control} == {(m, t) for m in ("acdc", "eap")
                                                          for t in ("labels", "permuted-labels")}
    assert all(r["metric"] == "logit-diff" for r in control)
    # control circuits skip the faithfulness curves (the control table does not read them); the study's keep them
    assert all(r.get("curve_area") is None and r.get("cpr") is None for r in control)
    assert all(r["curve_area"] is not None and r["cpr"] is not None for r in circuits if not r.get("target"))
    assert all(r["label_seed"] == 5 for r in control if r["target"] == "permuted-labels")
    report = build_report(res.results, tmp_path / "report")
    md = report.markdown.read_text()
    assert "## Control: nonsense targets" in md and "label seed 5" in md
    for r in control:  # every control circuit's numbers are in the table (one seed: the value itself)
        assert f"{r['n_kept']:.3g} (n=1)" in md or f"{r['n_kept']:.0f} (n=1)" in md
    row = next(line for line in md.splitlines() if line.startswith("| modular-addition-transformer | vanilla | eap"))
    fake = next(r for r in control if r["method"] == "eap" and r["target"] == "permuted-labels")
    from modcircuit.report.values import fmt_num

    assert f"{fmt_num(fake['faithfulness'])} (n=1)" in row
    # the study's own tables hold no control rows: its circuit count says 2
    assert "2 circuits" in md
