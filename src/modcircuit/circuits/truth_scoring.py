"""Scoring a head-level transformer circuit against a known truth (circuits/truth.py's HeadTruth).

Two protocols, side by side, both over the edges of the head-level graph only (entries of the
[n_dest, n_src] tensors that are no edge are left out, not counted as negatives):

Ours, threshold-free ROC (`head_truth_scores`): every edge is ranked by the circuit's score (higher = more
important, NaN lowest) and sklearn's roc_curve/roc_auc_score sweep every threshold, from (0, 0) to (1, 1),
ties counted as half. The circuit's kept mask plays no part; only the scores do. Two layouts:
  auc_heads_qkv     q/k/v apart: a head's q, k and v inputs are separate edges (circuits found with
                    split_qkv only). A method that finds the right head through the wrong input scores
                    low here.
  auc_heads_merged  q/k/v merged into whole heads: one edge source -> head. For a circuit found with q/k/v
                    apart, the merged score of source -> head is the MAX of its scores into the head's q, k
                    and v inputs (the head is as important as its most important input), and the merged
                    truth is true when any of the three is (HeadTruth.mask). A circuit found merged gets
                    only this one.

MIB's AUROC (`mib_auroc`), as the MIB benchmark computes its circuit-localization AUROC against
InterpBench (Mueller et al. 2025; read from their evaluation code, reimplemented here):
  1. at each edge fraction p in 0.1 %, 0.2 %, 0.5 %, 1 %, 2 %, 5 %, 10 %, 20 %, 50 %, 100 % take a budget
     of ceil(p * n_edges) edges (their loop adds an edge while the fractional budget is > 0);
  2. build a circuit of that budget greedily from the output back: the candidates are the edges into the
     output; the best-scored candidate joins, and when its source joins the circuit for the first time, the
     edges into that source (into any of a head's q/k/v inputs) become candidates too;
  3. prune: repeatedly drop every node without a kept incoming edge (the embedding always counts as fed)
     or without a kept outgoing edge (the output always stays), and every edge whose source or destination
     was dropped, until nothing changes;
  4. TPR = TP / (TP + FN) and FPR = FP / (FP + TN) of that pruned circuit against the truth;
  5. area: trapezoids over the ten (FPR, TPR) points in the order of p, with FPR divided by the last point's
     FPR, starting at the first point (no (0, 0) anchor).
It differs from our threshold-free ROC in that it scores ten circuits, not every threshold; that the
greedy build and the pruning keep only edges connected to the output and fed from the embedding, so a
high-scored edge whose source is never reached does not count; and that the area starts at the first
point, not at (0, 0). MIB ranks by |score|; here the scores are already importances (higher = more
important; ACDC's can be negative, meaning that removing the edge helped), so they rank as they are.
Ties rank by edge index (destination, then source), lower first. It is computed in the circuit's own
layout (q/k/v apart for a split circuit).

Where the truth comes from (`resolve_head_truth`): an explicit `truth`, else the model's `head_truth`
attribute, else the task's `head_truth_for(model)` when the task has that method (None: no truth for that
model, so no keys; an error it raises is evaluate's error).
"""
from __future__ import annotations

import functools
import heapq
import json
import math
from pathlib import Path

import torch

from ..errors import ModcircuitError
from .circuit import CircuitBase, TransformerCircuit
from .graph import TransformerGraph
from .truth import HeadTruth

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


# ---- where the truth comes from ---------------------------------------------------------------------
def as_head_truth(obj, source: str = "the ground truth") -> HeadTruth:
    """A HeadTruth as is, or one from its dict (to_dict's form)."""
    if isinstance(obj, HeadTruth):
        return obj
    if isinstance(obj, dict):
        try:
            return HeadTruth.from_dict(obj)
        except ModcircuitError as e:
            raise ModcircuitError(f"{source}: {e}") from None
    raise ModcircuitError(f"{source} is a {type(obj).__name__}; give a HeadTruth or its dict "
                          "(n_layers, n_heads, edges)")


def load_head_truth(path) -> HeadTruth:
    """A HeadTruth from its JSON file (HeadTruth.to_dict's form)."""
    path = Path(path)
    name = f"truth file {str(path)!r}"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModcircuitError(f"{name} does not exist") from None
    except IsADirectoryError:
        raise ModcircuitError(f"{name} is a folder; give a JSON file with n_layers, n_heads, edges") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModcircuitError(f"{name} is not valid JSON: {e}") from None
    except OSError as e:
        raise ModcircuitError(f"{name} cannot be read: {e.strerror or e}") from None
    return as_head_truth(d, name)


