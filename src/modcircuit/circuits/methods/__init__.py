"""Discovery methods behind one interface, and the registry users extend.

A method is `fn(ctx: PatchContext, threshold: float, **options) -> MethodResult`: it returns one score per
edge (a list of tensors shaped like the weights, higher = more important). Methods that decide their own
circuit (acdc, probing) also return a mask; for the others the circuit is the edges whose score is
>= threshold (or the top-k when `top_k` is given to `discover`).

    from modcircuit.circuits.methods import register_method, MethodResult

    @register_method("weight-squared", "W**2, a toy")
    def weight_squared(ctx, threshold, **options):
        return MethodResult(scores=[(w ** 2) for w in ctx.W])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ...errors import choice_error


@dataclass
class MethodResult:
    scores: list[torch.Tensor]
    mask: list[torch.Tensor] | None = None  # None: threshold/top-k on the scores decides
    forward_passes: int = 0
    extra: dict = field(default_factory=dict)


MethodFn = Callable[..., MethodResult]
_METHODS: dict[str, tuple[MethodFn, str]] = {}


def register_method(name: str, description: str = ""):
    def deco(fn: MethodFn) -> MethodFn:
        _METHODS[name] = (fn, description)
        return fn

    return deco


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodFn:
    if name not in _METHODS:
        raise choice_error("method", name, _METHODS)
    return _METHODS[name][0]


def describe_methods() -> dict[str, str]:
    return {k: v[1] for k, v in sorted(_METHODS.items())}


from . import acdc, eap, magnitude, probing, random  # noqa: E402,F401  (registration)

__all__ = ["MethodResult", "register_method", "method_names", "get_method", "describe_methods"]
