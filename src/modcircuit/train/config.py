"""Training hyperparameters, validated early (pydantic) with one-line errors."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

from ..errors import ModcircuitError
from ..limits import FLOAT_RANGES, SEED_MAX, STEPS_MAX, float_range_problem
from .regimes import DEFAULT_REGIME, get_regime, regime_options


class TrainConfig(BaseModel):
    # NaN and infinity are refused for every float; finite ranges are in limits.FLOAT_RANGES
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    regime: str = DEFAULT_REGIME
    steps: int = Field(2000, ge=1, le=STEPS_MAX)
    lr: float = Field(1e-3, gt=0)
    batch_size: int | None = Field(None, ge=1)  # None = full batch
    # "adam": weight_decay is an L2 term added to the gradient (torch Adam); "adamw": decoupled weight decay
    # (Loshchilov & Hutter), each step w -= lr * weight_decay * w, as in the grokking papers
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decay rates (grokking runs use (0.9, 0.98))
    # [[fraction of steps, multiplier of lr], ...]: piecewise-constant, like lam_schedule (e.g. a late decay
    # that lets a full-batch run settle instead of spiking)
    lr_schedule: list[tuple[float, float]] = Field(default_factory=list)
    lam: float = Field(1e-3, ge=0)
    # [[fraction of steps, multiplier of lam], ...]: piecewise-constant schedule
    lam_schedule: list[tuple[float, float]] = Field(default_factory=list)
    l0: float = Field(0.1, ge=0)
    weight_factor: float = Field(1.0, ge=0)
    agg: Literal["sum", "mean"] = "sum"
    top_k: int = Field(5, ge=1)
    swap_every: int = Field(200, ge=1)
    swap_inputs: bool = False
    swap_outputs: bool = False
    widths: list[int] | None = None
    activation: str | None = None
    seed: int = Field(0, ge=0, le=SEED_MAX)
    device: str = "cpu"
    log_every: int | None = Field(None, ge=1)
    # the regime's own options (its Options model, defaults filled in); see train/regimes/base.py
    regime_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("regime")
    @classmethod
    def _regime(cls, v):
        get_regime(v)
        return v

    @field_validator(*FLOAT_RANGES)
    @classmethod
    def _in_range(cls, v, info):
        problem = float_range_problem(info.field_name, v)
        if problem:
            raise ValueError(problem)
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # left out when empty, so the configurations (and study cell keys) of option-less regimes stay as they were
        out = handler(self)
        if not out.get("regime_options"):
            out.pop("regime_options", None)
        # likewise for the optimizer settings every configuration had before AdamW and lr schedules
        for key, default in (("optimizer", "adam"), ("betas", (0.9, 0.999)), ("lr_schedule", [])):
            if key in out and (tuple(out[key]) if key == "betas" else out[key]) == default:
                out.pop(key)
        return out

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        import re

        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", v):
            raise ValueError("allowed: cpu, cuda, cuda:N, mps")
        return v

    @field_validator("lam_schedule", "lr_schedule")
    @classmethod
    def _schedule(cls, v, info):
        top = 1e6 if info.field_name == "lam_schedule" else 1e3  # (lr: a multiplier of at most 1000)
        for frac, mult in v:
            if not (0 <= frac <= 1) or not (0 <= mult <= top):
                raise ValueError(f"entry [{frac}, {mult}] needs 0 <= fraction <= 1 and 0 <= multiplier <= {top:g}")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0 <= b < 1 for b in v):
            raise ValueError("both betas must lie in [0, 1)")
        return v


def make_config(defaults: dict, overrides: dict) -> TrainConfig:
    """Task defaults, then the regime's defaults, then user overrides (None = keep the default); errors
    name the bad value. Options of any registered regime are accepted and validated; only the chosen
    regime's are kept (so one study [train] table can set them for several regimes)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    regime = get_regime(given.get("regime", defaults.get("regime", "vanilla")))
    merged = {**defaults, **regime.defaults, **given}
    options = dict(merged.pop("regime_options", None) or {})
    declared = regime_options()
    options.update({k: merged.pop(k) for k in list(merged) if k in declared and k not in TrainConfig.model_fields})
    unknown = sorted(set(merged) - set(TrainConfig.model_fields) | set(options) - set(declared))
    if unknown:
        allowed = sorted(set(TrainConfig.model_fields) - {"regime_options"} | set(declared))
        raise ModcircuitError(f"unknown hyperparameter {unknown[0]!r}; allowed: {', '.join(allowed)}")
    for key, value in options.items():
        for cls in declared[key]:
            _validated(cls.Options, {key: value}, {key: value})
    mine = {k: v for k, v in options.items() if k in regime.Options.model_fields}
    merged["regime_options"] = _validated(regime.Options, mine, mine).model_dump()
    return _validated(TrainConfig, merged, merged)


def _validated(model: type[BaseModel], values: dict, shown: dict):
    try:
        return model(**values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "config"
        value = shown.get(err["loc"][0]) if err["loc"] else None
        msg = err["msg"].removeprefix("Value error, ")
        if isinstance(err.get("ctx", {}).get("error"), ModcircuitError):
            raise err["ctx"]["error"] from None
        raise ModcircuitError(f"invalid {key}={value!r}: {msg}") from None


def check_device(device: str) -> None:
    """A device name this machine has: cpu, cuda, cuda:N or mps (one-line errors otherwise)."""
    import torch

    make_config({}, {"device": device})  # the format: cpu, cuda, cuda:N, mps
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModcircuitError(f"device {device!r}: CUDA is not available here; use cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ModcircuitError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModcircuitError("device 'mps' is not available here; use cpu")
