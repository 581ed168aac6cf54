"""`discover`: one entry point for every method, returning a Circuit."""
from __future__ import annotations

import inspect
import time

import torch

from ..errors import ModcircuitError
from ..limits import check_int
from ..nn.fingerprint import model_fingerprint
from ..tasks.base import Task
from .circuit import Circuit
from .inputs import check_labels, n_outputs
from .kinds import graph_kind
from .methods import get_method
from .patching import check_choice, check_dtype, check_threshold


def task_metric(task: Task) -> str:
    """KL compares softmax distributions, which is meaningful only when the outputs are logits (a
    cross-entropy task). Regression and MSE-to-one-hot tasks (MNIST as in BIMT) compare outputs by MSE."""
    return "kl" if task.loss == "ce" else "mse"


def resolve_data(model, data, corrupt=None, labels=None, *, split: str = "test", n: int | None = None,
                 seed: int | None = None):
    """(clean, corrupt, labels, task) from a Task, a (clean, corrupt[, labels]) tuple, a dict/npz-like
    mapping with 'clean'/'corrupt'[/'labels'], or clean and corrupt given separately."""
    task = None
    if isinstance(data, Task):
        task = data
        if corrupt is not None:
            raise ModcircuitError("give either a task or clean and corrupt inputs, not both")
        clean, corrupt, labels = task.patching_pairs(split, n, seed)
    elif isinstance(data, dict):
        if "clean" not in data:
            raise ModcircuitError(f"data has keys {sorted(data)}; it needs 'clean' and 'corrupt' (optional 'labels')")
        clean, corrupt, labels = data["clean"], data.get("corrupt"), data.get("labels")
    elif isinstance(data, (tuple, list)) and corrupt is None and len(data) in (2, 3):
        clean, corrupt = data[0], data[1]
        labels = data[2] if len(data) == 3 else labels
    else:
        clean = data
    if labels is not None:
        n = len(clean) if hasattr(clean, "__len__") else 0
        labels = check_labels(labels, n, task.kind if task is not None else None, n_outputs(model))
    return clean, corrupt, labels, task


def check_top_k(top_k, n_edges: int) -> int:
    """top_k keeps that many edges: 1..n_edges (the whole graph is n_edges)."""
    return check_int("top_k", top_k, 1, n_edges)


def discover(model, data, corrupt=None, *, method: str = "acdc", threshold: float = 0.01, metric: str | None = None,
             ablation: str = "resample", labels=None, top_k: int | None = None, split: str = "test",
             examples: int | None = None, data_seed: int | None = None, progress=None, dtype=torch.float64,
             positions=None, **options) -> Circuit | list[Circuit]:
    """Find the circuit of `model` on clean inputs (vs corrupt ones for resample ablation).

        discover(model, clean, corrupt, method="acdc", threshold=0.01, metric="kl", ablation="resample")
        discover(model, task, method="eap")   # clean/corrupt from task.patching_pairs(split, examples, data_seed)

    metric: "kl" (KL(model || circuit), batchmean) or "mse" (to the model's outputs); default: the task's
    (kl for classification, mse for regression), "kl" for raw data. Score-only methods keep the edges whose
    score is >= threshold, or the `top_k` best. The model's graph kind (kinds.py: an MLP's neuron graph, a
    GeometricTransformer's head-level graph, split_qkv=True for q/k/v inputs apart) picks the patch
    context and the method's implementation. dtype: precision of the patched runs, torch.float64 (default)
    or torch.float32 (or "float32"; faster, what auto-circuit uses). positions (transformers): the output
    positions the metric averages over, "last" (default), "all", a list of indices or a bool mask [B, T]
    (positions.py). Extra keyword options go to the method.
    """
    kind = graph_kind(model)
    model = kind.prepare(model)
    fn = get_method(method, kind.name)
    dtype = check_dtype(dtype)
    threshold = check_threshold(threshold)
    clean, corrupt, labels, task = resolve_data(model, data, corrupt, labels, split=split, n=examples, seed=data_seed)
    if metric is None:
        metric = task_metric(task) if task is not None else "kl"
    check_choice(metric, ablation)
    graph_options = {k: options.pop(k) for k in kind.options if k in options}
    # the task's own positions (induction: the repeated half; tracr: every position after BOS)
    if positions is None and task is not None and kind.name != "mlp":
        default = task.metric_positions(clean)
        if not (isinstance(default, str) and default == "last"):
            positions = default
    if positions is not None:
        graph_options["positions"] = positions
    sizes = list(top_k) if isinstance(top_k, (list, tuple)) else None
    if sizes is not None and not sizes:
        raise ModcircuitError("top_k is an empty list; give one size or a list of sizes (1..the graph's edges)")
    if top_k is not None:
        n_edges = kind.n_edges(model, **graph_options)
        for k in sizes or [top_k]:
            check_top_k(k, n_edges)
    allowed = set(inspect.signature(fn).parameters) - {"ctx", "threshold"}
    bad = [k for k in options if k not in allowed]
    if bad:
        raise ModcircuitError(f"method {method!r} has no option {bad[0]!r}; allowed: "
                              f"{', '.join(sorted(allowed | set(kind.options))) or 'none'}")
    if progress is not None and "progress" in allowed:
        options["progress"] = progress
    t0 = time.perf_counter()
    ctx = kind.context(model, clean, corrupt, metric=metric, ablation=ablation, labels=labels, dtype=dtype,
                       **graph_options)
    res = fn(ctx, float(threshold), **options)
    seconds = time.perf_counter() - t0
    scores, mask, graph = kind.scores(ctx, res, method, task)
    edges = kind.edges(ctx)
    fingerprint = model_fingerprint(model)  # (once: it hashes every weight)
    circuits = []
    for k in sizes or [top_k]:
        if k is not None:
            keep = top_k_mask(scores, k)
        else:
            keep = mask if mask is not None else [s >= threshold for s in scores]
        if edges is not None:  # entries that are not edges are never kept
            keep = [m & e for m, e in zip(keep, edges)]
        extra = dict(res.extra)
        if k is not None:
            extra["top_k"] = k
        if task is not None:
            extra["task"] = task.name
        extra["examples"] = ctx.batch
        extra.setdefault("dtype", str(dtype).replace("torch.", ""))  # (a method may say it computed in another)
        common = dict(method=method, threshold=threshold, metric=metric, ablation=ablation, seconds=seconds,
                      forward_passes=int(res.forward_passes), extra=extra,
                      model_fingerprint=fingerprint)
        own = scores if not circuits else [s.clone() for s in scores]  # (circuits never share tensors)
        circuits.append(kind.circuit(ctx, graph, own, keep, common))
    return circuits if sizes is not None else circuits[0]


def top_k_mask(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """The k highest scores (NaN lowest; ties: lower flat index first)."""
    flat = torch.cat([s.reshape(-1) for s in scores]).to(torch.float64)
    flat = torch.nan_to_num(flat, nan=-float("inf"))
    order = torch.argsort(-flat, stable=True)
    keep = torch.zeros(len(flat), dtype=torch.bool)
    keep[order[:k]] = True
    out, i = [], 0
    for s in scores:
        out.append(keep[i:i + s.numel()].reshape(s.shape))
        i += s.numel()
    return out
