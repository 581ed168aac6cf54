"""What several regimes share: the BIMT connection cost, sum/mean aggregation, the lam schedule."""
from __future__ import annotations

import torch


def agg_(t: torch.Tensor, agg: str) -> torch.Tensor:
    return t.sum() if agg == "sum" else t.mean()


def connection_cost(model, weight_factor: float = 1.0, l0: float = 0.1, agg: str = "sum") -> torch.Tensor:
    """sum over linear maps of agg(|W| * (weight_factor * D + l0)) + agg(|b| * l0)."""
    total = 0.0
    for w, b, dist in model.cost_terms():
        total = total + agg_(w.abs() * (weight_factor * dist + l0), agg)
        if b is not None:
            total = total + agg_(b.abs() * l0, agg)
    return total


def lam_at(step: int, steps: int, lam: float, schedule: list) -> float:
    """Piecewise-constant lam: schedule [[fraction, multiplier], ...]; from step >= fraction*steps on, lam*multiplier."""
    mult = 1.0
    for frac, m in sorted(schedule):
        if step >= frac * steps:
            mult = m
    return lam * mult
