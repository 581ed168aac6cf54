"""A transformer's known circuit: the ground truth that head-level discovery is scored against.

Truth is a set of edges of the head-level graph (graph.py's TransformerGraph) named as in its q/k/v-apart
form: (source, destination) with sources `embed`, `A{l}.{h}`, `MLP{l}` and destinations `A{l}.{h}.q|k|v`,
`MLP{l}`, `output`. The same truth scores circuits found with q/k/v merged: a merged edge
source -> A{l}.{h} is true when any of the head's three inputs is (`mask(graph)`), so a method that finds
the right head through the wrong input is visible only in the q/k/v-apart scoring.

Who makes it: tasks whose circuit is known by mechanism (induction: read off the trained model's
attention) or by construction (tracr: read off the compiled residual layout). Who reads it: evaluate's
ROC/AUC against the truth, the report's ROC curves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ModcircuitError
from .graph import TransformerGraph


@dataclass(frozen=True)
class HeadTruth:
    """Known edges of an n_layers x n_heads transformer's head-level graph (q/k/v-apart names)."""

    n_layers: int
    n_heads: int
    edges: frozenset = field(default_factory=frozenset)  # of (source, destination) name pairs
    rule: str = ""  # how the truth was obtained, one sentence for reports

    def __post_init__(self):
        object.__setattr__(self, "edges", frozenset((str(s), str(d)) for s, d in self.edges))
        g = TransformerGraph(self.n_layers, self.n_heads, split_qkv=True)
        src, dst = set(g.src_names()), set(g.dest_names())
        allowed = g.allowed
        si, di = {n: i for i, n in enumerate(g.src_names())}, {n: i for i, n in enumerate(g.dest_names())}
        for s, d in sorted(self.edges):
            if s not in src or d not in dst:
                raise ModcircuitError(f"ground-truth edge {s}->{d} is not in a {self.n_layers}-layer, "
                                      f"{self.n_heads}-head graph (sources like embed, A0.1, MLP0; "
                                      f"destinations like A1.0.q, MLP1, output)")
            if not allowed[di[d], si[s]]:
                raise ModcircuitError(f"ground-truth edge {s}->{d} goes backwards: {s} writes after {d} reads")

    def mask(self, graph: TransformerGraph) -> torch.Tensor:
        """Bool [n_dest, n_src] in `graph`'s layout (q/k/v apart or merged), True on true edges."""
        if (graph.n_layers, graph.n_heads) != (self.n_layers, self.n_heads):
            raise ModcircuitError(f"the ground truth is for {self.n_layers} layers x {self.n_heads} heads, the "
                                  f"graph has {graph.n_layers} x {graph.n_heads}")
        si = {n: i for i, n in enumerate(graph.src_names())}
        di = {n: i for i, n in enumerate(graph.dest_names())}
        m = torch.zeros(graph.n_dest, graph.n_src, dtype=torch.bool)
        for s, d in self.edges:
            if not graph.split_qkv and d.startswith("A") and d.count(".") == 2:
                d = d.rsplit(".", 1)[0]
            m[di[d], si[s]] = True
        return m

    def to_dict(self) -> dict:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "rule": self.rule,
                "edges": [list(e) for e in sorted(self.edges)]}

    @classmethod
    def from_dict(cls, d: dict) -> "HeadTruth":
        try:
            return cls(int(d["n_layers"]), int(d["n_heads"]), frozenset(tuple(e) for e in d["edges"]),
                       str(d.get("rule", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise ModcircuitError(f"not a ground-truth record ({e}); expected n_layers, n_heads, edges") from None
