"""Every output position: the metric averages over the chosen (example, position) pairs; fast ACDC stays
equal to the per-edge reference and EAP to its masked-run gradients for every choice; one-line errors."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import modcircuit as mc
from modcircuit.circuits.transformer_graph import (
    TransformerGraph, TransformerPatchContext, acdc_fast, acdc_plain, eap_signed,
)
from modcircuit.cli import main
from modcircuit.errors import ModcircuitError
from modcircuit.nn.transformer import GeometricTransformer

from test_transformer_circuits import masked_run_eap_scores

torch.set_num_threads(1)


def model(n_layers=2, n_ctx=5, tokens=True, layernorm=True, seed=0, **kw):
    torch.manual_seed(seed)
    arch = dict(n_layers=n_layers, d_model=12, n_heads=2, d_head=4, d_mlp=10, n_ctx=n_ctx, d_out=5,
                layernorm=layernorm, **kw)
    m = GeometricTransformer(d_vocab=7, **arch) if tokens else GeometricTransformer(d_input=2, **arch)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    B = 12
    if tokens:
        return m, torch.randint(0, 7, (B, n_ctx)), torch.randint(0, 7, (B, n_ctx))
    return m, torch.randn(B, n_ctx, 2), torch.randn(B, n_ctx, 2)


def some_mask(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < 0.4
    mask[0, 0] = True
    return mask


def test_metric_is_the_mean_over_the_chosen_pairs():
    m, x, xc = model()
    mask = some_mask(*x.shape)
    logits = m.double().logits_all(x)  # [B, T, d_out]
    for metric in ("kl", "mse"):
        for positions, chosen in (("all", torch.ones_like(mask)), ([0, -2], None), (mask, mask)):
            if chosen is None:
                chosen = torch.zeros_like(mask)
                chosen[:, [0, 3]] = True
            ctx = TransformerPatchContext(m, x, xc, metric=metric, positions=positions)
            assert torch.allclose(ctx.target, logits[:, ctx.positions.index], atol=1e-12)
            M = ctx.full_mask().double()
            M[ctx.graph.dest_out, 0] = 0  # a circuit that differs from the model
            M[ctx.graph.dest_mlp(1), 1] = 0
            out = ctx.forward(M)
            full = torch.zeros(*mask.shape, 5, dtype=torch.float64)  # outputs scattered back to [B, T, d_out]
            full[:, ctx.positions.index] = out
            if metric == "kl":
                logp = F.log_softmax(logits, -1)
                per = (logp.exp() * (logp - F.log_softmax(full, -1))).sum(-1)
            else:
                per = ((full - logits) ** 2).mean(-1)
            expected = per[chosen].mean()
            assert abs(ctx.metric(out).item() - expected.item()) < 1e-12
            assert expected.item() > 1e-4


def test_last_equals_the_index_of_the_last_position():
    m, x, xc = model(seed=1)
    a = TransformerPatchContext(m, x, xc)
    b = TransformerPatchContext(m, x, xc, positions=[-1])
    M = a.full_mask().double()
    M[a.graph.dest_out, 0] = 0
    assert abs(a.metric(a.forward(M)).item() - b.metric(b.forward(M)).item()) < 1e-12
    assert a.positions.last and not b.positions.last


CASES = [  # n_layers, n_ctx, tokens, layernorm, split_qkv, ablation, metric, cap
    (3, 4, True, True, True, "resample", "kl", 256),
    (2, 3, False, True, False, "zero", "mse", 3),
    (1, 5, True, False, True, "mean", "kl", 1),
    (2, 1, True, True, True, "resample", "mse", 2),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("which", ["all", "indices", "mask"])
def test_fast_acdc_equals_reference_for_every_choice(case, which):
    n_layers, n_ctx, tokens, layernorm, split_qkv, ablation, metric, cap = case
    m, x, xc = model(n_layers, n_ctx, tokens, layernorm, seed=n_layers + n_ctx)
    positions = {"all": "all", "indices": [0] if n_ctx == 1 else [0, n_ctx - 2],
                 "mask": some_mask(len(x), n_ctx, n_ctx)}[which]
    n = TransformerGraph.of(m, split_qkv).n_edges

    def ctx():
        return TransformerPatchContext(m, x, xc if ablation == "resample" else None, metric=metric,
                                       ablation=ablation, split_qkv=split_qkv, positions=positions)
    kept = []
    for thr in (0.003, 0.05):
        ref = acdc_plain(ctx(), thr)
        fast = acdc_fast(ctx(), thr, max_candidates=cap)
        assert torch.equal(ref.mask, fast.mask)
        both = ~torch.isnan(ref.scores)
        assert torch.equal(both, ~torch.isnan(fast.scores))
        assert torch.allclose(ref.scores[both], fast.scores[both], atol=1e-10, rtol=0)
        assert abs(ref.extra["final_metric"] - fast.extra["final_metric"]) < 1e-10
        kept.append(int(ref.mask.sum()))
    assert any(0 < k < n for k in kept)  # real decisions both ways


@pytest.mark.parametrize("split_qkv", [False, True])
@pytest.mark.parametrize("ablation", ["resample", "mean"])
@pytest.mark.parametrize("objective", ["recovered", "logit-diff"])
@pytest.mark.parametrize("which", ["all", "mask"])
def test_eap_equals_the_masked_run_gradients_for_other_positions(split_qkv, ablation, objective, which):
    m, x, xc = model(seed=4)
    xc = xc if ablation == "resample" else None
    positions = "all" if which == "all" else some_mask(*x.shape, 2)
    ref = masked_run_eap_scores(TransformerPatchContext(m, x, xc, ablation=ablation, split_qkv=split_qkv,
                                                        positions=positions), objective)
    est = eap_signed(TransformerPatchContext(m, x, xc, ablation=ablation, split_qkv=split_qkv, positions=positions),
                     objective=objective)
    both = ~torch.isnan(ref)
    assert torch.equal(torch.isnan(est), torch.isnan(ref))
    assert torch.allclose(est[both], ref[both], atol=1e-12, rtol=0)
    assert ref[both].abs().max() > 1e-3
    last = eap_signed(TransformerPatchContext(m, x, xc, ablation=ablation, split_qkv=split_qkv), objective=objective)
    assert not torch.allclose(est[both], last[both])  # the positions really change the scores


def test_discover_and_evaluate_record_and_reuse_positions(tmp_path):
    m, x, xc = model(seed=5)
    last = mc.discover(m, x, xc, method="acdc", threshold=0.01)
    assert "positions" not in last.extra  # circuits of the last position are stored as before
    c = mc.discover(m, x, xc, method="acdc", threshold=0.01, positions=[1, 3])
    assert c.extra["positions"] == [1, 3]
    c.save(tmp_path / "c.json")
    back = mc.load_circuit(tmp_path / "c.json", m)
    rep = mc.evaluate(m, back, (x, xc))
    assert rep["positions"] == [1, 3]
    assert abs(rep["divergence"] - c.extra["final_metric"]) < 1e-10  # ACDC's final metric is the circuit's
    assert "accuracy" not in rep
    other = mc.evaluate(m, back, (x, xc), positions="last")
    assert "positions" not in other and other["divergence"] != rep["divergence"]
    mask = some_mask(*x.shape)
    cm = mc.discover(m, x, xc, method="eap", top_k=10, positions=mask)
    assert torch.equal(torch.tensor(cm.extra["positions"]["mask"], dtype=torch.bool), mask)
    assert mc.evaluate(m, cm, (x, xc))["positions"] == cm.extra["positions"]


@pytest.mark.parametrize("positions,needle", [
    ([5], "position 5 is out of range for inputs of 5 positions (allowed: -5..4)"),
    ([-6], "position -6 is out of range"),
    ([1, -4], "name a position twice"),
    ([], "not allowed"),
    ("first", "positions 'first' is not allowed"),
    (torch.ones(3, 5, dtype=torch.bool), "a positions mask has shape [3, 5]; the inputs need [12, 5]"),
    (torch.zeros(12, 5, dtype=torch.bool), "chooses no position"),
    ([0.5], "not allowed"),
])
def test_bad_positions_are_one_line_errors(positions, needle):
    m, x, xc = model()
    with pytest.raises(ModcircuitError) as e:
        mc.discover(m, x, xc, method="eap", positions=positions)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_positions_on_an_mlp_are_refused():
    with pytest.raises(ModcircuitError, match="apply to transformers"):
        mc.discover(mc.MLP([2, 3, 2]), torch.randn(4, 2), torch.randn(4, 2), method="eap", positions="all")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    task = mc.get_task("modular-addition-transformer", seed=0, p=7, n_layers=1, d_model=8, n_heads=2, d_head=4,
                       d_mlp=8)
    out = tmp_path_factory.mktemp("prun") / "run"
    mc.train(task, "vanilla", seed=0, steps=10).save(out)
    return out


def test_cli_positions(run_dir, tmp_path, capsys):
    circ = tmp_path / "c.json"
    assert main(["discover", str(run_dir), "--method", "eap", "--positions", "all", "--top-k", "4",
                 "--out", str(circ), "--json"]) in (0, None)
    assert json.loads(circ.read_text())["extra"]["positions"] == "all"
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), str(circ), "--positions", "0,-1", "--json"]) in (0, None)
    assert json.loads(capsys.readouterr().out)["positions"] == [0, 2]
    bad = tmp_path / "bad.json"
    for args, needle in ((["--positions", "7"], "position 7 is out of range"),
                         (["--positions", "a,b"], "--positions 'a,b' is not allowed")):
        assert main(["discover", str(run_dir), *args, "--out", str(bad)]) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
        assert not bad.exists()


def test_positions_in_a_study_key_only_when_set():
    from modcircuit.study import parse_spec, plan
    from modcircuit.study.spec import CircuitCell

    base = dict(name="s", tasks=["modular-addition-transformer"], regimes=["vanilla"], seeds=[0], methods=["eap"],
                task_options={"modular-addition-transformer": {"p": 7}})
    keys = {str(p): [c.key for c in plan(parse_spec({**base, **({} if p is None else {"positions": p})})).circuits]
            for p in (None, "last", "all", [0, 2])}
    assert keys["None"] == keys["last"]  # "last" is the default: the cells keep their keys
    assert len({tuple(v) for v in keys.values()}) == 3
    assert [c.positions for c in plan(parse_spec({**base, "positions": "all"})).circuits] == ["all"]
    assert CircuitCell("r", "eap", 0.01, None, "kl", "resample", True).key == \
        CircuitCell("r", "eap", 0.01, None, "kl", "resample", True, False, None).key
    with pytest.raises(ModcircuitError, match="position 3 is out of range"):
        plan(parse_spec({**base, "positions": [3]}))
    with pytest.raises(ModcircuitError, match="apply to transformer tasks"):
        plan(parse_spec({**base, "tasks": ["two-moons"], "task_options": {}, "positions": "all"}))
