"""The computational graphs discovery works on.

Graph (an MLP): nodes are input positions, hidden neurons and outputs; an edge is one weight entry
W[l][j, i] (source i in neuron layer l, target j in neuron layer l+1).

TransformerGraph (a GeometricTransformer, the residual-stream graph of Conmy et al. / auto-circuit):
sources embed, every head A{l}.{h}, every MLP{l}; destinations every head's input (its q, k and v inputs
separately with split_qkv), every MLP's input and the output; an edge wherever a source writes before a
destination reads. Masks and scores are one [n_dest, n_src] tensor (entries that are no edge: False / NaN).

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


_ALLOWED: dict = {}  # the edge mask per graph shape


@dataclass
class TransformerGraph:
    n_layers: int
    n_heads: int
    split_qkv: bool = False

    @classmethod
    def of(cls, model, split_qkv: bool = False) -> "TransformerGraph":
        return cls(model.n_layers, model.n_heads, bool(split_qkv))

    @property
    def nq(self) -> int:
        return 3 if self.split_qkv else 1

    # sources: embed, then per layer its heads and its MLP
    def src_head(self, l: int, h: int) -> int:
        return 1 + l * (self.n_heads + 1) + h

    def src_mlp(self, l: int) -> int:
        return 1 + l * (self.n_heads + 1) + self.n_heads

    @property
    def n_src(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    def n_src_before(self, l: int) -> int:
        """Sources written before layer l's attention reads."""
        return 1 + l * (self.n_heads + 1)

    # destinations: per layer its heads' inputs (q,k,v per head when split), its MLP; then the output
    def dest_attn(self, l: int, h: int, c: int = 0) -> int:
        return l * (self.nq * self.n_heads + 1) + h * self.nq + c

    def dest_mlp(self, l: int) -> int:
        return l * (self.nq * self.n_heads + 1) + self.nq * self.n_heads

    @property
    def dest_out(self) -> int:
        return self.n_layers * (self.nq * self.n_heads + 1)

    @property
    def n_dest(self) -> int:
        return self.dest_out + 1

    def dest_layer(self, k: int) -> int:
        """The layer whose computation reads destination k (n_layers for the output)."""
        return min(k // (self.nq * self.n_heads + 1), self.n_layers)

    def dest_n_src(self, k: int) -> int:
        """How many sources (a prefix of the source order) feed destination k."""
        if k == self.dest_out:
            return self.n_src
        l = self.dest_layer(k)
        return self.n_src_before(l) + (self.n_heads if k == self.dest_mlp(l) else 0)

    @property
    def allowed(self) -> torch.Tensor:
        key = (self.n_layers, self.n_heads, self.split_qkv)
        if key not in _ALLOWED:
            A = torch.zeros(self.n_dest, self.n_src, dtype=torch.bool)
            for k in range(self.n_dest):
                A[k, : self.dest_n_src(k)] = True
            _ALLOWED[key] = A
        return _ALLOWED[key].clone()

    @property
    def n_edges(self) -> int:
        return int(self.allowed.sum())

    def src_names(self) -> list[str]:
        names = ["embed"]
        for l in range(self.n_layers):
            names += [f"A{l}.{h}" for h in range(self.n_heads)] + [f"MLP{l}"]
        return names

    def dest_names(self) -> list[str]:
        names = []
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                names += [f"A{l}.{h}.{c}" for c in "qkv"] if self.split_qkv else [f"A{l}.{h}"]
            names.append(f"MLP{l}")
        return names + ["output"]

    # nodes: embed, every head, every MLP, the output (a head's q/k/v inputs belong to the head)
    def node_names(self) -> list[str]:
        return self.src_names() + ["output"]

    def dest_node(self, k: int) -> int:
        """The node (index into node_names) destination k belongs to."""
        if k == self.dest_out:
            return self.n_src
        l = self.dest_layer(k)
        return self.src_mlp(l) if k == self.dest_mlp(l) else self.src_head(l, (k - self.dest_attn(l, 0)) // self.nq)

    def nodes_kept(self, mask: torch.Tensor) -> torch.Tensor:
        """bool per node: the node touches at least one kept edge ([n_dest, n_src] mask)."""
        mask = mask.cpu() & self.allowed
        kept = torch.zeros(self.n_src + 1, dtype=torch.bool)
        kept[: self.n_src] |= mask.any(0)
        for k in torch.nonzero(mask.any(1)).flatten().tolist():
            kept[self.dest_node(k)] = True
        return kept

    def edges(self):
        """(dest k, source s, source name, dest name) for every edge, destinations in order."""
        sn, dn = self.src_names(), self.dest_names()
        for k in range(self.n_dest):
            for s in range(self.dest_n_src(k)):
                yield k, s, sn[s], dn[k]

    def acdc_order(self):
        """Receivers in reverse topological order (output, then per layer from the last: the MLP, then the
        attention inputs by index ascending), each receiver's sources by index ascending. Yields (k, s)."""
        receivers = [self.dest_out]
        for l in reversed(range(self.n_layers)):
            receivers.append(self.dest_mlp(l))
            receivers += [self.dest_attn(l, h, c) for h in range(self.n_heads) for c in range(self.nq)]
        for k in receivers:
            for s in range(self.dest_n_src(k)):
                yield k, s


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    out, k = [], 0
    for a, b in shapes:
        out.append(flat[k:k + a * b].reshape(a, b))
        k += a * b
    return out
