"""A discovered circuit: per-edge scores and the kept mask, how it was found, and its JSON file.

CircuitBase holds what every circuit has; Circuit is an MLP's (one score/mask tensor per Linear, shaped
like its weight), TransformerCircuit a GeometricTransformer's head-level one (one [n_dest, n_src]
tensor, see graph.TransformerGraph). `load_circuit` reads either kind (the file's "graph" field).

A circuit records the fingerprint of the model it was found on (nn/fingerprint.py); evaluate, draw and
compact refuse a circuit whose model is another one, unless allow_other_model=True (a deliberate
transfer). Files are checked against circuit_schema.py, then for what needs the whole file (indices,
duplicate edges, totals); every problem is one line naming the file and the field."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..atomic import write_text
from ..outputs import prepare_output
from ..errors import ModcircuitError
from ..nn.fingerprint import model_fingerprint
from ..schema import validate
from .circuit_schema import FORMAT, VERSION, MLPFile, TransformerFile, check_header
from .graph import Graph, TransformerGraph, as_mlp


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
    model_fingerprint: str | None = None  # of the model it was found on; None: unknown (hand-built, old file)

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

    def check_shape(self, model) -> None:
        """The model has this circuit's graph (widths, or layers x heads)."""
        raise NotImplementedError

    def _fingerprinted(self, model):
        """The module whose fingerprint identifies `model` for this kind of circuit."""
        return model

    def check_model(self, model, allow_other_model: bool = False, source: str = "the circuit") -> None:
        """The model has this circuit's graph and, unless allow_other_model, is the model it was found on
        (same fingerprint; skipped when the circuit records none)."""
        self.check_shape(model)
        if allow_other_model or self.model_fingerprint is None:
            return
        this = model_fingerprint(self._fingerprinted(model))
        if this != self.model_fingerprint:
            raise ModcircuitError(
                f"{source} was found on another model (fingerprint {self.model_fingerprint[:12]}..., this model "
                f"{this[:12]}...); to apply it anyway give --allow-other-model (API: allow_other_model=True)")

    # ---- file --------------------------------------------------------------------------------
    def _header(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "method": self.method, "threshold": self.threshold,
                "metric": self.metric, "ablation": self.ablation, "seconds": self.seconds,
                "forward_passes": self.forward_passes, "n_edges": self.n_edges, "n_kept": self.n_kept,
                "n_nodes": self.n_nodes, "n_nodes_kept": self.n_nodes_kept,
                "model_fingerprint": self.model_fingerprint}

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the circuit JSON; an existing file is replaced only with overwrite=True and only if it is
        a circuit file (see modcircuit.outputs)."""
        path = prepare_output(path, "circuit", overwrite=overwrite)
        return write_text(path, json.dumps(self.to_dict(), allow_nan=False))

    @staticmethod
    def _common(f) -> dict:
        return dict(method=f.method, threshold=f.threshold, metric=f.metric, ablation=f.ablation,
                    seconds=f.seconds, forward_passes=f.forward_passes, extra=dict(f.extra or {}),
                    model_fingerprint=f.model_fingerprint)

    @classmethod
    def from_dict(cls, d: dict, model=None, source: str = "circuit", allow_other_model: bool = False) -> "CircuitBase":
        """Either kind from its JSON dict (the "graph" field says which), validated; checked against model if
        given (graph, and the model fingerprint unless allow_other_model)."""
        kind = {"mlp": Circuit, "transformer": TransformerCircuit}[check_header(d, source)]
        if cls is not CircuitBase and kind is not cls:
            raise ModcircuitError(f"{source} holds a {kind.__name__}, not a {cls.__name__}; read it with load_circuit")
        f = validate(kind.file_schema, d, source)
        circuit = kind._from_file(f, source)
        for name in ("n_edges", "n_kept", "n_nodes", "n_nodes_kept"):
            actual, recorded = getattr(circuit, name), getattr(f, name)
            if actual != recorded:
                raise ModcircuitError(f"{source}: {name}={recorded} disagrees with the edges, which give {actual}")
        if model is not None:
            circuit.check_model(model, allow_other_model, source)
        return circuit

    @classmethod
    def load(cls, path, model=None, allow_other_model: bool = False) -> "CircuitBase":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModcircuitError(f"circuit file {str(path)!r} does not exist")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModcircuitError(f"circuit file {str(path)!r} is not valid JSON: {e}")
        if not isinstance(d, dict):
            raise ModcircuitError(f"circuit file {str(path)!r} does not hold a JSON object")
        return cls.from_dict(d, model, f"circuit file {str(path)!r}", allow_other_model)


@dataclass(repr=False)
class Circuit(CircuitBase):
    """An MLP's circuit: one score and mask tensor per Linear, shaped like its weight."""

    file_schema: ClassVar = MLPFile

    widths: list[int] = field(default_factory=list)
    node_names: list[list[str]] | None = None
    means: list[torch.Tensor] | None = None  # mean ablation: the constants removed edges carry

    @property
    def graph(self) -> Graph:
        names = self.node_names or [[f"n{l}:{p}" for p in range(w)] for l, w in enumerate(self.widths)]
        return Graph(list(self.widths), names)

    def nodes_kept(self) -> list[torch.Tensor]:
        return self.graph.nodes_kept(self.mask)

    def _fingerprinted(self, model):
        return as_mlp(model)

    def check_shape(self, model) -> None:
        model = as_mlp(model)
        if list(model.widths) != list(self.widths):
            raise ModcircuitError(f"the circuit is for widths {self.widths}, the model has widths {model.widths}")

    # ---- compact -----------------------------------------------------------------------------
    def compact(self, model, allow_other_model: bool = False):
        """A smaller dense MLP computing exactly what the circuit computes (zero or mean ablation).

        Removed edges carry a constant, so they fold into the receiver's bias; a hidden neuron that no kept
        path from the inputs reaches is a constant too and folds into the next biases; a hidden neuron
        with no kept path to an output is dropped. Input and output layers keep their width. A model other
        than the one the circuit was found on is refused unless allow_other_model."""
        from .compact import compact

        return compact(as_mlp(model), self, allow_other_model)

    # ---- file --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        edges = [{"source": src, "target": dst, "layer": l, "source_index": i, "target_index": j,
                  "score": _num(self.scores[l][j, i]), "kept": bool(self.mask[l][j, i])}
                 for l, j, i, src, dst in self.graph.edges()]
        return {**self._header(), "graph": "mlp", "widths": list(self.widths),
                "means": [m.tolist() for m in self.means] if self.means is not None else None,
                "extra": _jsonable(self.extra), "edges": edges}

    @classmethod
    def _from_file(cls, f, source: str) -> "Circuit":
        widths = list(f.widths)
        shapes = [(widths[l + 1], widths[l]) for l in range(len(widths) - 1)]
        total = sum(a * b for a, b in shapes)
        if len(f.edges) != total:
            raise ModcircuitError(f"{source} lists {len(f.edges)} edges; widths {widths} have {total}")
        scores = [torch.full(s, float("nan"), dtype=torch.float64) for s in shapes]
        mask = [torch.zeros(s, dtype=torch.bool) for s in shapes]
        names: list[list[str | None]] = [[None] * w for w in widths]
        seen: dict[tuple[int, int, int], int] = {}
        for n, e in enumerate(f.edges):
            l, j, i = e.layer, e.target_index, e.source_index
            if l >= len(shapes) or j >= shapes[l][0] or i >= shapes[l][1]:
                raise ModcircuitError(f"{source}: edges[{n}] (layer {l}, target {j}, source {i}) is outside widths "
                                      f"{widths}; allowed: layer < {len(shapes)}, target < widths[layer+1], "
                                      "source < widths[layer]")
            if (l, j, i) in seen:
                raise ModcircuitError(f"{source}: edges[{n}] repeats edges[{seen[l, j, i]}] (layer {l}, target {j}, "
                                      f"source {i}); each edge is listed once")
            seen[l, j, i] = n
            scores[l][j, i] = float("nan") if e.score is None else e.score
            mask[l][j, i] = e.kept
            for layer, pos, name in ((l, i, e.source), (l + 1, j, e.target)):
                if names[layer][pos] not in (None, name):
                    raise ModcircuitError(f"{source}: edges[{n}] names neuron {pos} of layer {layer} {name!r}, "
                                          f"an earlier edge {names[layer][pos]!r}; a neuron has one name")
                names[layer][pos] = name
        means = None
        if f.means is not None:
            if [len(m) for m in f.means] != widths[:-1]:
                raise ModcircuitError(f"{source}: means has lengths {[len(m) for m in f.means]}; widths {widths} "
                                      f"need {widths[:-1]} (one per neuron of every layer but the last)")
            means = [torch.tensor(m, dtype=torch.float64) for m in f.means]
        return cls(scores, mask, **cls._common(f), widths=widths, node_names=names, means=means)


