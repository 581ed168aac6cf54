"""What discovery and evaluation accept as a model, inputs and labels, checked before any patched run.

A NaN weight, a NaN/inf/1e300 input, float "tokens", an input of the wrong shape or a label out of
range all used to run to the end and print meaningless numbers. Each is refused here with one line
naming the array (or parameter), the first bad index and what is allowed.
"""
from __future__ import annotations

import torch

from ..errors import ModcircuitError
from ..limits import MAX_ABS_INPUT


def _index(t: torch.Tensor, bad: torch.Tensor) -> tuple[int, ...]:
    """The first index of t where bad is True (row-major)."""
    flat = int(torch.nonzero(bad.reshape(-1))[0])
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), t.shape)) if t.dim() else ()


def _shown(idx: tuple[int, ...]) -> str:
    return str(idx[0]) if len(idx) == 1 else str(idx)


def as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ModcircuitError(f"{what} is not an array of numbers: {str(e).splitlines()[0]}") from None


def check_parameters(model: torch.nn.Module) -> None:
    """Refuse a model with a NaN or infinite weight: every circuit found or scored on it would be NaN."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            bad = ~torch.isfinite(p)
            if bad.any():
                idx = _index(p, bad)
                raise ModcircuitError(
                    f"model parameter {name!r} holds {p[idx].item()} at index {_shown(idx)}; weights must be "
                    "finite (retrain, or restore the checkpoint)"
                )


def _check_values(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        idx = _index(x, bad)
        raise ModcircuitError(f"{what} holds {x[idx].item()} at index {_shown(idx)}; inputs must be finite numbers")
    big = x.abs() > MAX_ABS_INPUT
    if big.any():
        idx = _index(x, big)
        raise ModcircuitError(f"{what} holds {x[idx].item():g} at index {_shown(idx)}; inputs must lie within "
                              f"+-{MAX_ABS_INPUT:g}")


def _check_tokens(x: torch.Tensor, what: str, vocab: int, shape: str) -> None:
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise ModcircuitError(f"{what} has dtype {str(x.dtype).replace('torch.', '')}; this model takes token ids "
                              f"{shape}: integers in [0, {vocab})")
    bad = (x < 0) | (x >= vocab)
    if bad.any():
        idx = _index(x, bad)
        raise ModcircuitError(f"{what} holds token id {int(x[idx])} at index {_shown(idx)}; token ids must lie "
                              f"in [0, {vocab})")


def check_inputs(model, x, what: str = "clean") -> torch.Tensor:
    """x as a tensor, after checking its shape, dtype and values fit `model` (an MLP or a transformer)."""
    from ..nn.transformer import GeometricTransformer

    x = as_tensor(x, what)
    if x.dim() == 0 or len(x) == 0:
        raise ModcircuitError(f"{what} holds no examples; give at least one")
    if isinstance(model, GeometricTransformer):
        if model.tokens:
            if x.dim() != 2:
                raise ModcircuitError(f"{what} has shape {tuple(x.shape)}; this model takes token ids of shape "
                                      f"(N, sequence length <= {model.n_ctx})")
            _check_tokens(x, what, model.d_vocab, "of shape (N, sequence length)")
        else:
            if x.dim() != 3 or x.shape[-1] != model.d_input:
                raise ModcircuitError(f"{what} has shape {tuple(x.shape)}; this model takes vectors of shape "
                                      f"(N, sequence length <= {model.n_ctx}, {model.d_input})")
            _check_values(x, what)
        return x
    embedding = getattr(model, "embedding_spec", None)
    if embedding:
        n_tokens, vocab = int(embedding["n_tokens"]), int(embedding["vocab"])
        if x.dim() != 2 or x.shape[1] != n_tokens:
            raise ModcircuitError(f"{what} has shape {tuple(x.shape)}; this model takes token ids of shape "
                                  f"(N, {n_tokens})")
        _check_tokens(x, what, vocab, f"of shape (N, {n_tokens})")
        return x
    n_in = model.widths[0]
    if x.dim() != 2 or x.shape[1] != n_in:
        raise ModcircuitError(f"{what} has shape {tuple(x.shape)}; this model takes shape (N, {n_in}): N examples "
                              f"of {n_in} input features")
    if x.dtype == torch.bool or x.is_complex():
        raise ModcircuitError(f"{what} has dtype {str(x.dtype).replace('torch.', '')}; real numbers are needed")
    _check_values(x, what)
    return x


def n_outputs(model) -> int:
    return int(model.d_out) if hasattr(model, "d_out") else int(model.widths[-1])


def check_labels(labels, n_examples: int, kind: str | None, outputs: int):
    """Labels that fit the task: classification (kind, or integer labels when the task is unknown) needs
    integers in [0, outputs), one per example; regression needs finite numbers, one per output and example."""
    if labels is None:
        return None
    labels = as_tensor(labels, "labels")
    if labels.dim() == 0 or len(labels) != n_examples:
        got = "a single value" if labels.dim() == 0 else f"{len(labels)} labels"
        raise ModcircuitError(f"{got} for {n_examples} examples; give one label per example")
    if kind is None:
        kind = "regression" if labels.is_floating_point() else "classification"
    if kind == "classification":
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise ModcircuitError(f"labels have dtype {str(labels.dtype).replace('torch.', '')}; this is a "
                                  f"classification model: labels must be integers in [0, {outputs})")
        if labels.numel() != n_examples:
            raise ModcircuitError(f"labels have shape {tuple(labels.shape)}; give one class per example, "
                                  f"shape ({n_examples},)")
        bad = (labels < 0) | (labels >= outputs)
        if bad.any():
            idx = _index(labels, bad)
            raise ModcircuitError(f"labels hold {int(labels[idx])} at index {_shown(idx)}; classes must lie in "
                                  f"[0, {outputs})")
        return labels
    if labels.dtype == torch.bool or labels.is_complex():
        raise ModcircuitError(f"labels have dtype {str(labels.dtype).replace('torch.', '')}; this is a regression "
                              "model: labels must be finite numbers")
    if labels.numel() != n_examples * outputs:
        raise ModcircuitError(f"labels have shape {tuple(labels.shape)}; this regression model has {outputs} "
                              f"outputs: give shape ({n_examples}, {outputs})")
    bad = ~torch.isfinite(labels.double())
    if bad.any():
        idx = _index(labels, bad)
        raise ModcircuitError(f"labels hold {labels[idx].item()} at index {_shown(idx)}; regression labels must "
                              "be finite numbers")
    return labels


def patching_inputs(model, clean, corrupt, ablation: str, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The checked clean inputs and (resample ablation) corrupted ones of a patch context, on `device`;
    the model's parameters are checked too (every graph kind's context starts here)."""
    check_parameters(model)
    clean = check_inputs(model, clean, "clean").to(device)
    if ablation != "resample":  # corrupted inputs play no part (kept as given, as before)
        return clean, corrupt
    if corrupt is None:
        raise ModcircuitError("resample ablation needs corrupt inputs; give corrupt or use ablation 'zero'/'mean'")
    corrupt = as_tensor(corrupt, "corrupt")
    if corrupt.shape != clean.shape:
        raise ModcircuitError(f"corrupt has shape {tuple(corrupt.shape)}, clean {tuple(clean.shape)}; they must match")
    return clean, check_inputs(model, corrupt, "corrupt").to(device)


def permuted_labels(labels, seed: int) -> torch.Tensor:
    """A nonsense target for control runs: the labels moved across examples by a seeded derangement (example
    i takes the label of another example, never its own; the two can still be the same class by chance).
    The same labels and seed always give the same permutation."""
    from ..limits import check_seed

    check_seed(seed, "label seed")
    labels = as_tensor(labels, "labels")
    if labels.dim() == 0 or len(labels) < 2:
        raise ModcircuitError(f"{0 if labels.dim() == 0 else len(labels)} labels cannot be permuted across "
                              "examples; give at least two")
    # numpy's generator, not torch's: with torch's, seed s would repeat exactly the derangement that
    # Task.patching_pairs draws for a task of seed s, making the nonsense target the corrupt inputs' labels
    import numpy as np

    order = torch.as_tensor(np.random.default_rng([int(seed), 1]).permutation(len(labels)))
    partner = torch.empty_like(order)
    partner[order] = order.roll(1)
    return labels[partner]
