"""How modular a trained network is, in numbers (`modularity_metrics`, stored with every trained run):

  modularity_q        Newman's modularity Q of the |W| graph (neurons of every layer as nodes, one
                      edge per weight), communities from networkx's Louvain (seeded)
  clusterability      C: the mean over weight matrices of (W^2 inside spectral co-clusters of |W| /
                      total W^2), as clusterability training (Golechha et al. 2024) defines it
  cross_module_share  MLPs: the share of |W| on edges between different outputs' sub-networks

Which output's sub-network each MLP neuron belongs to:

A hidden neuron belongs to the output its |weight| paths reach most strongly (influence propagated
backwards through |W|, each output's influence normalized to sum 1 per layer so large outputs do not
dominate). Inputs are assigned by the caller (e.g. a task's ground truth) or the same way.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ModcircuitError

# co-clusters per matrix for the stored C metric and clusterability training's default
DEFAULT_CLUSTERS = 4
# Q and C are left out of a run's metrics above this many weights: Louvain on networkx takes ~2 s at
# MNIST size (89,400 weights) and grows past minutes at millions
MAX_GRAPH_WEIGHTS = 1_000_000


@torch.no_grad()
def output_groups(model, input_groups: list[int] | None = None) -> list[torch.Tensor]:
    """Group index (an output, in original output order) per position of every neuron layer."""
    n_out = model.widths[-1]
    infl = torch.eye(n_out)[model.out_perm.cpu()]  # (positions, outputs): position k computes output out_perm[k]
    groups = [infl.argmax(1)]
    for lin in reversed(model.linears):
        infl = lin.weight.detach().abs().cpu().T @ infl
        infl = infl / infl.sum(0, keepdim=True).clamp_min(1e-12)
        groups.insert(0, infl.argmax(1))
    if input_groups is not None:  # inputs given in original feature order; map through in_perm
        groups[0] = torch.as_tensor(input_groups)[model.in_perm.cpu()]
    return groups


@torch.no_grad()
def cross_module_share(model, input_groups: list[int] | None = None) -> float:
    """Share of total |W| on edges whose two ends belong to different output sub-networks."""
    groups = output_groups(model, input_groups)
    cross = total = 0.0
    for l, lin in enumerate(model.linears):
        w = lin.weight.detach().abs().cpu()
        differ = groups[l + 1][:, None] != groups[l][None, :]
        cross += float(w[differ].sum())
        total += float(w.sum())
    return cross / total if total else 0.0


def co_cluster_masks(weights: list[torch.Tensor], clusters: int, seed: int = 0) -> list[torch.Tensor | None]:
    """Per weight matrix [out, in], the bool mask of entries inside one of its `clusters` bipartite
    co-clusters (scikit-learn's SpectralCoclustering of |W|, seeded); None for a matrix with a side
    smaller than `clusters`. Raises when that leaves no matrix."""
    from sklearn.cluster import SpectralCoclustering
    from threadpoolctl import threadpool_limits

    sides = max((min(w.shape) for w in weights), default=0)
    if sides < clusters:
        raise ModcircuitError(f"clusters {clusters} is more than the layers have: every weight matrix has a "
                              f"side of at most {sides} neurons; allowed: 2..{sides}")
    masks = []
    for w in weights:
        if min(w.shape) < clusters:
            masks.append(None)
            continue
        a = w.detach().abs().double().cpu().numpy()
        a = a + 1e-12 * max(float(a.max()), 1e-30)  # an all-zero row or column would divide by zero
        with threadpool_limits(1):  # BLAS threads on a tiny SVD cost far more than they save
            cc = SpectralCoclustering(n_clusters=clusters, random_state=seed).fit(a)
        same = torch.as_tensor(cc.row_labels_)[:, None] == torch.as_tensor(cc.column_labels_)[None, :]
        masks.append(same.to(w.device))
    return masks


def clusterability(weights: list[torch.Tensor], masks: list[torch.Tensor | None]) -> torch.Tensor:
    """C: mean over the masked matrices of sum(W^2 inside) / sum(W^2) (differentiable)."""
    shares = []
    for w, m in zip(weights, masks):
        if m is not None:
            sq = w * w
            shares.append((sq * m).sum() / sq.sum().clamp_min(torch.finfo(w.dtype).tiny))
    return torch.stack(shares).mean()


@torch.no_grad()
def weight_graph(model):
    """networkx Graph: a node (layer, index) per neuron, an edge per non-zero weight, weighted by |W|
    (maps between the same two layers, e.g. a transformer's q, k and v, add up)."""
    import networkx as nx

    summed: dict = {}
    for src, dst, w in model.connections():
        a = w.detach().abs().double().cpu().numpy()
        summed[(src, dst)] = summed[(src, dst)] + a if (src, dst) in summed else a
    g = nx.Graph()
    for (src, dst), a in summed.items():
        g.add_nodes_from((src, i) for i in range(a.shape[1]))
        g.add_nodes_from((dst, j) for j in range(a.shape[0]))
        rows, cols = np.nonzero(a)
        g.add_weighted_edges_from(zip(((dst, r) for r in rows.tolist()), ((src, c) for c in cols.tolist()),
                                      a[rows, cols].tolist()))
    return g


def newman_q(model, seed: int = 0) -> float | None:
    """Newman's modularity of the |W| graph under its Louvain communities; None for an empty graph."""
    import networkx as nx

    g = weight_graph(model)
    if g.size(weight="weight") == 0:
        return None
    communities = nx.community.louvain_communities(g, weight="weight", seed=seed)
    return float(nx.community.modularity(g, communities, weight="weight"))


def _input_groups(model, task) -> list[int] | None:
    """Input i -> the one output the task's ground truth says uses it (None unless each input has one)."""
    truth = getattr(task, "ground_truth", None)
    if truth is None or tuple(truth.shape) != (model.widths[-1], model.widths[0]) or model.embedding is not None:
        return None
    if not bool((truth.int().sum(0) == 1).all()):
        return None
    return truth.int().argmax(0).tolist()


@torch.no_grad()
def modularity_metrics(model, task=None, seed: int = 0, clusters: int = DEFAULT_CLUSTERS) -> dict:
    """{modularity_q, clusterability, cross_module_share}; a metric that does not apply is left out
    (Q and C above MAX_GRAPH_WEIGHTS weights)."""
    out = {}
    weights = [w for _, _, w in model.connections()]
    if sum(w.numel() for w in weights) <= MAX_GRAPH_WEIGHTS:
        out["modularity_q"] = newman_q(model, seed)
        try:
            out["clusterability"] = float(clusterability(weights, co_cluster_masks(weights, clusters, seed)))
        except ModcircuitError:  # no matrix as large as `clusters` on both sides
            pass
    if hasattr(model, "out_perm") and hasattr(model, "linears"):
        out["cross_module_share"] = cross_module_share(model, _input_groups(model, task) if task else None)
    return {k: v for k, v in out.items() if v is not None}
