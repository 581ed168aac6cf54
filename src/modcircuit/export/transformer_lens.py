"""A GeometricTransformer to TransformerLens (`HookedTransformer`, TransformerLens 3.x) and back.

Pinned: transformer-lens==3.9.0. TransformerLens 4.x removed `HookedTransformer` (its replacement
`TransformerBridge` wraps Hugging Face models), and auto-circuit 1.0.1 expects `HookedTransformer`;
below 3.0 it downgrades numpy and pandas.

The mapping is exact: both models are pre-LN (or without normalization), learned positional
embeddings, causal or bidirectional attention scaled by sqrt(d_head), ReLU/GELU/GELU-new MLPs (or
attention-only blocks) and an untied unembedding. `from_transformer_lens` is the inverse for the GPT-2
family of configurations (LNPre, LayerNorm without gain and bias, becomes LayerNorm with gain 1 and bias
0); any other setting (rotary, grouped-query attention, RMSNorm, gated or parallel MLPs, ...) is refused
with a one-line error naming it.
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
        d_vocab_out=model.d_out, act_fn=None if model.attn_only else model.act,
        normalization_type="LN" if model.layernorm else None, attn_only=model.attn_only,
        eps=model.ln_eps, positional_embedding_type="standard", attention_dir=model.attention_dir,
        original_architecture="modcircuit",
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
            if not model.attn_only:
                sd[p + "ln2.w"], sd[p + "ln2.b"] = b.ln2.weight.clone(), b.ln2.bias.clone()
        for n in "QKV":
            sd[p + f"attn.W_{n}"] = getattr(b, f"W_{n}").view(H, dh, d).transpose(1, 2).clone()
            sd[p + f"attn.b_{n}"] = getattr(b, f"b_{n}").view(H, dh).clone()
        sd[p + "attn.W_O"] = b.W_O.view(d, H, dh).permute(1, 2, 0).clone()
        sd[p + "attn.b_O"] = b.b_O.clone()
        if not model.attn_only:
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


# settings outside the GPT-2 family: (config field, its value -> whether it is unsupported)
_UNSUPPORTED = (
    ("positional_embedding_type", lambda v: v != "standard"),
    ("normalization_type", lambda v: v not in (None, "LN", "LNPre")),
    ("n_key_value_heads", lambda v: v is not None),  # grouped-query attention
    ("gated_mlp", bool), ("parallel_attn_mlp", bool), ("final_rms", bool), ("uses_rms_norm", bool),
    ("num_experts", lambda v: v is not None), ("use_local_attn", bool), ("attn_types", lambda v: v is not None),
    ("use_qk_norm", bool), ("clip_qkv", lambda v: v is not None), ("use_logn_attn", bool),
    ("post_embedding_ln", bool), ("scale_attn_by_inverse_layer_idx", bool),
    ("use_normalization_before_and_after", bool), ("attn_scores_soft_cap", lambda v: v is not None and v > 0),
    ("output_logits_soft_cap", lambda v: v is not None and v > 0), ("use_attention_sinks", bool),
    ("use_attn_scale", lambda v: not v),
)


def _check_importable(cfg) -> None:
    for name, bad in _UNSUPPORTED:
        if hasattr(cfg, name) and bad(getattr(cfg, name)):
            raise ModcircuitError(f"cannot import a HookedTransformer with {name}={getattr(cfg, name)!r}; "
                                  f"supported: the GPT-2 family (standard positions, LN/LNPre/no normalization, "
                                  f"one key/value head per head, plain MLPs)")
    if abs(cfg.attn_scale - cfg.d_head ** 0.5) > 1e-12 * cfg.d_head:
        raise ModcircuitError(f"cannot import a HookedTransformer with attn_scale={cfg.attn_scale!r}; "
                              f"supported: sqrt(d_head) = {cfg.d_head ** 0.5:g}")
    if not cfg.attn_only and cfg.act_fn not in ("relu", "gelu", "gelu_new"):
        raise ModcircuitError(f"cannot import a HookedTransformer with act_fn={cfg.act_fn!r}; "
                              f"supported: relu, gelu, gelu_new")
    if cfg.attention_dir not in ("causal", "bidirectional"):
        raise ModcircuitError(f"cannot import a HookedTransformer with attention_dir={cfg.attention_dir!r}; "
                              f"supported: causal, bidirectional")


@torch.no_grad()
def from_transformer_lens(hooked):
    """A GeometricTransformer computing the HookedTransformer's logits at every position (`logits_all`),
    in its dtype and on its device; `to_transformer_lens` is its inverse."""
    from ..nn.transformer import GeometricTransformer

    HookedTransformer, _ = _import_tl()
    if not isinstance(hooked, HookedTransformer):
        raise ModcircuitError(f"from_transformer_lens needs a HookedTransformer, got {type(hooked).__name__}")
    cfg = hooked.cfg
    _check_importable(cfg)
    model = GeometricTransformer(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
        d_mlp=1 if cfg.attn_only else cfg.d_mlp, n_ctx=cfg.n_ctx, d_out=cfg.d_vocab_out, d_vocab=cfg.d_vocab,
        act="relu" if cfg.attn_only else cfg.act_fn, layernorm=cfg.normalization_type is not None,
        attention_dir=cfg.attention_dir, attn_only=cfg.attn_only, ln_eps=cfg.eps,
    )
    sd = hooked.state_dict()
    model = model.to(device=sd["embed.W_E"].device, dtype=sd["embed.W_E"].dtype)
    H, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model

    def ln(ours, prefix):  # LNPre has no gain and bias: 1 and 0
        if ours is not None:
            ours.weight.copy_(sd.get(prefix + ".w", torch.ones_like(ours.weight)))
            ours.bias.copy_(sd.get(prefix + ".b", torch.zeros_like(ours.bias)))

    model.W_E.copy_(sd["embed.W_E"].T)
    model.W_pos.copy_(sd["pos_embed.W_pos"].T)
    for l, b in enumerate(model.blocks):
        p = f"blocks.{l}."
        ln(b.ln1, p + "ln1")
        for n in "QKV":
            getattr(b, f"W_{n}").copy_(sd[p + f"attn.W_{n}"].transpose(1, 2).reshape(H * dh, d))
            getattr(b, f"b_{n}").copy_(sd[p + f"attn.b_{n}"].reshape(H * dh))
        b.W_O.copy_(sd[p + "attn.W_O"].permute(2, 0, 1).reshape(d, H * dh))
        b.b_O.copy_(sd[p + "attn.b_O"])
        if not cfg.attn_only:
            ln(b.ln2, p + "ln2")
            b.W_in.copy_(sd[p + "mlp.W_in"].T)
            b.b_in.copy_(sd[p + "mlp.b_in"])
            b.W_out.copy_(sd[p + "mlp.W_out"].T)
            b.b_out.copy_(sd[p + "mlp.b_out"])
    ln(model.ln_f, "ln_final")
    model.W_U.copy_(sd["unembed.W_U"].T)
    model.b_U.copy_(sd["unembed.b_U"])
    return model.eval()