def resolve_head_truth(model, task, truth=None) -> HeadTruth | None:
    """The truth to score against: `truth` (a HeadTruth, its dict or a JSON path), else
    `model.head_truth`, else `task.head_truth_for(model)` if the task has that method; None if none."""
    if truth is not None:
        return load_head_truth(truth) if isinstance(truth, (str, Path)) else as_head_truth(truth)
    stored = getattr(model, "head_truth", None)
    if stored is not None:
        return as_head_truth(stored, "the model's stored head_truth")
    head_truth_for = getattr(task, "head_truth_for", None) if task is not None else None
    if callable(head_truth_for):
        found = head_truth_for(model)
        if found is not None:
            return as_head_truth(found, f"task {getattr(task, 'name', '?')}'s head_truth_for")
    return None


def truth_report(model, task, circuit: CircuitBase, truth=None, require_truth: bool = False) -> dict:
    """evaluate's ground-truth keys for a transformer circuit ({} when there is no truth and none is
    required). One-line errors: a truth for an MLP's circuit, no truth when required, a truth of another size."""
    if not isinstance(circuit, TransformerCircuit):
        if truth is not None:
            raise ModcircuitError("a head-level ground truth (--truth) applies to transformer circuits; this "
                                  "circuit is an MLP's")
        if require_truth:
            raise ModcircuitError("--require-truth: head-level ground truth applies to transformer circuits; "
                                  "this circuit is an MLP's")
        return {}
    found = resolve_head_truth(model, task, truth)
    if found is None:
        if require_truth:
            raise ModcircuitError("no head-level ground truth for this model: the model stores none and its task "
                                  "gives none; give one with --truth FILE (API: truth=HeadTruth)")
        return {}
    return head_truth_scores(circuit, found)


# ---- ours: threshold-free ROC -------------------------------------------------------------------------
def merged_scores(scores: torch.Tensor, graph: TransformerGraph) -> tuple[torch.Tensor, TransformerGraph]:
    """A q/k/v-apart [n_dest, n_src] score tensor in the merged layout: per (source, head) the max over the
    head's q, k and v inputs (NaN only where all three are NaN). A merged graph's scores come back as they are."""
    if not graph.split_qkv:
        return scores, graph
    mg = TransformerGraph(graph.n_layers, graph.n_heads, split_qkv=False)
    out = torch.full((mg.n_dest, mg.n_src), float("nan"), dtype=torch.float64)
    s = scores.double()
    for l in range(graph.n_layers):
        for h in range(graph.n_heads):
            rows = s[[graph.dest_attn(l, h, c) for c in range(3)]]
            best = torch.nan_to_num(rows, nan=-math.inf).amax(0)
            out[mg.dest_attn(l, h)] = torch.where(torch.isnan(rows).all(0), float("nan"), best)
        out[mg.dest_mlp(l)] = s[graph.dest_mlp(l)]
    out[mg.dest_out] = s[graph.dest_out]
    return out, mg


def edge_roc(scores: torch.Tensor, truth_mask: torch.Tensor, graph: TransformerGraph) -> dict:
    """Threshold-free ROC and AUC of the edges' scores against the truth (non-edges left out)."""
    from .metrics import roc

    allowed = graph.allowed
    return roc(scores.double()[allowed], truth_mask[allowed])


def head_truth_scores(circuit: TransformerCircuit, truth: HeadTruth) -> dict:
    """auc/roc in both layouts (q/k/v apart only for a split circuit), MIB's AUROC and its points, the truth's
    size in each layout and how it was obtained."""
    g = circuit.graph
    scores = circuit.scores[0]
    rep: dict = {"truth_rule": truth.rule or None}
    if g.split_qkv:
        t = truth.mask(g)
        r = edge_roc(scores, t, g)
        rep.update({"truth_edges_qkv": int(t.sum()), "auc_heads_qkv": r["auc"], "roc_heads_qkv": r["roc"]})
    ms, mg = merged_scores(scores, g)
    tm = truth.mask(mg)
    r = edge_roc(ms, tm, mg)
    rep.update({"truth_edges_merged": int(tm.sum()), "auc_heads_merged": r["auc"], "roc_heads_merged": r["roc"]})
    mib = mib_roc(scores, truth.mask(g), g)
    rep["mib_auroc"], rep["mib_roc"] = mib_area(mib), mib
    return rep


# ---- MIB's protocol -----------------------------------------------------------------------------------
def mib_budgets(n_edges: int) -> list[int]:
    """Edges MIB adds at each fraction: ceil(p * n_edges) (rounded first, so 0.1 * 30 is 3, not 4)."""
    return [math.ceil(round(p * n_edges, 9)) for p in MIB_FRACTIONS]


