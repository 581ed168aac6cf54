"""Penalties: the directly-added gradient equals autograd's; the schedule is piecewise constant."""
import pytest
import torch

from modcircuit.nn.mlp import MLP
from modcircuit.train.regimes import REGIMES, add_penalty_grad_, connection_cost, lam_at, penalty


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("agg", ["sum", "mean"])
def test_direct_penalty_gradient_equals_autograd(regime, agg):
    torch.manual_seed(0)
    model = MLP([16, 9, 5], "silu", [{"kind": "grid", "shape": [4, 4]}, {"kind": "grid", "shape": [3, 3]},
                                      {"kind": "ring"}]).double()
    pen = penalty(model, regime, 0.3, 1.5, 0.2, agg)
    if pen.requires_grad:
        pen.backward()
    expected = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    add_penalty_grad_(model, regime, 0.3, 1.5, 0.2, agg)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, e, atol=1e-12), regime


def test_connection_cost_matches_its_definition():
    model = MLP([2, 3], "silu").double()
    w, b = model.linears[0].weight, model.linears[0].bias
    # 1-D layouts: inputs at 0.25, 0.75; outputs at 1/6, 1/2, 5/6
    d = torch.tensor([[abs(o - i) for i in (0.25, 0.75)] for o in (1 / 6, 0.5, 5 / 6)], dtype=torch.float64)
    expected = (w.abs() * (2.0 * d + 0.1)).sum() + (b.abs() * 0.1).sum()
    assert connection_cost(model, 2.0, 0.1, "sum").item() == pytest.approx(expected.item())


def test_lam_schedule_is_piecewise():
    sched = [[0.25, 10.0], [0.5, 100.0]]
    assert lam_at(0, 100, 0.01, sched) == 0.01
    assert lam_at(24, 100, 0.01, sched) == 0.01
    assert lam_at(25, 100, 0.01, sched) == pytest.approx(0.1)
    assert lam_at(99, 100, 0.01, sched) == pytest.approx(1.0)
