"""The head-level transformer graph: patching invariants, fast ACDC == per-edge reference, every method runs."""
import pytest
import torch

import modcircuit as mc
from modcircuit.circuits.transformer_graph import (
    METHODS, TransformerGraph, TransformerPatchContext, acdc_fast, acdc_plain, circuit_outputs,
    discover_transformer, eap_signed, logit_gap,
)
from modcircuit.errors import ModcircuitError
from modcircuit.nn.transformer import GeometricTransformer
from modcircuit.tasks import sequence  # noqa: F401

torch.set_num_threads(1)


def tiny(tokens=True, layernorm=True, seed=0):
    torch.manual_seed(seed)
    kw = dict(n_layers=2, d_model=16, n_heads=2, d_head=4, d_mlp=16, n_ctx=3, d_out=5, layernorm=layernorm)
    if tokens:
        m = GeometricTransformer(d_vocab=7, **kw)
        x, xc = torch.randint(0, 7, (24, 3)), torch.randint(0, 7, (24, 3))
    else:
        m = GeometricTransformer(d_input=2, **kw)
        x, xc = torch.randn(24, 3, 2), torch.randn(24, 3, 2)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return m, x, xc


def test_graph_shape():
    g = TransformerGraph(n_layers=2, n_heads=3, split_qkv=False)
    # sources: embed + 2 x (3 heads + mlp) = 9; dests: 2 x (3 + 1) + output = 9
    assert (g.n_src, g.n_dest) == (9, 9)
    A = g.allowed
    assert A[g.dest_attn(0, 1)].tolist() == [True] + [False] * 8  # layer-0 heads read the embedding only
    assert A[g.dest_mlp(0)].sum() == 4  # embed + the 3 heads of layer 0
    assert A[g.dest_attn(1, 0)].sum() == 5 and A[g.dest_mlp(1)].sum() == 8 and A[g.dest_out].all()
    assert g.n_edges == 1 + 1 + 1 + 4 + 3 * 5 + 8 + 9
    gs = TransformerGraph(n_layers=2, n_heads=3, split_qkv=True)
    assert gs.n_edges == g.n_edges + 2 * (3 * 1 + 3 * 5)
    assert len(list(gs.acdc_order())) == gs.n_edges == len(list(gs.edges()))
    assert gs.dest_names()[gs.dest_attn(1, 2, 1)] == "A1.2.k"


@pytest.mark.parametrize("split_qkv", [False, True])
@pytest.mark.parametrize("tokens", [True, False])
def test_full_circuit_is_the_model_and_empty_circuit_the_corrupted_run(tokens, split_qkv):
    m, x, xc = tiny(tokens)
    ctx = TransformerPatchContext(m, x, xc, metric="kl", ablation="resample", split_qkv=split_qkv)
    full = ctx.forward(ctx.full_mask())
    assert ctx.metric(full[None]).abs().item() < 1e-6
    assert (full - ctx.target).abs().max().item() < 1e-9
    assert (ctx.target.float() - m(x)).abs().max().item() < 1e-5  # the float64 copy is the model
    empty = ctx.forward(ctx.full_mask(False))
    assert (empty - ctx.model(xc)).abs().max().item() < 1e-9
    assert (empty.float() - m(xc)).abs().max().item() < 1e-5
    # one edge removed changes something (the masks are really used)
    M = ctx.full_mask().double()
    M[ctx.graph.dest_out, 0] = 0
    assert (ctx.forward(M) - full).abs().max().item() > 1e-4