def greedy_order(scores: torch.Tensor, graph: TransformerGraph) -> list[tuple[int, int]]:
    """The order in which MIB's greedy build (step 2 of the module docstring) adds the edges, all of them:
    the circuit of budget b is the first b. (dest, source) pairs."""
    s = torch.nan_to_num(scores.double(), nan=-math.inf).tolist()  # (python floats: fast to index)
    into: dict[int, list[tuple[int, int]]] = {}  # node -> its incoming edges (k, s)
    for k in range(graph.n_dest):
        into.setdefault(graph.dest_node(k), []).extend((k, src) for src in range(graph.dest_n_src(k)))
    n_src = graph.n_src
    heap: list[tuple[float, int, int, int]] = []

    def add_candidates(node: int):
        for k, src in into.get(node, ()):
            heapq.heappush(heap, (-s[k][src], k * n_src + src, k, src))

    in_circuit = {n_src}  # the output node
    add_candidates(n_src)
    order = []
    while heap:
        _, _, k, src = heapq.heappop(heap)
        order.append((k, src))
        if src not in in_circuit:
            in_circuit.add(src)
            add_candidates(src)
    return order


def greedy_from_output(scores: torch.Tensor, graph: TransformerGraph, budget: int,
                       order: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """MIB's greedy circuit of `budget` edges: bool [n_dest, n_src] (`order`: greedy_order's, if known)."""
    order = greedy_order(scores, graph) if order is None else order
    keep = torch.zeros(graph.n_dest, graph.n_src, dtype=torch.bool)
    if budget > 0 and order:
        ks, ss = zip(*order[:budget])
        keep[list(ks), list(ss)] = True
    return keep


@functools.lru_cache(maxsize=16)
def _dest_nodes(n_layers: int, n_heads: int, split_qkv: bool) -> torch.Tensor:
    """The node each destination belongs to (a head's q/k/v inputs: the head), per graph shape."""
    g = TransformerGraph(n_layers, n_heads, split_qkv)
    return torch.tensor([g.dest_node(k) for k in range(g.n_dest)])


def prune(keep: torch.Tensor, graph: TransformerGraph) -> torch.Tensor:
    """MIB's pruning (step 3): drop nodes not fed or not read, and their edges, until nothing changes."""
    keep = keep.clone() & graph.allowed
    node_of_dest = _dest_nodes(graph.n_layers, graph.n_heads, graph.split_qkv)
    n_nodes = graph.n_src + 1
    while True:
        fed = torch.zeros(n_nodes, dtype=torch.bool)
        fed[node_of_dest[keep.any(1)]] = True
        fed[0] = True  # the embedding needs no input
        read = torch.zeros(n_nodes, dtype=torch.bool)
        read[: graph.n_src] = keep.any(0)
        alive = fed & read
        alive[graph.n_src] = True  # the output always stays
        new = keep & alive[: graph.n_src][None, :] & alive[node_of_dest][:, None]
        if torch.equal(new, keep):
            return keep
        keep = new


def mib_roc(scores: torch.Tensor, truth_mask: torch.Tensor, graph: TransformerGraph) -> dict:
    """MIB's ten points (steps 1-4): {fractions, budgets, kept (after pruning), tpr, fpr}; tpr/fpr None when
    the truth has no true or no false edge."""
    allowed = graph.allowed
    t = truth_mask & allowed
    pos, neg = int(t.sum()), int((allowed & ~t).sum())
    budgets = mib_budgets(graph.n_edges)
    order = greedy_order(scores, graph)  # each budget's circuit is a prefix of the one greedy order
    kept, tpr, fpr = [], [], []
    for b in budgets:
        c = prune(greedy_from_output(scores, graph, b, order), graph)
        kept.append(int(c.sum()))
        tpr.append(int((c & t).sum()) / pos if pos else None)
        fpr.append(int((c & ~t & allowed).sum()) / neg if neg else None)
    return {"fractions": list(MIB_FRACTIONS), "budgets": budgets, "kept": kept, "tpr": tpr, "fpr": fpr}


def mib_area(points: dict) -> float | None:
    """MIB's area (step 5): trapezoids over the points in order, x = FPR / last FPR, from the first point."""
    x, y = points["fpr"], points["tpr"]
    if any(v is None for v in x + y) or x[-1] == 0:
        return None
    xs = [v / x[-1] for v in x]
    return sum((xs[i + 1] - xs[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(xs) - 1))
