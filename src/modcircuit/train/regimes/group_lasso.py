"""Group lasso: lam * sum over neurons of the L2 norm of each neuron's incoming weights (the rows of
every weight matrix), or of its outgoing weights (the columns) with group_by = "outgoing".
agg "mean" averages over the neurons of each matrix instead of summing. Biases are free."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from .base import Regime, register_regime


class GroupLassoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group_by: Literal["incoming", "outgoing"] = "incoming"


@register_regime
class GroupLasso(Regime):
    name, description = "group-lasso", "lam * sum over neurons of ||incoming (or outgoing) W||_2"
    Options = GroupLassoOptions

    @property
    def _dim(self) -> int:  # W is [out, in]: a neuron's incoming weights are a row, reduced over dim 1
        return 1 if self.options.group_by == "incoming" else 0

    def _scale(self, w, lam) -> float:
        return lam / w.shape[1 - self._dim] if self.cfg.agg == "mean" else lam

    def penalty(self, lam):
        return sum(self._scale(w, lam) * w.norm(dim=self._dim).sum() for w, _, _ in self.model.cost_terms())

    @torch.no_grad()
    def add_penalty_grad_(self, lam, step):
        if lam == 0:
            return
        for w, _, _ in self.model.cost_terms():
            norms = torch.linalg.vector_norm(w, dim=self._dim, keepdim=True)
            # d||g||/dg = g / ||g||; at g = 0 the subgradient 0 (as autograd gives for norm at 0). The
            # per-neuron factor is formed on the small norms vector: two passes over W in all
            w.grad.addcmul_(w, torch.where(norms > 0, self._scale(w, lam) / norms, 0.0))
