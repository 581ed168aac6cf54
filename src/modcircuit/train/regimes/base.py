"""The regime interface and its registry.

A regime is a class with the hooks the trainer calls around each optimizer step:

    penalty(lam)          the differentiable term added to the task loss (logged; tests compare gradients)
    add_penalty_grad_(lam, step)
                          adds d(penalty)/dparams to every .grad in place, after loss.backward(): the same
                          (sub)gradient autograd gives, without building the penalty's graph each step
    after_step(step)      runs after optimizer.step(): projections (weight-sparse), BIMT swaps, ...

`Options` (a pydantic model) declares the regime's own hyperparameters; they are set like any other
(`--set density=0.05`, a study's [train] table) and land in TrainConfig.regime_options. `defaults`
overrides task defaults that mean something else under this regime (e.g. lam's scale).

    from modcircuit.train.regimes import Regime, register_regime

    @register_regime
    class WeightDecayLike(Regime):
        name, description = "l2-again", "lam * sum W^2"
        def add_penalty_grad_(self, lam, step):
            for w, _, _ in self.model.cost_terms():
                w.grad.add_(w.detach(), alpha=2 * lam)
"""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from ...errors import ModcircuitError, choice_error


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Regime:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    defaults: ClassVar[dict] = {}

    def __init__(self, model: torch.nn.Module, cfg, optimizer: torch.optim.Optimizer | None = None):
        self.model, self.cfg, self.optimizer = model, cfg, optimizer
        self.options = self.Options(**cfg.regime_options)
        # BIMT reports its swap work; other regimes leave these at 0
        self.n_swaps, self.swap_seconds = 0, 0.0

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), device=next(self.model.parameters()).device)

    def penalty(self, lam: float) -> torch.Tensor:
        return self._zero()

    @torch.no_grad()
    def add_penalty_grad_(self, lam: float, step: int) -> None:
        pass

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        pass


_REGIMES: dict[str, type[Regime]] = {}


def register_regime(cls: type[Regime]) -> type[Regime]:
    if not cls.name:
        raise ModcircuitError(f"regime class {cls.__name__} needs a name")
    _REGIMES[cls.name] = cls
    return cls


def regime_names() -> list[str]:
    """Registered regimes in registration order (the built-ins first, baselines before BIMT's rivals)."""
    return list(_REGIMES)


def get_regime(name: str) -> type[Regime]:
    if name not in _REGIMES:
        raise choice_error("regime", name, _REGIMES)
    return _REGIMES[name]


def describe_regimes() -> dict[str, str]:
    return {k: v.description for k, v in _REGIMES.items()}


def regime_options() -> dict[str, list[type[Regime]]]:
    """option name -> the regimes that declare it."""
    out: dict[str, list[type[Regime]]] = {}
    for cls in _REGIMES.values():
        for key in cls.Options.model_fields:
            out.setdefault(key, []).append(cls)
    return out
