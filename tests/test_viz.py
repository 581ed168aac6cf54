"""Network drawings, circuit overlay, interactive view, animation, report plots, output formats, `draw` CLI."""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib import colors as mcolors
from PIL import Image

import modcircuit as mc
from modcircuit.errors import ModcircuitError
from modcircuit.viz import (Recorder, compute_bars, draw, faithfulness_curves, interactive, roc_curves, save_figure,
                            training_curves)
from modcircuit.viz.network import NEGATIVE, POSITIVE
from modcircuit.viz.scene import neuron_positions

torch.set_num_threads(1)


def small_model(seed: int = 0) -> mc.MLP:
    torch.manual_seed(seed)
    m = mc.MLP([3, 5, 4, 2])
    with torch.no_grad():
        m.linears[0].weight[0, 0] = 0.0  # an exact zero: never drawn, whatever the threshold
    return m


@dataclass
class FakeCircuit:
    mask: list
    scores: list | None = None


def random_circuit(model, p: float = 0.3, seed: int = 1) -> FakeCircuit:
    g = torch.Generator().manual_seed(seed)
    mask = [torch.rand(lin.weight.shape, generator=g) < p for lin in model.linears]
    scores = [torch.rand(lin.weight.shape, generator=g) for lin in model.linears]
    return FakeCircuit(mask, scores)


def collections(fig, kind: str) -> dict[int, object]:
    """{linear layer: LineCollection} for gids "<kind>-<l>"."""
    out = {}
    for c in fig.axes[0].collections:
        gid = c.get_gid() or ""
        if gid.startswith(kind + "-"):
            out[int(gid.split("-")[1])] = c
    return out


def segment_edges(model, layer: int, coll) -> list[tuple[int, int]]:
    """(target j, source i) of each drawn segment, found from its endpoints' neuron positions."""
    pos = neuron_positions(model)
    out = []
    for seg in coll.get_segments():
        i = int(np.argmin(np.abs(pos[layer] - seg[0]).sum(1)))
        j = int(np.argmin(np.abs(pos[layer + 1] - seg[1]).sum(1)))
        assert np.allclose(pos[layer][i], seg[0]) and np.allclose(pos[layer + 1][j], seg[1])
        out.append((j, i))
    return out


def strength(model, layer: int) -> np.ndarray:
    w = model.linears[layer].weight.detach().abs().double().numpy()
    return w / w.max()


# ---- drawing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_segment_count_is_number_of_weights_above_threshold(threshold):
    m = small_model()
    fig = draw(m, threshold=threshold)
    colls = collections(fig, "weights")
    assert sorted(colls) == [0, 1, 2]
    for l, coll in colls.items():
        expected = int((strength(m, l) > threshold).sum())
        assert len(coll.get_segments()) == expected
        assert set(segment_edges(m, l, coll)) == set(zip(*np.nonzero(strength(m, l) > threshold)))
    assert (0, 0) not in segment_edges(m, 0, colls[0])


def test_absolute_threshold_counts_weights_in_weight_units():
    m = small_model()
    fig = draw(m, threshold=0.2, relative=False)
    for l, coll in collections(fig, "weights").items():
        assert len(coll.get_segments()) == int((m.linears[l].weight.abs() > 0.2).sum())


def test_colours_follow_sign_and_width_follows_magnitude():
    m = small_model()
    fig = draw(m, threshold=0.0, max_linewidth=3.0)
    seen = set()
    for l, coll in collections(fig, "weights").items():
        w = m.linears[l].weight.detach().numpy()
        s = strength(m, l)
        for (j, i), rgba, lw in zip(segment_edges(m, l, coll), coll.get_colors(), coll.get_linewidths()):
            expected = POSITIVE if w[j, i] >= 0 else NEGATIVE
            assert np.allclose(rgba[:3], mcolors.to_rgb(expected)), (l, j, i, w[j, i])
            assert lw == pytest.approx(3.0 * s[j, i])
            seen.add(w[j, i] >= 0)
    assert seen == {True, False}


def test_threshold_is_stated_in_the_legend():
    fig = draw(small_model(), threshold=0.25)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("0.25" in t and "not drawn" in t for t in texts)


