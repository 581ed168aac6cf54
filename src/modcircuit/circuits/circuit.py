"""A discovered circuit: per-edge scores and the kept mask, how it was found, and its JSON file.

CircuitBase holds what every circuit has; Circuit is an MLP's (one score/mask tensor per Linear, shaped
like its weight), TransformerCircuit a GeometricTransformer's head-level one (one [n_dest, n_src]
tensor, see graph.TransformerGraph). `load_circuit` reads either kind (the file's "graph" field)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import write_text
from ..outputs import prepare_output
from ..errors import ModcircuitError
from .graph import Graph, TransformerGraph, as_mlp

FORMAT = "modcircuit-circuit"
VERSION = 1


@dataclass
class CircuitBase:
    scores: list[torch.Tensor]  # higher = more important; NaN where there is no edge
    mask: list[torch.Tensor]  # bool, same shapes: the edges kept
    method: str
    threshold: float | None = None
    metric: str = "kl"
    ablation: str = "resample"
    seconds: float = 0.0
    forward_passes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return self.graph.n_edges

    @property
    def n_kept(self) -> int:
        return int(sum(int(m.sum()) for m in self.mask))

    def nodes_kept(self) -> list[torch.Tensor]:
        """bool per node (as a list of tensors): the node touches at least one kept edge."""
        raise NotImplementedError

    @property
    def n_nodes(self) -> int:
        return int(sum(len(n) for n in self.nodes_kept()))

    @property
    def n_nodes_kept(self) -> int:
        return int(sum(int(n.sum()) for n in self.nodes_kept()))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(method={self.method!r}, kept {self.n_kept}/{self.n_edges} edges, "
                f"threshold={self.threshold}, metric={self.metric!r}, ablation={self.ablation!r}, "
                f"{self.seconds:.3g} s, {self.forward_passes} forward passes)")

    def with_mask(self, mask: list[torch.Tensor], method: str | None = None) -> "CircuitBase":
        import dataclasses

        return dataclasses.replace(self, mask=[m.bool() for m in mask], method=method or self.method,
                                   extra=dict(self.extra))

    def check_model(self, model) -> None:
        raise NotImplementedError

    # ---- file --------------------------------------------------------------------------------
    def _header(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "method": self.method, "threshold": self.threshold,
                "metric": self.metric, "ablation": self.ablation, "seconds": self.seconds,
                "forward_passes": self.forward_passes, "n_edges": self.n_edges, "n_kept": self.n_kept,
                "n_nodes": self.n_nodes, "n_nodes_kept": self.n_nodes_kept}

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the circuit JSON; an existing file is replaced only with overwrite=True and only if it is
        a circuit file (see modcircuit.outputs)."""
        path = prepare_output(path, "circuit", overwrite=overwrite)
        return write_text(path, json.dumps(self.to_dict(), allow_nan=False))

    @staticmethod
    def _common(d: dict) -> dict:
        return dict(method=d["method"], threshold=d.get("threshold"), metric=d["metric"], ablation=d["ablation"],
                    seconds=float(d.get("seconds", 0.0)), forward_passes=int(d.get("forward_passes", 0)),
                    extra=dict(d.get("extra") or {}))

    @classmethod
    def from_dict(cls, d: dict, model=None, source: str = "circuit") -> "CircuitBase":
        """Either kind from its JSON dict (the "graph" field says which); checked against model if given."""
        if d.get("format") != FORMAT:
            raise ModcircuitError(f"{source} is not a modcircuit circuit file (format {d.get('format')!r})")
        kind = TransformerCircuit if d.get("graph") == "transformer" else Circuit
        if cls is not CircuitBase and kind is not cls:
            raise ModcircuitError(f"{source} holds a {kind.__name__}, not a {cls.__name__}; read it with load_circuit")
        try:
            circuit = kind._from_dict(d, source)
        except ModcircuitError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ModcircuitError(f"{source} is not a valid circuit file: {type(e).__name__} {e}")
        if model is not None:
            circuit.check_model(model)
        return circuit

    @classmethod
    def load(cls, path, model=None) -> "CircuitBase":
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


