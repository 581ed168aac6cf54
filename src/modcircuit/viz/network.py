"""BIMT-style network drawing with matplotlib: neurons as markers, one line per weight.

Line width is proportional to |w| normalized per layer; colour gives the sign (blue positive,
red negative). Lines below the threshold are not drawn, and the legend says so. With a circuit,
its edges are drawn strongly (by sign, or by score with `color_by_score`) and every other edge is
faded grey.

Every line collection carries a gid that names what it holds, so callers and tests can count the
drawn segments: "weights-<l>" (no circuit), "circuit-<l>" and "faded-<l>" (with a circuit), where
l is the linear layer; neuron markers are "neurons-<layer>".
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (drawings are written to files; never open a window)

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .scene import DEPTH, LAYER_GAP, SHEAR, Scene, build_scene, check_circuit_model, unpack_run

POSITIVE = "#1f5fbf"
NEGATIVE = "#d62728"
FADED = "#9a9a9a"
NEURON = "#222222"
SCORE_CMAP = "viridis"
MAX_LABELS = 40  # label every input/output neuron up to this many; beyond, only the layer is named


def sign_colors(weight: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    rgba = np.empty((len(weight), 4))
    rgba[:, :3] = np.where(weight[:, None] >= 0, mcolors.to_rgb(POSITIVE), mcolors.to_rgb(NEGATIVE))
    rgba[:, 3] = alpha
    return rgba


def marker_size(n: int) -> float:
    return float(np.clip(2500.0 / n, 2.0, 60.0))


def draw(
    model,
    circuit=None,
    *,
    ax=None,
    threshold: float = 0.05,
    relative: bool = True,
    color_by_score: bool = False,
    task=None,
    title: str | None = None,
    max_linewidth: float = 2.5,
    labels: bool = True,
    legend: bool = True,
    figsize: tuple[float, float] | None = None,
    allow_other_model: bool = False,
) -> Figure:
    """Draw `model` (an MLP or a Run; a GeometricTransformer is drawn at head level, see
    viz/transformer.py) and return the matplotlib Figure.

    threshold: lines with |w| <= threshold x (the layer's largest |w|) are not drawn (with
    relative=False, |w| <= threshold). circuit: anything with `.mask` (and `.scores`), one array
    per Linear shaped like its weight. task: gives input/output names (a Run brings its own).
    A modcircuit circuit found on another model is refused unless allow_other_model=True.
    """
    from .transformer import check_transformer_circuit, draw_transformer, is_transformer

    if is_transformer(model):  # head-level drawing (viz/transformer.py); weight thresholds do not apply
        check_transformer_circuit(circuit)
        return draw_transformer(model, circuit, ax=ax, title=title, color_by_score=color_by_score, figsize=figsize,
                                allow_other_model=allow_other_model)
    model, task, title = unpack_run(model, task, title)
    check_circuit_model(model, circuit, allow_other_model)
    scene = build_scene(model, circuit, threshold=threshold, relative=relative, task=task)
    own_figure = ax is None
    if own_figure:
        n_layers = len(scene.positions)
        fig = Figure(figsize=figsize or (8.0, 1.3 + 1.5 * n_layers))
        ax = fig.add_subplot(1, 1, 1)
        fig.subplots_adjust(left=0.02, right=0.98, top=0.95, bottom=0.1)
    else:
        fig = ax.figure
    score_norm = _score_norm(scene) if (color_by_score and scene.has_scores) else None
    _draw_edges(ax, scene, max_linewidth, score_norm)
    _draw_neurons(ax, scene)
    if labels:
        _draw_labels(ax, scene)
    _frame(ax, scene)
    if legend:
        _legend(ax, scene, score_norm)
    if score_norm is not None:
        sm = matplotlib.cm.ScalarMappable(norm=score_norm, cmap=SCORE_CMAP)
        fig.colorbar(sm, ax=ax, fraction=0.03, pad=0.01, label="circuit edge score")
    if title:
        ax.set_title(title)
        if own_figure:  # leave room for every line of the title
            height = fig.get_size_inches()[1]
            fig.subplots_adjust(top=1.0 - (0.2 + 0.25 * (str(title).count("\n") + 1)) / height)
    return fig


def _score_norm(scene: Scene):
    kept = [e.score[e.kept] for e in scene.edges if e.score is not None and e.kept.any()]
    vals = np.concatenate(kept) if kept else np.zeros(1)
    lo, hi = float(vals.min()), float(vals.max())
    return mcolors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-12)


def _segments(scene: Scene, e) -> np.ndarray:
    a = scene.positions[e.layer][e.src]
    b = scene.positions[e.layer + 1][e.dst]
    return np.stack([a, b], axis=1)


def _draw_edges(ax, scene: Scene, max_lw: float, score_norm) -> None:
    for e in scene.edges:
        seg = _segments(scene, e)
        widths = e.strength * max_lw
        if not scene.has_circuit:
            ax.add_collection(LineCollection(
                seg, linewidths=widths, colors=sign_colors(e.weight, 0.3 + 0.7 * e.strength),
                gid=f"weights-{e.layer}", zorder=1, capstyle="round"))
            continue
        faded, kept = ~e.kept, e.kept
        fcol = np.tile(mcolors.to_rgba(FADED, 0.25), (int(faded.sum()), 1))
        ax.add_collection(LineCollection(
            seg[faded], linewidths=widths[faded] * 0.7, colors=fcol, gid=f"faded-{e.layer}", zorder=1))
        if score_norm is not None:
            kcol = matplotlib.colormaps[SCORE_CMAP](score_norm(e.score[kept]))
        else:
            kcol = sign_colors(e.weight[kept], np.ones(int(kept.sum())))
        ax.add_collection(LineCollection(
            seg[kept], linewidths=np.maximum(widths[kept], 0.8), colors=kcol, gid=f"circuit-{e.layer}",
            zorder=2, capstyle="round"))


def _draw_neurons(ax, scene: Scene) -> None:
    for layer, pos in enumerate(scene.positions):
        if scene.has_circuit:
            on = scene.circuit_nodes[layer]
            colors = np.where(on[:, None], mcolors.to_rgba(NEURON), mcolors.to_rgba(FADED, 0.6))
        else:
            colors = np.tile(mcolors.to_rgba(NEURON), (len(pos), 1))
        ax.scatter(pos[:, 0], pos[:, 1], s=marker_size(len(pos)), c=colors, zorder=3, linewidths=0,
                   gid=f"neurons-{layer}")


def _draw_labels(ax, scene: Scene) -> None:
    n_layers = len(scene.positions)
    for layer, names, below in ((0, scene.input_labels, True), (n_layers - 1, scene.output_labels, False)):
        pos = scene.positions[layer]
        if len(pos) > MAX_LABELS:
            continue
        ring = scene.layer_kinds[layer] == "ring"
        rotate = 90 if (len(pos) > 12 and not ring) else 0
        for p, (name, (x, y)) in enumerate(zip(names, pos)):
            if ring:  # push the label outward from the ring's centre
                cx, cy = pos[:, 0].mean(), pos[:, 1].mean()
                dx, dy = x - cx, (y - cy) / DEPTH
                norm = max(np.hypot(dx, dy), 1e-9)
                x, y = x + 0.07 * dx / norm, y + 0.07 * dy / norm
                va = "center"
            else:
                y = y - 0.08 if below else y + 0.08
                va = "top" if below else "bottom"
            ax.text(x, y, name, ha="center", va=va, fontsize=8, rotation=rotate, zorder=4,
                    gid=f"{'input' if layer == 0 else 'output'}-label-{p}")
    for layer, name in enumerate(scene.layer_names):
        n = len(scene.positions[layer])
        ax.text(-0.12 - SHEAR / 2, layer * LAYER_GAP, f"{name}\n({n})", ha="right", va="center", fontsize=8,
                color="#555555")


def _frame(ax, scene: Scene) -> None:
    n_layers = len(scene.positions)
    ax.set_xlim(-0.45 - SHEAR / 2, 1.08 + SHEAR / 2)
    ax.set_ylim(-DEPTH / 2 - 0.2, (n_layers - 1) * LAYER_GAP + DEPTH / 2 + 0.3)
    ax.set_axis_off()


def _legend(ax, scene: Scene, score_norm) -> None:
    handles = []
    if scene.has_circuit:
        n_kept = int(sum(e.kept.sum() for e in scene.edges))
        if score_norm is None:
            handles.append(Line2D([], [], color=POSITIVE, lw=2, label="circuit edge, w > 0"))
            handles.append(Line2D([], [], color=NEGATIVE, lw=2, label="circuit edge, w < 0"))
        else:
            handles.append(Line2D([], [], color=matplotlib.colormaps[SCORE_CMAP](0.8), lw=2,
                                  label="circuit edge (colour = score)"))
        handles.append(Line2D([], [], color=FADED, alpha=0.5, lw=2, label="other edges"))
        handles.append(Line2D([], [], lw=0, label=f"{n_kept} circuit edges"))
    else:
        handles.append(Line2D([], [], color=POSITIVE, lw=2, label="w > 0"))
        handles.append(Line2D([], [], color=NEGATIVE, lw=2, label="w < 0"))
    handles.append(Line2D([], [], lw=0, label=f"{scene.n_drawn()} of {scene.n_weights} weights drawn"))
    handles.append(Line2D([], [], lw=0, label=scene.threshold_text()))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7, frameon=False,
              title="line width \u221d |w| / layer max |w|", title_fontsize=7)