def test_zero_and_mean_ablation_empty_circuits():
    m, x, _ = tiny()
    ctx = TransformerPatchContext(m, x, ablation="zero")
    # with zero ablation the empty circuit's output reads only the attention biases b_O
    const = sum(b.b_O for b in ctx.model.blocks)
    expected = ctx.model.unembed(const.expand(1, 3, -1))[:, -1]
    assert (ctx.forward(ctx.full_mask(False)) - expected).abs().max().item() < 1e-9
    assert (ctx.forward(ctx.full_mask()) - ctx.target).abs().max().item() < 1e-9
    mctx = TransformerPatchContext(m, x, ablation="mean")
    h = mctx.h[:, 0]  # [n_src, B, T, d]
    expected = mctx.model.unembed(h.mean(1).sum(0, keepdim=True) + const)[:, -1]
    assert (mctx.forward(mctx.full_mask(False)) - expected).abs().max().item() < 1e-9


@pytest.mark.parametrize("split_qkv", [False, True])
def test_fast_acdc_equals_per_edge_reference(split_qkv):
    m, x, xc = tiny(seed=1)
    thr = 0.02
    ref = acdc_plain(TransformerPatchContext(m, x, xc, split_qkv=split_qkv), thr)
    fast = acdc_fast(TransformerPatchContext(m, x, xc, split_qkv=split_qkv), thr)
    n = int(TransformerGraph.of(m, split_qkv).allowed.sum())
    assert 0 < int(ref.mask.sum()) < n  # the threshold makes real decisions both ways
    assert torch.equal(ref.mask, fast.mask)
    both = ~torch.isnan(ref.scores)
    assert torch.equal(both, ~torch.isnan(fast.scores))
    assert torch.allclose(ref.scores[both], fast.scores[both], atol=1e-10, rtol=0)
    assert fast.forward_passes < ref.forward_passes
    assert abs(ref.extra["final_metric"] - fast.extra["final_metric"]) < 1e-10


def test_acdc_threshold_zero_keeps_everything_that_matters_and_circuit_is_faithful():
    m, x, xc = tiny(seed=2)
    c = discover_transformer(m, x, xc, method="acdc", threshold=0.0)
    # threshold 0 only removes edges whose removal does not worsen the metric: the circuit stays at least
    # as close to the model as the full circuit's 0
    assert c.extra["final_metric"] <= 1e-12 or c.n_kept == c.n_edges
    big = discover_transformer(m, x, xc, method="acdc", threshold=1e9)
    assert big.n_kept == 0
    out = circuit_outputs(m, big, x, xc)
    assert (out - TransformerPatchContext(m, x, xc).model(xc)).abs().max().item() < 1e-9
    assert logit_gap(m, c, x, xc) <= logit_gap(m, big, x, xc)


def test_eap_is_exact_for_edges_into_a_linear_readout():
    # without LayerNorm the output is linear in the final residual stream, and so is the "recovered"
    # objective: EAP's first-order estimate of removing an edge into the output is the exact change
    m, x, xc = tiny(layernorm=False, seed=3)
    ctx = TransformerPatchContext(m, x, xc, metric="mse")
    est = eap_signed(ctx)
    from modcircuit.circuits.transformer_graph import _objective

    obj = _objective(ctx, "recovered")
    full = obj(ctx.forward(ctx.full_mask())).item()
    k = ctx.graph.dest_out
    for s in range(ctx.graph.n_src):
        M = ctx.full_mask().double()
        M[k, s] = 0
        exact = obj(ctx.forward(M)).item() - full
        assert abs(est[k, s].item() - exact) < 1e-9
    # and an edge into a nonlinear receiver is only approximated (the test can tell the two apart)
    k = ctx.graph.dest_mlp(1)
    M = ctx.full_mask().double()
    M[k, 0] = 0
    assert abs(est[k, 0].item() - (obj(ctx.forward(M)).item() - full)) > 1e-9


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_a_task(method):
    task = mc.get_task("modular-addition-transformer", seed=0, p=5, d_model=16, n_heads=2, d_head=4, d_mlp=16)
    model = task.build_model()
    opts = {"probing": {"steps": 5}, "eap-ig": {"steps": 3}}.get(method, {})
    c = discover_transformer(model, task, method=method, threshold=0.01, n=16, **opts)
    S = c.scores[0]
    allowed = c.graph.allowed
    assert torch.isfinite(S[allowed]).all() and torch.isnan(S[~allowed]).all()
    assert not (c.mask[0] & ~allowed).any()
    d = c.to_dict()
    assert len(d["edges"]) == c.n_edges and d["n_kept"] == c.n_kept
    top = discover_transformer(model, task, method=method, top_k=3, n=16, **opts)
    assert top.n_kept == 3


