"""What a network drawing shows, independent of the renderer (matplotlib or plotly).

Neuron layers are stacked bottom (inputs) to top (outputs), one unit apart. Each layer is a
plane seen obliquely: a neuron at planar position (u, v) in [0,1]^2 is drawn at
    x = u + SHEAR * (v - 0.5),   y = layer + DEPTH * (v - 0.5)
1-D layers lie on the plane's middle line (v = 0.5); folded 1-D layers (the two operands of the
modular tasks) put each fold on its own row; 2-D grids (784 MNIST pixels, 10x10 hidden layers)
and rings (outputs) fill the plane, so a 28x28 input stays readable as an image in perspective.

An edge is one weight entry W[l][j, i] (source i in layer l, target j in layer l+1). The drawn
edges are those with |w| > threshold (times the layer's largest |w| when `relative`), plus every
edge of the overlaid circuit whatever its weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ModcircuitError

LAYER_GAP = 1.0
DEPTH = 0.5
SHEAR = 0.3


def check_threshold(threshold, relative: bool = True) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if not math.isfinite(t) or t < 0 or (relative and t > 1):
        allowed = "a number in [0, 1] (fraction of each layer's largest |w|)" if relative else "a number >= 0"
        raise ModcircuitError(f"threshold {threshold!r} is not valid; allowed: {allowed}")
    return t


def _check_model(model) -> None:
    if not all(hasattr(model, a) for a in ("widths", "linears", "layouts", "coords")):
        raise ModcircuitError(
            f"cannot draw a {type(model).__name__}: drawings need an MLP with neuron coordinates (modcircuit.MLP)"
        )


def planar_coords(model, layer: int) -> np.ndarray:
    """(n, 2) positions (u, v) of a layer's neurons on its plane, both in [0, 1]."""
    layout = model.layouts[layer]
    c = model.coords(layer).detach().cpu().double().numpy()
    n = len(c)
    if layout["kind"] == "line":
        folds = model.folds(layer)
        v = np.full(n, 0.5) if folds == 1 else np.repeat(np.arange(folds) / (folds - 1), n // folds)
        return np.stack([c[:, 0], v], axis=1)
    if layout["kind"] == "grid":  # image row 0 is the top: draw it on the far (upper) edge
        return np.stack([c[:, 0], 1.0 - c[:, 1]], axis=1)
    return c.copy()


def neuron_positions(model) -> list[np.ndarray]:
    """(n, 2) drawing coordinates of every neuron layer."""
    _check_model(model)
    out = []
    for layer in range(len(model.widths)):
        uv = planar_coords(model, layer)
        x = uv[:, 0] + SHEAR * (uv[:, 1] - 0.5)
        y = layer * LAYER_GAP + DEPTH * (uv[:, 1] - 0.5)
        out.append(np.stack([x, y], axis=1))
    return out


def circuit_arrays(circuit, model) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(masks, scores) of anything with `.mask` (and optionally `.scores`), checked against the model's weights."""
    if circuit is None:
        return None, None
    if not hasattr(circuit, "mask"):
        raise ModcircuitError(f"circuit of type {type(circuit).__name__} has no .mask; expected a modcircuit Circuit")
    masks = [np.asarray(torch.as_tensor(m).detach().cpu().numpy(), dtype=bool) for m in circuit.mask]
    raw_scores = getattr(circuit, "scores", None)
    scores = None
    if raw_scores is not None:
        scores = [np.asarray(torch.as_tensor(s).detach().cpu().double().numpy()) for s in raw_scores]
    shapes = [tuple(lin.weight.shape) for lin in model.linears]
    for name, arrays in (("mask", masks), ("scores", scores)):
        if arrays is None:
            continue
        got = [tuple(a.shape) for a in arrays]
        if got != shapes:
            raise ModcircuitError(f"circuit {name} shapes {got} do not match the model's weights {shapes}")
    return masks, scores


def _names(task, n_in: int, n_out: int) -> tuple[list[str], list[str]]:
    ins = list(getattr(task, "input_names", None) or [])
    outs = list(getattr(task, "output_names", None) or [])
    if len(ins) != n_in:
        ins = [f"x{i + 1}" for i in range(n_in)]
    if len(outs) != n_out:
        outs = [f"y{k}" for k in range(n_out)]
    return ins, outs


@dataclass
class LayerEdges:
    """The drawn edges of linear layer `layer`, one entry per edge."""

    layer: int
    src: np.ndarray  # index in neuron layer `layer`
    dst: np.ndarray  # index in neuron layer `layer + 1`
    weight: np.ndarray
    strength: np.ndarray  # |w| / largest |w| of the layer, in [0, 1]
    kept: np.ndarray  # in the circuit (all False without one)
    score: np.ndarray | None  # circuit score of the edge, when the circuit has scores


@dataclass
class Scene:
    positions: list[np.ndarray]
    edges: list[LayerEdges]
    input_labels: list[str]  # per input position, through in_perm
    output_labels: list[str]  # per output position, through out_perm
    layer_names: list[str]
    layer_kinds: list[str]
    threshold: float
    relative: bool
    has_circuit: bool
    has_scores: bool
    n_weights: int
    circuit_nodes: list[np.ndarray] = field(default_factory=list)  # bool per neuron: touched by a circuit edge

    def threshold_text(self) -> str:
        if self.relative:
            return f"not drawn: |w| \u2264 {self.threshold:g} \u00d7 layer max |w|"
        return f"not drawn: |w| \u2264 {self.threshold:g}"

    def n_drawn(self) -> int:
        return int(sum(len(e.src) for e in self.edges))


def build_scene(model, circuit=None, *, threshold: float = 0.05, relative: bool = True, task=None) -> Scene:
    _check_model(model)
    threshold = check_threshold(threshold, relative)
    masks, scores = circuit_arrays(circuit, model)
    positions = neuron_positions(model)
    edges = []
    for l, lin in enumerate(model.linears):
        w = lin.weight.detach().cpu().double().numpy()
        mag = np.abs(w)
        top = mag.max() if mag.size and mag.max() > 0 else 1.0
        strength = mag / top
        visible = (strength if relative else mag) > threshold
        kept = masks[l] if masks is not None else np.zeros_like(visible)
        dst, src = np.nonzero(visible | kept)
        edges.append(LayerEdges(
            layer=l, src=src, dst=dst, weight=w[dst, src], strength=strength[dst, src], kept=kept[dst, src],
            score=scores[l][dst, src] if scores is not None else None,
        ))
    in_names, out_names = _names(task, model.widths[0], model.widths[-1])
    in_perm = model.in_perm.detach().cpu().tolist()
    out_perm = model.out_perm.detach().cpu().tolist()
    n_layers = len(model.widths)
    circuit_nodes = []
    if masks is not None:
        touched = [np.zeros(w, dtype=bool) for w in model.widths]
        for l, m in enumerate(masks):
            touched[l] |= m.any(axis=0)
            touched[l + 1] |= m.any(axis=1)
        circuit_nodes = touched
    return Scene(
        positions=positions, edges=edges,
        input_labels=[in_names[f] for f in in_perm], output_labels=[out_names[k] for k in out_perm],
        layer_names=["inputs"] + [f"hidden {l}" for l in range(1, n_layers - 1)] + ["outputs"],
        layer_kinds=[layout["kind"] for layout in model.layouts],
        threshold=threshold, relative=relative, has_circuit=masks is not None, has_scores=scores is not None,
        n_weights=int(sum(lin.weight.numel() for lin in model.linears)), circuit_nodes=circuit_nodes,
    )


def check_circuit_model(model, circuit, allow_other_model: bool = False) -> None:
    """A modcircuit circuit must have been found on this model (its fingerprint), unless allow_other_model;
    anything else with a `.mask` is only checked for shapes (in build_scene)."""
    if circuit is not None and hasattr(circuit, "check_model"):
        circuit.check_model(model, allow_other_model)


def unpack_run(obj, task=None, title=None):
    """(model, task, title) from a model or a Run (which knows its task, regime and seed)."""
    if hasattr(obj, "model") and callable(getattr(obj, "task", None)):
        task = task if task is not None else obj.task()
        if title is None:
            title = f"{obj.task_name} \u00b7 {obj.regime} \u00b7 seed {obj.seed}"
        return obj.model, task, title
    if title is None and task is not None:
        title = getattr(task, "name", None)
    return obj, task, title
