"""from_transformer_lens: random HookedTransformers of the GPT-2 family (built from configs, nothing
downloaded) give our logits at every position; to_transformer_lens is its inverse; other settings fail."""
import warnings

import pytest
import torch

import modcircuit as mc
from modcircuit.errors import ModcircuitError

torch.set_num_threads(1)
tl = pytest.importorskip("transformer_lens")
if not hasattr(tl, "HookedTransformer"):
    pytest.skip("transformer-lens 3.x (the [tl] extra) is not installed", allow_module_level=True)


def hooked(seed=0, biases=True, **cfg):
    kw = dict(n_layers=2, d_model=16, n_ctx=5, d_head=4, n_heads=3, d_mlp=24, d_vocab=11, act_fn="gelu_new",
              normalization_type="LN", seed=seed)
    kw.update(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = tl.HookedTransformer(tl.HookedTransformerConfig(**kw)).eval()
    torch.manual_seed(seed)
    with torch.no_grad():  # TransformerLens initialises biases and LayerNorm to 0 and 1: perturb them
        for name, p in h.named_parameters():
            if p.dim() == 1 or name.endswith(("b_Q", "b_K", "b_V")):
                p.copy_(0.3 * torch.randn_like(p) + (1.0 if name.endswith(".w") else 0.0) if biases else
                        (torch.ones_like(p) if name.endswith(".w") else torch.zeros_like(p)))
    return h


CONFIGS = {
    "ln-causal-gelu_new": {},
    "lnpre-relu": dict(normalization_type="LNPre", act_fn="relu"),
    "no-ln-gelu": dict(normalization_type=None, act_fn="gelu"),
    "bidirectional": dict(attention_dir="bidirectional"),
    "attn-only": dict(attn_only=True, d_mlp=None, act_fn=None),
    "attn-only-bidirectional-lnpre": dict(attn_only=True, d_mlp=None, act_fn=None, attention_dir="bidirectional",
                                          normalization_type="LNPre"),
    "no-biases": dict(biases=False),
    "n_ctx-1": dict(n_ctx=1),
    "n_ctx-17": dict(n_ctx=17, n_layers=1),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_imported_logits_equal_hooked_at_every_position(name):
    h = hooked(**CONFIGS[name])
    model = mc.from_transformer_lens(h)
    assert isinstance(model, mc.GeometricTransformer)
    tokens = torch.randint(0, h.cfg.d_vocab, (8, h.cfg.n_ctx))
    with torch.no_grad():
        theirs, ours = h(tokens), model.logits_all(tokens)
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    print(f"{name}: max |logit diff| {diff:.2e}")
    assert diff < 1e-5
    # the inverse: exporting the import gives the same function, and the same weights where TL has them
    back = mc.to_transformer_lens(model)
    with torch.no_grad():
        assert (back(tokens) - theirs).abs().max().item() < 1e-5
    sd, sd_back = h.state_dict(), back.state_dict()
    for k, v in sd.items():
        if k in sd_back and v.dtype.is_floating_point and v.numel():
            assert torch.equal(sd_back[k], v), k
    # and importing the export gives our weights exactly
    again = mc.from_transformer_lens(back)
    for (n, p), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n == n2 and torch.equal(p, p2), n


def test_gpt2_small_shaped_import():
    # GPT-2 small's shape (12 layers, 12 heads, d_model 768, d_mlp 3072, n_ctx 1024, LN, gelu_new) with a
    # small vocabulary (1,000 instead of 50,257) to keep the test fast
    h = hooked(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=1000)
    model = mc.from_transformer_lens(h)
    tokens = torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        diff = (model.logits_all(tokens) - h(tokens)).abs().max().item()
    print(f"gpt2-small-shaped: max |logit diff| {diff:.2e}")
    assert diff < 1e-5
    back = mc.to_transformer_lens(model)
    with torch.no_grad():
        assert (back(tokens) - h(tokens)).abs().max().item() < 1e-5


@pytest.mark.parametrize("setting", [
    dict(positional_embedding_type="rotary", rotary_dim=4),
    dict(n_key_value_heads=1),
    dict(normalization_type="RMS"),
    dict(gated_mlp=True),
    dict(parallel_attn_mlp=True),
    dict(act_fn="silu"),
])
def test_other_architectures_are_refused_with_the_setting_named(setting):
    h = hooked(**setting)
    name = next(iter(setting)) if "act_fn" not in setting else "act_fn"
    with pytest.raises(ModcircuitError, match=name) as e:
        mc.from_transformer_lens(h)
    assert "\n" not in str(e.value)


def test_only_hooked_transformers_are_imported():
    with pytest.raises(ModcircuitError, match="needs a HookedTransformer, got MLP"):
        mc.from_transformer_lens(mc.MLP([2, 3, 2]))


@pytest.mark.parametrize("name,split_qkv", [("bidirectional", False), ("attn-only", True), ("no-ln-gelu", False),
                                            ("attn-only-bidirectional-lnpre", False), ("ln-causal-gelu_new", True)])
def test_fast_acdc_equals_reference_on_imported_models(name, split_qkv):
    from modcircuit.circuits.transformer_graph import TransformerPatchContext, acdc_fast, acdc_plain

    cfg = dict(CONFIGS[name], n_ctx=4, d_vocab_out=5)
    model = mc.from_transformer_lens(hooked(seed=1, **cfg))
    x, xc = torch.randint(0, 11, (12, 4)), torch.randint(0, 11, (12, 4))
    ctx = TransformerPatchContext(model, x, xc, split_qkv=split_qkv)
    with torch.no_grad():  # the full circuit is the model, at the last position
        assert torch.allclose(ctx.forward(ctx.full_mask()), ctx.target, atol=1e-12)
        assert torch.allclose(ctx.target.float(), model(x), atol=1e-5)
    for thr in (0.01,):
        ref = acdc_plain(TransformerPatchContext(model, x, xc, split_qkv=split_qkv), thr)
        fast = acdc_fast(TransformerPatchContext(model, x, xc, split_qkv=split_qkv), thr)
        assert torch.equal(ref.mask, fast.mask)
        both = ~torch.isnan(ref.scores)
        assert torch.allclose(ref.scores[both], fast.scores[both], atol=1e-10, rtol=0)
    for method in ("eap", "magnitude"):
        c = mc.discover(model, x, xc, method=method, split_qkv=split_qkv, top_k=5)
        assert c.n_kept == 5
