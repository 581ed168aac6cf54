"""BIMT's locality penalty (Liu, Gan, Tegmark 2023): l1-local alone, and bimt with neuron swaps."""
from __future__ import annotations

import time

import torch

from ..swap import relocate
from .base import Regime, register_regime
from .costs import connection_cost


@register_regime
class L1Local(Regime):
    name, description = "l1-local", "lam * BIMT connection cost, no swaps"

    def __init__(self, model, cfg, optimizer=None):
        super().__init__(model, cfg, optimizer)
        # weight_factor * D + l0 per linear map; positions never move (swaps move weights, not positions)
        self.factors = [cfg.weight_factor * dist + cfg.l0 for _, _, dist in model.cost_terms()]

    def penalty(self, lam):
        return lam * connection_cost(self.model, self.cfg.weight_factor, self.cfg.l0, self.cfg.agg)

    @torch.no_grad()
    def add_penalty_grad_(self, lam, step):
        if lam == 0:
            return
        mean = self.cfg.agg == "mean"
        for (w, b, _), factor in zip(self.model.cost_terms(), self.factors):
            w.grad.addcmul_(torch.sign(w), factor, value=lam / w.numel() if mean else lam)
            if b is not None:
                b.grad.add_(torch.sign(b), alpha=(lam / b.numel() if mean else lam) * self.cfg.l0)


@register_regime
class BIMT(L1Local):
    name, description = "bimt", "lam * BIMT connection cost + neuron swaps every swap_every steps"

    @torch.no_grad()
    def after_step(self, step):
        if (step + 1) % self.cfg.swap_every:
            return
        t = time.perf_counter()
        cfg = self.cfg
        self.n_swaps += relocate(self.model, cfg.top_k, cfg.weight_factor, cfg.agg, self.optimizer,
                                 cfg.swap_inputs, cfg.swap_outputs)
        self.swap_seconds += time.perf_counter() - t