def test_bad_arguments():
    m, x, xc = tiny()
    with pytest.raises(ModcircuitError, match="method"):
        discover_transformer(m, x, xc, method="nope")
    with pytest.raises(ModcircuitError, match="threshold"):
        discover_transformer(m, x, xc, threshold=-1.0)
    with pytest.raises(ModcircuitError, match="corrupt"):
        TransformerPatchContext(m, x)
    with pytest.raises(ModcircuitError, match="shape"):
        TransformerPatchContext(m, x, xc[:3])
    with pytest.raises(ModcircuitError, match="ablation"):
        TransformerPatchContext(m, x, xc, ablation="noise")
    with pytest.raises(ModcircuitError, match="unknown dtype 'float16'; allowed: float32, float64"):
        mc.discover(m, x, xc, dtype=torch.float16)


def test_float32_discovery_through_discover():
    m, x, xc = tiny(seed=3)
    c64 = mc.discover(m, x, xc, method="acdc", threshold=0.01)
    c32 = mc.discover(m, x, xc, method="acdc", threshold=0.01, dtype="float32")
    assert (c64.extra["dtype"], c32.extra["dtype"]) == ("float64", "float32")
    both = ~torch.isnan(c64.scores[0])
    assert torch.allclose(c32.scores[0][both], c64.scores[0][both], atol=1e-4)
    assert not torch.equal(c32.scores[0][both], c64.scores[0][both])


def test_fast_acdc_with_an_interleaved_order_equals_reference():
    # auto-circuit's order only sorts receivers by layer: edges of different receivers of a layer interleave
    m, x, xc = tiny(seed=1)
    g = TransformerGraph.of(m, split_qkv=True)

    def rank(k):
        l = g.dest_layer(k)
        return 2 * l + (1 if k == g.dest_out or k == g.dest_mlp(l) else 0)
    gen = torch.Generator().manual_seed(0)
    edges = list(g.acdc_order())
    shuffled = [edges[i] for i in torch.randperm(len(edges), generator=gen).tolist()]
    order = sorted(shuffled, key=lambda e: -rank(e[0]))  # stable: shuffled within a layer
    assert order != edges
    ref = acdc_plain(TransformerPatchContext(m, x, xc, split_qkv=True), 0.02, order=order)
    fast = acdc_fast(TransformerPatchContext(m, x, xc, split_qkv=True), 0.02, order=order)
    assert torch.equal(ref.mask, fast.mask)
    both = ~torch.isnan(ref.scores)
    assert torch.allclose(ref.scores[both], fast.scores[both], atol=1e-10, rtol=0)
    with pytest.raises(ModcircuitError, match="output back"):
        acdc_fast(TransformerPatchContext(m, x, xc, split_qkv=True), 0.02, order=list(reversed(edges)))
    with pytest.raises(ModcircuitError, match="exactly once"):
        acdc_fast(TransformerPatchContext(m, x, xc, split_qkv=True), 0.02, order=edges[1:])


