"""Discovery methods behind one interface, and the registry users extend.

A method is `fn(ctx, threshold: float, **options) -> MethodResult` for one or more graph kinds (see
circuits/kinds.py): "mlp" (the neuron-level graph of an MLP; ctx is a PatchContext) and "transformer" (the
head-level graph of a GeometricTransformer; ctx is a TransformerPatchContext). It returns one score per edge
in the graph's layout (higher = more important): a list of tensors shaped like the weights (mlp) or one
[n_dest, n_src] tensor (transformer; NaN where there is no edge). Methods that decide their own circuit
(acdc, probing) also return a mask; for the others the circuit is the edges whose score is >= threshold
(or the top-k when `top_k` is given to `discover`). One name may have an implementation per graph kind.

    from modcircuit.circuits.methods import register_method, MethodResult

    @register_method("weight-squared", "W**2, a toy")              # kinds=("mlp",) by default
    def weight_squared(ctx, threshold, **options):
        return MethodResult(scores=[(w ** 2) for w in ctx.W])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ...errors import ModcircuitError, choice_error

GRAPH_KINDS = ("mlp", "transformer")


@dataclass
class MethodResult:
    scores: list[torch.Tensor] | torch.Tensor  # the graph's layout (see the module docstring)
    mask: list[torch.Tensor] | torch.Tensor | None = None  # None: threshold/top-k on the scores decides
    forward_passes: int = 0
    extra: dict = field(default_factory=dict)


MethodFn = Callable[..., MethodResult]
_METHODS: dict[str, dict[str, MethodFn]] = {}  # name -> graph kind -> implementation
_DESCRIPTIONS: dict[str, str] = {}


def register_method(name: str, description: str = "", kinds: tuple[str, ...] | str = ("mlp",)):
    """Register fn as method `name` for the graph kinds it supports ("mlp", "transformer" or both)."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    for k in kinds:
        if k not in GRAPH_KINDS:
            raise choice_error("graph kind", k, GRAPH_KINDS)

    def deco(fn: MethodFn) -> MethodFn:
        for k in kinds:
            _METHODS.setdefault(name, {})[k] = fn
        if description or name not in _DESCRIPTIONS:
            _DESCRIPTIONS[name] = description
        return fn

    return deco


def method_names(kind: str | None = None) -> list[str]:
    """Every registered method, or those supporting graph kind `kind`."""
    return sorted(n for n, impl in _METHODS.items() if kind is None or kind in impl)


def method_kinds(name: str) -> list[str]:
    return [k for k in GRAPH_KINDS if k in _METHODS.get(name, {})]


def get_method(name: str, kind: str = "mlp") -> MethodFn:
    """The implementation of method `name` for graph kind `kind` (one-line errors for an unknown name or
    an unsupported pair)."""
    if name not in _METHODS:
        raise choice_error("method", name, _METHODS)
    if kind not in _METHODS[name]:
        raise ModcircuitError(f"method {name!r} does not support {kind} graphs (it supports "
                              f"{', '.join(method_kinds(name))}); methods for {kind}: "
                              f"{', '.join(method_names(kind)) or 'none'}")
    return _METHODS[name][kind]


def describe_methods(kind: str | None = None) -> dict[str, str]:
    return {k: _DESCRIPTIONS.get(k, "") for k in method_names(kind)}


from . import (  # noqa: E402,F401  (registration)
    acdc, eap, magnitude, probing, random, transformer_acdc, transformer_eap,
)

__all__ = ["MethodResult", "register_method", "method_names", "method_kinds", "get_method", "describe_methods",
           "GRAPH_KINDS"]
