"""The plain baselines: no penalty, and L1 / L2 on every weight matrix (biases are free)."""
from __future__ import annotations

import torch

from .base import Regime, register_regime
from .costs import agg_


@register_regime
class Vanilla(Regime):
    name, description = "vanilla", "task loss only"


class _WeightNorm(Regime):
    def _term(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _grad(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, lam):
        return lam * sum(agg_(self._term(w), self.cfg.agg) for w, _, _ in self.model.cost_terms())

    @torch.no_grad()
    def add_penalty_grad_(self, lam, step):
        if lam == 0:
            return
        for w, _, _ in self.model.cost_terms():
            w.grad.add_(self._grad(w), alpha=lam / w.numel() if self.cfg.agg == "mean" else lam)


@register_regime
class L1(_WeightNorm):
    name, description = "l1", "lam * sum/mean |W|"

    def _term(self, w):
        return w.abs()

    def _grad(self, w):
        return torch.sign(w)


@register_regime
class L2(_WeightNorm):
    name, description = "l2", "lam * sum/mean W^2"

    def _term(self, w):
        return w.pow(2)

    def _grad(self, w):
        return 2 * w
