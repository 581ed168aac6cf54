"""The exported TransformerLens HookedTransformer computes our logits."""
import pytest
import torch

from modcircuit.nn.transformer import GeometricTransformer

torch.set_num_threads(1)

try:
    import transformer_lens  # noqa: F401

    HAVE_TL = hasattr(transformer_lens, "HookedTransformer")
except ImportError:
    HAVE_TL = False
needs_tl = pytest.mark.skipif(not HAVE_TL, reason="transformer-lens 3.x (the [tl] extra) is not installed")


def trained_like(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # non-trivial biases and LayerNorm parameters
    return model


@needs_tl
@pytest.mark.parametrize("layernorm", [True, False])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_exported_hooked_transformer_matches_our_logits(layernorm, act):
    from modcircuit.export import to_transformer_lens

    torch.manual_seed(0)
    model = trained_like(GeometricTransformer(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=3,
                                              d_out=11, d_vocab=12, act=act, layernorm=layernorm))
    # a BIMT relocation first: the export must follow permuted weights
    model.relocate(top_k=8)
    if not layernorm:  # no LayerNorm: logits in the hundreds, so float32 rounding alone exceeds 1e-5; compare in float64
        model.double()
    hooked = to_transformer_lens(model)
    tokens = torch.randint(0, 12, (32, 3))
    ours = model.logits_all(tokens)
    theirs = hooked(tokens)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max().item() < 1e-5
    # the hook configuration edge-level tools need does not change the function
    split = to_transformer_lens(model, use_attn_result=True, use_split_qkv_input=True)
    split.set_use_hook_mlp_in(True)
    assert (split(tokens) - ours).abs().max().item() < 1e-5


@needs_tl
def test_export_of_vector_input_model():
    from modcircuit.export import to_transformer_lens
    from modcircuit.export.transformer_lens import tl_residual_input

    torch.manual_seed(1)
    model = trained_like(GeometricTransformer(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=16, n_ctx=3,
                                              d_out=1, d_input=2))
    hooked = to_transformer_lens(model)
    x = torch.randn(8, 3, 2)
    ours = model.logits_all(x)
    theirs = hooked(tl_residual_input(model, x), start_at_layer=0)
    assert (theirs - ours).abs().max().item() < 1e-5


def test_export_rejects_other_models():
    from modcircuit.errors import ModcircuitError
    from modcircuit.export import to_transformer_lens
    from modcircuit.nn.mlp import MLP

    with pytest.raises(ModcircuitError):
        to_transformer_lens(MLP([2, 3, 2]))
