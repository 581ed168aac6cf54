"""Head-level drawing of a GeometricTransformer and its circuit, with matplotlib.

Nodes, bottom to top: the embedding, then per block its heads in a row and its MLP above them, then the
output. One curve per edge of the residual-stream graph (a source that writes before a destination
reads; with split_qkv an edge ends at the head's q, k or v input, drawn left, middle, right under it).
Curve width is the edge's weight magnitude |read @ write| (LayerNorm gains folded in) relative to the
largest. With a circuit its kept edges are drawn strongly (by magnitude, or coloured by score with
`color_by_score`) and every other edge faded grey, and nodes outside the circuit are hollow.

Line collections carry gids for callers and tests: "edges" (no circuit), "circuit" and "faded"; node
markers are "nodes".
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (drawings are written to files; never open a window)

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ..errors import ModcircuitError
from .scene import unpack_run

EDGE = "#1f5fbf"
FADED = "#9a9a9a"
NODE = "#222222"
SCORE_CMAP = "viridis"
QKV_OFFSET = 0.18  # where q, k and v inputs sit under a head (fraction of the head spacing)


def node_positions(graph) -> np.ndarray:
    """[n_src + 1, 2] (x, y) of embed, every head and MLP (source order), and the output."""
    H = graph.n_heads
    pos = np.zeros((graph.n_src + 1, 2))
    for l in range(graph.n_layers):
        for h in range(H):
            pos[graph.src_head(l, h)] = (h - (H - 1) / 2, 2 * l + 1)
        pos[graph.src_mlp(l)] = (0.0, 2 * l + 2)
    pos[graph.n_src] = (0.0, 2 * graph.n_layers + 1)
    return pos


def _curve(a: np.ndarray, b: np.ndarray, bend: float, n: int = 24) -> np.ndarray:
    """Points of a quadratic Bezier from a to b bowed sideways by `bend` (so edges that share a straight
    line, e.g. embed -> MLP -> output, stay apart)."""
    mid = (a + b) / 2
    d = b - a
    normal = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-12)
    ctrl = mid + bend * normal
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * ctrl + t ** 2 * b


def draw_transformer(model, circuit=None, *, ax=None, title: str | None = None, color_by_score: bool = False,
                     split_qkv: bool | None = None, max_linewidth: float = 3.0,
                     figsize: tuple[float, float] | None = None, allow_other_model: bool = False) -> Figure:
    """Draw a GeometricTransformer (or a Run of one) at head level, optionally with a TransformerCircuit.
    split_qkv: draw q/k/v inputs separately (default: as the circuit was found, else no). A circuit found
    on another model is refused unless allow_other_model=True."""
    from ..circuits.graph import TransformerGraph
    from ..circuits.methods.magnitude import weight_magnitudes

    model, _, title = unpack_run(model, None, title)
    if circuit is not None:
        circuit.check_model(model, allow_other_model)
        graph = circuit.graph
    else:
        graph = TransformerGraph.of(model, bool(split_qkv))
    mag = weight_magnitudes(model, graph).numpy()
    pos = node_positions(graph)
    H = graph.n_heads
    segs, strength, kept, score = [], [], [], []
    mask = circuit.mask[0].cpu().numpy() if circuit is not None else None
    scores = circuit.scores[0].cpu().double().numpy() if circuit is not None else None
    top = np.nanmax(mag) if np.isfinite(mag).any() else 1.0
    for k, s, _, _ in graph.edges():
        node = graph.dest_node(k)
        end = pos[node].copy()
        if graph.split_qkv and node != graph.n_src and k != graph.dest_mlp(graph.dest_layer(k)):
            c = (k - graph.dest_attn(graph.dest_layer(k), 0)) % 3
            end[0] += (c - 1) * QKV_OFFSET
        start = pos[s]
        span = end[1] - start[1]
        vertical = abs(end[0] - start[0]) < 1e-9 and span > 1.5  # e.g. embed -> MLP -> output: bow them apart
        bend = 0.12 * (s % 5 - 2) + (0.25 * span * (1 if node % 2 else -1) if vertical else 0.0)
        segs.append(_curve(start, end, bend))
        strength.append(mag[k, s] / top if top > 0 else 0.0)
        if circuit is not None:
            kept.append(bool(mask[k, s]))
            score.append(scores[k, s])
    segs, strength = np.array(segs), np.nan_to_num(np.array(strength))
    own = ax is None
    if own:
        fig = Figure(figsize=figsize or (max(5.0, 1.6 * H + 1.5), 1.2 + 1.5 * (2 * graph.n_layers + 1)))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    widths = 0.3 + strength * max_linewidth
    if circuit is None:
        ax.add_collection(LineCollection(segs, linewidths=widths, colors=[mcolors.to_rgba(EDGE, 0.25 + 0.6 * v)
                                                                         for v in strength], gid="edges", zorder=1))
        on = np.ones(graph.n_src + 1, dtype=bool)
    else:
        kept = np.array(kept, dtype=bool)
        ax.add_collection(LineCollection(segs[~kept], linewidths=widths[~kept] * 0.6,
                                         colors=[mcolors.to_rgba(FADED, 0.3)] * int((~kept).sum()), gid="faded",
                                         zorder=1))
        if color_by_score and kept.any():
            vals = np.nan_to_num(np.array(score)[kept])
            norm = mcolors.Normalize(vmin=vals.min(), vmax=vals.max() if vals.max() > vals.min() else vals.min() + 1e-12)
            colors = matplotlib.colormaps[SCORE_CMAP](norm(vals))
            fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=SCORE_CMAP), ax=ax, fraction=0.04, pad=0.01,
                         label="circuit edge score")
        else:
            colors = [mcolors.to_rgba(EDGE, 0.9)] * int(kept.sum())
        ax.add_collection(LineCollection(segs[kept], linewidths=np.maximum(widths[kept], 1.0), colors=colors,
                                         gid="circuit", zorder=2))
        on = graph.nodes_kept(circuit.mask[0]).numpy()
    face = [NODE if o else "white" for o in on]
    ax.scatter(pos[:, 0], pos[:, 1], s=900, c=face, edgecolors=NODE, linewidths=1.2, zorder=3, gid="nodes")
    for (x, y), name, o in zip(pos, graph.node_names(), on):
        ax.annotate(name, (x, y), ha="center", va="center", fontsize=6.5, color="white" if o else NODE, zorder=4)
    span = max(1.0, (H - 1) / 2)
    ax.set_xlim(-span - 0.8, span + 0.8)
    ax.set_ylim(-0.7, 2 * graph.n_layers + 1.7)
    ax.set_axis_off()
    if circuit is not None:
        ax.text(0.0, 1.0, f"circuit: {circuit.n_kept} of {circuit.n_edges} edges ({circuit.method})",
                transform=ax.transAxes, fontsize=8, va="top")
    if title:
        ax.set_title(title)
    return fig


def check_transformer_circuit(circuit) -> None:
    from ..circuits.circuit import TransformerCircuit

    if circuit is not None and not isinstance(circuit, TransformerCircuit):
        raise ModcircuitError(f"a transformer is drawn with a head-level TransformerCircuit, got {type(circuit).__name__}")


def is_transformer(model) -> bool:
    from ..nn.transformer import GeometricTransformer

    return isinstance(getattr(model, "model", model), GeometricTransformer)

