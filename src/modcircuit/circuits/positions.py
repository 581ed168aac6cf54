"""Which output positions a transformer's metric reads: `positions="last" | "all" | [indices] | bool [B, T]`.

The head-level graph stays position-free (an edge is a source -> destination at every position, as in ACDC
and auto-circuit); only the metric changes: KL or MSE to the model, or an EAP objective, is computed per
(example, position) and averaged over the chosen pairs. "last" (the default) is the last position of every
example, the only one read before; "all" every position; a list of indices (negative ones count from the
end) the same positions of every example; a bool mask [B, T] chosen pairs per example.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ModcircuitError


@dataclass
class Positions:
    last: bool  # only the last position: the outputs are [..., B, d_out] (the fast paths read one position)
    index: torch.Tensor  # the positions read [n] (ascending)
    weights: torch.Tensor  # [B, n]: 1 / (number of chosen pairs) where chosen, 0 elsewhere
    spec: object  # JSON-able: "last", "all", a list of indices or {"mask": [[...], ...]}

    @property
    def read(self) -> slice:
        """The positions the last layer computes: the last one, or all (queries of other positions are needed
        by no output but computing them all keeps every path exact and simple)."""
        return slice(-1, None) if self.last else slice(None)

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """Outputs at the chosen positions from logits [..., B, T', d_out] computed at `read`."""
        return logits[..., -1, :] if self.last else logits[..., self.index.to(logits.device), :]

    def average(self, v: torch.Tensor) -> torch.Tensor:
        """v [..., B] (last) or [..., B, n] -> [...]: the mean over the chosen (example, position) pairs."""
        if self.last:
            return v.mean(-1)
        return (v * self.weights.to(v.device, v.dtype)).sum((-1, -2))


def resolve_positions(positions, batch: int, length: int) -> Positions:
    """Positions for inputs of `batch` examples of `length` positions (one-line errors otherwise)."""
    spec = positions
    if positions is None or (isinstance(positions, str) and positions == "last"):
        return Positions(True, torch.tensor([length - 1]), torch.full((batch, 1), 1.0 / batch), "last")
    if isinstance(positions, str):
        if positions != "all":
            raise ModcircuitError(f"positions {positions!r} is not allowed; give 'last', 'all', a list of indices "
                                  f"or a bool mask [batch, positions]")
        mask = torch.ones(batch, length, dtype=torch.bool)
    else:
        arr = np.asarray(positions.cpu() if isinstance(positions, torch.Tensor) else positions)
        if arr.dtype == bool and arr.ndim == 2:
            if arr.shape != (batch, length):
                raise ModcircuitError(f"a positions mask has shape {list(arr.shape)}; the inputs need "
                                      f"[{batch}, {length}] (examples x positions)")
            mask = torch.as_tensor(arr)
            if not mask.any():
                raise ModcircuitError("the positions mask chooses no position; choose at least one")
            spec = {"mask": arr.astype(int).tolist()}
        elif arr.ndim == 1 and arr.size and (np.issubdtype(arr.dtype, np.integer)):
            idx = [int(i) for i in arr]
            bad = [i for i in idx if not -length <= i < length]
            if bad:
                raise ModcircuitError(f"position {bad[0]} is out of range for inputs of {length} positions "
                                      f"(allowed: {-length}..{length - 1})")
            idx = [i % length for i in idx]
            if len(set(idx)) != len(idx):
                raise ModcircuitError(f"positions {list(arr.tolist())} name a position twice")
            mask = torch.zeros(batch, length, dtype=torch.bool)
            mask[:, idx] = True
            spec = sorted(idx)
        else:
            raise ModcircuitError(f"positions of type {type(positions).__name__} and shape {list(arr.shape)} are "
                                  f"not allowed; give 'last', 'all', a non-empty list of integer indices or a bool "
                                  f"mask [batch, positions]")
    index = torch.nonzero(mask.any(0)).flatten()
    chosen = mask[:, index].double()
    return Positions(False, index, chosen / chosen.sum(), spec)


def positions_from_spec(spec):
    """The `positions` argument a stored spec (Positions.spec) stands for."""
    if isinstance(spec, dict) and "mask" in spec:
        return np.asarray(spec["mask"], dtype=bool)
    return spec


def parse_positions(text: str):
    """The CLI's --positions: 'last', 'all' or comma-separated indices ('0,3,-1')."""
    if text in ("last", "all"):
        return text
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise ModcircuitError(f"--positions {text!r} is not allowed; give last, all or comma-separated indices "
                              f"such as 0,3,-1")
