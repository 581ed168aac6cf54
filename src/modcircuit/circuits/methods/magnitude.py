"""Weight magnitude: the baseline BIMT is about (its claim: the weights alone show the circuit).

magnitude:     |W[j, i]|
magnitude-act: |W[j, i]| * mean_b |h_i|  (mean absolute activation of the source on the clean batch)

On the head-level transformer graph, magnitude is |read_k @ write_s|_F, the size of the composed weights
between a source and a destination (LayerNorm gains folded in).
"""
from __future__ import annotations

import torch

from ...nn.transformer import GeometricTransformer
from ..graph import TransformerGraph
from . import MethodResult, register_method


@register_method("magnitude", "|w|")
def magnitude(ctx, threshold: float) -> MethodResult:
    return MethodResult(scores=[w.abs().cpu() for w in ctx.W], forward_passes=0)


@register_method("magnitude-act", "|w| * mean |source activation| on the clean batch")
def magnitude_act(ctx, threshold: float) -> MethodResult:
    scores = [(w.abs() * h.abs().mean(0)).cpu() for w, h in zip(ctx.W, ctx.h)]
    return MethodResult(scores=scores, forward_passes=1)


def _write_read(m: GeometricTransformer, g: TransformerGraph):
    """Per source the matrix it writes with ([d, n]); per destination the matrix it reads with, LayerNorm
    gain folded in ([n, d])."""
    H, dh = m.n_heads, m.d_head
    write = [torch.cat([m.W_E, m.W_pos], 1)]
    read = []
    for b in m.blocks:
        write += [b.W_O[:, h * dh:(h + 1) * dh] for h in range(H)] + [b.W_out]
    for l, b in enumerate(m.blocks):
        gain1 = b.ln1.weight if b.ln1 is not None else torch.ones_like(b.b_O)
        gain2 = b.ln2.weight if b.ln2 is not None else torch.ones_like(b.b_O)
        for h in range(H):
            qkv = [W[h * dh:(h + 1) * dh] * gain1 for W in (b.W_Q, b.W_K, b.W_V)]
            read += qkv if g.split_qkv else [torch.cat(qkv, 0)]
        read.append(b.W_in * gain2)
    gain = m.ln_f.weight if m.ln_f is not None else m.W_U.new_ones(m.d_model)
    read.append(m.W_U * gain)
    return write, read


@torch.no_grad()
def weight_magnitudes(model: GeometricTransformer, graph: TransformerGraph) -> torch.Tensor:
    """[n_dest, n_src] |read_k @ write_s|_F, the size of the composed weights between a source and a
    destination (LayerNorm gains folded in); NaN where there is no edge."""
    write, read = _write_read(model, graph)
    S = torch.full((graph.n_dest, graph.n_src), float("nan"), dtype=torch.float64)
    for k, s, _, _ in graph.edges():
        S[k, s] = torch.linalg.matrix_norm((read[k] @ write[s]).double()).item()
    return S


@register_method("magnitude", "|w|", kinds=("transformer",))
def transformer_magnitude(ctx, threshold: float) -> MethodResult:
    """|read_k @ write_s|_F: the size of the composed weights between a source and a destination."""
    return MethodResult(weight_magnitudes(ctx.model, ctx.graph), None, 0,
                        {"norm": "frobenius of read @ write, LayerNorm gain folded in"})
