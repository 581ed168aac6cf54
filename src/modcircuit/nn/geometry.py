"""Neuron coordinates and distances.

Every neuron layer has a *layout* (a small JSON-able dict) from which its coordinates are derived:
  {"kind": "line", "folds": 1}        n neurons on [0,1] at (p+0.5)/m, the layout repeated per fold (m = n/folds)
  {"kind": "grid", "shape": [h, w]}   a 2-D grid on [0,1]^2 (images, or hidden layers of image models)
  {"kind": "ring"}                    on a circle of radius 0.5 around (0.5, 0.5) (BIMT's MNIST outputs)
Coordinates belong to *positions*, not to neurons: a swap moves weights between positions.
"""
from __future__ import annotations

import math

import torch

from ..errors import ModcircuitError

LAYOUT_KINDS = ("line", "grid", "ring")


def line(n: int, folds: int = 1) -> torch.Tensor:
    if n % folds:
        raise ModcircuitError(f"layer width {n} is not divisible by folds={folds}")
    m = n // folds
    x = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    x = x.repeat(folds)
    return torch.stack([x, torch.zeros_like(x)], dim=1)


def grid(h: int, w: int) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([(c.flatten() + 0.5) / w, (r.flatten() + 0.5) / h], dim=1)


def ring(n: int) -> torch.Tensor:
    a = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    return torch.stack([0.5 + 0.5 * torch.cos(a), 0.5 + 0.5 * torch.sin(a)], dim=1)


def check_layout(layout: dict, n: int) -> dict:
    kind = layout.get("kind")
    if kind not in LAYOUT_KINDS:
        raise ModcircuitError(f"unknown layout kind {kind!r}; allowed: {', '.join(LAYOUT_KINDS)}")
    if kind == "grid":
        h, w = layout["shape"]
        if h * w != n:
            raise ModcircuitError(f"grid layout {h}x{w} does not fit a layer of {n} neurons")
    if kind == "line" and n % int(layout.get("folds", 1)):
        raise ModcircuitError(f"layer width {n} is not divisible by folds={layout.get('folds')}")
    return layout


def coordinates(layout: dict, n: int) -> torch.Tensor:
    """(n, 2) float64 coordinates of the n positions of a layer."""
    check_layout(layout, n)
    kind = layout["kind"]
    if kind == "line":
        return line(n, int(layout.get("folds", 1)))
    if kind == "grid":
        return grid(*layout["shape"])
    return ring(n)


def folds(layout: dict) -> int:
    """How many copies of the layout a layer holds; a swap moves position p in every fold at once."""
    return int(layout.get("folds", 1)) if layout["kind"] == "line" else 1


def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 distance (|dx| + |dy|) between every row of a and every row of b: shape (len(a), len(b))."""
    return (a[:, None, :] - b[None, :, :]).abs().sum(-1)


def default_layout(n: int) -> dict:
    return {"kind": "line", "folds": 1}
