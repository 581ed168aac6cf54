"""A tracr-compiled RASP program as a GeometricTransformer, with its ground-truth head-level circuit.

What tracr compiles (and what the conversion keeps exactly): bidirectional attention (no causal mask,
no padding: every input is full length), no LayerNorm, ReLU MLPs, a BOS token at position 0, one
attention part and one MLP part per layer (either may be all zeros), heads of one size padded with zero
heads to the same number per layer (tracr does that padding itself), and a constant `one` residual
dimension that every token embedding writes. Both models divide attention scores by sqrt(key size).

Weights map one to one (haiku's [in, out] to our [out, in]): token_embed -> W_E, pos_embed -> W_P
(n_ctx = seq_len + 1, BOS included), query/key/value/linear -> W_Q/W_K/W_V/W_O with their (zero)
biases, mlp linear_1/linear_2 -> W_in/W_out. The unembedding W_U is tracr's own residual -> output
projection (read off tracr's unembed module), so it reads exactly the output variable's dimensions:
categorical outputs have one logit per value (tracr takes their argmax), numerical outputs (frac_prevs)
one output, the value itself (d_out = 1; its metric is MSE). Logits are read at every position; position
0 (BOS) carries no output.

Ground truth (`head_truth`), read off the compiled residual layout: every source writes into a subspace
of the residual stream (embed: W_E and W_P; a head: its OV map W_O,h W_V,h; an MLP: W_out) and every
destination reads one through its own map (a head's q input through W_K,h^T W_Q,h, its k input through
W_Q,h^T W_K,h, its v input through W_O,h W_V,h; an MLP through W_in; the output through W_U). The edge
source -> destination is true when the product read . write is non-zero and the destination lies on a
path to the output (its node feeds, through true edges, the output).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ModcircuitError
from ..nn.transformer import GeometricTransformer
from .programs import TRACR_EXTRA, program_spec

BOS = "BOS"
MLP_EXACTNESS = 100  # tracr's default: the numerical MLPs' approximation sharpness


def import_tracr():
    try:
        import haiku as hk
        import jax.numpy as jnp
        from tracr.compiler import compiling
    except ImportError as e:
        raise ModcircuitError(f"tracr is not installed ({e}); install the extra: {TRACR_EXTRA}") from None
    return compiling, hk, jnp


_COMPILED: dict = {}  # program name -> tracr's AssembledTransformerModel (compiling takes seconds)


def compile_program(name: str):
    """tracr's AssembledTransformerModel of a program in programs.SPECS (cached per process)."""
    spec = program_spec(name)
    if name not in _COMPILED:
        compiling, _, _ = import_tracr()
        _COMPILED[name] = compiling.compile_rasp_to_model(
            spec.build(), vocab=set(spec.vocab), max_seq_len=spec.seq_len, compiler_bos=BOS,
            mlp_exactness=MLP_EXACTNESS)
    return _COMPILED[name]


