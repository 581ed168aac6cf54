"""Random scores, uniform in [0, 1): the floor every method must beat (seeded, reproducible)."""
from __future__ import annotations

import torch

from . import MethodResult, register_method


@register_method("random", "uniform random scores (the floor)")
def random_scores(ctx, threshold: float, seed: int = 0) -> MethodResult:
    g = torch.Generator().manual_seed(int(seed))
    scores = [torch.rand(s, generator=g, dtype=torch.float64) for s in ctx.graph.shapes]
    return MethodResult(scores=scores, forward_passes=0, extra={"seed": int(seed)})


@register_method("random", "uniform random scores (the floor)", kinds=("transformer",))
def transformer_random_scores(ctx, threshold: float, seed: int = 0) -> MethodResult:
    gen = torch.Generator().manual_seed(int(seed))
    S = torch.rand(ctx.allowed.shape, generator=gen, dtype=torch.float64)
    return MethodResult(torch.where(ctx.allowed.cpu(), S, torch.full_like(S, float("nan"))), None, 0, {"seed": seed})
