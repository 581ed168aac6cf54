import pytest
import torch

import modcircuit.tasks.planted  # noqa: F401
from modcircuit.circuits import MethodResult, discover, evaluate, method_names, register_method
from modcircuit.circuits.methods.eap import eap_signed
from modcircuit.circuits.patching import PatchContext
from modcircuit.errors import ModcircuitError
from modcircuit.tasks import get_task
from circuit_helpers import pairs, random_mlp


def exact_single_edge_effects(ctx, objective):
    """R(circuit without the edge) - R(full), one masked forward per edge."""
    base = objective(ctx.forward(ctx.full_masks()))
    out = []
    for l, shape in enumerate(ctx.graph.shapes):
        eff = torch.zeros(shape, dtype=torch.float64)
        for j in range(shape[0]):
            for i in range(shape[1]):
                masks = ctx.full_masks()
                masks[l][j, i] = False
                eff[j, i] = objective(ctx.forward(masks)) - base
        out.append(eff)
    return out


def recovered(ctx):
    e = ctx.forward(ctx.full_masks(False))
    u = ctx.target - e
    return lambda out: (((out - e) * u).sum(-1).mean() / (u ** 2).sum(-1).mean()).item()


@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_eap_equals_exact_single_edge_effects_without_nonlinearity(ablation):
    model = random_mlp([4, 6, 5, 3], "identity", seed=7, permute=True)
    clean, corrupt = pairs(4, n=20, seed=8)
    ctx = PatchContext(model, clean, corrupt, ablation=ablation)
    with torch.no_grad():
        exact = exact_single_edge_effects(ctx, recovered(ctx))
    est = eap_signed(ctx, None, "recovered")
    for e, x in zip(est, exact):
        assert torch.allclose(e, x, atol=1e-10)
    c = discover(model, clean, corrupt, method="eap", ablation=ablation)
    for s, x in zip(c.scores, exact):
        assert torch.allclose(s, x.abs(), atol=1e-10)


def test_eap_is_not_exact_with_a_nonlinearity():  # so the test above can fail
    model = random_mlp([4, 6, 5, 3], "tanh", seed=7)
    clean, corrupt = pairs(4, n=20, seed=8)
    ctx = PatchContext(model, clean, corrupt)
    with torch.no_grad():
        exact = exact_single_edge_effects(ctx, recovered(ctx))
    est = eap_signed(ctx, None, "recovered")
    assert max((e - x).abs().max().item() for e, x in zip(est, exact)) > 1e-3


def test_eap_ig_approaches_the_exact_effect_as_steps_grow():
    # a single input edge carries everything: its exact removal effect is the whole clean-vs-corrupt change
    model = random_mlp([1, 1, 8, 2], "tanh", seed=3, scale=2.0)
    clean, corrupt = pairs(1, n=30, seed=4)
    ctx = PatchContext(model, clean, corrupt)
    with torch.no_grad():
        exact = exact_single_edge_effects(ctx, recovered(ctx))[0][0, 0].item()
    assert abs(exact + 1.0) < 1e-9  # removing it gives the corrupted run: R drops from 1 to 0
    errs = {k: abs(eap_signed(ctx, k, "recovered")[0][0, 0].item() - exact) for k in [1, 4, 16, 64]}
    plain = abs(eap_signed(ctx, None, "recovered")[0][0, 0].item() - exact)
    assert plain > 0.05
    assert errs[64] < errs[4] < errs[1]
    assert errs[16] < 1e-2 and errs[64] < 1e-3


def test_eap_ig_completeness_over_input_edges():
    model = random_mlp([3, 7, 6, 2], "silu", seed=11)
    clean, corrupt = pairs(3, n=25, seed=12)
    ctx = PatchContext(model, clean, corrupt)
    total = eap_signed(ctx, 256, "recovered")[0].sum().item()
    assert abs(total + 1.0) < 1e-4


def test_magnitude_and_random_and_registry():
    model = random_mlp([4, 6, 5, 3], seed=1)
    clean, corrupt = pairs(4, seed=2)
    c = discover(model, clean, corrupt, method="magnitude", threshold=0.5)
    for s, lin, m in zip(c.scores, model.linears, c.mask):
        assert torch.allclose(s, lin.weight.detach().double().abs())
        assert torch.equal(m, s >= 0.5)
    ca = discover(model, clean, corrupt, method="magnitude-act")
    h0 = model.features(clean).double().abs().mean(0)
    assert torch.allclose(ca.scores[0], model.linears[0].weight.detach().double().abs() * h0)
    r1 = discover(model, clean, corrupt, method="random", seed=3)
    r2 = discover(model, clean, corrupt, method="random", seed=3)
    r3 = discover(model, clean, corrupt, method="random", seed=4)
    assert all(torch.equal(a, b) for a, b in zip(r1.scores, r2.scores))
    assert not all(torch.equal(a, b) for a, b in zip(r1.scores, r3.scores))
    top = discover(model, clean, corrupt, method="magnitude", top_k=7)
    assert top.n_kept == 7
    flat = torch.cat([s.reshape(-1) for s in top.scores])
    kept = torch.cat([m.reshape(-1) for m in top.mask])
    assert flat[kept].min() >= flat[~kept].max()

    @register_method("test-bias-free", "a user method")
    def user(ctx, threshold, power: int = 2):
        return MethodResult(scores=[w.abs() ** power for w in ctx.W], forward_passes=0)

    assert "test-bias-free" in method_names()
    u = discover(model, clean, corrupt, method="test-bias-free", power=3, threshold=0.1)
    assert torch.allclose(u.scores[1], model.linears[1].weight.detach().double().abs() ** 3)
    with pytest.raises(ModcircuitError, match="no option"):
        discover(model, clean, corrupt, method="test-bias-free", colour=3)


def test_methods_on_planted_ground_truth():
    task = get_task("planted", seed=0)
    model = task.build_model()
    aucs = {}
    for method in ["acdc", "eap", "eap-ig", "probing", "magnitude", "random"]:
        c = discover(model, task, method=method, threshold=1e-3)
        aucs[method] = evaluate(model, c, task, curve_points=4)["auc_edges"]
    assert aucs["acdc"] == 1.0
    assert aucs["probing"] > 0.95
    assert aucs["eap-ig"] > 0.9
    assert aucs["magnitude"] < 0.9  # big inert weights into dead neurons fool it
    assert aucs["acdc"] > aucs["random"]


def test_probing_trades_size_against_faithfulness():
    task = get_task("planted-distractor", seed=1)
    model = task.build_model()
    small = discover(model, task, method="probing", threshold=1e-2, steps=200)
    large = discover(model, task, method="probing", threshold=1e-5, steps=200)
    assert small.n_kept < large.n_kept
    assert all(torch.equal(m, s > 0.5) for m, s in zip(small.mask, small.scores))
