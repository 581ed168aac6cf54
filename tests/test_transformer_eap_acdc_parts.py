"""The fused EAP-IG (one forward and backward pass of the model per step) equals the plain reference (input
gradients recorded in the masked run with every edge live, per step); ACDC over chosen destinations only
equals the reference's and the whole run's decisions on those edges, the other edges stay in."""
from __future__ import annotations

import pytest
import torch

from modcircuit.circuits.transformer_graph import (
    TransformerPatchContext, acdc_fast, acdc_plain, eap_signed,
)
from modcircuit.circuits.transformer_graph import _objective
from modcircuit.errors import ModcircuitError
from modcircuit.nn.transformer import GeometricTransformer

from test_transformer_positions import model

torch.set_num_threads(1)


def masked_run_ig_scores(ctx, steps: int, objective: str) -> torch.Tensor:
    """Reference EAP-IG [n_dest, n_src]: per step the gradients recorded at every destination's input in the
    masked forward pass with every edge live on the embedding interpolated from the ablated to the clean one
    (alpha at the midpoints), averaged, times each source's (ablated - clean) difference, edge by edge."""
    obj = _objective(ctx, objective)
    g = ctx.graph
    grads: dict = {}
    for i in range(steps):
        rec: dict = {}
        with torch.enable_grad():
            emb = ((i + 0.5) / steps * ctx.D[:1]).clone().requires_grad_(True)
            obj(ctx.run(ctx.full_mask().double(), prefix=emb, record=rec)).sum().backward()
        for dests, xin in rec.items():
            for j, k in enumerate(dests):
                grads[k] = grads.get(k, 0) + xin.grad[0, :, :, j] / steps  # [B, T', d]
    ref = torch.full((g.n_dest, g.n_src), float("nan"), dtype=torch.float64)
    diff = (ctx.a[:, 0] - ctx.h[:, 0]).expand(g.n_src, *ctx.h.shape[2:])
    for k, gk in grads.items():
        for src in range(g.dest_n_src(k)):
            ref[k, src] = (gk * diff[src][:, diff.shape[2] - gk.shape[1]:]).sum()
    return ref


@pytest.mark.parametrize("split_qkv", [False, True])
@pytest.mark.parametrize("ablation,objective,positions", [("resample", "recovered", "last"),
                                                          ("zero", "logit-diff", "last"),
                                                          ("mean", "recovered", "all"),
                                                          ("resample", "logit-diff", "all")])
def test_fused_eap_ig_equals_the_masked_run_reference(split_qkv, ablation, objective, positions):
    m, x, xc = model(n_layers=3, seed=8)
    xc = xc if ablation == "resample" else None

    def ctx():
        return TransformerPatchContext(m, x, xc, ablation=ablation, split_qkv=split_qkv, positions=positions)
    ref = masked_run_ig_scores(ctx(), 3, objective)
    est = eap_signed(ctx(), 3, objective)
    both = ~torch.isnan(ref)
    assert torch.equal(torch.isnan(est), torch.isnan(ref))
    assert torch.allclose(est[both], ref[both], atol=1e-12, rtol=0)
    assert ref[both].abs().max() > 1e-3
    assert not torch.allclose(est[both], eap_signed(ctx(), 1, objective)[both])  # the steps matter


def test_fused_eap_ig_without_layernorm_and_vector_inputs():
    torch.manual_seed(3)
    m = GeometricTransformer(d_input=2, n_layers=2, d_model=12, n_heads=3, d_head=4, d_mlp=8, n_ctx=4, d_out=3,
                             layernorm=False, act="gelu")
    x, xc = torch.randn(10, 4, 2), torch.randn(10, 4, 2)
    ref = masked_run_ig_scores(TransformerPatchContext(m, x, xc, split_qkv=True), 4, "recovered")
    est = eap_signed(TransformerPatchContext(m, x, xc, split_qkv=True), 4, "recovered")
    both = ~torch.isnan(ref)
    scale = max(1.0, ref[both].abs().max().item())
    assert torch.allclose(est[both], ref[both], atol=1e-12 * scale, rtol=0)


def test_empty_circuit_output_without_a_patched_run_equals_the_run():
    m, x, xc = model(seed=9)
    for ablation in ("resample", "zero", "mean"):
        for positions in ("last", "all"):
            ctx = TransformerPatchContext(m, x, xc if ablation == "resample" else None, ablation=ablation,
                                          positions=positions)
            ran = ctx.run(ctx.full_mask(False).double())[0]
            assert torch.allclose(ctx.forward(ctx.full_mask(False)), ran, atol=1e-12, rtol=0)
            assert not torch.allclose(ran, ctx.target)


@pytest.mark.parametrize("split_qkv", [False, True])
def test_acdc_over_chosen_destinations(split_qkv):
    m, x, xc = model(n_layers=2, seed=2)

    def ctx():
        return TransformerPatchContext(m, x, xc, split_qkv=split_qkv)
    c = ctx()
    g = c.graph
    names = g.dest_names()
    last = [n for k, n in enumerate(names) if k == g.dest_out or g.dest_layer(k) == g.n_layers - 1]
    chosen = torch.tensor([n in last for n in names])
    thr = 0.003
    whole = acdc_plain(ctx(), thr)
    ref = acdc_plain(ctx(), thr, destinations=last)
    fast = acdc_fast(ctx(), thr, destinations=last)
    for r in (ref, fast):
        visited = ~torch.isnan(r.scores)
        assert torch.equal(visited, c.allowed & chosen[:, None])  # exactly the edges into the chosen ones
        assert r.mask[~chosen].equal(c.allowed[~chosen])  # the other edges stay in
        # the last block and the output come first in ACDC's order: the same decisions as the whole run
        assert torch.equal(r.mask[chosen], whole.mask[chosen])
        assert torch.allclose(r.scores[visited], whole.scores[visited], atol=1e-10, rtol=0)
    assert 0 < int(ref.mask[chosen].sum()) < int(c.allowed[chosen].sum())  # real decisions both ways
    # a set that is not a prefix of the order: the reference and the kernel still agree
    mid = [n for k, n in enumerate(names) if k != g.dest_out and g.dest_layer(k) == 0]
    a, b = acdc_plain(ctx(), thr, destinations=mid), acdc_fast(ctx(), thr, destinations=mid)
    assert torch.equal(a.mask, b.mask)
    both = ~torch.isnan(a.scores)
    assert torch.equal(both, ~torch.isnan(b.scores)) and int(both.sum()) > 0
    assert torch.allclose(a.scores[both], b.scores[both], atol=1e-10, rtol=0)


def test_acdc_destinations_bad_input():
    m, x, xc = model(seed=2)
    ctx = TransformerPatchContext(m, x, xc, split_qkv=True)
    with pytest.raises(ModcircuitError, match="destination 'A9.0.q' is not in the graph"):
        acdc_fast(ctx, 0.01, destinations=["output", "A9.0.q"])
    with pytest.raises(ModcircuitError, match=r"destinations \[\] is not allowed"):
        acdc_plain(ctx, 0.01, destinations=[])
    merged = TransformerPatchContext(m, x, xc)
    with pytest.raises(ModcircuitError, match="'A1.0.q' is not in the graph"):  # q/k/v names need split_qkv
        acdc_fast(merged, 0.01, destinations="A1.0.q")
