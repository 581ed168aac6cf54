"""Graph kinds: how `discover` turns a model into a patch context and a method's scores into a Circuit.

    discover: model -> graph kind -> context -> method (registered for that kind) -> Circuit

"mlp": the neuron-level graph of an MLP (PatchContext, Circuit; scores one tensor per linear layer).
"transformer": the head-level graph of a GeometricTransformer (TransformerPatchContext, TransformerCircuit;
scores one [n_dest, n_src] tensor, NaN where there is no edge). A kind names the options that belong to the
graph rather than to the method (the transformer's split_qkv and positions).
"""
from __future__ import annotations

import torch

from ..errors import ModcircuitError
from .circuit import Circuit, CircuitBase, TransformerCircuit
from .graph import Graph, as_mlp


class MLPKind:
    name = "mlp"
    options: tuple[str, ...] = ()

    @staticmethod
    def accepts(model) -> bool:
        return True  # the fallback: as_mlp says what it cannot take

    @staticmethod
    def prepare(model):
        return as_mlp(model)

    @staticmethod
    def context(model, clean, corrupt, *, metric, ablation, labels, dtype, positions=None):
        from .patching import PatchContext

        if positions is not None and not (isinstance(positions, str) and positions == "last"):
            raise ModcircuitError(f"positions {positions!r} apply to transformers; an MLP has one output per example")

        return PatchContext(model, clean, corrupt, metric=metric, ablation=ablation, labels=labels, dtype=dtype)

    @staticmethod
    def scores(ctx, result, method: str, task) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, Graph]:
        graph = Graph.of(ctx.model, task.input_names if task else None, task.output_names if task else None)
        graph.check(result.scores, f"method {method!r} scores")
        scores = [s.detach().cpu().to(torch.float64) for s in result.scores]
        mask = None if result.mask is None else [m.detach().cpu().bool() for m in result.mask]
        return scores, mask, graph

    @staticmethod
    def n_edges(model, **graph_options) -> int:
        return Graph.of(model).n_edges

    @staticmethod
    def edges(ctx) -> None:
        return None  # every entry of the weight-shaped tensors is an edge

    @staticmethod
    def circuit(ctx, graph: Graph, scores, mask, common: dict) -> CircuitBase:
        return Circuit(scores, mask, **common, widths=list(ctx.model.widths), node_names=graph.node_names,
                       means=ctx.means)


class TransformerKind:
    name = "transformer"
    options: tuple[str, ...] = ("split_qkv", "positions")

    @staticmethod
    def accepts(model) -> bool:
        from ..nn.transformer import GeometricTransformer

        return isinstance(model, GeometricTransformer)

    @staticmethod
    def prepare(model):
        return model

    @staticmethod
    def context(model, clean, corrupt, *, metric, ablation, labels, dtype, split_qkv: bool = False,
                positions=None):
        from .transformer_patching import TransformerPatchContext

        return TransformerPatchContext(model, clean, corrupt, metric=metric, ablation=ablation, labels=labels,
                                       dtype=dtype, split_qkv=split_qkv, positions=positions)

    @staticmethod
    def scores(ctx, result, method: str, task):
        scores = [result.scores.detach().cpu().double()]
        mask = None if result.mask is None else [result.mask.detach().cpu().bool()]
        return scores, mask, ctx.graph

    @staticmethod
    def n_edges(model, split_qkv: bool = False, **graph_options) -> int:
        from .graph import TransformerGraph

        return TransformerGraph.of(model, split_qkv).n_edges

    @staticmethod
    def edges(ctx) -> list[torch.Tensor]:
        return [ctx.allowed.cpu()]

    @staticmethod
    def circuit(ctx, graph, scores, mask, common: dict) -> CircuitBase:
        if not ctx.positions.last:  # (absent for the last position, so circuits written before read the same)
            common["extra"]["positions"] = ctx.positions.spec
        return TransformerCircuit(scores, mask, **common, graph=graph)


KINDS = (TransformerKind, MLPKind)  # the first that accepts the model


def graph_kind(model):
    return next(k for k in KINDS if k.accepts(model))
