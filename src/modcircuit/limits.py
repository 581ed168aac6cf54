"""The sane ranges of numeric user inputs, in one place, and the checks that refuse values outside them.

Every bound here exists because a value beyond it either crashes deep inside a library (a seed numpy
rejects, a float that overflows), allocates absurd memory, or runs for longer than anyone means to.
The bounds are generous: each is orders of magnitude beyond what the reference settings use.
"""
from __future__ import annotations

import math
import numbers

from .errors import ModcircuitError

SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's random_state accept 0..2**32-1
STEPS_MAX = 100_000_000  # ~1 day at 1 ms per step; the reference settings use <= 40,000
THREADS_MAX = 1024
# default cap on a model's parameters (weights + biases + embedding): 10 million floats is 40 MB of
# weights, ~160 MB with BIMT distances and Adam state; the largest reference model (MNIST) has ~90,000
MAX_PARAMETERS = 10_000_000
# inputs of discovery and evaluation: generous (raw 8-bit pixels are at most 255); far beyond it
# activations overflow or saturate and the scores mean nothing
MAX_ABS_INPUT = 1e6

# (low, high, low inclusive) of the float hyperparameters; all must also be finite
FLOAT_RANGES = {
    "lr": (0.0, 10.0, False),
    "lam": (0.0, 1e4, True),
    "l0": (0.0, 1e4, True),
    "weight_factor": (0.0, 1e4, True),
    "weight_decay": (0.0, 1e4, True),
}


def check_int(name: str, value, low: int, high: int | None = None, *, none_means: str | None = None) -> int:
    """An integer in [low, high]; bools and floats are refused (a float count is a mistake, not a rounding)."""
    allowed = f"an integer {low}..{high}" if high is not None else f"an integer >= {low}"
    if none_means:
        allowed += f" (or none: {none_means})"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # (numpy integers are fine)
        raise ModcircuitError(f"{name} {value!r} is not allowed; give {allowed}")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise ModcircuitError(f"{name} {value} is out of range; give {allowed}")
    return value


def check_seed(seed, name: str = "seed") -> int:
    return check_int(name, seed, 0, SEED_MAX)


def check_threads(threads) -> int:
    return check_int("threads", threads, 1, THREADS_MAX)


def float_range_problem(name: str, value: float) -> str | None:
    """None when value lies in FLOAT_RANGES[name] (and is finite), else what is allowed."""
    low, high, low_ok = FLOAT_RANGES[name]
    if math.isfinite(value) and low <= value <= high and (value != low or low_ok):
        return None
    return f"give a finite number in {'[' if low_ok else '('}{low:g}, {high:g}]"


def parameter_count(widths: list[int], embedding: dict | None = None) -> int:
    """Weights and biases of an MLP with these widths, plus its token embedding."""
    n = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    if embedding:
        n += int(embedding["vocab"]) * int(embedding["dim"])
    return n


def check_model_size(widths: list[int], embedding: dict | None = None, max_parameters: int | None = None) -> int:
    """Refuse an MLP too large to be meant before anything is allocated; names the widest layer."""
    limit = MAX_PARAMETERS if max_parameters is None else check_int("max_parameters", max_parameters, 1)
    n = parameter_count(widths, embedding)
    if n > limit:
        widest = max(widths)
        raise ModcircuitError(
            f"widths {','.join(map(str, widths))} give {n:,} parameters (widest layer {widest:,}); the limit is "
            f"{limit:,}: use smaller widths, or raise it with --max-parameters (max_parameters=...)"
        )
    return n
