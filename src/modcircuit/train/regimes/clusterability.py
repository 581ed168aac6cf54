"""Clusterability training (Golechha et al. 2024, "Training Neural Networks for Modularity aids
Interpretability"): loss = task loss - lam * C.

Each weight matrix is split into `clusters` bipartite co-clusters (scikit-learn's SpectralCoclustering
of |W|) at the start of training, and again every `recluster_every` steps when that is set.
C = the mean over matrices of (squared weight inside the co-clusters / total squared weight); matrices
with a side smaller than `clusters` (e.g. a 2-unit readout at 4 clusters) are left out, see
nn.modularity.co_cluster_masks. dC_l/dW = 2 W (M - C_l) / sum W^2.
"""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ...nn.modularity import DEFAULT_CLUSTERS, clusterability, co_cluster_masks
from .base import Regime, register_regime


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
        self._flat_masks = None  # (the masks they were made from, flat 0/1 masks in the weights' dtype)

    def _cluster(self) -> list:
        return co_cluster_masks([w for w, _, _ in self.model.cost_terms()], self.options.clusters, self.cfg.seed)

    def penalty(self, lam):
        return -lam * clusterability([w for w, _, _ in self.model.cost_terms()], self.masks)

    @torch.no_grad()
    def add_penalty_grad_(self, lam, step):
        if self.options.recluster_every and step > 0 and step % self.options.recluster_every == 0:
            self.masks = self._cluster()
        if lam == 0:
            return
        if self._flat_masks is None or self._flat_masks[0] is not self.masks:
            self._flat_masks = (self.masks, self._float_masks())
        pairs = [(w, m) for (w, _, _), m in zip(self.model.cost_terms(), self._flat_masks[1]) if m is not None]
        for w, mask in pairs:
            # closed form, two dot products and three element-wise ops a matrix; on CPU through numpy views
            # of the same memory (a third of torch's per-call overhead at these sizes)
            cpu = w.device.type == "cpu"
            flat = w.detach().numpy().reshape(-1) if cpu else w.detach().reshape(-1)
            inside_w = flat * mask  # W on the co-clusters, 0 off them
            total = float(flat @ flat)
            if total == 0:
                continue
            c = float(inside_w @ flat) / total
            step_ = (inside_w - c * flat) * (-2 * lam / (len(pairs) * total))
            grad = w.grad.numpy() if cpu else w.grad
            grad += step_.reshape(grad.shape)

    def _float_masks(self) -> list:
        """The co-cluster masks as flat 0/1 arrays of each weight's dtype (numpy ones on CPU)."""
        out = []
        for (w, _, _), m in zip(self.model.cost_terms(), self.masks):
            if m is not None:
                m = m.reshape(-1).to(w.dtype)
                m = m.numpy() if w.device.type == "cpu" else m
            out.append(m)
        return out
