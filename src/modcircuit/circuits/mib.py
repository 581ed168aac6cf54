"""Head-level circuits in the MIB / EAP-IG graph JSON, so they can be compared with other tools and submitted.

The file (as EAP-IG's Graph.to_json writes and Graph.from_json reads it):
  cfg    {n_layers, n_heads, d_model, parallel_attn_mlp}   (ours: always sequential attention then MLP)
  nodes  {name: {in_graph}}  for input, a{l}.h{h}, m{l}, logits
  edges  {"src->dst": {score, in_graph}}, with a q/k/v suffix where dst is a head: "input->a1.h0<q>"

Names: our embed / A{l}.{h} / MLP{l} / output are MIB's input / a{l}.h{h} / m{l} / logits; the edge sets are
the same (a head reads every earlier source, an MLP also its own layer's heads, logits everything).
MIB graphs always split a head's input into q, k and v. A circuit found without split_qkv maps each edge
src -> A{l}.{h} to the three MIB edges <q>, <k>, <v>, each with that edge's score and kept flag; reading
it back (the file's "modcircuit" block says split_qkv false, or split_qkv=False is asked) merges them
again, which needs the three to agree. A score that is not finite (NaN: never scored) is written as null.
We add two top-level keys other tools ignore: "format" and "modcircuit" (how the circuit was found and
the fingerprint of its model, so a file for another model is refused like a circuit file).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ..atomic import write_text
from ..errors import ModcircuitError
from ..outputs import prepare_output
from .circuit import TransformerCircuit
from .graph import TransformerGraph

MIB_FORMAT = "modcircuit-mib-graph"
_NAME = re.compile(r"^(input|a(\d+)\.h(\d+)|m(\d+))->(a(\d+)\.h(\d+)<([qkv])>|m(\d+)|logits)$")


def _src_name(g: TransformerGraph, s: int) -> str:
    if s == 0:
        return "input"
    l, r = divmod(s - 1, g.n_heads + 1)
    return f"m{l}" if r == g.n_heads else f"a{l}.h{r}"


def _mib_edges(g: TransformerGraph):
    """(MIB edge name, our dest k, our source s) for every MIB edge; unsplit graphs give each head-input
    edge three times (q, k, v), all pointing at the one merged destination."""
    for k, s, _, _ in g.edges():
        src = _src_name(g, s)
        if k == g.dest_out:
            yield f"{src}->logits", k, s
            continue
        l = g.dest_layer(k)
        if k == g.dest_mlp(l):
            yield f"{src}->m{l}", k, s
            continue
        h, c = divmod(k - g.dest_attn(l, 0), g.nq)
        for letter in ("qkv"[c] if g.split_qkv else "qkv"):
            yield f"{src}->a{l}.h{h}<{letter}>", k, s


def _node_names(g: TransformerGraph) -> list[str]:
    names = ["input"]
    for l in range(g.n_layers):
        names += [f"a{l}.h{h}" for h in range(g.n_heads)] + [f"m{l}"]
    return names + ["logits"]


def _score(x) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def mib_dict(circuit: TransformerCircuit, model) -> dict:
    """The MIB graph of `circuit` (checked to be `model`'s, whose d_model MIB's cfg records)."""
    if not isinstance(circuit, TransformerCircuit):
        raise ModcircuitError(f"MIB graphs are head-level transformer graphs; this is a {type(circuit).__name__} "
                              "(an MLP's circuit has no MIB form)")
    circuit.check_model(model)
    g, scores, mask = circuit.graph, circuit.scores[0], circuit.mask[0]
    kept = g.nodes_kept(mask)
    nodes = {name: {"in_graph": bool(kept[i]) if name != "logits" else True}
             for i, name in enumerate(_node_names(g))}
    edges = {name: {"score": _score(scores[k, s]), "in_graph": bool(mask[k, s])} for name, k, s in _mib_edges(g)}
    meta = {"method": circuit.method, "threshold": circuit.threshold, "metric": circuit.metric,
            "ablation": circuit.ablation, "seconds": circuit.seconds, "forward_passes": circuit.forward_passes,
            "split_qkv": g.split_qkv, "model_fingerprint": circuit.model_fingerprint,
            "positions": circuit.extra.get("positions")}
    return {"format": MIB_FORMAT, "modcircuit": meta,
            "cfg": {"n_layers": g.n_layers, "n_heads": g.n_heads, "d_model": int(model.d_model),
                    "parallel_attn_mlp": False},
            "nodes": nodes, "edges": edges}


def save_mib(circuit: TransformerCircuit, path, model, *, overwrite: bool = False) -> Path:
    """Write `circuit` (found on `model`) as a MIB / EAP-IG graph JSON."""
    d = mib_dict(circuit, model)
    path = prepare_output(path, "mib", overwrite=overwrite)
    return write_text(path, json.dumps(d, allow_nan=False))


def _read(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModcircuitError(f"MIB file {str(path)!r} does not exist")
    try:
        d = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModcircuitError(f"MIB file {str(path)!r} is not JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), dict) for k in ("cfg", "edges")):
        raise ModcircuitError(f"MIB file {str(path)!r} needs objects 'cfg' and 'edges' (an EAP-IG Graph.to_json file)")
    return d


def _check_cfg(cfg: dict, model, source: str) -> None:
    from ..nn.transformer import GeometricTransformer

    if not isinstance(model, GeometricTransformer):
        raise ModcircuitError(f"{source} is a transformer graph; the model is a {type(model).__name__}")
    want = {"n_layers": model.n_layers, "n_heads": model.n_heads, "d_model": model.d_model}
    got = {k: cfg.get(k) for k in want}
    if got != want:
        raise ModcircuitError(f"{source} is for a model with {got['n_layers']} layers x {got['n_heads']} heads, "
                              f"d_model {got['d_model']}; this model has {want['n_layers']} x {want['n_heads']}, "
                              f"d_model {want['d_model']}")
    if cfg.get("parallel_attn_mlp"):
        raise ModcircuitError(f"{source} is for a model with parallel attention and MLP (parallel_attn_mlp); "
                              "this model runs them one after the other")


def _split(d: dict, split_qkv: bool | None) -> bool:
    if split_qkv is not None:
        return bool(split_qkv)
    meta = d.get("modcircuit")
    return not (isinstance(meta, dict) and meta.get("split_qkv") is False)  # MIB's own graphs are split


def load_mib(path, model, *, split_qkv: bool | None = None, allow_other_model: bool = False) -> TransformerCircuit:
    """A MIB / EAP-IG graph JSON as a TransformerCircuit of `model`. split_qkv: None keeps q/k/v apart unless
    the file was written from an unsplit circuit; False merges each head's three inputs (they must agree)."""
    source = f"MIB file {str(path)!r}"
    d = _read(path)
    _check_cfg(d["cfg"], model, source)
    g = TransformerGraph.of(model, _split(d, split_qkv))
    scores = torch.full((g.n_dest, g.n_src), float("nan"), dtype=torch.float64)
    mask = torch.zeros(g.n_dest, g.n_src, dtype=torch.bool)
    given, expected = d["edges"], list(_mib_edges(g))
    names = {name for name, _, _ in expected}
    unknown = [n for n in given if n not in names]
    if unknown:
        why = "is no edge name" if not _NAME.match(unknown[0]) else "is not an edge of this model's graph"
        raise ModcircuitError(f"{source}: edge {unknown[0]!r} {why} ({len(unknown)} such edges)")
    if len(given) != len(names):
        missing = next(n for n, _, _ in expected if n not in given)
        raise ModcircuitError(f"{source} lists {len(given)} of the graph's {len(names)} edges; e.g. {missing!r} is missing")
    seen: dict[tuple[int, int], str] = {}
    for name, k, s in expected:
        e = given[name]
        if not isinstance(e, dict) or not isinstance(e.get("in_graph"), bool) or \
                not (e.get("score") is None or isinstance(e.get("score"), (int, float))):
            raise ModcircuitError(f"{source}: edge {name!r} must be {{\"score\": number or null, \"in_graph\": bool}}")
        score = float("nan") if e["score"] is None else float(e["score"])
        if (k, s) in seen:  # a merged head input: its q, k, v copies must agree
            first = seen[k, s]
            if bool(mask[k, s]) != e["in_graph"] or not _same(float(scores[k, s]), score):
                raise ModcircuitError(f"{source}: {first!r} and {name!r} differ; q, k and v inputs merge only when "
                                      "they agree (keep them apart: split_qkv=True)")
            continue
        seen[k, s] = name
        scores[k, s], mask[k, s] = score, e["in_graph"]
    meta = d.get("modcircuit") if isinstance(d.get("modcircuit"), dict) else {}
    _check_meta(meta, source)
    circuit = TransformerCircuit(
        [scores], [mask], method=str(meta.get("method", "mib-import")), threshold=meta.get("threshold"),
        metric=meta.get("metric", "kl"), ablation=meta.get("ablation", "resample"),
        seconds=float(meta.get("seconds", 0.0)), forward_passes=int(meta.get("forward_passes", 0)),
        extra={"positions": meta["positions"]} if meta.get("positions") is not None else {},
        model_fingerprint=meta.get("model_fingerprint"), graph=g)
    circuit.check_model(model, allow_other_model, source)
    return circuit


_META_TYPES = {"method": (str,), "threshold": (int, float, type(None)), "seconds": (int, float),
               "forward_passes": (int,), "model_fingerprint": (str, type(None))}


def _check_meta(meta: dict, source: str) -> None:
    """Our own block, when present, holds what a circuit file would (one-line errors, not tracebacks)."""
    for key, allowed in (("metric", ("kl", "mse")), ("ablation", ("resample", "zero", "mean"))):
        if key in meta and meta[key] not in allowed:
            raise ModcircuitError(f"{source}: modcircuit.{key} {meta[key]!r} is not one of {', '.join(allowed)}")
    for key, types in _META_TYPES.items():
        if key in meta and (not isinstance(meta[key], types) or isinstance(meta[key], bool)):
            raise ModcircuitError(f"{source}: modcircuit.{key} {meta[key]!r} must be of type "
                                  f"{' or '.join(t.__name__ for t in types)}")


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
