"""A discovered circuit: per-edge scores and the kept mask, how it was found, and its JSON file."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import write_text
from ..errors import ModcircuitError
from .graph import Graph, as_mlp

FORMAT = "modcircuit-circuit"
VERSION = 1


@dataclass
class Circuit:
    scores: list[torch.Tensor]  # one per Linear, shaped like its weight; higher = more important
    mask: list[torch.Tensor]  # bool, same shapes: the edges kept
    method: str
    threshold: float | None = None
    metric: str = "kl"
    ablation: str = "resample"
    seconds: float = 0.0
    forward_passes: int = 0
    widths: list[int] = field(default_factory=list)
    node_names: list[list[str]] | None = None
    means: list[torch.Tensor] | None = None  # mean ablation: the constants removed edges carry
    extra: dict = field(default_factory=dict)

    # ---- totals ------------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return sum(m.numel() for m in self.mask)

    @property
    def n_kept(self) -> int:
        return int(sum(int(m.sum()) for m in self.mask))

    @property
    def graph(self) -> Graph:
        names = self.node_names or [[f"n{l}:{p}" for p in range(w)] for l, w in enumerate(self.widths)]
        return Graph(list(self.widths), names)

    def nodes_kept(self) -> list[torch.Tensor]:
        return self.graph.nodes_kept(self.mask)

    def __repr__(self) -> str:
        return (f"Circuit(method={self.method!r}, kept {self.n_kept}/{self.n_edges} edges, threshold={self.threshold}, "
                f"metric={self.metric!r}, ablation={self.ablation!r}, {self.seconds:.3g} s, "
                f"{self.forward_passes} forward passes)")

    def with_mask(self, mask: list[torch.Tensor], method: str | None = None) -> "Circuit":
        return Circuit(self.scores, [m.bool() for m in mask], method or self.method, self.threshold, self.metric,
                       self.ablation, self.seconds, self.forward_passes, self.widths, self.node_names, self.means,
                       dict(self.extra))

    def check_model(self, model) -> None:
        model = as_mlp(model)
        if list(model.widths) != list(self.widths):
            raise ModcircuitError(f"the circuit is for widths {self.widths}, the model has widths {model.widths}")

    # ---- compact -----------------------------------------------------------------------------
    def compact(self, model):
        """A smaller dense MLP computing exactly what the circuit computes (zero or mean ablation).

        Removed edges carry a constant, so they fold into the receiver's bias; a hidden neuron that no kept
        path from the inputs reaches is a constant too and folds into the next biases; a hidden neuron
        with no kept path to an output is dropped. Input and output layers keep their width."""
        from .compact import compact

        return compact(as_mlp(model), self)

    # ---- file --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        g = self.graph
        edges = []
        for l, j, i, src, dst in g.edges():
            edges.append({"source": src, "target": dst, "layer": l, "source_index": i, "target_index": j,
                          "score": _num(self.scores[l][j, i]), "kept": bool(self.mask[l][j, i])})
        nodes = self.nodes_kept()
        return {
            "format": FORMAT, "version": VERSION, "method": self.method, "threshold": self.threshold,
            "metric": self.metric, "ablation": self.ablation, "seconds": self.seconds,
            "forward_passes": self.forward_passes, "widths": list(self.widths),
            "n_edges": self.n_edges, "n_kept": self.n_kept,
            "n_nodes": int(sum(len(n) for n in nodes)), "n_nodes_kept": int(sum(int(n.sum()) for n in nodes)),
            "means": [m.tolist() for m in self.means] if self.means is not None else None,
            "extra": _jsonable(self.extra), "edges": edges,
        }

    def save(self, path) -> Path:
        return write_text(path, json.dumps(self.to_dict(), allow_nan=False))

    @classmethod
    def from_dict(cls, d: dict, model=None, source: str = "circuit") -> "Circuit":
        try:
            if d.get("format") != FORMAT:
                raise ModcircuitError(f"{source} is not a modcircuit circuit file (format {d.get('format')!r})")
            widths = [int(w) for w in d["widths"]]
            shapes = [(widths[l + 1], widths[l]) for l in range(len(widths) - 1)]
            scores = [torch.full(s, float("nan"), dtype=torch.float64) for s in shapes]
            mask = [torch.zeros(s, dtype=torch.bool) for s in shapes]
            names = [[None] * w for w in widths]
            edges = d["edges"]
            if len(edges) != sum(a * b for a, b in shapes):
                raise ModcircuitError(f"{source} lists {len(edges)} edges; widths {widths} have {sum(a * b for a, b in shapes)}")
            for e in edges:
                l, j, i = int(e["layer"]), int(e["target_index"]), int(e["source_index"])
                s = e["score"]
                scores[l][j, i] = float("nan") if s is None else float(s)
                mask[l][j, i] = bool(e["kept"])
                names[l][i], names[l + 1][j] = e["source"], e["target"]
            means = [torch.tensor(m, dtype=torch.float64) for m in d["means"]] if d.get("means") is not None else None
            circuit = cls(scores, mask, d["method"], d.get("threshold"), d["metric"], d["ablation"],
                          float(d.get("seconds", 0.0)), int(d.get("forward_passes", 0)), widths, names, means,
                          dict(d.get("extra") or {}))
        except ModcircuitError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ModcircuitError(f"{source} is not a valid circuit file: {type(e).__name__} {e}")
        if model is not None:
            circuit.check_model(model)
        return circuit

    @classmethod
    def load(cls, path, model=None) -> "Circuit":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModcircuitError(f"circuit file {str(path)!r} does not exist")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModcircuitError(f"circuit file {str(path)!r} is not valid JSON: {e}")
        if not isinstance(d, dict):
            raise ModcircuitError(f"circuit file {str(path)!r} does not hold a JSON object")
        return cls.from_dict(d, model, f"circuit file {str(path)!r}")


def load_circuit(path, model=None) -> Circuit:
    return Circuit.load(path, model)


def _num(x) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, torch.Tensor):
        return _jsonable(o.tolist())
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, (int, str, bool)) or o is None:
        return o
    return str(o)