@pytest.mark.parametrize("n_layers,n_ctx,tokens,layernorm,split_qkv,ablation,metric,cap", [
    (3, 4, True, True, True, "resample", "kl", 256),
    (3, 2, False, True, False, "zero", "mse", 3),
    (1, 3, True, False, True, "mean", "kl", 1),
    (2, 1, True, True, True, "resample", "kl", 2),  # one position: q/k edges change nothing
    # many positions: attention without the few-position shortcuts (weighted_values' per-key sums)
    (2, 12, True, True, True, "resample", "kl", 256),
    pytest.param(3, 16, False, True, True, "mean", "mse", 5, marks=pytest.mark.slow),
])
@pytest.mark.parametrize("thr", [0.0, 0.01, 0.1])
def test_fast_acdc_equals_reference_across_shapes(n_layers, n_ctx, tokens, layernorm, split_qkv, ablation, metric,
                                                  cap, thr):
    torch.manual_seed(n_layers * 10 + n_ctx)
    kw = dict(n_layers=n_layers, d_model=12, n_heads=2, d_head=4, d_mlp=10, n_ctx=n_ctx, d_out=5, layernorm=layernorm)
    if tokens:
        m = GeometricTransformer(d_vocab=7, **kw)
        x, xc = torch.randint(0, 7, (16, n_ctx)), torch.randint(0, 7, (16, n_ctx))
    else:
        m = GeometricTransformer(d_input=2, **kw)
        x, xc = torch.randn(16, n_ctx, 2), torch.randn(16, n_ctx, 2)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    g = TransformerGraph.of(m, split_qkv)
    gen = torch.Generator().manual_seed(1)
    edges = list(g.acdc_order())

    def rank(k):
        l = g.dest_layer(k)
        return 2 * l + (1 if k == g.dest_out or k == g.dest_mlp(l) else 0)
    order = sorted([edges[i] for i in torch.randperm(len(edges), generator=gen).tolist()], key=lambda e: -rank(e[0]))

    def ctx():
        return TransformerPatchContext(m, x, xc if ablation == "resample" else None, metric=metric,
                                       ablation=ablation, split_qkv=split_qkv)
    for o in (None, order):
        ref = acdc_plain(ctx(), thr, order=o)
        fast = acdc_fast(ctx(), thr, order=o, max_candidates=cap)
        assert torch.equal(ref.mask, fast.mask)
        both = ~torch.isnan(ref.scores)
        assert torch.equal(both, ~torch.isnan(fast.scores))
        assert torch.allclose(ref.scores[both], fast.scores[both], atol=1e-10, rtol=0)
        assert abs(ref.extra["final_metric"] - fast.extra["final_metric"]) < 1e-10



def masked_run_eap_scores(ref_ctx, objective: str) -> torch.Tensor:
    """Reference EAP scores [n_dest, n_src]: gradients recorded at every destination's input in the masked
    forward pass with every edge live, times the source's (ablated - clean) difference."""
    from modcircuit.circuits.transformer_graph import _objective

    obj = _objective(ref_ctx, objective)
    rec: dict = {}
    with torch.enable_grad():
        emb = ref_ctx.D[:1].clone().requires_grad_(True)
        obj(ref_ctx.run(ref_ctx.full_mask().double(), prefix=emb, record=rec)).sum().backward()
    g = ref_ctx.graph
    ref = torch.full((g.n_dest, g.n_src), float("nan"), dtype=torch.float64)
    diff = (ref_ctx.a[:, 0] - ref_ctx.h[:, 0]).expand(g.n_src, *ref_ctx.h.shape[2:])
    for dests, xin in rec.items():
        for i, k in enumerate(dests):
            gk = xin.grad[0, :, :, i]  # [B, T', d]
            for src in range(g.dest_n_src(k)):
                ref[k, src] = (gk * diff[src][:, diff.shape[2] - gk.shape[1]:]).sum()
    return ref

