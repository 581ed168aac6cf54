import pytest
import torch

from modcircuit.circuits.patching import PatchContext, divergence
from circuit_helpers import pairs, random_mlp

ABLATIONS = ["resample", "zero", "mean"]


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("permute", [False, True])
def test_full_circuit_is_the_model_and_empty_is_the_ablated_run(ablation, permute):
    model = random_mlp([5, 9, 7, 3], permute=permute, seed=1)
    clean, corrupt = pairs(5, seed=2)
    ctx = PatchContext(model, clean, corrupt, metric="kl", ablation=ablation)
    with torch.no_grad():
        y_model = model(clean).double()
        full = ctx.outputs(ctx.full_masks(True))
        empty = ctx.outputs(ctx.full_masks(False))
    assert divergence("mse", full, y_model).item() < 1e-6
    assert divergence("kl", full, y_model).item() < 1e-6
    # the ablated run, computed independently: the last linear fed its ablated input
    last = model.linears[-1]
    if ablation == "resample":
        a = model.layer_inputs(corrupt)[-1].double()
        expect = model.readout(a @ last.weight.double().T + last.bias.double())
        assert torch.allclose(expect, model(corrupt).double(), atol=1e-5)  # = the corrupted run
    elif ablation == "zero":
        expect = model.readout(last.bias.double().expand(len(clean), -1))
    else:
        a = model.layer_inputs(clean)[-1].double().mean(0, keepdim=True)
        expect = model.readout((a @ last.weight.double().T + last.bias.double()).expand(len(clean), -1))
    assert divergence("mse", empty, expect).item() < 1e-6
    assert divergence("mse", empty, y_model).item() > 1e-3  # the test can fail: ablation changes the output


def test_masked_forward_matches_the_design_formula():
    model = random_mlp([4, 6, 6, 2], seed=3)
    clean, corrupt = pairs(4, seed=4)
    ctx = PatchContext(model, clean, corrupt, ablation="resample")
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(s, generator=g) < 0.5 for s in ctx.graph.shapes]
    m64 = model.clone().double()
    hx = m64.layer_inputs(corrupt.double())
    h = m64.features(clean.double())
    with torch.no_grad():
        for l, lin in enumerate(model.linears):
            W, b, M = lin.weight.double(), lin.bias.double(), masks[l].double()
            z = h @ (M * W).T + hx[l].double() @ ((1 - M) * W).T + b
            h = model.act(l + 1, z) if l + 1 < model.n_linears else z
        got = ctx.forward(masks)
    assert torch.allclose(got, h, atol=1e-12)
