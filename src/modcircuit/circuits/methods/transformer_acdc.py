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


def _destinations(ctx: TransformerPatchContext, destinations) -> set[int] | None:
    """The destination indices named by `destinations` (a name or a list of the graph's destination names,
    e.g. ["output", "MLP11", "A11.0.q"]); None: all."""
    if destinations is None:
        return None
    names = ctx.graph.dest_names()
    given = [destinations] if isinstance(destinations, str) else list(destinations)
    if not given:
        raise ModcircuitError("destinations [] is not allowed; give at least one destination name "
                              f"(e.g. {names[-2]!r}, 'output')")
    index = {n: k for k, n in enumerate(names)}
    bad = [d for d in given if d not in index]
    if bad:
        raise ModcircuitError(f"destination {bad[0]!r} is not in the graph; allowed: its destination names "
                              f"({names[0]!r} ... {names[-2]!r}, 'output')")
    return {index[d] for d in given}


def _order(ctx: TransformerPatchContext, order, destinations=None) -> list[tuple[int, int]]:
    """ACDC's edge order: the graph's default, or a given list of (dest, source) indices, which must list
    every edge once with receivers in reverse topological order at the level of layers (the output, then per
    layer from the last its MLP before its attention inputs; within that, any order, as auto-circuit does).
    destinations (names, see _destinations): only the edges into these are visited, in the same order; every
    other edge stays in the circuit unscored (NaN), as if ACDC had not reached it."""
    g = ctx.graph
    keep = _destinations(ctx, destinations)
    if keep is not None:
        return [(k, s) for k, s in _order(ctx, order) if k in keep]
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
def acdc_plain(ctx: TransformerPatchContext, threshold: float, order=None, destinations=None) -> MethodResult:
    """Reference ACDC: one full masked forward pass per edge (destinations: see _order)."""
    M = ctx.full_mask().to(ctx.dtype)
    scores = torch.full(M.shape, float("nan"), dtype=torch.float64)
    edges = _order(ctx, order, destinations)
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
def acdc_fast(ctx: TransformerPatchContext, threshold: float, max_candidates: int = 256, order=None,
              destinations=None) -> MethodResult:
    """ACDC with exact sequential semantics, evaluated stage by stage with speculative candidate chains
    (same result as acdc_plain; see _StageACDC). destinations: visit only the edges into these destination
    names (e.g. the last blocks' to time a part of a large graph); the other edges stay in the circuit."""
    return _StageACDC(ctx, float(threshold), int(max_candidates)).run(_order(ctx, order, destinations))

