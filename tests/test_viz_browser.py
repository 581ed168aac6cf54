"""The interactive HTML opens in headless Chromium without JavaScript errors, and renders the plot."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from browser import open_page, skip_without_chromium  # noqa: E402

import modcircuit as mc  # noqa: E402
from modcircuit.viz import interactive, save_figure  # noqa: E402

torch.set_num_threads(1)
pytestmark = skip_without_chromium()


def test_the_error_capture_sees_errors(tmp_path):
    """The detector itself: a page that logs an error, throws, and loads a missing script fails it."""
    page = tmp_path / "bad.html"
    page.write_text("<html><head><title>bad</title></head><body><p>x</p>"
                    "<script>console.error('boom'); throw new Error('bad thing');</script>"
                    "<script src='missing.js'></script></body></html>")
    errors = " | ".join(open_page(page).errors)
    assert "console.error: boom" in errors
    assert "bad thing" in errors
    assert "missing.js" in errors


def test_interactive_html_opens_without_console_errors(tmp_path):
    torch.manual_seed(0)
    model = mc.MLP([64, 20, 20, 10], layouts=[{"kind": "grid", "shape": [8, 8]}, {"kind": "line"},
                                              {"kind": "line"}, {"kind": "ring"}])
    mask = [torch.rand(lin.weight.shape) < 0.1 for lin in model.linears]
    scores = [torch.rand(lin.weight.shape) for lin in model.linears]
    circuit = type("C", (), {"mask": mask, "scores": scores})()
    path = save_figure(interactive(model, circuit, threshold=0.2, title="browser check"), tmp_path / "net.html")
    result = open_page(path)
    assert result.errors == []
    assert "main-svg" in result.dom  # plotly drew the figure
    assert "browser check" in result.dom
    assert "circuit only" in result.dom  # the toggle buttons are there
