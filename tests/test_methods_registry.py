"""One registry for both graph kinds: a method says which kinds it supports; an unsupported pair fails."""
import pytest
import torch

import modcircuit as mc
from modcircuit.circuits.methods import MethodResult, get_method, method_kinds, method_names, register_method
from modcircuit.errors import ModcircuitError


def tiny_transformer():
    torch.manual_seed(0)
    m = mc.GeometricTransformer(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=8, n_ctx=3, d_out=4, d_vocab=5)
    return m, torch.randint(0, 5, (6, 3)), torch.randint(0, 5, (6, 3))


def test_builtin_methods_cover_both_kinds():
    for name in ("acdc", "acdc-plain", "eap", "eap-ig", "magnitude", "probing", "random"):
        assert method_kinds(name) == ["mlp", "transformer"]
    assert "magnitude-act" in method_names("mlp") and "magnitude-act" not in method_names("transformer")


def test_unsupported_pair_is_a_one_line_error():
    m, x, xc = tiny_transformer()
    with pytest.raises(ModcircuitError, match="method 'magnitude-act' does not support transformer graphs") as e:
        mc.discover(m, x, xc, method="magnitude-act")
    assert "\n" not in str(e.value)
    with pytest.raises(ModcircuitError, match="does not support transformer graphs"):
        get_method("magnitude-act", "transformer")
    with pytest.raises(ModcircuitError, match="graph kind"):
        register_method("x", kinds=("graphs",))


def test_a_user_method_for_the_transformer_kind_runs_through_discover():
    @register_method("test-tx-allowed", "every edge scores 1", kinds=("transformer",))
    def allowed(ctx, threshold, value: float = 1.0):
        S = torch.where(ctx.allowed, torch.full(ctx.allowed.shape, value, dtype=torch.float64), float("nan"))
        return MethodResult(S)

    m, x, xc = tiny_transformer()
    c = mc.discover(m, x, xc, method="test-tx-allowed", threshold=0.5)
    assert c.n_kept == c.n_edges
    assert mc.discover(m, x, xc, method="test-tx-allowed", threshold=0.5, value=0.1).n_kept == 0
    with pytest.raises(ModcircuitError, match="has no option 'nope'"):
        mc.discover(m, x, xc, method="test-tx-allowed", nope=1)
    with pytest.raises(ModcircuitError, match="does not support mlp graphs"):
        mc.discover(mc.MLP([2, 3, 2]), torch.randn(4, 2), torch.randn(4, 2), method="test-tx-allowed")
