"""What a circuit file must hold (pydantic, strict JSON types), checked before a circuit is built from it.

Versions: 1 (no model fingerprint) and 2 (adds `model_fingerprint`, see nn/fingerprint.py, and `graph`
"mlp" for MLP circuits). A version-2 file must have the `model_fingerprint` key; its value is the
fingerprint of the model the circuit was found on, or null for a circuit built by hand without a model
(then, as for version-1 files, no model check beyond the shapes is possible). Unknown keys are refused:
this module is the only writer of the format, so an unknown key is a typo or a newer file.

The schema checks each field's type and allowed values; circuit.py then checks what needs the whole file:
edge indices inside the graph, no edge listed twice, every edge present, and the recorded totals
(n_edges, n_kept, n_nodes, n_nodes_kept) equal to what the edges give.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ModcircuitError
from ..schema import HEX64

FORMAT = "modcircuit-circuit"
VERSION = 2
VERSIONS = (1, 2)
GRAPHS = ("mlp", "transformer")

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
Count = Annotated[int, Field(ge=0)]  # a count or an index


class Header(BaseModel):
    model_config = _STRICT

    format: Literal["modcircuit-circuit"]
    version: Literal[1, 2]
    method: str
    threshold: float | None = None
    metric: str
    ablation: str
    seconds: float = Field(0.0, ge=0)
    forward_passes: int = Field(0, ge=0)
    n_edges: Count
    n_kept: Count
    n_nodes: Count
    n_nodes_kept: Count
    extra: dict[str, Any] | None = None
    model_fingerprint: str | None = Field(None, pattern=HEX64)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v):
        from .patching import check_metric

        return check_metric(v)

    @field_validator("ablation")
    @classmethod
    def _ablation(cls, v):
        from .patching import check_ablation

        return check_ablation(v)


class Edge(BaseModel):
    model_config = _STRICT

    source: str
    target: str
    source_index: Count
    target_index: Count
    score: float | None  # null: no finite score
    kept: bool


class MLPEdge(Edge):
    layer: Count


class MLPFile(Header):
    graph: Literal["mlp"] = "mlp"
    widths: list[int] = Field(min_length=2)
    means: list[list[float]] | None = None  # mean ablation: per neuron layer but the last
    edges: list[MLPEdge]

    @field_validator("widths")
    @classmethod
    def _widths(cls, v):
        if any(w < 1 for w in v):
            raise ModcircuitError(f"widths {v} must all be >= 1")
        return v


class TransformerFile(Header):
    graph: Literal["transformer"]
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    split_qkv: bool
    edges: list[Edge]


def check_header(d: dict, source: str) -> str:
    """Format, version and graph kind, each with its own clear line; returns the graph kind."""
    if d.get("format") != FORMAT:
        raise ModcircuitError(f"{source} is not a modcircuit circuit file (format {d.get('format')!r})")
    v = d.get("version")
    if type(v) is not int or v not in VERSIONS:
        raise ModcircuitError(f"{source}: unknown circuit file version {v!r}; allowed: "
                              f"{', '.join(map(str, VERSIONS))} (written by a newer modcircuit?)")
    graph = d.get("graph", "mlp")
    if graph not in GRAPHS:
        raise ModcircuitError(f"{source}: unknown graph {graph!r}; allowed: {', '.join(GRAPHS)}")
    if v >= 2 and "model_fingerprint" not in d:
        raise ModcircuitError(f"{source}: required field 'model_fingerprint' is missing (version-2 circuit files "
                              "record the model they were found on; null if none)")
    if v == 1 and d.get("model_fingerprint") is not None:
        raise ModcircuitError(f"{source}: version-1 circuit files have no model_fingerprint; use version 2")
    return graph
