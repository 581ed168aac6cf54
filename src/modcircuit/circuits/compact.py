"""Circuit -> a smaller dense MLP with the same outputs (zero or mean ablation only).

Every removed edge carries a constant (0 or the source's mean), so it folds into the receiver's bias. A
hidden neuron with no kept path from the inputs is a constant; it folds into the biases of the neurons it
feeds through kept edges. A hidden neuron with no kept path to an output is dropped. Inputs and outputs
keep their positions (and the model's permutations / embedding), so the compact model takes the same
inputs and returns outputs in the same order.
"""
from __future__ import annotations

import torch

from ..errors import ModcircuitError
from ..nn import geometry
from ..nn.mlp import MLP


def compact(model: MLP, circuit, allow_other_model: bool = False) -> MLP:
    circuit.check_model(model, allow_other_model)
    if circuit.ablation not in ("zero", "mean"):
        raise ModcircuitError(
            f"compact() needs ablation 'zero' or 'mean' (removed edges must carry a constant); this circuit uses {circuit.ablation!r}")
    if circuit.ablation == "mean" and circuit.means is None:
        raise ModcircuitError("this mean-ablation circuit has no stored mean activations; rediscover it")
    L = model.n_linears
    dt = torch.float64
    W = [lin.weight.detach().cpu().to(dt) for lin in model.linears]
    b = [lin.bias.detach().cpu().to(dt) for lin in model.linears]
    M = [m.cpu().to(dt) for m in circuit.mask]
    widths = model.widths
    consts = [torch.zeros(w, dtype=dt) for w in widths[:-1]] if circuit.ablation == "zero" else \
        [m.cpu().to(dt).reshape(-1) for m in circuit.means]
    Wk = [m * w for m, w in zip(M, W)]
    bk = [b[l] + ((1 - M[l]) * W[l]) @ consts[l] for l in range(L)]

    # reachable from the inputs through kept edges (dep) and reaching an output (used)
    dep = [torch.ones(widths[0], dtype=torch.bool)]
    for l in range(L):
        dep.append((circuit.mask[l].cpu() & dep[l][None, :]).any(1))
    used = [None] * (L + 1)
    used[L] = torch.ones(widths[L], dtype=torch.bool)
    for l in reversed(range(L)):
        used[l] = (circuit.mask[l].cpu() & used[l + 1][:, None]).any(0)
    keep = [torch.ones(widths[0], dtype=torch.bool)] + [dep[l] & used[l] for l in range(1, L)] + \
        [torch.ones(widths[L], dtype=torch.bool)]

    new_W, new_b = [], []
    value = torch.zeros(widths[0], dtype=dt)  # values of constant (non-dep) neurons of the current layer
    for l in range(L):
        const_src = ~dep[l]
        bias = bk[l] + Wk[l][:, const_src] @ value[const_src]
        if l + 1 < L:
            value = model.act(l + 1, bias)  # only read where the target is constant (no kept dep input)
        rows, cols = keep[l + 1], keep[l]
        new_W.append(Wk[l][rows][:, cols])
        new_b.append(bias[rows])

    new_widths = [int(k.sum()) for k in keep]
    for l in range(1, L):  # an empty hidden layer keeps one inert neuron (MLP widths must be positive)
        if new_widths[l] == 0:
            new_widths[l] = 1
            new_W[l - 1] = torch.zeros(1, new_W[l - 1].shape[1], dtype=dt)
            new_b[l - 1] = torch.zeros(1, dtype=dt)
            new_W[l] = torch.zeros(new_W[l].shape[0], 1, dtype=dt)
    layouts = [model.layouts[0]] + [geometry.default_layout(w) for w in new_widths[1:-1]] + [model.layouts[-1]]
    small = MLP(new_widths, model.activation_names, layouts, model.embedding_spec)
    p = next(model.parameters())
    with torch.no_grad():
        for lin, w, bb in zip(small.linears, new_W, new_b):
            lin.weight.copy_(w.to(lin.weight.dtype))
            lin.bias.copy_(bb.to(lin.bias.dtype))
        small.in_perm.copy_(model.in_perm)
        small.out_perm.copy_(model.out_perm)
        if model.embedding is not None:
            small.embedding.weight.copy_(model.embedding.weight)
    return small.to(device=p.device, dtype=p.dtype)