def test_overlay_draws_exactly_the_circuit_edges_strongly():
    m = small_model()
    with torch.no_grad():
        m.linears[1].weight[2, 3] = 1e-6  # a circuit edge far below the threshold is still drawn
    circ = random_circuit(m)
    circ.mask[1][2, 3] = True
    fig = draw(m, circ, threshold=0.3)
    strong, faded = collections(fig, "circuit"), collections(fig, "faded")
    assert not collections(fig, "weights")
    for l in range(3):
        kept = circ.mask[l].numpy()
        assert sorted(segment_edges(m, l, strong[l])) == sorted(zip(*np.nonzero(kept)))
        assert sorted(segment_edges(m, l, faded[l])) == sorted(zip(*np.nonzero(~kept & (strength(m, l) > 0.3))))
        assert np.all(strong[l].get_colors()[:, 3] == 1.0)
        if len(faded[l].get_segments()):
            assert np.all(faded[l].get_colors()[:, 3] < 0.5)
        assert np.all(np.asarray(strong[l].get_linewidths()) >= 0.8)
        assert strong[l].get_zorder() > faded[l].get_zorder()


def test_overlay_colour_by_score_uses_the_colormap():
    m = small_model()
    circ = random_circuit(m, p=0.5)
    fig = draw(m, circ, color_by_score=True)
    kept_scores = np.concatenate([circ.scores[l].numpy()[circ.mask[l].numpy()] for l in range(3)])
    lo, hi = kept_scores.min(), kept_scores.max()
    cmap = matplotlib.colormaps["viridis"]
    for l, coll in collections(fig, "circuit").items():
        for (j, i), rgba in zip(segment_edges(m, l, coll), coll.get_colors()):
            assert np.allclose(rgba, cmap((circ.scores[l][j, i].item() - lo) / (hi - lo)))
    assert len(fig.axes) == 2  # the colorbar


def test_labels_go_through_the_permutation_buffers():
    m = small_model()
    m.in_perm.copy_(torch.tensor([2, 0, 1]))
    m.out_perm.copy_(torch.tensor([1, 0]))
    task = SimpleNamespace(input_names=["a", "b", "c"], output_names=["left", "right"], name="stub")
    fig = draw(m, task=task)
    labels = {t.get_gid(): t.get_text() for t in fig.axes[0].texts if t.get_gid()}
    assert [labels[f"input-label-{p}"] for p in range(3)] == ["c", "a", "b"]
    assert [labels[f"output-label-{k}"] for k in range(2)] == ["right", "left"]


def test_grid_and_folded_layers_have_distinct_readable_positions():
    grid = mc.MLP([784, 16, 10], layouts=[{"kind": "grid", "shape": [28, 28]}, {"kind": "line"}, {"kind": "ring"}])
    fig = draw(grid, threshold=0.5)
    for l, coll in collections(fig, "weights").items():
        assert len(coll.get_segments()) == int((strength(grid, l) > 0.5).sum())
    pos = neuron_positions(grid)
    assert len(np.unique(pos[0].round(9), axis=0)) == 784
    x0, x1 = fig.axes[0].get_xlim()
    y0, y1 = fig.axes[0].get_ylim()
    for p in pos:
        assert (p[:, 0] > x0).all() and (p[:, 0] < x1).all() and (p[:, 1] > y0).all() and (p[:, 1] < y1).all()
    folded = mc.MLP([8, 4, 3], layouts=[{"kind": "line", "folds": 2}, {"kind": "line"}, {"kind": "line"}])
    assert len(np.unique(neuron_positions(folded)[0].round(9), axis=0)) == 8


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "abc", 1.5])
def test_bad_threshold_is_a_clear_error(bad):
    with pytest.raises(ModcircuitError, match="threshold"):
        draw(small_model(), threshold=bad)


def test_circuit_of_the_wrong_shape_is_a_clear_error():
    m = small_model()
    with pytest.raises(ModcircuitError, match="shapes"):
        draw(m, FakeCircuit([torch.ones(2, 2, dtype=torch.bool)] * 3))


