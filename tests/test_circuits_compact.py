import pytest
import torch

import modcircuit.tasks.planted  # noqa: F401
from modcircuit.circuits import discover
from modcircuit.circuits.patching import PatchContext
from modcircuit.errors import ModcircuitError
from modcircuit.tasks import get_task
from circuit_helpers import pairs, random_mlp


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("ablation", ["zero", "mean"])
@pytest.mark.parametrize("act,permute", [("silu", False), ("relu", True), ("tanh", True)])
def test_compact_equals_circuit_and_is_smaller(ablation, act, permute):
    model = random_mlp([6, 12, 10, 3], act, seed=4, permute=permute)
    clean, corrupt = pairs(6, n=40, seed=5)
    c = discover(model, clean, corrupt, method="acdc", threshold=0.2, ablation=ablation, metric="mse")
    assert 0 < c.n_kept < c.n_edges
    small = c.compact(model)
    assert n_params(small) < n_params(model)
    assert small.widths[0] == 6 and small.widths[-1] == 3
    ctx = PatchContext(model, clean, corrupt, ablation=ablation, means=c.means)
    want = ctx.outputs(c.mask)
    with torch.no_grad():
        got = small(clean).double()
    assert (got - want).abs().max().item() < 1e-5
    # and on fresh inputs too (the folded constants do not depend on the batch)
    x2, _ = pairs(6, n=10, seed=9)
    ctx2 = PatchContext(model, x2, ablation=ablation, means=c.means)
    with torch.no_grad():
        assert (small(x2).double() - ctx2.outputs(c.mask)).abs().max().item() < 1e-5


def test_compact_drops_dead_and_constant_neurons_of_planted_network():
    task = get_task("planted", seed=0)
    model = task.build_model()
    c = discover(model, task, method="acdc", threshold=1e-3, ablation="zero")
    small = c.compact(model)
    # per output: two circuit neurons per hidden layer
    assert small.widths == [6, 4, 4, 2]
    with torch.no_grad():
        assert torch.allclose(small(task.x_test), model(task.x_test), atol=1e-5)


def test_compact_with_nothing_kept_is_constant():
    model = random_mlp([4, 5, 5, 2], seed=1)
    clean, corrupt = pairs(4, seed=2)
    c = discover(model, clean, corrupt, method="magnitude", threshold=1e9, ablation="mean")
    assert c.n_kept == 0
    small = c.compact(model)
    ctx = PatchContext(model, clean, ablation="mean", means=c.means)
    with torch.no_grad():
        assert (small(clean).double() - ctx.outputs(c.mask)).abs().max().item() < 1e-5


def test_compact_refuses_resample():
    model = random_mlp([4, 5, 5, 2], seed=1)
    clean, corrupt = pairs(4, seed=2)
    c = discover(model, clean, corrupt, method="magnitude", threshold=0.5)
    with pytest.raises(ModcircuitError, match="zero.*mean"):
        c.compact(model)
