"""ACDC on the head-level transformer graph: the per-edge reference (acdc-plain) and the fast kernel (acdc).

Same conventions as the MLP ACDC (acdc.py): edges are visited from the output back to the inputs; an edge
is removed when removing it worsens the metric by less than the threshold; its score is that change.
"""
from __future__ import annotations

import torch

from ...errors import ModcircuitError
from ..transformer_acdc_kernel import _StageACDC
from ..transformer_patching import TransformerPatchContext
from . import MethodResult, register_method


def _order(ctx: TransformerPatchContext, order) -> list[tuple[int, int]]:
    """ACDC's edge order: the graph's default, or a given list of (dest, source) indices, which must list
    every edge once with receivers in reverse topological order at the level of layers (the output, then per
    layer from the last its MLP before its attention inputs; within that, any order, as auto-circuit does)."""
    g = ctx.graph
    if order is None:
        return list(g.acdc_order())
    order = [(int(k), int(s)) for k, s in order]
    if sorted(order) != sorted(g.acdc_order()):
        raise ModcircuitError("an ACDC order must list every edge of the graph exactly once")

    def rank(k):
        l = g.dest_layer(k)
        return 2 * l + (1 if k == g.dest_out or k == g.dest_mlp(l) else 0)
    ranks = [rank(k) for k, _ in order]
    if any(b > a for a, b in zip(ranks, ranks[1:])):
        raise ModcircuitError("an ACDC order must visit receivers from the output back to the inputs "
                              "(per layer: the MLP before the attention inputs)")
    return order



@register_method("acdc-plain", "reference ACDC: one full masked forward pass per edge", kinds=("transformer",))
def acdc_plain(ctx: TransformerPatchContext, threshold: float, order=None) -> MethodResult:
    """Reference ACDC: one full masked forward pass per edge."""
    M = ctx.full_mask().to(ctx.dtype)
    scores = torch.full(M.shape, float("nan"), dtype=torch.float64)
    edges = _order(ctx, order)
    with torch.no_grad():
        m_cur = ctx.metric(ctx.forward(M)).item()
        for k, s in edges:
            M[k, s] = 0.0
            m_new = ctx.metric(ctx.forward(M)).item()
            scores[k, s] = m_new - m_cur
            if m_new - m_cur < threshold:
                m_cur = m_new
            else:
                M[k, s] = 1.0
    return MethodResult(scores, M.bool().cpu() & ctx.allowed.cpu(), ctx.forward_passes, {"final_metric": m_cur})



@register_method("acdc", "ACDC (Conmy et al. 2023), exact, stage by stage with speculative candidate chains",
                 kinds=("transformer",))
def acdc_fast(ctx: TransformerPatchContext, threshold: float, max_candidates: int = 256, order=None) -> MethodResult:
    """ACDC with exact sequential semantics, evaluated stage by stage with speculative candidate chains
    (same result as acdc_plain; see _StageACDC)."""
    return _StageACDC(ctx, float(threshold), int(max_candidates)).run(_order(ctx, order))