@pytest.mark.parametrize("split_qkv", [False, True])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
@pytest.mark.parametrize("objective", ["recovered", "logit-diff"])
def test_eap_from_the_model_forward_equals_the_masked_run_gradients(split_qkv, ablation, objective):
    # EAP takes its gradients from the model's own forward pass (every destination's input a separate node);
    # the reference takes them from the masked forward pass with every edge live, recording each input
    m, x, xc = tiny(seed=5)
    xc = xc if ablation == "resample" else None
    ref_ctx = TransformerPatchContext(m, x, xc, ablation=ablation, split_qkv=split_qkv)
    ref = masked_run_eap_scores(ref_ctx, objective)
    for fresh in (True, False):  # clean source outputs taken from EAP's pass, or computed before it
        ctx = TransformerPatchContext(m, x, xc, ablation=ablation, split_qkv=split_qkv)
        if not fresh:
            ctx.h
        est = eap_signed(ctx, objective=objective)
        assert torch.equal(torch.isnan(est), torch.isnan(ref))
        both = ~torch.isnan(ref)
        assert torch.allclose(est[both], ref[both], atol=1e-12, rtol=0)
        assert ref[both].abs().max() > 1e-3
        assert (ctx.h - ref_ctx.h).abs().max().item() < 1e-12 and (ctx.a - ref_ctx.a).abs().max().item() < 1e-12
        assert (ctx.target - ref_ctx.target).abs().max().item() < 1e-12


def test_model_copy_is_shared_only_while_it_equals_the_model():
    m, x, xc = tiny(seed=6)
    c1, c2 = TransformerPatchContext(m, x, xc), TransformerPatchContext(m, x, xc)
    assert c1.model is c2.model
    with torch.no_grad():
        m.blocks[0].W_Q.data.add_(0.5)  # a change the version counter does not see
    c3 = TransformerPatchContext(m, x, xc)
    assert c3.model is not c1.model
    assert torch.equal(c3.model.blocks[0].W_Q, m.blocks[0].W_Q.double())
    assert (c3.target.float() - m(x)).abs().max().item() < 1e-5
    c3.model.blocks[0].W_K.data.add_(0.5)  # the copy changed: not reused
    assert TransformerPatchContext(m, x, xc).model is not c3.model


