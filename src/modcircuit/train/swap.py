"""BIMT relocation: swap neurons of a layer to lower the connection cost without changing the function.

One mechanism does every kind of swap: `permute_` reorders a parameter (or buffer) along one
dimension *and* the optimizer state attached to it. A swap of neuron positions i and j in neuron
layer l permutes the rows of the incoming weight and bias, the columns of the outgoing weight,
and the permutation buffer on the input (in_perm) or output (out_perm) layer. Layers with folds
(two-operand inputs) move position p in every fold together.

The search is closed-form: A[a, p] = distance cost of unit a's weights if it sat at position p, so
the cost change of exchanging i and j is A[i,j] + A[j,i] - A[i,i] - A[j,j], for all partners at once.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def permute_(tensor: torch.Tensor, dim: int, perm: torch.Tensor, optimizer=None) -> None:
    """tensor <- tensor.index_select(dim, perm), in place, and the same for its optimizer state."""
    tensor.copy_(tensor.index_select(dim, perm.to(tensor.device)))
    if optimizer is not None and tensor in optimizer.state:
        for value in optimizer.state[tensor].values():
            if torch.is_tensor(value) and value.shape == tensor.shape:
                value.copy_(value.index_select(dim, perm.to(value.device)))


def layer_permutation(model, layer: int, unit_perm: torch.Tensor) -> torch.Tensor:
    """Lift a permutation of the m units of a layer to its n = m * folds positions."""
    f = model.folds(layer)
    m = model.widths[layer] // f
    return torch.cat([unit_perm + k * m for k in range(f)])


def permute_layer(model, layer: int, unit_perm: torch.Tensor, optimizer=None) -> None:
    """Reorder the neurons of neuron layer `layer` so position p gets what was at unit_perm[p]."""
    perm = layer_permutation(model, layer, unit_perm.cpu())
    if layer > 0:
        lin = model.linears[layer - 1]
        permute_(lin.weight, 0, perm, optimizer)
        permute_(lin.bias, 0, perm, optimizer)
    else:
        permute_(model.in_perm, 0, perm)
    if layer < model.n_linears:
        permute_(model.linears[layer].weight, 1, perm, optimizer)
    else:
        permute_(model.out_perm, 0, perm)


def swap_neurons(model, layer: int, i: int, j: int, optimizer=None) -> None:
    m = model.widths[layer] // model.folds(layer)
    unit_perm = torch.arange(m)
    unit_perm[i], unit_perm[j] = j, i
    permute_layer(model, layer, unit_perm, optimizer)


def _fold_sum(t: torch.Tensor, dim: int, folds: int) -> torch.Tensor:
    """Sum the fold copies of a layer's neurons along `dim` (units are position p in every fold)."""
    return sum(t.chunk(folds, dim=dim)) if folds > 1 else t


@torch.no_grad()
def placement_cost(model, layer: int, weight_factor: float = 1.0, agg: str = "sum") -> torch.Tensor:
    """A[a, p]: connection cost (distance part) of unit a's weights if unit a sat at position p.

    Only the distance term depends on placement (l0 and bias terms move with the neuron), so this is
    all a swap can change. With agg='mean' each term is divided by its weight matrix's size, as in
    the cost itself."""
    f = model.folds(layer)
    m = model.widths[layer] // f
    dists = [d for _, _, d in model.cost_terms()]
    A = 0.0
    if layer > 0:  # incoming weights: rows of linear layer-1; D[p, k] from position p to source k
        w = model.linears[layer - 1].weight.abs().double()
        scale = 1.0 / w.numel() if agg == "mean" else 1.0
        A = A + scale * _fold_sum(w, 0, f) @ dists[layer - 1][:m].double().T
    if layer < model.n_linears:  # outgoing weights: columns of linear layer; D[k, p] from p to target k
        w = model.linears[layer].weight.abs().double()
        scale = 1.0 / w.numel() if agg == "mean" else 1.0
        A = A + scale * _fold_sum(w, 1, f).T @ dists[layer][:, :m].double()
    return weight_factor * A


def swap_deltas(A: torch.Tensor, unit: int) -> torch.Tensor:
    """delta[j] = cost change of exchanging `unit` with each unit j (0 for j == unit)."""
    diag = A.diagonal()
    return A[unit] + A[:, unit] - diag[unit] - diag


def unit_importance(model, layer: int) -> torch.Tensor:
    """sum |incoming W| + sum |outgoing W| per unit: BIMT swaps the top_k of these."""
    f = model.folds(layer)
    score = 0.0
    if layer > 0:
        lin = model.linears[layer - 1]
        score = score + _fold_sum(lin.weight.abs().sum(1), 0, f)
    if layer < model.n_linears:
        score = score + _fold_sum(model.linears[layer].weight.abs().sum(0), 0, f)
    return score


def swappable_layers(model, swap_inputs: bool = False, swap_outputs: bool = False) -> list[int]:
    layers = list(range(1, model.n_linears))
    if swap_inputs:
        layers.insert(0, 0)
    if swap_outputs:
        layers.append(model.n_linears)
    return layers


@torch.no_grad()
def relocate(model, top_k: int, weight_factor: float = 1.0, agg: str = "sum", optimizer=None,
             swap_inputs: bool = False, swap_outputs: bool = False) -> int:
    """One BIMT relocation pass; returns how many swaps were made."""
    if hasattr(model, "relocate"):  # models with their own swap kinds (transformers)
        return model.relocate(top_k=top_k, weight_factor=weight_factor, agg=agg, optimizer=optimizer)
    n_swaps = 0
    for layer in swappable_layers(model, swap_inputs, swap_outputs):
        A = placement_cost(model, layer, weight_factor, agg)
        m = A.shape[0]
        order = torch.argsort(unit_importance(model, layer), descending=True)[: min(top_k, m)]
        for unit in order.tolist():
            delta = swap_deltas(A, unit)
            best = int(torch.argmin(delta))
            if delta[best] < 0:
                swap_neurons(model, layer, unit, best, optimizer)
                A[[unit, best]] = A[[best, unit]]  # the two units' weights changed places; positions did not
                n_swaps += 1
    return n_swaps
