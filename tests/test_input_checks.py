"""Beyond the CLI table (test_bad_inputs.py): strict JSON output, bringing an nn.Sequential to mc.train,
the checks' library entry points, and a progress line whose figures stay fresh."""
import json
import math

import numpy as np
import pytest
import torch

import modcircuit as mc
from modcircuit.cli import main
from modcircuit.errors import ModcircuitError
from modcircuit.jsonout import dumps
from modcircuit.train import trainer


def test_dumps_writes_non_finite_as_null_everywhere():
    text = dumps({"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": np.float64("nan"),
                  "e": torch.tensor([1.5, float("nan")]), "f": (2, 3)})
    assert json.loads(text) == {"a": None, "b": [1.0, None, {"c": None}], "d": None, "e": [1.5, None], "f": [2, 3]}
    assert "NaN" not in text and "Infinity" not in text


def test_evaluate_json_with_a_nan_metric_is_valid_json(tmp_path, monkeypatch, capsys):
    run = mc.train("two-moons", "vanilla", seed=0, steps=5).save(tmp_path / "run")
    assert main(["discover", str(run), "--method", "random", "--out", str(tmp_path / "c.json"), "--json"]) == 0
    from modcircuit.circuits import cli_commands

    real = cli_commands.evaluate

    def with_nan(*a, **k):  # a metric that is undefined (e.g. a zero normaliser) comes back NaN
        rep = real(*a, **k)
        rep["kl"], rep["curve"]["divergence"][0] = float("nan"), float("inf")
        return rep

    monkeypatch.setattr(cli_commands, "evaluate", with_nan)
    capsys.readouterr()
    assert main(["evaluate", str(run), str(tmp_path / "c.json"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kl"] is None and rep["curve"]["divergence"][0] is None and math.isfinite(rep["mse"])


def test_train_takes_a_sequential_as_an_mlp_copy():
    seq = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    before = seq[0].weight.detach().clone()
    run = mc.train("two-moons", "vanilla", seed=0, steps=5, model=seq)
    assert isinstance(run.model, mc.MLP) and run.model.widths == [2, 8, 2]
    assert torch.equal(seq[0].weight, before)  # the user's module is not changed


@pytest.mark.parametrize("model,match", [
    (torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), r"widths \[3, 8, 2\] do not fit"),
    (torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Dropout(), torch.nn.Linear(8, 2)), "Dropout"),
    (torch.nn.Linear(2, 2), "model of type Linear cannot be trained; allowed: modcircuit.MLP"),
])
def test_train_refuses_a_model_it_cannot_train_in_one_line(model, match):
    with pytest.raises(ModcircuitError, match=match) as e:
        mc.train("two-moons", "vanilla", seed=0, steps=5, model=model)
    assert "\n" not in str(e.value)


def test_library_entry_points_check_too():
    model = mc.train("two-moons", "vanilla", seed=0, steps=2).model
    x = torch.randn(10, 2)
    with pytest.raises(ModcircuitError, match=r"clean holds nan at index \(0, 1\)"):
        mc.discover(model, torch.cat([torch.tensor([[0.0, float("nan")]]), x[1:]]), x, method="random")
    with pytest.raises(ModcircuitError, match=r"labels hold 5 at index 2; classes must lie in \[0, 2\)"):
        mc.discover(model, x, x.flip(0), labels=torch.tensor([0, 1, 5, 0, 0, 0, 0, 0, 0, 0]), method="random")
    with pytest.raises(ModcircuitError, match="seed -3 is out of range"):
        mc.train("two-moons", "vanilla", seed=-3, steps=2)
    with pytest.raises(ModcircuitError, match="max_parameters"):
        mc.train("two-moons", "vanilla", seed=0, steps=2, widths=[2, 400, 2], max_parameters=1000)
    assert mc.train("two-moons", "vanilla", seed=0, steps=2, widths=[2, 400, 2], max_parameters=2002).model.widths[1] == 400


class _RecordingBar:
    def __init__(self, *a, **k):
        self.infos = []

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, _id, info=None, **k):
        if info is not None:
            self.infos.append(info)

    def advance(self, _id):
        pass


def test_progress_figures_refresh_between_logs(monkeypatch):
    """With logs only at the first and last step, a clock that moves a second per read still gets the
    line's figures (this step's loss) refreshed at nearly every step, not frozen at step 0's."""
    bar = _RecordingBar()
    ticks = iter(range(10**6))
    monkeypatch.setattr(trainer, "_progress", lambda enabled: bar)
    monkeypatch.setattr(trainer, "_clock", lambda: float(next(ticks)))
    mc.train("two-moons", "vanilla", seed=0, steps=40, log_every=1000, progress=True)
    assert len(bar.infos) >= 38
    assert len(set(bar.infos)) >= 30  # the loss shown changes as training goes