def test_model_in_the_context_dtype_is_viewed_not_copied():
    m, x, xc = tiny(seed=7)
    ctx = TransformerPatchContext(m, x, xc, dtype=torch.float32)
    view = ctx.model
    assert view is not m and view.blocks[0].W_Q.data_ptr() == m.blocks[0].W_Q.data_ptr()
    assert not any(p.requires_grad for p in view.parameters()) and not view.training
    m.train()
    with torch.no_grad():
        m.blocks[0].W_Q.data.add_(0.5)  # seen through the shared storage
    c2 = TransformerPatchContext(m, x, xc, dtype=torch.float32)
    assert c2.model is view and not c2.model.training
    assert (c2.target - m(x)).abs().max().item() < 1e-6
    m.blocks[1].W_V = torch.nn.Parameter(m.blocks[1].W_V.detach() * 2)  # a replaced tensor: a new view
    c3 = TransformerPatchContext(m, x, xc, dtype=torch.float32)
    assert c3.model is not view
    assert (c3.target - m(x)).abs().max().item() < 1e-6
    for method in ("eap", "eap-ig", "probing"):  # methods with gradients leave the model's .grad alone
        discover_transformer(m, x, xc, method=method, dtype=torch.float32)
    assert all(p.grad is None for p in m.parameters())
    assert all(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("n_layers,layernorm,act,split_qkv", [(1, True, "gelu", True), (3, False, "relu", False),
                                                                (3, True, "gelu", True)])
def test_eap_equals_the_masked_run_gradients_for_other_shapes(n_layers, layernorm, act, split_qkv):
    # the fused EAP pass (LayerNorm Jacobian per block, the last block at the last position only) against
    # the masked forward pass's recorded input gradients, for one and three blocks, without LayerNorm, gelu
    torch.manual_seed(11)
    m = GeometricTransformer(d_input=2, n_layers=n_layers, d_model=16, n_heads=2, d_head=4, d_mlp=16, n_ctx=4,
                             d_out=5, act=act, layernorm=layernorm)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x, xc = torch.randn(16, 4, 2), torch.randn(16, 4, 2)
    for objective in ("logit-diff", "recovered"):
        ref_ctx = TransformerPatchContext(m, x, xc, split_qkv=split_qkv)
        ref = masked_run_eap_scores(ref_ctx, objective)
        est = eap_signed(TransformerPatchContext(m, x, xc, split_qkv=split_qkv), objective=objective)
        assert torch.equal(torch.isnan(est), torch.isnan(ref))
        both = ~torch.isnan(ref)
        scale = max(1.0, ref[both].abs().max().item())  # without LayerNorm scores reach ~20: rounding grows alike
        assert torch.allclose(est[both], ref[both], atol=1e-12 * scale, rtol=0)
        assert ref[both].abs().max() > 1e-3


def test_transformer_circuit_file_round_trip_and_evaluate(tmp_path):
    from modcircuit.circuits import Circuit, evaluate, load_circuit
    from modcircuit.circuits.circuit import CircuitBase, TransformerCircuit

    m, x, xc = tiny(seed=4)
    c = discover_transformer(m, x, xc, method="acdc", threshold=0.02, split_qkv=True)
    path = c.save(tmp_path / "c.json")
    back = load_circuit(path, m)
    assert isinstance(back, TransformerCircuit) and isinstance(CircuitBase.load(path), TransformerCircuit)
    assert torch.equal(back.mask[0], c.mask[0]) and back.graph == c.graph and back.edge_set() == c.edge_set()
    assert torch.allclose(back.scores[0], c.scores[0], equal_nan=True)
    with pytest.raises(ModcircuitError, match="holds a TransformerCircuit, not a Circuit"):
        Circuit.load(path)
    with pytest.raises(ModcircuitError, match="for a GeometricTransformer"):
        load_circuit(path, torch.nn.Sequential(torch.nn.Linear(2, 2)))
    other = GeometricTransformer(d_vocab=7, n_layers=3, d_model=16, n_heads=2, d_head=4, d_mlp=16, n_ctx=3, d_out=5)
    with pytest.raises(ModcircuitError, match="3 x 2"):
        load_circuit(path, other)

    rep = evaluate(m, back, (x, xc))
    assert rep["n_edges"] == c.graph.n_edges and rep["n_kept"] == c.n_kept
    assert abs(rep["logit_gap"] - logit_gap(m, c, x, xc)) < 1e-12
    assert rep["n_nodes"] == 1 + 2 * 3 + 1 and 0 < rep["n_nodes_kept"] <= rep["n_nodes"]
    assert rep["curve"]["edges"][-1] == c.graph.n_edges and rep["curve"]["faithfulness"][-1] == pytest.approx(1.0)
    full = back.with_mask([c.graph.allowed])
    empty = back.with_mask([torch.zeros_like(c.graph.allowed)])
    rep_full, rep_empty = evaluate(m, full, (x, xc)), evaluate(m, empty, (x, xc))
    assert rep_full["logit_gap"] < 1e-12 and rep_full["faithfulness"] == pytest.approx(1.0)
    assert rep_empty["faithfulness"] == pytest.approx(0.0) and rep_empty["n_nodes_kept"] == 0
    ctx = TransformerPatchContext(m, x, xc, split_qkv=True)
    assert rep_empty["logit_gap"] == pytest.approx((ctx.corrupt_out - ctx.target).abs().mean().item())


def test_cli_discover_evaluate_on_a_transformer_run(tmp_path, capsys):
    import json

    from modcircuit.cli import main

    task = mc.get_task("modular-addition-transformer", seed=0, p=11, n_layers=1, d_model=16, n_heads=2, d_head=4,
                       d_mlp=16)
    mc.train(task, "bimt", seed=0, steps=30).save(tmp_path / "run")
    out = tmp_path / "c.json"
    assert main(["discover", str(tmp_path / "run"), "--threshold", "0.01", "--out", str(out), "--json",
                 "--precision", "float32"]) in (0, None)
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_edges"] == 9  # embed -> 2 heads, MLP, output (4); 2 heads -> MLP, output (4); MLP -> output
    assert main(["evaluate", str(tmp_path / "run"), str(out), "--json"]) in (0, None)
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_kept"] == summary["n_kept"] and 0 <= rep["accuracy"] <= 1 and rep["agreement"] is not None