@dataclass(repr=False)
class TransformerCircuit(CircuitBase):
    """A GeometricTransformer's head-level circuit: scores and mask as one-element lists of [n_dest, n_src]
    tensors (entries that are not edges: NaN score, False mask)."""

    file_schema: ClassVar = TransformerFile

    graph: TransformerGraph | None = None

    def nodes_kept(self) -> list[torch.Tensor]:
        return [self.graph.nodes_kept(self.mask[0])]

    def edge_set(self) -> set[tuple[str, str]]:
        return {(src, dst) for k, s, src, dst in self.graph.edges() if self.mask[0][k, s]}

    def check_shape(self, model) -> None:
        from ..nn.transformer import GeometricTransformer

        if not isinstance(model, GeometricTransformer):
            raise ModcircuitError(f"the circuit is for a GeometricTransformer, the model is a {type(model).__name__}")
        g = self.graph
        if (model.n_layers, model.n_heads) != (g.n_layers, g.n_heads):
            raise ModcircuitError(f"the circuit is for {g.n_layers} layers x {g.n_heads} heads, the model has "
                                  f"{model.n_layers} x {model.n_heads}")

    def to_mib(self, path, model, *, overwrite: bool = False) -> Path:
        """Write this circuit (found on `model`) as a MIB / EAP-IG graph JSON (see circuits/mib.py)."""
        from .mib import save_mib

        return save_mib(self, path, model, overwrite=overwrite)

    def to_dict(self) -> dict:
        g = self.graph
        edges = [{"source": src, "target": dst, "source_index": s, "target_index": k,
                  "score": _num(self.scores[0][k, s]), "kept": bool(self.mask[0][k, s])}
                 for k, s, src, dst in g.edges()]
        return {**self._header(), "graph": "transformer", "n_layers": g.n_layers, "n_heads": g.n_heads,
                "split_qkv": g.split_qkv, "extra": _jsonable(self.extra), "edges": edges}

    @classmethod
    def _from_file(cls, f, source: str) -> "TransformerCircuit":
        g = TransformerGraph(f.n_layers, f.n_heads, f.split_qkv)
        scores = torch.full((g.n_dest, g.n_src), float("nan"), dtype=torch.float64)
        mask = torch.zeros(g.n_dest, g.n_src, dtype=torch.bool)
        if len(f.edges) != g.n_edges:
            raise ModcircuitError(f"{source} lists {len(f.edges)} edges; its graph has {g.n_edges}")
        allowed = g.allowed
        seen: dict[tuple[int, int], int] = {}
        for n, e in enumerate(f.edges):
            k, s = e.target_index, e.source_index
            if not (k < g.n_dest and s < g.n_src and allowed[k, s]):
                raise ModcircuitError(f"{source}: edges[{n}] {e.source!r} -> {e.target!r} is not in its graph")
            if (k, s) in seen:
                raise ModcircuitError(f"{source}: edges[{n}] repeats edges[{seen[k, s]}] ({e.source!r} -> "
                                      f"{e.target!r}); each edge is listed once")
            seen[k, s] = n
            scores[k, s] = float("nan") if e.score is None else e.score
            mask[k, s] = e.kept
        return cls([scores], [mask], **cls._common(f), graph=g)


def load_circuit(path, model=None, allow_other_model: bool = False) -> CircuitBase:
    """A circuit file of either kind, validated; checked against model if given (its graph, and unless
    allow_other_model that it is the model the circuit was found on)."""
    return CircuitBase.load(path, model, allow_other_model)


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
