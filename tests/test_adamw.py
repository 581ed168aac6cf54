"""optimizer="adamw": decoupled weight decay (w -= lr * weight_decay * w each step), beside Adam's coupled L2."""
from __future__ import annotations

import pytest
import torch

import modcircuit as mc
from modcircuit.errors import ModcircuitError
from modcircuit.train.config import make_config


def _initial_and_after_one_step(**overrides):
    task = mc.get_task("two-moons")
    torch.manual_seed(0)  # as the trainer does before building the model
    before = [p.detach().clone() for p in task.build_model().parameters()]
    run = mc.train(task, "vanilla", seed=0, steps=1, **overrides)
    return before, [p.detach() for p in run.model.parameters()]


def test_adamw_decays_weights_apart_from_the_gradient_step():
    # Adam's first step moves each weight by lr * g / (|g| + eps): at most lr, whatever the weight decay (it
    # only enters the gradient); AdamW's also multiplies the weight by 1 - lr * weight_decay
    lr, wd = 0.01, 10.0
    before, adamw = _initial_and_after_one_step(optimizer="adamw", lr=lr, weight_decay=wd)
    _, adam = _initial_and_after_one_step(optimizer="adam", lr=lr, weight_decay=wd)
    for w0, w_adamw, w_adam in zip(before, adamw, adam):
        assert (w_adam - w0).abs().max() <= lr * (1 + 1e-6)
        assert (w_adamw - w0 * (1 - lr * wd)).abs().max() <= lr * (1 + 1e-6)
    big = [w0.abs() > 0.5 for w0 in before]  # where the decay (>= 0.05) exceeds the gradient step (<= 0.01)
    moved = torch.cat([(w1 - w0).abs()[m] for w0, w1, m in zip(before, adamw, big)])
    assert moved.numel() > 0 and moved.min() > 0.04


def test_without_weight_decay_adamw_is_adam():
    _, adamw = _initial_and_after_one_step(optimizer="adamw", weight_decay=0.0)
    _, adam = _initial_and_after_one_step(optimizer="adam", weight_decay=0.0)
    assert all(torch.equal(a, b) for a, b in zip(adamw, adam))


def test_adam_configurations_keep_their_keys_and_bad_optimizers_are_named():
    assert "optimizer" not in make_config({}, {}).model_dump()  # (study cell keys of Adam runs unchanged)
    assert make_config({}, {"optimizer": "adamw"}).model_dump()["optimizer"] == "adamw"
    with pytest.raises(ModcircuitError, match="optimizer='sgd'"):
        make_config({}, {"optimizer": "sgd"})


def test_lr_schedule_multiplies_the_learning_rate_from_its_fraction_of_the_steps_on():
    # lr x0 from half of 4 steps on: the last two steps change nothing, so the weights are those of 2 steps
    kw = dict(optimizer="adamw", lr=0.01, weight_decay=1.0)
    half = mc.train("two-moons", "vanilla", seed=0, steps=4, lr_schedule=[[0.5, 0.0]], **kw)
    two = mc.train("two-moons", "vanilla", seed=0, steps=2, **kw)
    four = mc.train("two-moons", "vanilla", seed=0, steps=4, **kw)
    for a, b, c in zip(half.model.parameters(), two.model.parameters(), four.model.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(half.model.parameters(), four.model.parameters()))
    assert half.hyperparameters["lr_schedule"] == [(0.5, 0.0)] or half.hyperparameters["lr_schedule"] == [[0.5, 0.0]]


def test_betas_reach_the_optimizer():
    # Adam's first step is the same for any betas (bias correction); the second is not
    a = mc.train("two-moons", "vanilla", seed=0, steps=2, betas=[0.9, 0.98])
    b = mc.train("two-moons", "vanilla", seed=0, steps=2)
    assert any(not torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    with pytest.raises(ModcircuitError, match="betas"):
        make_config({}, {"betas": [0.9, 1.0]})