def _np(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def tracr_unembedding(assembled) -> np.ndarray:
    """tracr's residual -> output matrix [d_model, d_out], from its own unembed module (no argmax)."""
    _, hk, jnp = import_tracr()
    d_model = len(assembled.residual_labels)

    @hk.without_apply_rng
    @hk.transform
    def read(resid):
        return assembled.get_compiled_model().unembed(resid, use_unembed_argmax=False)

    out = _np(read.apply(assembled.params, jnp.eye(d_model, dtype=jnp.float32)))
    return out.reshape(d_model, -1)


def tracr_logits(assembled, tokens: torch.Tensor) -> torch.Tensor:
    """tracr's own forward pass: logits [B, T, d_out] (its outputs before the argmax) for token ids."""
    _, hk, jnp = import_tracr()

    @hk.without_apply_rng
    @hk.transform
    def forward(ids):
        m = assembled.get_compiled_model()
        out = m(ids, use_dropout=False)
        return m.unembed(out.transformer_output.output, use_unembed_argmax=False)

    out = np.asarray(forward.apply(assembled.params, jnp.asarray(tokens.numpy())))
    out = torch.from_numpy(out.copy())
    return out if out.dim() == 3 else out.unsqueeze(-1)


def output_names(assembled, name: str, d_out: int) -> list[str]:
    """The output values in the unembedding's order (categorical), or the program's name (numerical)."""
    enc = getattr(assembled.output_encoder, "encoding_map", None)
    if not enc:  # numerical output: one output, the value itself
        return [name]
    names = {i: str(v) for v, i in enc.items()}
    return [names[i] for i in range(d_out)]


@torch.no_grad()
def to_geometric(assembled) -> GeometricTransformer:
    """The compiled model as a GeometricTransformer (float32) computing tracr's logits at every position."""
    cfg, p = assembled.model_config, assembled.params
    if cfg.layer_norm or cfg.causal:
        raise ModcircuitError(f"the compiled model has layer_norm={cfg.layer_norm}, causal={cfg.causal}; "
                              f"supported: tracr's default (no LayerNorm, bidirectional)")
    W_E, W_P = _np(p["token_embed"]["embeddings"]), _np(p["pos_embed"]["embeddings"])
    W_U = tracr_unembedding(assembled)
    H, dh, L = cfg.num_heads, cfg.key_size, cfg.num_layers
    model = GeometricTransformer(
        n_layers=L, d_model=W_E.shape[1], n_heads=H, d_head=dh, d_mlp=cfg.mlp_hidden_size, n_ctx=W_P.shape[0],
        d_out=W_U.shape[1], d_vocab=W_E.shape[0], act="relu", layernorm=False, attention_dir="bidirectional")
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    model.W_E.copy_(t(W_E.T))
    model.W_pos.copy_(t(W_P.T))
    for l, b in enumerate(model.blocks):
        a, m = f"transformer/layer_{l}/attn/", f"transformer/layer_{l}/mlp/"
        for ours, theirs in (("Q", "query"), ("K", "key"), ("V", "value")):
            getattr(b, f"W_{ours}").copy_(t(_np(p[a + theirs]["w"]).T))
            getattr(b, f"b_{ours}").copy_(t(_np(p[a + theirs]["b"])))
        b.W_O.copy_(t(_np(p[a + "linear"]["w"]).T))
        b.b_O.copy_(t(_np(p[a + "linear"]["b"])))
        b.W_in.copy_(t(_np(p[m + "linear_1"]["w"]).T))
        b.b_in.copy_(t(_np(p[m + "linear_1"]["b"])))
        b.W_out.copy_(t(_np(p[m + "linear_2"]["w"]).T))
        b.b_out.copy_(t(_np(p[m + "linear_2"]["b"])))
    model.W_U.copy_(t(W_U.T))
    model.b_U.zero_()
    return model.eval()


def encode(assembled, sequences: list) -> torch.Tensor:
    """Token ids [B, 1 + n] of value sequences, BOS first (tracr's input encoding)."""
    enc = assembled.input_encoder
    return torch.tensor([enc.encode([BOS, *s]) for s in sequences], dtype=torch.long)


# ---- ground truth --------------------------------------------------------------------------------
@torch.no_grad()
def _writes_and_reads(model: GeometricTransformer):
    """Per source name its write matrix [d_model, *]; per destination name its read matrix [*, d_model]."""
    H, dh = model.n_heads, model.d_head
    f = lambda x: x.detach().double()  # noqa: E731
    writes = {"embed": torch.cat([f(model.W_E), f(model.W_pos)], 1)}
    reads = {"output": f(model.W_U)}
    for l, b in enumerate(model.blocks):
        for h in range(H):
            s = slice(h * dh, (h + 1) * dh)
            Q, K, V, O = f(b.W_Q[s]), f(b.W_K[s]), f(b.W_V[s]), f(b.W_O[:, s])
            writes[f"A{l}.{h}"] = O @ V
            reads[f"A{l}.{h}.q"] = K.T @ Q
            reads[f"A{l}.{h}.k"] = Q.T @ K
            reads[f"A{l}.{h}.v"] = O @ V
        writes[f"MLP{l}"] = f(b.W_out)
        reads[f"MLP{l}"] = f(b.W_in)
    return writes, reads


def _order(name: str) -> tuple:
    """Where a node computes: (layer, 0 for heads / 1 for the MLP); embed first, output last."""
    if name == "embed":
        return (-1, 0)
    if name == "output":
        return (10 ** 9, 0)
    if name.startswith("MLP"):
        return (int(name[3:]), 1)
    return (int(name[1:].split(".")[0]), 0)


def residual_edges(model: GeometricTransformer, rtol: float = 1e-9) -> set:
    """Every (source, destination) whose read . write product through the residual stream is non-zero
    (relative to the two matrices' sizes) and where the source computes before the destination reads."""
    writes, reads = _writes_and_reads(model)
    edges = set()
    for s, w in writes.items():
        for d, r in reads.items():
            node = d.rsplit(".", 1)[0] if d.count(".") == 2 else d
            if _order(s) >= _order(node):
                continue
            scale = float(r.abs().max() * w.abs().max())
            if scale > 0 and float((r @ w).abs().max()) > rtol * scale:
                edges.add((s, d))
    return edges


def head_truth(model: GeometricTransformer):
    """The compiled model's circuit (a circuits.truth.HeadTruth): residual edges whose destination lies on
    a path to the output."""
    from ..circuits.truth import HeadTruth

    edges = residual_edges(model)
    live = {"output"}
    # nodes from the last to the first: a node is live when one of its edges reaches a live node
    nodes = sorted({s for s, _ in edges}, key=_order, reverse=True)
    node_of = lambda d: d.rsplit(".", 1)[0] if d.count(".") == 2 else d  # noqa: E731
    for n in nodes:
        if any(s == n and node_of(d) in live for s, d in edges):
            live.add(n)
    kept = frozenset((s, d) for s, d in edges if node_of(d) in live)
    return HeadTruth(model.n_layers, model.n_heads, kept,
                     rule="tracr: source writes a residual subspace the destination reads (non-zero weight "
                          "product; q, k, v apart), destination on a path to the output")


def tracr_sizes(model: GeometricTransformer, truth: HeadTruth) -> dict:
    from ..circuits.graph import TransformerGraph

    g = TransformerGraph(model.n_layers, model.n_heads, split_qkv=True)
    return {"layers": model.n_layers, "heads": model.n_heads, "d_model": model.d_model, "d_head": model.d_head,
            "d_mlp": model.d_mlp, "edges": int(g.allowed.sum()), "true_edges": len(truth.edges)}