def test_draw_accepts_a_run_and_titles_it():
    run = mc.train("two-moons", regime="bimt", seed=0, steps=30)
    fig = draw(run)
    assert "two-moons" in fig.axes[0].get_title() and "bimt" in fig.axes[0].get_title()
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"x", "y", "moon 0", "moon 1"} <= texts


# ---- output formats ----------------------------------------------------------------------------
def test_each_format_writes_a_valid_file(tmp_path):
    m = small_model()
    fig = draw(m, random_circuit(m))
    png_path = save_figure(fig, tmp_path / "net.png")
    umask = os.umask(0)
    os.umask(umask)
    assert png_path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    png = png_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    root = ET.parse(save_figure(fig, tmp_path / "net.svg")).getroot()
    assert root.tag.endswith("svg")
    assert len(list(root.iter("{http://www.w3.org/2000/svg}path"))) > 10
    pdf = save_figure(fig, tmp_path / "net.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:]
    page = save_figure(fig, tmp_path / "static.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    ET.fromstring(page[page.index("<svg"): page.index("</svg>") + 6])
    html = save_figure(interactive(m), tmp_path / "net.html").read_text()
    assert "Plotly.newPlot" in html and "hover-weights" in html


def test_unknown_format_is_an_error_and_writes_nothing(tmp_path):
    fig = draw(small_model())
    for name in ("net.jpg", "net"):
        with pytest.raises(ModcircuitError, match=r"allowed: \.png, \.svg, \.pdf, \.html"):
            save_figure(fig, tmp_path / name)
    with pytest.raises(ModcircuitError, match="html"):
        save_figure(interactive(small_model()), tmp_path / "net.png")
    assert list(tmp_path.iterdir()) == []


# ---- interactive -------------------------------------------------------------------------------
def test_interactive_hover_points_are_the_drawn_edges_with_their_weights():
    m = small_model()
    fig = interactive(m, threshold=0.3)
    hover = [t for t in fig.data if t.meta == "hover-weights"]
    assert len(hover) == 3
    for l, t in enumerate(hover):
        s = strength(m, l)
        assert len(t.x) == int((s > 0.3).sum())
        w = m.linears[l].weight.detach().numpy()
        assert sorted(np.asarray(t.customdata)[:, 0]) == pytest.approx(sorted(w[s > 0.3]))


def test_interactive_circuit_toggle_buttons_switch_trace_visibility():
    m = small_model()
    circ = random_circuit(m)
    fig = interactive(m, circ, threshold=0.0)
    n_kept = sum(int(c.sum()) for c in circ.mask)
    assert sum(len(t.x) for t in fig.data if t.meta == "hover-circuit") == n_kept
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["circuit highlighted", "circuit only", "all edges"]
    only = buttons[1].args[0]["visible"]
    assert len(only) == len(fig.data)
    for t, visible in zip(fig.data, only):
        assert visible == (t.meta in {"circuit", "hover-circuit", "neurons", "labels"})


# ---- animation ---------------------------------------------------------------------------------
def test_animation_has_one_frame_per_callback(tmp_path):
    task = mc.get_task("two-moons")
    rec = Recorder(task, every=20)
    mc.train(task, regime="bimt", seed=0, steps=60, callback=rec, callback_every=rec.every)
    assert rec.steps == [1, 20, 40, 60]
    assert "step 40" in rec.titles[2] and "loss" in rec.titles[2] and "cost" in rec.titles[2]
    path = rec.save(tmp_path / "moons.gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 4
        frames = []
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB")))
    assert not np.array_equal(frames[0], frames[-1])


def test_animation_path_rules(tmp_path, monkeypatch):
    with pytest.raises(ModcircuitError, match=r"allowed: \.gif, \.mp4"):
        Recorder.for_path(tmp_path / "a.avi")
    assert Recorder.for_path(tmp_path / "a").path.suffix == ".gif"
    with pytest.raises(ModcircuitError, match="no animation frames"):
        Recorder(every=5).save(tmp_path / "empty.gif")
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ModcircuitError, match="ffmpeg"):
        Recorder.for_path(tmp_path / "a.mp4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(__import__("shutil").which("ffmpeg") is None, reason="MP4 output needs ffmpeg on PATH")
def test_mp4_when_ffmpeg_exists(tmp_path):
    rec = Recorder(every=1)
    m = small_model()
    for step in range(3):
        rec(step, m, {"loss": 1.0 / (step + 1), "cost": 2.0})
    data = rec.save(tmp_path / "a.mp4").read_bytes()
    assert data[4:8] == b"ftyp"


# ---- report plots ------------------------------------------------------------------------------
def _lines(fig, prefix):
    return [l for ax in fig.axes for l in ax.get_lines() if (l.get_gid() or "").startswith(prefix)]


def test_faithfulness_and_roc_curves():
    fig = faithfulness_curves({"acdc": {"edges": [1, 10, 100], "faithfulness": [0.1, 0.8, 1.0], "area": 0.6},
                               "random": ([1, 10, 100], [0.0, None, 0.9])})
    lines = _lines(fig, "faithfulness-")
    assert len(lines) == 2 and list(lines[0].get_xdata()) == [1, 10, 100]
    assert any("area 0.6" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    fig = roc_curves({"perfect": ([0, 0, 1], [0, 1, 1]), "chance-like": {"roc": {"fpr": [0, 1], "tpr": [0, 1]},
                                                                         "auc": None}})
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "perfect (AUC 1.000)" in legend and "chance-like (AUC 0.500)" in legend


def test_compute_bars_show_mean_and_95ci():
    fig = compute_bars({"train s": {"vanilla": [1.0, 1.2, 1.1], "bimt": [2.0, 2.2, 2.4]}, "latency ms": {"vanilla": 3.0}})
    assert len(fig.axes) == 2
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([1.1, 2.2])
    from scipy import stats

    err_lines = [c for c in fig.axes[0].collections]
    segs = err_lines[0].get_segments()
    half = (segs[1][1][1] - segs[1][0][1]) / 2
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * np.std([2.0, 2.2, 2.4], ddof=1) / math.sqrt(3))


def test_training_curves_from_history():
    runs = {r: mc.train("two-moons", regime=r, seed=0, steps=40, log_every=10) for r in ("vanilla", "bimt")}
    fig = training_curves(runs)
    for kind in ("loss", "cost", "test"):
        lines = _lines(fig, kind + "-")
        assert len(lines) == 2
        assert list(lines[1].get_xdata()) == [h["step"] for h in runs["bimt"].history]
    assert [l.get_ydata()[-1] for l in _lines(fig, "cost-")] == [h.history[-1]["cost"] for h in runs.values()]
    with pytest.raises(ModcircuitError):
        training_curves([1, 2, 3])


# ---- CLI ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs") / "moons"
    mc.train("two-moons", regime="bimt", seed=0, steps=30).save(d)
    return d


def test_draw_cli_writes_each_format(saved_run, tmp_path, capsys):
    from modcircuit.cli import main

    assert main(["draw", str(saved_run), "-o", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")
    assert main(["draw", str(saved_run), "--html", "-o", str(tmp_path / "a.html"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["interactive"] and out["format"] == "html" and out["edges_drawn"] > 0
    assert "Plotly.newPlot" in (tmp_path / "a.html").read_text()


def test_draw_cli_with_a_circuit_file(saved_run, tmp_path, capsys):
    Circuit = pytest.importorskip("modcircuit.circuits").Circuit
    model = mc.load(saved_run).model
    circ = random_circuit(model)
    Circuit(circ.scores, circ.mask, "manual", widths=list(model.widths)).save(tmp_path / "c.json")
    from modcircuit.cli import main

    assert main(["draw", str(saved_run), "--circuit", str(tmp_path / "c.json"), "-o", str(tmp_path / "c.svg"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["circuit_edges"] == sum(int(m.sum()) for m in circ.mask)
    ET.parse(tmp_path / "c.svg")


def test_draw_cli_bad_input_is_one_line_and_writes_nothing(saved_run, tmp_path, capsys):
    from modcircuit.cli import main

    for args in (["-o", str(tmp_path / "a.jpg")], ["--html", "-o", str(tmp_path / "a.png")],
                 ["--threshold", "-1", "-o", str(tmp_path / "b.png")]):
        assert main(["draw", str(saved_run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
