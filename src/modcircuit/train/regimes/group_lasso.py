"""Group lasso: lam * sum over neurons of the L2 norm of each neuron's incoming weights (the rows of
every weight matrix), or of its outgoing weights (the columns) with group_by = "outgoing".
agg "mean" averages over the neurons of each matrix instead of summing. Biases are free.

group_norm = "rms" measures each neuron by the root mean square of its weights, ||g|| / sqrt(size of g),
instead of ||g||. Why: a weight's pull is then lam / (neurons * size) under agg "mean", the same as l1's
lam / (entries of W), whatever the fan-in; with "l2" it is sqrt(fan-in) times l1's (28x on a 784-input
layer, where MNIST's lam schedule drives every neuron to zero). The groups, and so the sparsity pattern
the penalty favours, are the same."""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, model_serializer

from .base import Regime, register_regime


class GroupLassoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group_by: Literal["incoming", "outgoing"] = "incoming"
    group_norm: Literal["l2", "rms"] = "l2"

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # left out at its default, so the configurations (and study cell keys) made before it stay as they were
        out = handler(self)
        if out.get("group_norm") == "l2":
            out.pop("group_norm")
        return out


@register_regime
class GroupLasso(Regime):
    name, description = "group-lasso", "lam * sum over neurons of ||incoming (or outgoing) W||_2"
    Options = GroupLassoOptions

    @property
    def _dim(self) -> int:  # W is [out, in]: a neuron's incoming weights are a row, reduced over dim 1
        return 1 if self.options.group_by == "incoming" else 0

    def _scale(self, w, lam) -> float:
        scale = lam / w.shape[1 - self._dim] if self.cfg.agg == "mean" else lam
        return scale / math.sqrt(w.shape[self._dim]) if self.options.group_norm == "rms" else scale

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
