"""Fast transformer ACDC's tail: the sources no candidate of a pass changes are computed once, and the later
receivers' inputs are summed and normalised by the compiled kernel or by torch; every path equals the per-edge
reference."""
import pytest
import torch

import modcircuit.circuits.transformer_acdc_tail as tail
from modcircuit.circuits.transformer_graph import TransformerPatchContext, acdc_fast, acdc_plain
from modcircuit.nn.transformer import GeometricTransformer

torch.set_num_threads(1)


def model(layernorm=True, act="relu", n_ctx=6, seed=3):
    torch.manual_seed(seed)
    m = GeometricTransformer(d_vocab=9, n_layers=4, d_model=16, n_heads=3, d_head=4, d_mlp=20, n_ctx=n_ctx, d_out=6,
                             layernorm=layernorm, act=act)
    with torch.no_grad():
        m.W_U.mul_(4.0)  # outputs far from uniform: edge effects span the thresholds
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return m, torch.randint(0, 9, (12, n_ctx)), torch.randint(0, 9, (12, n_ctx))


class Counts:
    """How often the tail computed heads once (for every candidate) and inputs once, and which gather ran."""

    def __init__(self, monkeypatch):
        self.once_heads = self.once_inputs = self.per_inputs = 0
        qkv, gn = tail._TailForward._attn_qkv, tail._TailForward._gather_norm

        def attn_qkv(s, j, heads, K, pos):
            groups = qkv(s, j, heads, K, pos)
            if len(groups) > 1:
                self.once_heads += len(groups[1][0])
            return groups

        def gather_norm(s, dests, pos, K, ln):
            if K is None:
                self.once_inputs += len(dests)
            else:
                self.per_inputs += len(dests)
            return gn(s, dests, pos, K, ln)
        monkeypatch.setattr(tail._TailForward, "_attn_qkv", attn_qkv)
        monkeypatch.setattr(tail._TailForward, "_gather_norm", gather_norm)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("layernorm,act,positions,thr", [
    (True, "relu", "last", 0.03), (True, "gelu", "last", 0.03), (False, "relu", "last", 1.0),
    (True, "relu", "all", 0.03),
])
def test_tail_paths_equal_the_per_edge_reference(monkeypatch, compiled, layernorm, act, positions, thr):
    if compiled and tail._compiled_gather_norm is None:
        pytest.skip("numba missing (extra fast)")
    if not compiled:
        monkeypatch.setattr(tail, "_compiled_gather_norm", None)
    counts = Counts(monkeypatch)
    m, x, xc = model(layernorm, act)
    ctx = lambda: TransformerPatchContext(m, x, xc, split_qkv=True, positions=positions)  # noqa: E731
    ref = acdc_plain(ctx(), thr)
    fast_ctx = ctx()
    fast = acdc_fast(fast_ctx, thr)
    n = int(fast_ctx.allowed.sum())
    assert 0.05 * n < int(ref.mask.sum()) < 0.3 * n  # a sparse circuit: many inputs read no changed source
    assert torch.equal(ref.mask, fast.mask)
    both = ~torch.isnan(ref.scores)
    assert torch.equal(both, ~torch.isnan(fast.scores))
    assert torch.allclose(ref.scores[both], fast.scores[both], atol=1e-10, rtol=0)
    # the shared path really ran: inputs and whole heads computed once, besides the per-candidate ones
    assert counts.once_inputs > 0 and counts.once_heads > 0 and counts.per_inputs > 0


def test_compiled_gather_norm_equals_torch(monkeypatch):
    """The kernel alone on a stage's state: the inputs of every later receiver, per candidate and once, with
    and without LayerNorm, at every position and at the last one."""
    if tail._compiled_gather_norm is None:
        pytest.skip("numba missing (extra fast)")
    from modcircuit.circuits.transformer_acdc_kernel import _StageACDC

    m, x, xc = model()
    ctx = TransformerPatchContext(m, x, xc, split_qkv=True)
    st = _StageACDC(ctx, 0.01, 8)
    g = st.g
    st._setup(2)  # layer 1's attention inputs
    K = 3
    R = torch.zeros(K, len(st.recv), st.s0, dtype=ctx.dtype)
    for i in range(K):
        R[i, 3 * i, 0] = 1.0  # candidate i removes the embedding's edge into head i's query
    st.evaluate(R)  # fills pc and sc as a pass leaves them
    dests = [g.dest_attn(2, h, c) for h in range(g.n_heads) for c in range(3)] + [g.dest_mlp(2)]
    assert st.pc.srcs
    for pos in (slice(None), slice(-1, None)):
        for k in (K, None):
            for ln in (st.m.blocks[2].ln1, None):
                got = st._gather_norm(dests, pos, k, ln)
                st.compiled = False
                want = st._gather_norm(dests, pos, k, ln)
                st.compiled = True
                assert got.shape == want.shape
                assert torch.allclose(got, want, atol=1e-12, rtol=0)