@dataclass(repr=False)
class Circuit(CircuitBase):
    """An MLP's circuit: one score and mask tensor per Linear, shaped like its weight."""

    widths: list[int] = field(default_factory=list)
    node_names: list[list[str]] | None = None
    means: list[torch.Tensor] | None = None  # mean ablation: the constants removed edges carry

    @property
    def graph(self) -> Graph:
        names = self.node_names or [[f"n{l}:{p}" for p in range(w)] for l, w in enumerate(self.widths)]
        return Graph(list(self.widths), names)

    def nodes_kept(self) -> list[torch.Tensor]:
        return self.graph.nodes_kept(self.mask)

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
        edges = [{"source": src, "target": dst, "layer": l, "source_index": i, "target_index": j,
                  "score": _num(self.scores[l][j, i]), "kept": bool(self.mask[l][j, i])}
                 for l, j, i, src, dst in self.graph.edges()]
        return {**self._header(), "widths": list(self.widths),
                "means": [m.tolist() for m in self.means] if self.means is not None else None,
                "extra": _jsonable(self.extra), "edges": edges}

    @classmethod
    def _from_dict(cls, d: dict, source: str) -> "Circuit":
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
        return cls(scores, mask, **cls._common(d), widths=widths, node_names=names, means=means)


@dataclass(repr=False)
class TransformerCircuit(CircuitBase):
    """A GeometricTransformer's head-level circuit: scores and mask as one-element lists of [n_dest, n_src]
    tensors (entries that are not edges: NaN score, False mask)."""

    graph: TransformerGraph | None = None

    def nodes_kept(self) -> list[torch.Tensor]:
        return [self.graph.nodes_kept(self.mask[0])]

    def edge_set(self) -> set[tuple[str, str]]:
        return {(src, dst) for k, s, src, dst in self.graph.edges() if self.mask[0][k, s]}

    def check_model(self, model) -> None:
        from ..nn.transformer import GeometricTransformer

        if not isinstance(model, GeometricTransformer):
            raise ModcircuitError(f"the circuit is for a GeometricTransformer, the model is a {type(model).__name__}")
        g = self.graph
        if (model.n_layers, model.n_heads) != (g.n_layers, g.n_heads):
            raise ModcircuitError(f"the circuit is for {g.n_layers} layers x {g.n_heads} heads, the model has "
                                  f"{model.n_layers} x {model.n_heads}")

    def to_dict(self) -> dict:
        g = self.graph
        edges = [{"source": src, "target": dst, "source_index": s, "target_index": k,
                  "score": _num(self.scores[0][k, s]), "kept": bool(self.mask[0][k, s])}
                 for k, s, src, dst in g.edges()]
        return {**self._header(), "graph": "transformer", "n_layers": g.n_layers, "n_heads": g.n_heads,
                "split_qkv": g.split_qkv, "extra": _jsonable(self.extra), "edges": edges}

    @classmethod
    def _from_dict(cls, d: dict, source: str) -> "TransformerCircuit":
        g = TransformerGraph(int(d["n_layers"]), int(d["n_heads"]), bool(d["split_qkv"]))
        scores = torch.full((g.n_dest, g.n_src), float("nan"), dtype=torch.float64)
        mask = torch.zeros(g.n_dest, g.n_src, dtype=torch.bool)
        edges = d["edges"]
        if len(edges) != g.n_edges:
            raise ModcircuitError(f"{source} lists {len(edges)} edges; its graph has {g.n_edges}")
        allowed = g.allowed
        for e in edges:
            k, s = int(e["target_index"]), int(e["source_index"])
            if not (0 <= k < g.n_dest and 0 <= s < g.n_src and allowed[k, s]):
                raise ModcircuitError(f"{source}: edge {e.get('source')!r} -> {e.get('target')!r} is not in its graph")
            scores[k, s] = float("nan") if e["score"] is None else float(e["score"])
            mask[k, s] = bool(e["kept"])
        return cls([scores], [mask], **cls._common(d), graph=g)


def load_circuit(path, model=None) -> CircuitBase:
    """A circuit file of either kind (checked against model if given)."""
    return CircuitBase.load(path, model)


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
