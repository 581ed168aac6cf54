"""The computational graph of an MLP: nodes are input positions, hidden neurons and outputs; an edge is
one weight entry W[l][j, i] (source i in neuron layer l, target j in neuron layer l+1).

Everything in circuits/ works on *positions* (the index a neuron has in the weight matrices), so
BIMT-permuted models need no special care; names translate positions back to features/outputs
through the model's `in_perm` / `out_perm` buffers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModcircuitError
from ..nn.mlp import MLP


def as_mlp(model) -> MLP:
    """An MLP as is, or a plain nn.Sequential of Linear + activations imported as one."""
    if isinstance(model, MLP):
        return model
    if isinstance(model, torch.nn.Sequential):
        return MLP.from_sequential(model)
    raise ModcircuitError(f"model of type {type(model).__name__} is not supported; allowed: MLP, nn.Sequential")


@dataclass
class Graph:
    widths: list[int]
    node_names: list[list[str]]  # per neuron layer, per position

    @classmethod
    def of(cls, model: MLP, input_names: list[str] | None = None, output_names: list[str] | None = None) -> "Graph":
        widths = list(model.widths)
        L = len(widths) - 1
        in_perm = model.in_perm.tolist()
        out_perm = model.out_perm.tolist()
        names: list[list[str]] = []
        if input_names is not None and len(input_names) == widths[0] and len(set(input_names)) == widths[0]:
            names.append([f"in:{input_names[f]}" for f in in_perm])
        else:
            names.append([f"in:{f}" for f in in_perm])
        for l in range(1, L):
            names.append([f"h{l}:{p}" for p in range(widths[l])])
        if output_names is not None and len(output_names) == widths[-1] and len(set(output_names)) == widths[-1]:
            names.append([f"out:{output_names[k]}" for k in out_perm])
        else:
            names.append([f"out:{k}" for k in out_perm])
        return cls(widths, names)

    @property
    def n_linears(self) -> int:
        return len(self.widths) - 1

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(self.widths[l + 1], self.widths[l]) for l in range(self.n_linears)]

    @property
    def n_edges(self) -> int:
        return sum(a * b for a, b in self.shapes)

    @property
    def n_nodes(self) -> int:
        return sum(self.widths)

    def edges(self):
        """(layer, target j, source i, source name, target name) in weight order (layer, row, column)."""
        for l, (n_out, n_in) in enumerate(self.shapes):
            src, dst = self.node_names[l], self.node_names[l + 1]
            for j in range(n_out):
                for i in range(n_in):
                    yield l, j, i, src[i], dst[j]

    def acdc_order(self):
        """ACDC's order: receivers from the last layer back to the first, receivers by index ascending,
        each receiver's incoming edges by source index ascending. Yields (layer, j, i)."""
        for l in reversed(range(self.n_linears)):
            n_out, n_in = self.shapes[l]
            for j in range(n_out):
                for i in range(n_in):
                    yield l, j, i

    def check(self, tensors: list[torch.Tensor], what: str) -> None:
        if len(tensors) != self.n_linears or any(tuple(t.shape) != s for t, s in zip(tensors, self.shapes)):
            got = [tuple(t.shape) for t in tensors]
            raise ModcircuitError(f"{what} shapes {got} do not fit the model's weights {self.shapes}")

    def nodes_kept(self, mask: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per neuron layer, bool: the node touches at least one kept edge."""
        kept = [torch.zeros(w, dtype=torch.bool) for w in self.widths]
        for l, m in enumerate(mask):
            m = m.cpu()
            kept[l] |= m.any(0)
            kept[l + 1] |= m.any(1)
        return kept


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    out, k = [], 0
    for a, b in shapes:
        out.append(flat[k:k + a * b].reshape(a, b))
        k += a * b
    return out
