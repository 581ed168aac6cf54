"""Interactive network view: one self-contained plotly HTML file with hover, zoom and a circuit toggle.

Same picture as `network.draw` (same neuron positions, widths, colours, threshold). Plotly
cannot vary the width inside one line trace, so edges are grouped into a few width buckets per
sign; an invisible marker at every edge's midpoint carries the hover text (layer, source,
target, weight, score). With a circuit, three buttons switch between "circuit highlighted"
(the rest faded), "circuit only" and "all edges" (no highlight).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .network import FADED, NEGATIVE, NEURON, POSITIVE
from .scene import Scene, build_scene, check_circuit_model, unpack_run

N_BUCKETS = 5
MAX_EDGES = 30000  # beyond this the weakest non-circuit edges are left out (and the title says so)


def _neuron_name(scene: Scene, layer: int, p: int) -> str:
    if layer == 0:
        return f"input {scene.input_labels[p]} (position {p})"
    if layer == len(scene.positions) - 1:
        return f"output {scene.output_labels[p]} (position {p})"
    return f"{scene.layer_names[layer]}, neuron {p}"


def _limit(scene: Scene, max_edges: int) -> int:
    """Drop the weakest non-circuit edges until at most max_edges remain; returns how many were dropped."""
    total = scene.n_drawn()
    if total <= max_edges:
        return 0
    others = np.concatenate([e.strength[~e.kept] for e in scene.edges])
    n_keep_others = max(0, max_edges - int(sum(e.kept.sum() for e in scene.edges)))
    cut = np.sort(others)[::-1][n_keep_others - 1] if n_keep_others > 0 else np.inf
    for e in scene.edges:
        keep = e.kept | (e.strength >= cut)
        for name in ("src", "dst", "weight", "strength", "kept"):
            setattr(e, name, getattr(e, name)[keep])
        if e.score is not None:
            e.score = e.score[keep]
    return total - scene.n_drawn()


def _line_trace(scene: Scene, e, sel: np.ndarray, color: str, width: float, opacity: float, group: str,
                visible: bool) -> go.Scatter:
    a = scene.positions[e.layer][e.src[sel]]
    b = scene.positions[e.layer + 1][e.dst[sel]]
    k = len(a)
    xs = np.full(3 * k, np.nan)
    ys = np.full(3 * k, np.nan)
    xs[0::3], xs[1::3] = a[:, 0], b[:, 0]
    ys[0::3], ys[1::3] = a[:, 1], b[:, 1]
    return go.Scatter(
        x=xs, y=ys, mode="lines", line=dict(color=color, width=width), opacity=opacity, hoverinfo="skip",
        showlegend=False, visible=visible, connectgaps=False, meta=group, name=f"{group} layer {e.layer}",
    )


def _edge_traces(scene: Scene, e, which: np.ndarray, group: str, max_width: float, faded: bool,
                 visible: bool) -> list[go.Scatter]:
    traces = []
    bucket = np.minimum((e.strength * N_BUCKETS).astype(int), N_BUCKETS - 1)
    for positive, color in ((True, POSITIVE), (False, NEGATIVE)):
        for b in range(N_BUCKETS):
            sel = which & (bucket == b) & ((e.weight >= 0) == positive)
            if not sel.any():
                continue
            width = max_width * (b + 0.5) / N_BUCKETS
            if faded:
                traces.append(_line_trace(scene, e, sel, FADED, 0.7 * width, 0.3, group, visible))
            else:
                traces.append(_line_trace(scene, e, sel, color, max(width, 0.8 if group == "circuit" else 0.3),
                                          0.35 + 0.65 * (b + 0.5) / N_BUCKETS if group != "circuit" else 1.0,
                                          group, visible))
    return traces


def _hover_trace(scene: Scene, e, sel: np.ndarray, group: str, visible: bool) -> go.Scatter:
    a = scene.positions[e.layer][e.src[sel]]
    b = scene.positions[e.layer + 1][e.dst[sel]]
    mid = (a + b) / 2
    score = e.score[sel] if e.score is not None else np.full(int(sel.sum()), np.nan)
    text = [
        f"W{e.layer}[{j}, {i}]: {_neuron_name(scene, e.layer, i)} \u2192 {_neuron_name(scene, e.layer + 1, j)}"
        + (("<br>in circuit: " + ("yes" if kept else "no")) if scene.has_circuit else "")
        for i, j, kept in zip(e.src[sel], e.dst[sel], e.kept[sel])
    ]
    custom = np.stack([e.weight[sel], score], axis=1)
    template = "%{text}<br>weight %{customdata[0]:.4g}"
    if scene.has_scores:
        template += "<br>score %{customdata[1]:.4g}"
    return go.Scatter(
        x=mid[:, 0], y=mid[:, 1], mode="markers", marker=dict(size=7, color="rgba(0,0,0,0)"), text=text,
        customdata=custom, hovertemplate=template + "<extra></extra>", showlegend=False, visible=visible,
        meta=group, name=f"{group} layer {e.layer}",
    )


def _neuron_trace(scene: Scene, layer: int) -> go.Scatter:
    pos = scene.positions[layer]
    n = len(pos)
    size = float(np.clip(60.0 / np.sqrt(n), 3, 12))
    colors = [NEURON] * n
    if scene.has_circuit:
        colors = [NEURON if on else FADED for on in scene.circuit_nodes[layer]]
    return go.Scatter(
        x=pos[:, 0], y=pos[:, 1], mode="markers", marker=dict(size=size, color=colors),
        text=[_neuron_name(scene, layer, p) for p in range(n)], hovertemplate="%{text}<extra></extra>",
        showlegend=False, meta="neurons", name=scene.layer_names[layer],
    )


def _label_traces(scene: Scene) -> list[go.Scatter]:
    """Input and output names as text (through the permutation buffers), when there are few enough."""
    from .network import MAX_LABELS

    out = []
    last = len(scene.positions) - 1
    for layer, names, dy in ((0, scene.input_labels, -0.08), (last, scene.output_labels, 0.08)):
        pos = scene.positions[layer]
        if len(pos) <= MAX_LABELS:
            out.append(go.Scatter(x=pos[:, 0], y=pos[:, 1] + dy, mode="text", text=names, textposition="middle center",
                                  hoverinfo="skip", showlegend=False, meta="labels", name=f"{scene.layer_names[layer]} names"))
    return out


def interactive(
    model,
    circuit=None,
    *,
    threshold: float = 0.05,
    relative: bool = True,
    task=None,
    title: str | None = None,
    max_linewidth: float = 4.0,
    max_edges: int = MAX_EDGES,
    allow_other_model: bool = False,
) -> go.Figure:
    """A plotly Figure of the network (or Run): hover an edge's midpoint for its weight and score.
    A modcircuit circuit found on another model is refused unless allow_other_model=True."""
    model, task, title = unpack_run(model, task, title)
    check_circuit_model(model, circuit, allow_other_model)
    scene = build_scene(model, circuit, threshold=threshold, relative=relative, task=task)
    dropped = _limit(scene, max_edges)
    traces: list[go.Scatter] = []
    for e in scene.edges:
        if scene.has_circuit:
            traces += _edge_traces(scene, e, ~e.kept, "faded", max_linewidth, faded=True, visible=True)
            traces += _edge_traces(scene, e, ~e.kept, "others", max_linewidth, faded=False, visible=False)
            traces += _edge_traces(scene, e, e.kept, "circuit", max_linewidth, faded=False, visible=True)
        else:
            traces += _edge_traces(scene, e, np.ones(len(e.src), bool), "weights", max_linewidth, faded=False,
                                   visible=True)
    for e in scene.edges:
        if scene.has_circuit:
            traces.append(_hover_trace(scene, e, ~e.kept, "hover-others", True))
            traces.append(_hover_trace(scene, e, e.kept, "hover-circuit", True))
        else:
            traces.append(_hover_trace(scene, e, np.ones(len(e.src), bool), "hover-weights", True))
    traces += [_neuron_trace(scene, layer) for layer in range(len(scene.positions))]
    traces += _label_traces(scene)

    note = scene.threshold_text() + f"; {scene.n_drawn()} of {scene.n_weights} weights drawn"
    if dropped:
        note += f" ({dropped} weakest left out of this view)"
    fig = go.Figure(traces)
    fig.update_layout(
        title=dict(text=(f"{title}<br>" if title else "") + f"<sup>{note}</sup>"),
        xaxis=dict(visible=False), yaxis=dict(visible=False), plot_bgcolor="white", hovermode="closest",
        dragmode="zoom", height=int(250 + 180 * len(scene.positions)), margin=dict(l=20, r=20, t=80, b=60),
    )
    for layer, name in enumerate(scene.layer_names):
        fig.add_annotation(x=scene.positions[layer][:, 0].min() - 0.05, y=scene.positions[layer][:, 1].mean(),
                           text=name, showarrow=False, xanchor="right", font=dict(color="#555555", size=11))
    if scene.has_circuit:
        groups = [t.meta for t in traces]
        states = {
            "circuit highlighted": {"faded", "circuit", "hover-others", "hover-circuit", "neurons", "labels"},
            "circuit only": {"circuit", "hover-circuit", "neurons", "labels"},
            "all edges": {"others", "circuit", "hover-others", "hover-circuit", "neurons", "labels"},
        }
        buttons = [dict(label=label, method="restyle", args=[{"visible": [g in shown for g in groups]}])
                   for label, shown in states.items()]
        fig.update_layout(updatemenus=[dict(type="buttons", direction="right", buttons=buttons, x=0, y=-0.01,
                                            xanchor="left", yanchor="top", showactive=True)])
    return fig
