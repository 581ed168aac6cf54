"""Planted ground-truth networks: ReLU MLPs whose circuit is known by construction.

Each output k reads two inputs through two layer-1 and two layer-2 "circuit" neurons of its own; every
other hidden neuron is dead on all inputs in [-1, 1]^d (a bias more negative than any pre-activation it
can reach), so the edges into and out of dead neurons are inert under every ablation (their live and
ablated values are equal), however large their weights. Edges between circuit nodes of different outputs
and from unused inputs are zero, or, in `planted-distractor`, small distractor weights (+-distractor).
Edge-level truth: the planted circuit edges. Input-level truth: output k depends on its two inputs.
`task.build_model()` returns the planted network itself (nothing to train); y is its output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModcircuitError
from ..nn.mlp import MLP
from .base import Task, register_task


@dataclass
class PlantedTask(Task):
    edge_truth: list | None = None  # bool per Linear, shaped like its weight: the planted circuit
    planted: MLP | None = None

    def build_model(self, widths=None, activation=None) -> MLP:
        if (widths is None or list(widths) == self.widths) and activation in (None, self.activation):
            return self.planted.clone()
        return super().build_model(widths, activation)


def _bound(W, b, lo, hi):
    """Interval of W @ x + b for x in [lo, hi] (elementwise intervals)."""
    Wp, Wn = W.clamp_min(0), W.clamp_max(0)
    return Wp @ lo + Wn @ hi + b, Wp @ hi + Wn @ lo + b


def build_planted(seed: int = 0, widths=(6, 12, 12, 2), distractor: float = 0.0, per_output: int = 2):
    widths = [int(w) for w in widths]
    if len(widths) != 4:
        raise ModcircuitError(f"planted widths {widths} must have four layers (inputs, two hidden, outputs)")
    n_in, h1, h2, n_out = widths
    if n_in < 2 or h1 < per_output * n_out or h2 < per_output * n_out:
        raise ModcircuitError(
            f"planted widths {widths} are too small: need >= 2 inputs and >= {per_output * n_out} neurons per hidden layer")
    g = torch.Generator().manual_seed(seed)
    for _ in range(100):
        model, truth, inputs = _attempt(g, widths, distractor, per_output)
        x = torch.rand(2000, n_in, generator=g) * 2 - 1
        hs = model.layer_inputs(x)
        live = [truth[0].any(1), truth[1].any(1)]
        active = [(hs[l + 1][:, live[l]] > 0).float().mean(0) for l in range(2)]
        if all(bool((a > 0.25).all() and (a < 0.95).all()) for a in active):
            return model, truth, inputs
    raise ModcircuitError(f"could not plant a network for seed {seed}")


def _attempt(g, widths, distractor, per_output):
    n_in, h1, h2, n_out = widths

    def rnd(*s):
        return torch.rand(s, generator=g) if s else torch.rand((), generator=g)

    def signed(*s):
        sign = torch.where(rnd(*s) < 0.5, -1.0, 1.0)
        return sign * (0.5 + rnd(*s))

    perm_in = torch.randperm(n_in, generator=g)
    inputs = [[int(perm_in[(2 * k + t) % n_in]) for t in range(2)] for k in range(n_out)]
    c1 = torch.randperm(h1, generator=g)[: per_output * n_out].reshape(n_out, per_output)
    c2 = torch.randperm(h2, generator=g)[: per_output * n_out].reshape(n_out, per_output)
    W = [torch.zeros(h1, n_in), torch.zeros(h2, h1), torch.zeros(n_out, h2)]
    b = [torch.zeros(h1), torch.zeros(h2), torch.zeros(n_out)]
    truth = [torch.zeros(w.shape, dtype=torch.bool) for w in W]
    for k in range(n_out):
        for n in c1[k]:
            for i in inputs[k]:
                W[0][n, i] = signed()
                truth[0][n, i] = True
            b[0][n] = 0.6 * rnd() - 0.3
        for m in c2[k]:
            for n in c1[k]:
                W[1][m, n] = signed()
                truth[1][m, n] = True
            b[1][m] = 0.1 + 0.4 * rnd()
        for m in c2[k]:
            W[2][k, m] = signed()
            truth[2][k, m] = True
    circuit_rows = [torch.zeros(h1, dtype=torch.bool), torch.zeros(h2, dtype=torch.bool)]
    circuit_rows[0][c1.reshape(-1)] = True
    circuit_rows[1][c2.reshape(-1)] = True
    for l in range(3):
        if distractor:
            off = ~truth[l]
            if l < 2:
                off &= circuit_rows[l][:, None]  # rows of dead neurons get big weights below
            W[l][off] = distractor * torch.where(rnd(int(off.sum())) < 0.5, -1.0, 1.0)
        if l < 2:  # dead neurons: random weights from everything, bias below any reachable pre-activation
            dead = ~circuit_rows[l]
            W[l][dead] = torch.randn(int(dead.sum()), W[l].shape[1], generator=g)
        if l > 0:  # outgoing weights of dead neurons of the previous layer: random, inert (source is 0)
            dead_src = ~circuit_rows[l - 1]
            W[l][:, dead_src] = torch.randn(W[l].shape[0], int(dead_src.sum()), generator=g)
    lo, hi = -torch.ones(n_in), torch.ones(n_in)
    for l in range(2):
        dead = ~circuit_rows[l]
        zlo, zhi = _bound(W[l], b[l], lo, hi)
        b[l][dead] -= zhi[dead] + 1.0
        zlo, zhi = _bound(W[l], b[l], lo, hi)
        lo, hi = zlo.clamp_min(0), zhi.clamp_min(0)
    model = MLP(widths, "relu")
    with torch.no_grad():
        for lin, w, bb in zip(model.linears, W, b):
            lin.weight.copy_(w)
            lin.bias.copy_(bb)
    return model, truth, inputs


def _planted_task(name, seed, distractor, widths, n_train):
    model, truth, inputs = build_planted(seed, widths, distractor)
    g = torch.Generator().manual_seed(seed + 1)
    n_in = model.widths[0]
    x = torch.rand(2 * n_train, n_in, generator=g) * 2 - 1
    with torch.no_grad():
        y = model(x)
    gt = torch.zeros(model.widths[-1], n_in, dtype=torch.bool)
    for k, ins in enumerate(inputs):
        gt[k, ins] = True
    return PlantedTask(
        name=name, kind="regression", x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:],
        y_test=y[n_train:], widths=list(model.widths), loss="mse", activation="relu", ground_truth=gt,
        seed=seed, description="planted ReLU network with a known circuit", edge_truth=truth, planted=model,
        defaults=dict(steps=2000, lr=1e-3),
    )


@register_task("planted", "ReLU MLP with a planted circuit; other edges feed dead neurons (exactly inert)")
def planted(seed: int = 0, widths=(6, 12, 12, 2), n_train: int = 200) -> PlantedTask:
    return _planted_task("planted", seed, 0.0, widths, n_train)


@register_task("planted-distractor", "planted circuit plus small distractor weights between circuit nodes")
def planted_distractor(seed: int = 0, widths=(6, 12, 12, 2), n_train: int = 200,
                       distractor: float = 0.01) -> PlantedTask:
    return _planted_task("planted-distractor", seed, float(distractor), widths, n_train)
