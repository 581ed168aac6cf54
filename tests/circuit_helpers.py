"""Small models and data shared by the circuit tests."""
from __future__ import annotations

import torch

from modcircuit.nn.mlp import MLP


def random_mlp(widths, activation="silu", seed=0, permute=False, scale=1.5):
    torch.manual_seed(seed)
    model = MLP(widths, activation)
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_(scale * (lin.in_features ** 0.5) / 1.0)
            lin.bias.uniform_(-0.3, 0.3)
        if permute:
            model.in_perm.copy_(torch.randperm(widths[0]))
            model.out_perm.copy_(torch.randperm(widths[-1]))
    return model


def pairs(n_in, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(n, n_in, generator=g) * 2 - 1
    corrupt = clean[torch.randperm(n, generator=g)]
    return clean, corrupt


def train_quick(task, steps=300, seed=0, lr=5e-3):
    torch.manual_seed(seed)
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        task.loss_fn(model(task.x_train), task.y_train).backward()
        opt.step()
    return model
