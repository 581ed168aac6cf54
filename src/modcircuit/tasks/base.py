"""What every task provides: data splits, the model it trains, a loss, a score, patching pairs, ground truth.

A Task is plain data plus a few verbs. Task families live in their own modules and register a
builder with `register_task`; `get_task(name, seed=..., **options)` builds one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ModcircuitError, choice_error
from ..limits import check_int, check_model_size, check_seed
from ..nn.mlp import MLP

LOSSES = ("mse", "ce", "mse-onehot")
ABLATIONS = ("resample", "zero", "mean")


@dataclass
class Task:
    name: str
    kind: str  # "regression" or "classification"
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    widths: list[int]
    loss: str
    layouts: list[dict] | None = None
    embedding: dict | None = None
    activation: str = "silu"
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    # input-level truth: bool (n_outputs, n_input_features); True where output k depends on feature i
    ground_truth: torch.Tensor | None = None
    # reference training settings (keys of TrainConfig); every one can be overridden
    defaults: dict = field(default_factory=dict)
    seed: int = 0
    options: dict = field(default_factory=dict)
    description: str = ""
    truth_reason: str = ""  # why head_truth_for found no ground truth (set by it)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise choice_error("loss", self.loss, LOSSES)
        if self.input_names is None:
            self.input_names = [f"x{i + 1}" for i in range(self.widths[0])]
        if self.output_names is None:
            self.output_names = [f"y{i}" for i in range(self.widths[-1])]

    # ---- model -----------------------------------------------------------------------------
    def check_widths(self, widths: list[int]) -> list[int]:
        widths = [int(w) for w in widths]
        if len(widths) < 2 or widths[0] != self.widths[0] or widths[-1] != self.widths[-1]:
            raise ModcircuitError(
                f"widths {widths} do not fit task {self.name}: it needs {self.widths[0]} inputs and "
                f"{self.widths[-1]} outputs (e.g. {self.widths})"
            )
        if any(w < 1 for w in widths):
            raise ModcircuitError(f"widths {widths} must be positive")
        return widths

    def layouts_for(self, widths: list[int]) -> list[dict]:
        """The task's layouts when the widths are its own; hidden layers fall back to a line when resized."""
        if self.layouts is None:
            return [{"kind": "line", "folds": 1} for _ in widths]
        out = []
        for l, w in enumerate(widths):
            if l == 0:
                out.append(self.layouts[0])
            elif l == len(widths) - 1:
                out.append(self.layouts[-1])
            elif len(widths) == len(self.widths) and w == self.widths[l]:
                out.append(self.layouts[l])
            else:
                out.append({"kind": "line", "folds": 1})
        return out

    def check_size(self, widths: list[int] | None = None, max_parameters: int | None = None) -> None:
        """Refuse a model too large to be meant (limits.MAX_PARAMETERS unless raised) before it is allocated."""
        check_model_size(self.check_widths(widths or self.widths), self.embedding, max_parameters)

    def build_model(self, widths: list[int] | None = None, activation: str | None = None) -> MLP:
        widths = self.check_widths(widths or self.widths)
        return MLP(widths, activation or self.activation, self.layouts_for(widths), self.embedding)

    # ---- loss and score --------------------------------------------------------------------
    def model_outputs(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What the loss and score read: the model's output (a transformer's last position); tasks scored at
        several positions (induction) return every position's."""
        return model(x)

    def loss_fn(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss == "mse":
            return F.mse_loss(out, y)
        if self.loss == "ce":
            return F.cross_entropy(out, y)
        return F.mse_loss(out, F.one_hot(y, out.shape[1]).to(out.dtype))

    def score(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """accuracy for classification, mse for regression."""
        if self.kind == "classification":
            return {"accuracy": (out.argmax(1) == y).float().mean().item()}
        return {"mse": F.mse_loss(out, y).item()}

    def evaluate(self, model: torch.nn.Module, split: str = "test") -> dict[str, float]:
        x, y = (self.x_test, self.y_test) if split == "test" else (self.x_train, self.y_train)
        dev = next(model.parameters()).device
        with torch.no_grad():
            out = self.model_outputs(model, x.to(dev))
            res = self.score(out, y.to(dev))
            res["loss"] = self.loss_fn(out, y.to(dev)).item()
        return res

    # ---- patching --------------------------------------------------------------------------
    def metric_positions(self, x: torch.Tensor):
        """The output positions a transformer's circuit metric reads on inputs x (circuits/positions.py):
        "last" unless the task scores other positions."""
        return "last"

    def head_truth_for(self, model):
        """A transformer's known head-level circuit (circuits.truth.HeadTruth) read off `model`, or None: the
        task knows none (tasks that look but find none say why in `truth_reason`)."""
        return None

    def patching_pairs(self, split: str = "test", n: int | None = None, seed: int | None = None):
        """(clean, corrupt, labels): corrupt[i] is another example's input (resample ablation, fixed by seed)."""
        if split not in ("test", "train"):
            raise choice_error("split", split, ("test", "train"))
        if n is not None:
            check_int("examples", n, 1, none_means="all")
        x, y = (self.x_test, self.y_test) if split == "test" else (self.x_train, self.y_train)
        if seed is not None:
            check_seed(seed, "data seed")
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        if n is not None and n < len(x):
            idx = torch.randperm(len(x), generator=g)[:n]
            x, y = x[idx], y[idx]
        # a derangement (shift of a random order) so no example is paired with itself
        order = torch.randperm(len(x), generator=g)
        partner = torch.empty_like(order)
        partner[order] = order.roll(1)
        return x, x[partner], y


TaskBuilder = Callable[..., Task]
_REGISTRY: dict[str, tuple[TaskBuilder, str]] = {}
# tasks whose building is expensive (compiling a program): `modcircuit tasks` lists them without building
_BUILT_ON_DEMAND: set[str] = set()


def register_task(name: str, description: str = "", *, list_without_building: bool = False):
    def deco(fn: TaskBuilder) -> TaskBuilder:
        _REGISTRY[name] = (fn, description)
        if list_without_building:
            _BUILT_ON_DEMAND.add(name)
        return fn

    return deco


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def task_option_defaults(name: str) -> dict:
    """The options `get_task(name, ...)` takes besides the seed, with their default values."""
    if name not in _REGISTRY:
        raise choice_error("task", name, _REGISTRY)
    import inspect

    params = inspect.signature(_REGISTRY[name][0]).parameters
    return {k: p.default for k, p in params.items() if k != "seed"}


def _unknown_option(name: str, key: str, accepted) -> ModcircuitError:
    return ModcircuitError(f"task {name} takes no option {key!r}; its options: {', '.join(sorted(accepted)) or 'none'}")


def get_task(name: str, seed: int = 0, **options) -> Task:
    accepted = task_option_defaults(name)
    check_seed(seed)
    for key in options:
        if key not in accepted:
            raise _unknown_option(name, key, accepted)
    task = _REGISTRY[name][0](seed=seed, **options)
    task.options = dict(options)
    return task


def parse_task_options(name: str, items: list[str], flag: str = "--task-option") -> dict:
    """Task options written as `key=value` text (the command line), typed like the option's default:
    `p=23` -> 23, `noise=0.2` -> 0.2, `layernorm=false` -> False, `widths=[6,12,12,2]` -> a list."""
    import json

    defaults = task_option_defaults(name)
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ModcircuitError(f"{flag} {item!r} must look like key=value, e.g. noise=0.2")
        if key not in defaults:
            raise _unknown_option(name, key, defaults)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        default = defaults[key]
        if default is None:  # no default to go by: numbers and lists as parsed, anything else as text
            out[key] = value if isinstance(value, (int, float, list)) else text
        elif isinstance(default, str):
            out[key] = text  # paths and names stay exactly as written
        else:
            out[key] = _typed_like(default, value)
            if out[key] is None:
                raise ModcircuitError(f"{flag} {item!r}: task {name}'s option {key} takes a value like its "
                                      f"default, {json.dumps(default)}")
    return out


def _typed_like(default, value):
    """`value` as the type of `default` (an int is a fine float), or None when it does not fit."""
    import math

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        return value if isinstance(value, bool) else None
    if isinstance(default, int):
        return value if number and isinstance(value, int) else None
    if isinstance(default, float):
        return float(value) if number and math.isfinite(value) else None
    if isinstance(default, (list, tuple)):
        return value if isinstance(value, list) else None
    return value
