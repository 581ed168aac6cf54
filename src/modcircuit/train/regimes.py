"""Training regimes: the penalty each adds to the task loss, and the BIMT connection cost.

  vanilla   nothing
  l1        lam * agg |W|
  l2        lam * agg W^2
  l1-local  lam * connection_cost     (BIMT's locality penalty, no swaps)
  bimt      lam * connection_cost     plus neuron swaps every swap_every steps (see swap.py)
"""
from __future__ import annotations

import torch

from ..regime_names import DEFAULT_REGIME, REGIME_HELP, REGIMES  # noqa: F401  (re-exported)


def _agg(t: torch.Tensor, agg: str) -> torch.Tensor:
    return t.sum() if agg == "sum" else t.mean()


def connection_cost(model, weight_factor: float = 1.0, l0: float = 0.1, agg: str = "sum") -> torch.Tensor:
    """sum over linear maps of agg(|W| * (weight_factor * D + l0)) + agg(|b| * l0)."""
    total = 0.0
    for w, b, dist in model.cost_terms():
        total = total + _agg(w.abs() * (weight_factor * dist + l0), agg)
        if b is not None:
            total = total + _agg(b.abs() * l0, agg)
    return total


def penalty(model, regime: str, lam: float, weight_factor: float, l0: float, agg: str) -> torch.Tensor:
    if regime == "vanilla" or lam == 0:
        return torch.zeros((), device=next(model.parameters()).device)
    if regime in ("l1", "l2"):
        total = 0.0
        for w, _, _ in model.cost_terms():
            total = total + _agg(w.abs() if regime == "l1" else w.pow(2), agg)
        return lam * total
    return lam * connection_cost(model, weight_factor, l0, agg)


@torch.no_grad()
def add_penalty_grad_(model, regime: str, lam: float, weight_factor: float, l0: float, agg: str,
                      factors: list | None = None) -> None:
    """Add d(penalty)/dW to every weight's .grad in place: the same (sub)gradient autograd gives for
    `penalty`, without building its graph each step (it costs as much as a small model's forward).
    `factors` caches weight_factor * D + l0 per linear map (positions never move)."""
    if regime == "vanilla" or lam == 0:
        return
    for k, (w, b, dist) in enumerate(model.cost_terms()):
        scale = lam / w.numel() if agg == "mean" else lam
        if regime == "l1":
            w.grad.add_(torch.sign(w), alpha=scale)
        elif regime == "l2":
            w.grad.add_(w, alpha=2 * scale)
        else:
            factor = factors[k] if factors is not None else weight_factor * dist + l0
            w.grad.addcmul_(torch.sign(w), factor, value=scale)
            if b is not None:
                b.grad.add_(torch.sign(b), alpha=(lam / b.numel() if agg == "mean" else lam) * l0)


def cost_factors(model, weight_factor: float, l0: float) -> list:
    return [weight_factor * dist + l0 for _, _, dist in model.cost_terms()]


def lam_at(step: int, steps: int, lam: float, schedule: list) -> float:
    """Piecewise-constant lam: schedule [[fraction, multiplier], ...]; from step >= fraction*steps on, lam*multiplier."""
    mult = 1.0
    for frac, m in sorted(schedule):
        if step >= frac * steps:
            mult = m
    return lam * mult
