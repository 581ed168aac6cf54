"""The BIMT paper's symbolic regression tasks (Liu, Gan, Tegmark 2023), exact formulas."""
from __future__ import annotations

import math

import torch

from .base import Task, register_task

SYMBOLIC_DEFAULTS = dict(
    steps=20000, lr=2e-3, batch_size=None, lam=1e-3, lam_schedule=[[0.25, 10.0], [0.75, 1.0]],
    l0=0.1, weight_factor=1.0, agg="sum", top_k=5, swap_every=200,
)


def _uniform(seed: int, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2 * n, d, generator=g) * 2 - 1
    return x[:n], x[n:]


def _task(name, seed, d, f, widths, truth, n_train, desc):
    xtr, xte = _uniform(seed, n_train, d)
    return Task(
        name=name, kind="regression", x_train=xtr, y_train=f(xtr), x_test=xte, y_test=f(xte),
        widths=widths, loss="mse", ground_truth=torch.tensor(truth, dtype=torch.bool),
        defaults=dict(SYMBOLIC_DEFAULTS), seed=seed, description=desc,
    )


@register_task("symbolic-independence", "y=[(x1+x3)^3, x2^2+sin(pi x4)], MLP [4,20,20,2], MSE")
def symbolic_independence(seed: int = 0, n_train: int = 100) -> Task:
    def f(x):
        return torch.stack([(x[:, 0] + x[:, 2]) ** 3, x[:, 1] ** 2 + torch.sin(math.pi * x[:, 3])], 1)

    truth = [[1, 0, 1, 0], [0, 1, 0, 1]]
    return _task("symbolic-independence", seed, 4, f, [4, 20, 20, 2], truth, n_train, "two independent formulas")


@register_task("symbolic-sharing", "y=[x1^2, x1^2+x2^2, x1^2+x2^2+x3^2], MLP [3,20,20,3], MSE")
def symbolic_sharing(seed: int = 0, n_train: int = 100) -> Task:
    def f(x):
        s = torch.cumsum(x**2, dim=1)
        return s

    truth = [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    return _task("symbolic-sharing", seed, 3, f, [3, 20, 20, 3], truth, n_train, "outputs share x1^2")


@register_task("symbolic-composition", "y=sqrt((x1-x2)^2+(x3-x4)^2), MLP [4,20,20,20,20,1], MSE")
def symbolic_composition(seed: int = 0, n_train: int = 100) -> Task:
    def f(x):
        return torch.sqrt((x[:, 0] - x[:, 1]) ** 2 + (x[:, 2] - x[:, 3]) ** 2)[:, None]

    truth = [[1, 1, 1, 1]]
    return _task("symbolic-composition", seed, 4, f, [4, 20, 20, 20, 20, 1], truth, n_train, "a composed formula")
