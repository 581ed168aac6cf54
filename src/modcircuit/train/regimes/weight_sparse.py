"""Weight-sparse training (Gao et al. 2025, "Weight-sparse transformers have interpretable circuits").

After every optimizer step each weight matrix keeps only its k largest-magnitude entries; the rest are
set to zero together with their Adam moments, so a pruned weight restarts from nothing if it returns.
k falls linearly from dense to density * size over the first `anneal` fraction of training, then stays.
Biases stay dense. lam is unused (no penalty).

Speed (benchmarks/bench_train.py): the projection runs every step over every matrix, so on CPU it works
on numpy views of the tensors (same memory): numpy's select, compare and boolean-index kernels are
10-20x faster than torch's at these sizes, and its per-call overhead is ~1 us against torch's ~5 us. With
numba installed (extra `fast`) one compiled call per matrix does the whole projection (compiled.py; measured
in training, one thread: 0.23 ms a step against numpy's 0.46-0.50 on [784,100,100,10], 0.09-0.10 against
0.17-0.20 on [64,64,64,10]); the numpy path is the fallback and picks the same entries.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from .base import Regime, register_regime

try:  # the compiled projection (extra `fast`)
    from .compiled import project as _compiled_project
except ImportError:  # pragma: no cover - numba missing
    _compiled_project = None


class WeightSparseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # share of each weight matrix's entries kept at the end. 0.25 trains two-moons to test accuracy 1.0
    # (10,000 steps, seed 0); 0.1 left it at 0.805 with 4 weights out of its 2 inputs. The paper keeps
    # 1/64 to ~1/1000 of far larger matrices.
    density: float = Field(0.25, gt=0, le=1)
    anneal: float = Field(0.5, gt=0, le=1)  # fraction of training over which k falls to its target


def kept(numel: int, density: float) -> int:
    """How many entries a matrix of `numel` entries keeps at `density` (at least one)."""
    return max(1, min(numel, math.ceil(density * numel - 1e-9)))


def kth_largest(a: np.ndarray, k: int, hint: tuple[float, float] | None = None) -> tuple[np.generic, int, tuple]:
    """The k-th largest value of the 1-d array a (exact), how many entries are >= it (k unless ties), and the
    hint for the next call. One optimizer step moves the k-th largest value little, so it is searched first
    among the entries near the hint's value (a band, widened until the counts show it holds the k-th value);
    the whole array is partitioned only on the first call or when four widenings miss."""
    thr = count = None
    if hint is not None:
        guess, width = hint
        for _ in range(4):
            # the bounds in a's dtype, so the count above and the band split a at the same values
            lo, hi = a.dtype.type(guess - width), a.dtype.type(guess + width)
            above = int(np.count_nonzero(a > hi))
            if above < k:
                band = a[(a >= lo) & (a <= hi)]
                if above + band.size >= k:
                    thr = np.partition(band, band.size - (k - above))[band.size - (k - above)]
                    count = above + int(np.count_nonzero(band >= thr))
                    break
            width = 4 * width + 1e-12
    if thr is None:
        thr = np.partition(a, a.size - k)[a.size - k]
        count = int(np.count_nonzero(a >= thr))
    return thr, count, next_hint(thr, hint)


def next_hint(thr, hint: tuple[float, float] | None) -> tuple[float, float]:
    """The band for the next step's search: twice this step's move of the threshold, but at least 0.1% of it
    (a move far larger than the last one then still falls in the band after a widening or two)."""
    if hint is None:
        return float(thr), max(1e-3 * abs(float(thr)), 1e-6)
    return float(thr), max(2 * abs(float(thr) - hint[0]), 1e-3 * abs(float(thr)), 1e-9)


def top_k_keep(a: np.ndarray, k: int, hint: tuple[float, float] | None = None) -> tuple[np.ndarray, tuple]:
    """Bool mask of the k largest entries of a (exactly k: among ties at the k-th value torch.topk's pick,
    as a plain top-k gives), and the hint for the next call."""
    thr, count, hint = kth_largest(a, k, hint)
    if count == k:
        return a >= thr, hint
    keep = np.zeros(a.size, dtype=bool)
    keep[torch.from_numpy(a).topk(k, sorted=False).indices.numpy()] = True
    return keep, hint


def top_k_keep_torch(a: torch.Tensor, k: int) -> torch.Tensor:
    """top_k_keep for tensors off the CPU (where torch's kernels are the fast ones): the same mask."""
    keep = a >= a.kthvalue(a.numel() - k + 1).values
    if int(keep.sum()) != k:
        keep = torch.zeros_like(keep).index_fill_(0, a.topk(k, sorted=False).indices, True)
    return keep


@register_regime
class WeightSparse(Regime):
    name, description = "weight-sparse", "keep the top-k |W| per matrix after each step (k annealed to density)"
    Options = WeightSparseOptions

    def __init__(self, model, cfg, optimizer=None):
        super().__init__(model, cfg, optimizer)
        self._hints: dict[int, tuple[float, float]] = {}  # matrix index -> (last k-th value, band half-width)
        self._cache = None  # see _targets
        # the weight matrices, once: the trainer never replaces a parameter (swaps and this projection write in
        # place), and cost_terms() costs ~10 module attribute look-ups a step
        self._weights = [w for w, _, _ in model.cost_terms()]
        self.compiled = _compiled_project is not None  # (tests switch it off to check the numpy path)

    def density_at(self, step: int) -> float:
        """Target density after optimizer step `step` (0-based): linear from 1 to density, then flat."""
        ramp = self.options.anneal * self.cfg.steps
        frac = min(1.0, (step + 1) / ramp) if ramp > 0 else 1.0
        return 1.0 - (1.0 - self.options.density) * frac

    # no torch.no_grad() decorator (its ~5 us a call counts at these sizes): every write below goes through
    # a numpy view or a detached tensor, which autograd does not see
    def after_step(self, step):
        density = self.density_at(step)
        for i, (n, flat, arrays) in enumerate(self._targets()):
            k = kept(n, density)
            if k == n:
                continue
            if flat is not None:
                hint = self._hints.get(i)
                if self.compiled and len(arrays) <= 4:
                    moments = arrays[1:] + [np.empty(0, flat.dtype)] * (4 - len(arrays))  # absent moments: empty
                    thr, count = _compiled_project(flat, *moments, k, *(hint or (0.0, 0.0)), hint is not None)
                    hint = self._hints[i] = next_hint(thr, hint)
                    if count == k:
                        continue
                    # ties at the k-th value: nothing was written; pick exactly k below as the numpy path does
                keep, self._hints[i] = top_k_keep(np.abs(flat), k, hint)
                keep = keep.astype(flat.dtype)  # one cast, then same-type products (half the time of bool ones)
                for t in arrays:
                    np.multiply(t, keep, out=t)
            else:
                keep = top_k_keep_torch(arrays[0].abs(), k)
                for t in arrays:
                    t.mul_(keep)

    def _targets(self) -> list[tuple[int, np.ndarray | None, list]]:
        """Per weight matrix: its size, |W|'s flat numpy view (None off the CPU), and the flat views of W and of
        its Adam moments (exp_avg, exp_avg_sq, max_exp_avg_sq) to zero. Kept between steps (making the views
        costs more than the projection of a small matrix); rebuilt when a weight's memory or the optimizer's
        state tensors change, which the key (data pointers and state tensors, by identity) shows."""
        weights = self._weights
        states = [self.optimizer.state.get(w, {}) if self.optimizer is not None else {} for w in weights]
        key = [(w.data_ptr(), *st.values()) for w, st in zip(weights, states)]
        cached = self._cache
        if cached is not None and len(cached[0]) == len(key) and all(
                len(a) == len(b) and a[0] == b[0] and all(x is y for x, y in zip(a[1:], b[1:]))
                for a, b in zip(cached[0], key)):
            return cached[1]
        targets = []
        for w, st in zip(weights, states):
            views = [t.detach().view(-1) for t in (w, *st.values()) if torch.is_tensor(t) and t.shape == w.shape]
            cpu = w.device.type == "cpu"
            arrays = [v.numpy() for v in views] if cpu else views
            targets.append((w.numel(), arrays[0] if cpu else None, arrays))
        self._cache = (key, targets)
        return targets
