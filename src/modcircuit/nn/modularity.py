"""How modular a trained MLP is, in numbers: which output's sub-network each neuron belongs to, and
what share of the |weight| mass crosses between sub-networks.

A hidden neuron belongs to the output its |weight| paths reach most strongly (influence propagated
backwards through |W|, each output's influence normalized to sum 1 per layer so large outputs do not
dominate). Inputs are assigned by the caller (e.g. a task's ground truth) or the same way.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def output_groups(model, input_groups: list[int] | None = None) -> list[torch.Tensor]:
    """Group index (an output, in original output order) per position of every neuron layer."""
    n_out = model.widths[-1]
    infl = torch.eye(n_out)[model.out_perm]  # (positions, outputs): position k computes output out_perm[k]
    groups = [infl.argmax(1)]
    for lin in reversed(model.linears):
        infl = lin.weight.detach().abs().cpu().T @ infl
        infl = infl / infl.sum(0, keepdim=True).clamp_min(1e-12)
        groups.insert(0, infl.argmax(1))
    if input_groups is not None:  # inputs given in original feature order; map through in_perm
        groups[0] = torch.as_tensor(input_groups)[model.in_perm.cpu()]
    return groups


@torch.no_grad()
def cross_module_share(model, input_groups: list[int] | None = None) -> float:
    """Share of total |W| on edges whose two ends belong to different output sub-networks."""
    groups = output_groups(model, input_groups)
    cross = total = 0.0
    for l, lin in enumerate(model.linears):
        w = lin.weight.detach().abs().cpu()
        differ = groups[l + 1][:, None] != groups[l][None, :]
        cross += float(w[differ].sum())
        total += float(w.sum())
    return cross / total if total else 0.0
