"""Scoring a circuit: faithfulness to the model, task performance, sparsity, cost, ground truth.

evaluate(model, circuit, task_or_data) -> dict (JSON-ready), for an MLP's Circuit and a transformer's
TransformerCircuit alike (outputs of a transformer at the positions it was discovered with, the last by
default, or `positions=`; divergences average over them; task scores, which compare per-example labels,
only at the last position; its nodes are embed, heads, MLPs and the output):
  logit_gap      mean |circuit outputs - model outputs|
  kl / mse       KL(model || circuit) batchmean (kl only for the "kl" metric) and MSE to the model
  divergence     the circuit's own metric (kl or mse) to the model; divergence_empty: same for the empty circuit
  faithfulness   normalized: (M_empty - M_circuit) / (M_empty - M_model) with M the divergence (M_model = 0)
  accuracy, accuracy_model, agreement   (classification, labels given)  |  task_mse, task_mse_model (regression)
  task_faithfulness  same normalization with the task loss against the labels (when labels are given)
  n_edges, n_kept, edge_fraction, n_nodes, n_nodes_kept, node_fraction, seconds, forward_passes
  curve          faithfulness curve: top-n edges by score for log-spaced n, {edges, divergence, faithfulness}
  curve_area     normalized area under that curve over log10(n) (1 = perfect from the first edge)
  mib_curve      faithfulness of the top max(1, floor(p * n_edges)) edges at MIB's edge fractions p
                 (0.1 % .. 100 %): {fractions, edges, faithfulness}
  cpr, cmd       MIB's circuit performance ratio (trapezoid area under that faithfulness over the kept-edge
                 fraction k / n_edges) and circuit-model distance (the same area of |1 - faithfulness|);
                 see mib_areas
  auc_edges, roc_edges     where edge-level truth exists (planted tasks)
  auc_inputs, roc_inputs   where input-level truth exists (symbolic tasks): an (output, input) pair is
                 scored by path flow, the sum over paths of products of the (clamped >= 0) edge scores
  head-level truth (transformer circuits; `truth=`, else the model's `head_truth`, else the task's
  `head_truth_for(model)`; require_truth=True refuses to go without one; see truth_scoring.py):
  auc_heads_qkv, roc_heads_qkv        threshold-free ROC over the q/k/v-apart edges (split circuits only)
  auc_heads_merged, roc_heads_merged  the same over whole heads (a split circuit's head score: max over q, k, v)
  mib_auroc, mib_roc                  MIB's AUROC: ten greedy, pruned circuits at MIB's edge fractions
  truth_edges_qkv, truth_edges_merged, truth_rule   the truth's size in each layout and how it was obtained
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve

from ..errors import ModcircuitError
from .circuit import CircuitBase, TransformerCircuit
from .discover import resolve_data, top_k_mask
from .graph import as_mlp
from .patching import PatchContext


def patch_context(model, circuit: CircuitBase, clean, corrupt=None, labels=None, positions=None):
    """The patching context a circuit of this kind runs in (the circuit's metric and ablation; a
    transformer's output positions: `positions`, or the ones it was discovered with)."""
    circuit.check_shape(model)
    if isinstance(circuit, TransformerCircuit):
        from .positions import positions_from_spec
        from .transformer_patching import TransformerPatchContext

        if positions is None:
            positions = positions_from_spec(circuit.extra.get("positions", "last"))
        return TransformerPatchContext(model, clean, corrupt, metric=circuit.metric, ablation=circuit.ablation,
                                       split_qkv=circuit.graph.split_qkv, labels=labels, positions=positions)
    if positions is not None and not (isinstance(positions, str) and positions == "last"):
        raise ModcircuitError(f"positions {positions!r} apply to transformers; an MLP has one output per example")
    return PatchContext(as_mlp(model), clean, corrupt, metric=circuit.metric, ablation=circuit.ablation,
                        labels=labels, means=circuit.means)


def evaluate(model, circuit: CircuitBase, task_or_data, *, curve_points: int = 12, split: str = "test",
             examples: int | None = None, data_seed: int | None = None, positions=None,
             allow_other_model: bool = False, truth=None, require_truth: bool = False, curves_of=None,
             curves: bool = True) -> dict:
    """Score `circuit` on `model`. A circuit found on another model (other fingerprint, same graph) is refused
    unless allow_other_model=True, for a deliberate transfer. truth: a transformer's HeadTruth (or its dict or
    JSON file) to score against instead of the one the model or task knows; require_truth: fail when there
    is none. curves_of: the report of a circuit with the same scores, evaluated the same way (one scoring cut
    at several sizes): its faithfulness curves depend on the scores alone and are taken from it. curves=False
    leaves out the curves and their areas (curve_area, CPR, CMD), the costliest part of a report."""
    from .truth_scoring import truth_report

    circuit.check_model(model, allow_other_model)
    if not isinstance(circuit, TransformerCircuit):
        model = as_mlp(model)
    clean, corrupt, labels, task = resolve_data(model, task_or_data, split=split, n=examples, seed=data_seed)
    truth_rep = truth_report(model, task, circuit, truth, require_truth)  # before any work: it may refuse
    ctx = patch_context(model, circuit, clean, corrupt, labels, positions)
    with torch.no_grad():
        out = ctx.forward([m.to(ctx.device) for m in circuit.mask])
        empty = ctx.forward(ctx.full_masks(False))
    y = ctx.target
    rep: dict = {"method": circuit.method, "threshold": circuit.threshold, "metric": circuit.metric,
                 "ablation": circuit.ablation, "examples": ctx.batch}
    rep["logit_gap"] = (out - y).abs().mean().item()
    rep["mse"] = ctx.divergence("mse", out).item()
    if circuit.metric == "kl":
        rep["kl"] = ctx.divergence("kl", out).item()
    read = getattr(ctx, "positions", None)
    if read is not None and not read.last:  # per-example labels describe the last position only
        rep["positions"] = read.spec
        labels = None
    d_c, d_e = ctx.metric(out).item(), ctx.metric(empty).item()
    rep["divergence"], rep["divergence_empty"] = d_c, d_e
    rep["faithfulness"] = _normalize(d_e, d_c, 0.0)
    rep.update(_task_scores(model, ctx, out, empty, labels, task))
    rep.update({
        "n_edges": circuit.n_edges, "n_kept": circuit.n_kept, "edge_fraction": circuit.n_kept / circuit.n_edges,
        "n_nodes": circuit.n_nodes, "n_nodes_kept": circuit.n_nodes_kept,
        "seconds": circuit.seconds, "forward_passes": circuit.forward_passes,
    })
    rep["node_fraction"] = rep["n_nodes_kept"] / rep["n_nodes"]
    if curves_of is not None and "curve" in curves_of and "mib_curve" in curves_of:
        rep["curve"], rep["mib_curve"] = curves_of["curve"], curves_of["mib_curve"]
    elif curves:
        rep["curve"] = faithfulness_curve(ctx, circuit.scores, curve_points, n_edges=circuit.n_edges)
        rep["mib_curve"] = mib_curve(ctx, circuit.scores, circuit.n_edges)
    if "curve" in rep:
        rep["curve_area"] = curve_area(rep["curve"])
        rep["cpr"], rep["cmd"] = mib_areas(rep["mib_curve"])
    edge_truth = getattr(task, "edge_truth", None) if task is not None else None
    if edge_truth is not None:
        rep.update(_prefixed("edges", roc(circuit.scores, edge_truth)))
    if task is not None and task.ground_truth is not None and not isinstance(circuit, TransformerCircuit):
        rep.update(_prefixed("inputs", roc(input_scores(model, circuit.scores), task.ground_truth)))
    rep.update(truth_rep)
    return rep


def _normalize(empty: float, circuit: float, full: float) -> float | None:
    den = empty - full
    if den == 0 or not math.isfinite(den):
        return None
    return (empty - circuit) / den


def _task_scores(model, ctx, out, empty, labels, task) -> dict:
    if labels is None:
        return {}
    y_model = model.readout(ctx.target)
    outs = {"circuit": model.readout(out), "model": y_model, "empty": model.readout(empty)}
    labels = torch.as_tensor(labels).to(ctx.device)
    classification = (task.kind == "classification") if task is not None else not labels.is_floating_point()
    res = {}
    if classification:
        labels = labels.long().reshape(-1)
        if labels.shape[0] != ctx.batch:
            raise ModcircuitError(f"labels have {labels.shape[0]} entries for {ctx.batch} examples")
        res["accuracy"] = (outs["circuit"].argmax(-1) == labels).double().mean().item()
        res["accuracy_model"] = (y_model.argmax(-1) == labels).double().mean().item()
        res["agreement"] = (outs["circuit"].argmax(-1) == y_model.argmax(-1)).double().mean().item()
        loss = {k: F.cross_entropy(v, labels).item() for k, v in outs.items()}
    else:
        labels = labels.to(ctx.dtype).reshape(y_model.shape) if labels.numel() == y_model.numel() else None
        if labels is None:
            raise ModcircuitError(f"labels do not fit the model's outputs {tuple(y_model.shape)}")
        loss = {k: F.mse_loss(v, labels).item() for k, v in outs.items()}
        res["task_mse"], res["task_mse_model"] = loss["circuit"], loss["model"]
    res["task_loss"], res["task_loss_model"], res["task_loss_empty"] = loss["circuit"], loss["model"], loss["empty"]
    res["task_faithfulness"] = _normalize(loss["empty"], loss["circuit"], loss["model"])
    return res


# ---- faithfulness curve -----------------------------------------------------------------------------
def edge_counts(n_edges: int, points: int) -> list[int]:
    """0 plus `points` log-spaced counts from 1 to n_edges (deduplicated)."""
    xs = np.unique(np.round(np.logspace(0, math.log10(max(n_edges, 1)), points)).astype(int))
    return [0] + [int(x) for x in xs if 1 <= x <= n_edges]


def faithfulness_curve(ctx, scores: list[torch.Tensor], points: int = 12, n_edges: int | None = None) -> dict:
    """Divergence and faithfulness of the top-n edges by score for log-spaced n. n_edges: how many entries
    are edges (default all; a transformer's score tensor also holds non-edges, NaN, which rank last)."""
    counts = edge_counts(n_edges if n_edges is not None else sum(s.numel() for s in scores), points)
    with torch.no_grad():
        d_e = ctx.metric(ctx.forward(ctx.full_masks(False))).item()
        divs = [ctx.metric(ctx.forward([m.to(ctx.device) for m in top_k_mask(scores, k)])).item() for k in counts]
    faith = [_normalize(d_e, d, 0.0) for d in divs]
    return {"edges": counts, "divergence": divs, "faithfulness": faith}


def curve_area(curve: dict) -> float | None:
    """Trapezoid area of faithfulness over log10(edges) (n >= 1), divided by the axis length."""
    xs = [math.log10(n) for n in curve["edges"] if n >= 1]
    ys = [f for n, f in zip(curve["edges"], curve["faithfulness"]) if n >= 1]
    if len(xs) < 2 or any(y is None for y in ys):
        return None
    area = sum((xs[k + 1] - xs[k]) * (ys[k + 1] + ys[k]) / 2 for k in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


# ---- MIB's CPR and CMD (Mueller et al. 2025, "MIB: a mechanistic interpretability benchmark") ---------
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def mib_edge_counts(n_edges: int) -> list[int]:
    """Edges kept at each MIB fraction: floor(p * n_edges) as MIB counts them, but at least one edge."""
    return [max(1, int(p * n_edges)) for p in MIB_FRACTIONS]


def mib_curve(ctx, scores: list[torch.Tensor], n_edges: int) -> dict:
    """Faithfulness (D_empty - D_circuit) / (D_empty - D_model) of the top-k edges by score at MIB's fractions
    (D the circuit's divergence to the model, so D_model = 0; equal to MIB's (m(C) - m(empty)) / (m(model) -
    m(empty)) with m = -D)."""
    counts = mib_edge_counts(n_edges)
    with torch.no_grad():
        d_e = ctx.metric(ctx.forward(ctx.full_masks(False))).item()
        divs = [ctx.metric(ctx.forward([m.to(ctx.device) for m in top_k_mask(scores, k)])).item() for k in counts]
    return {"fractions": list(MIB_FRACTIONS), "edges": counts,
            "faithfulness": [_normalize(d_e, d, 0.0) for d in divs]}


def mib_areas(curve: dict) -> tuple[float | None, float | None]:
    """(CPR, CMD) as MIB computes them: trapezoids over x = edges kept / all edges, from the first point to
    x = 1 (not from 0, and not divided by the axis length: a circuit faithful at every point scores
    CPR = 1 - x_0, 0.999 on graphs of 1000+ edges, and CMD = 0)."""
    n = curve["edges"][-1]
    xs = [k / n for k in curve["edges"]]
    fs = curve["faithfulness"]
    if any(f is None for f in fs):
        return None, None
    cpr = sum((xs[i + 1] - xs[i]) * (fs[i] + fs[i + 1]) / 2 for i in range(len(xs) - 1))
    cmd = sum((xs[i + 1] - xs[i]) * (abs(1 - fs[i]) + abs(1 - fs[i + 1])) / 2 for i in range(len(xs) - 1))
    return cpr, cmd


# ---- ground truth -----------------------------------------------------------------------------------
def roc(scores, truth) -> dict:
    """ROC curve and AUC of scores against bool truth (lists of tensors or tensors; NaN scores lowest)."""
    if isinstance(scores, (list, tuple)):
        s = torch.cat([x.reshape(-1).double() for x in scores])
        t = torch.cat([x.reshape(-1).bool() for x in truth])
    else:
        s, t = scores.reshape(-1).double(), truth.reshape(-1).bool()
    if s.shape != t.shape:
        raise ModcircuitError(f"{s.numel()} scores for {t.numel()} ground-truth entries")
    finite = torch.isfinite(s)
    lo = s[finite].min().item() - 1 if finite.any() else 0.0
    hi = s[finite].max().item() + 1 if finite.any() else 0.0
    s = torch.nan_to_num(s, nan=lo, posinf=hi, neginf=lo)
    t_np, s_np = t.numpy(), s.numpy()
    if t_np.all() or not t_np.any():
        return {"auc": None, "roc": None}
    fpr, tpr, _ = roc_curve(t_np, s_np)
    return {"auc": float(roc_auc_score(t_np, s_np)), "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}


def _prefixed(name: str, r: dict) -> dict:
    return {f"auc_{name}": r["auc"], f"roc_{name}": r["roc"]}


def input_scores(model, scores: list[torch.Tensor]) -> torch.Tensor:
    """[n_outputs, n_features] path flow from each input feature to each output, in original order."""
    model = as_mlp(model)
    flow = None
    for s in scores:
        s = torch.nan_to_num(s.double(), nan=0.0).clamp_min(0)
        flow = s if flow is None else s @ flow
    out = torch.empty_like(flow)
    out[model.out_perm.cpu()[:, None], model.in_perm.cpu()[None, :]] = flow
    return out
