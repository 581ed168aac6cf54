"""Weight magnitude: the baseline BIMT is about (its claim: the weights alone show the circuit).

magnitude:     |W[j, i]|
magnitude-act: |W[j, i]| * mean_b |h_i|  (mean absolute activation of the source on the clean batch)
"""
from __future__ import annotations

from . import MethodResult, register_method


@register_method("magnitude", "|w|")
def magnitude(ctx, threshold: float) -> MethodResult:
    return MethodResult(scores=[w.abs().cpu() for w in ctx.W], forward_passes=0)


@register_method("magnitude-act", "|w| * mean |source activation| on the clean batch")
def magnitude_act(ctx, threshold: float) -> MethodResult:
    scores = [(w.abs() * h.abs().mean(0)).cpu() for w, h in zip(ctx.W, ctx.h)]
    return MethodResult(scores=scores, forward_passes=1)
