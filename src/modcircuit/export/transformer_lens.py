"""Export a GeometricTransformer to TransformerLens (`HookedTransformer`, TransformerLens 3.x).

Pinned: transformer-lens==3.9.0. TransformerLens 4.x removed `HookedTransformer` (its replacement
`TransformerBridge` wraps Hugging Face models), and auto-circuit 1.0.1 expects `HookedTransformer`;
below 3.0 it downgrades numpy and pandas.

The mapping is exact: both models are pre-LN with LayerNorm eps 1e-5, learned positional
embeddings, causal attention scaled by sqrt(d_head), ReLU/GELU MLPs and an untied unembedding.
Our [out, in] weights become TransformerLens' [in, out] ones, heads unstacked:
  W_Q [H*dh, d] -> attn.W_Q [H, d, dh]      W_O [d, H*dh] -> attn.W_O [H, dh, d]
  W_in [m, d]   -> mlp.W_in [d, m]          W_out [d, m]  -> mlp.W_out [m, d]
  W_E [d, n]    -> embed.W_E [n, d]          W_pos [d, T] -> pos_embed.W_pos [T, d]
  W_U [o, d]    -> unembed.W_U [d, o]
The HookedTransformer's logits at every position equal `model.logits_all(tokens)`; our
`model(tokens)` is its last position.

Vector-input models (e.g. incontext-regression) have no tokens: the export keeps W_E as a
d_input-row embedding (a one-hot input row is a token) and b_E is folded into the positional
embedding; feed real-valued inputs as `hooked(tl_residual_input(model, x), start_at_layer=0)`.
"""
from __future__ import annotations

import warnings

import torch

from ..errors import ModcircuitError

TL_VERSION = "3.9.0"


def _import_tl():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import transformer_lens
            from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as e:
        raise ModcircuitError(
            f"TransformerLens is not installed ({e}); install the extra: pip install 'modcircuit[tl]' "
            f"(transformer-lens=={TL_VERSION})"
        ) from None
    if not hasattr(transformer_lens, "HookedTransformer"):
        raise ModcircuitError(
            f"transformer-lens {getattr(transformer_lens, '__version__', '?')} has no HookedTransformer; "
            f"install transformer-lens=={TL_VERSION}"
        )
    return HookedTransformer, HookedTransformerConfig


def tl_config(model, **overrides):
    """The HookedTransformerConfig of a GeometricTransformer (keyword overrides are passed through)."""
    _, HookedTransformerConfig = _import_tl()
    kw = dict(
        n_layers=model.n_layers, d_model=model.d_model, n_ctx=model.n_ctx, d_head=model.d_head,
        n_heads=model.n_heads, d_mlp=model.d_mlp, d_vocab=model.d_vocab if model.tokens else model.d_input,
        d_vocab_out=model.d_out, act_fn=model.act, normalization_type="LN" if model.layernorm else None,
        eps=1e-5, positional_embedding_type="standard", attention_dir="causal", original_architecture="modcircuit",
        default_prepend_bos=False, device=str(model.W_E.device), dtype=model.W_E.dtype, seed=None,
    )
    kw.update(overrides)
    return HookedTransformerConfig(**kw)


@torch.no_grad()
def tl_state_dict(model) -> dict[str, torch.Tensor]:
    """Our weights under TransformerLens' names and shapes."""
    H, dh, d = model.n_heads, model.d_head, model.d_model
    sd = {"embed.W_E": model.W_E.T.clone(), "pos_embed.W_pos": model.W_pos.T.clone()}
    if model.b_E is not None:  # vector inputs: the input bias is constant per position, fold it into W_pos
        sd["pos_embed.W_pos"] = sd["pos_embed.W_pos"] + model.b_E
    for l, b in enumerate(model.blocks):
        p = f"blocks.{l}."
        if model.layernorm:
            sd[p + "ln1.w"], sd[p + "ln1.b"] = b.ln1.weight.clone(), b.ln1.bias.clone()
            sd[p + "ln2.w"], sd[p + "ln2.b"] = b.ln2.weight.clone(), b.ln2.bias.clone()
        for n in "QKV":
            sd[p + f"attn.W_{n}"] = getattr(b, f"W_{n}").view(H, dh, d).transpose(1, 2).clone()
            sd[p + f"attn.b_{n}"] = getattr(b, f"b_{n}").view(H, dh).clone()
        sd[p + "attn.W_O"] = b.W_O.view(d, H, dh).permute(1, 2, 0).clone()
        sd[p + "attn.b_O"] = b.b_O.clone()
        sd[p + "mlp.W_in"], sd[p + "mlp.b_in"] = b.W_in.T.clone(), b.b_in.clone()
        sd[p + "mlp.W_out"], sd[p + "mlp.b_out"] = b.W_out.T.clone(), b.b_out.clone()
    if model.layernorm:
        sd["ln_final.w"], sd["ln_final.b"] = model.ln_f.weight.clone(), model.ln_f.bias.clone()
    sd["unembed.W_U"], sd["unembed.b_U"] = model.W_U.T.clone(), model.b_U.clone()
    return sd


def to_transformer_lens(model, **cfg_overrides):
    """A TransformerLens HookedTransformer computing the same logits as `model.logits_all`.

    cfg_overrides go to HookedTransformerConfig (e.g. use_attn_result=True, use_split_qkv_input=True
    for edge-level patching tools such as auto-circuit)."""
    from ..nn.transformer import GeometricTransformer

    if not isinstance(model, GeometricTransformer):
        raise ModcircuitError(f"to_transformer_lens needs a GeometricTransformer, got {type(model).__name__}")
    HookedTransformer, _ = _import_tl()
    cfg = tl_config(model, **cfg_overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked = HookedTransformer(cfg)
    sd = tl_state_dict(model)
    missing, unexpected = hooked.load_state_dict(sd, strict=False)
    params = {n for n, _ in hooked.named_parameters()}
    not_set = sorted(params & set(missing))
    if not_set or unexpected:
        raise ModcircuitError(f"TransformerLens export mismatch: missing {not_set}, unexpected {sorted(unexpected)}")
    hooked.eval()
    return hooked


def tl_residual_input(model, x: torch.Tensor) -> torch.Tensor:
    """For vector-input models: the residual stream to feed with `hooked(resid, start_at_layer=0)`."""
    return model.embed(x)
