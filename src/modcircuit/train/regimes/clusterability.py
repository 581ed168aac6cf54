"""Clusterability training (Golechha et al. 2024, "Training Neural Networks for Modularity aids
Interpretability"): loss = task loss - lam * C.

Each weight matrix is split into `clusters` bipartite co-clusters (scikit-learn's SpectralCoclustering
of |W|) at the start of training, and again every `recluster_every` steps when that is set.
C = the mean over matrices of (squared weight inside the co-clusters / total squared weight); matrices
with a side smaller than `clusters` (e.g. a 2-unit readout at 4 clusters) are left out, see
nn.modularity.co_cluster_masks. dC_l/dW = 2 W (M - C_l) / sum W^2.
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ...nn.modularity import DEFAULT_CLUSTERS, clusterability, co_cluster_masks
from .base import Regime, register_regime

try:  # the compiled gradient (extra `fast`): two passes a matrix, no temporaries
    from .compiled import clusterability_grad as _compiled_grad
except ImportError:  # pragma: no cover - numba missing
    _compiled_grad = None


class ClusterabilityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clusters: int = Field(DEFAULT_CLUSTERS, ge=2)
    recluster_every: int = Field(0, ge=0)  # 0: co-cluster once, at the start


@register_regime
class Clusterability(Regime):
    name, description = "clusterability", "- lam * share of W^2 inside spectral co-clusters (re-clustered optionally)"
    Options = ClusterabilityOptions
    # C lies in [0, 1] whatever the task, so the task's lam (tuned for sum |W|) means nothing here
    defaults = {"lam": 0.1}

    def __init__(self, model, cfg, optimizer=None):
        super().__init__(model, cfg, optimizer)
        self.masks = self._cluster()
        self._cache = None  # see _terms
        self.compiled = _compiled_grad is not None  # (tests switch it off to check the numpy path)
        # the weight matrices, once: the trainer never replaces a parameter, and cost_terms() costs ~18 us a step
        self._weights = [w for w, _, _ in model.cost_terms()]

    def _cluster(self) -> list:
        return co_cluster_masks([w for w, _, _ in self.model.cost_terms()], self.options.clusters, self.cfg.seed)

    def penalty(self, lam):
        return -lam * clusterability([w for w, _, _ in self.model.cost_terms()], self.masks)

    # no torch.no_grad() decorator (its ~5 us a call counts at these sizes): the writes go through numpy
    # views or detached tensors, which autograd does not see
    def add_penalty_grad_(self, lam, step):
        if self.options.recluster_every and step > 0 and step % self.options.recluster_every == 0:
            self.masks = self._cluster()
        if lam == 0:
            return
        terms = self._terms()
        scale = -2 * lam / len(terms)
        for w, grad, mask in terms:
            if self.compiled and isinstance(w, np.ndarray):
                _compiled_grad(w, grad, mask, scale)
                continue
            # dC/dW in closed form: two dot products and a few element-wise ops a matrix, no autograd graph
            inside_w = w * mask  # W on the co-clusters, 0 off them
            total = float(_dot(w, w))
            if total == 0:
                continue
            c = float(_dot(inside_w, w)) / total
            grad += inside_w * (scale / total)
            grad -= w * (c * scale / total)

    def _terms(self) -> list:
        """(W, its .grad, its co-cluster mask as 0/1) per matrix that has a mask: flat numpy views of the same memory
        on CPU (a third of torch's per-call overhead; the mask as bytes, a quarter of the memory to read), detached
        tensors elsewhere (the mask in W's dtype). Kept between steps; rebuilt when the masks, a weight's memory or a
        .grad tensor change (the key shows it)."""
        weights = self._weights
        key = (self.masks, [(w.data_ptr(), w.grad) for w in weights])
        cached = self._cache
        if cached is not None and cached[0][0] is key[0] and len(cached[0][1]) == len(key[1]) and all(
                a[0] == b[0] and a[1] is b[1] for a, b in zip(cached[0][1], key[1])):
            return cached[1]
        terms = []
        for w, m in zip(weights, self.masks):
            if m is None:
                continue
            if w.device.type == "cpu":
                mask = m.reshape(-1).to(torch.uint8)
                terms.append((w.detach().view(-1).numpy(), w.grad.view(-1).numpy(), mask.numpy()))
            else:
                terms.append((w.detach(), w.grad, m.to(w.dtype)))
        self._cache = (key, terms)
        return terms


def _dot(a, b):
    """sum(a * b) of two arrays of one shape, numpy or torch."""
    return np.vdot(a, b) if isinstance(a, np.ndarray) else torch.vdot(a.reshape(-1), b.reshape(-1))
