"""Every task trains under every regime, deterministically, and checkpoints round-trip exactly."""
import json

import pytest
import torch

import modcircuit as mc
from modcircuit.errors import ModcircuitError
from modcircuit.train import TrainingDiverged

from test_tasks_data import write_mnist


@pytest.mark.parametrize("task_name", mc.task_names())
@pytest.mark.parametrize("regime", mc.REGIMES)
def test_each_task_trains_under_each_regime_and_round_trips(task_name, regime, tmp_path):
    options = {}
    if task_name == "mnist":  # small IDX files written by the test, never a download
        write_mnist(tmp_path / "mnist", n_train=64, n_test=16)
        options["data_dir"] = str(tmp_path / "mnist")
    task = mc.get_task(task_name, seed=0, **options)
    run = mc.train(task, regime=regime, seed=0, steps=4, swap_every=2, batch_size=32)
    assert run.timings["steps"] == 4
    if regime == "bimt":
        assert run.timings["swap_seconds"] > 0
    out = run.save(tmp_path / "run")
    back = mc.load(out)
    for (k, a), (k2, b) in zip(run.model.state_dict().items(), back.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = task.x_test[:16]
    assert torch.equal(run.model(x), back.model(x))
    assert back.regime == regime and back.task_name == task_name and back.metrics == run.metrics
    assert back.task().name == task_name


def test_training_reduces_loss_and_bimt_lowers_connection_cost():
    van = mc.train("two-moons", "vanilla", seed=0, steps=1500)
    bimt = mc.train("two-moons", "bimt", seed=0, steps=1500)
    assert van.history[-1]["loss"] < 0.5 * van.history[0]["loss"]
    assert bimt.metrics["connection_cost"] < 0.5 * van.metrics["connection_cost"]
    assert bimt.timings["n_swaps"] > 0


def test_same_seed_same_weights_different_seed_different_weights():
    a = mc.train("symbolic-independence", "bimt", seed=3, steps=50, swap_every=10)
    b = mc.train("symbolic-independence", "bimt", seed=3, steps=50, swap_every=10)
    c = mc.train("symbolic-independence", "bimt", seed=4, steps=50, swap_every=10)
    for (k, x), y, z in zip(a.model.state_dict().items(), b.model.state_dict().values(), c.model.state_dict().values()):
        assert torch.equal(x, y), k
    assert not torch.equal(a.model.linears[0].weight, c.model.linears[0].weight)


def test_minibatch_training_is_deterministic():
    a = mc.train("digits", "l1", seed=1, steps=20, batch_size=64)
    b = mc.train("digits", "l1", seed=1, steps=20, batch_size=64)
    assert torch.equal(a.model.linears[1].weight, b.model.linears[1].weight)


def test_nan_stops_with_a_clear_message():
    # (an absurd lr is now refused up front, and Adam survives any allowed one: the loss itself goes NaN)
    task = mc.get_task("two-moons")
    task.loss_fn = lambda out, y: out.sum() * float("nan")
    with pytest.raises(TrainingDiverged, match="loss became nan|loss became inf"):
        mc.train(task, "vanilla", seed=0, steps=200)


@pytest.mark.parametrize("override,match", [
    (dict(lr=-1.0), "lr=-1.0"), (dict(lr="abc"), "lr='abc'"), (dict(top_k=0), "top_k=0"),
    (dict(agg="median"), "agg='median'"), (dict(lam_schedule=[[2.0, 1.0]]), "lam_schedule"),
    (dict(device="gpu0"), "device='gpu0'.*cuda:N"),
    (dict(widths=[3, 20, 2]), r"widths \[3, 20, 2\] do not fit task two-moons"), (dict(unknown_key=1), "unknown_key"),
])
def test_bad_hyperparameters_are_named(override, match):
    with pytest.raises(ModcircuitError, match=match):
        mc.train("two-moons", "vanilla", seed=0, steps=2, **override)


def test_unknown_names():
    with pytest.raises(ModcircuitError, match="unknown task 'moons'; allowed: .*two-moons"):
        mc.get_task("moons")
    with pytest.raises(ModcircuitError, match="unknown regime 'bimtx'"):
        mc.train("two-moons", "bimtx", steps=2)


def test_custom_widths_and_sequential_import():
    run = mc.train("two-moons", "bimt", seed=0, steps=10, widths=[2, 8, 8, 8, 2], swap_every=5)
    assert run.model.widths == [2, 8, 8, 8, 2]
    seq = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.ReLU(), torch.nn.Linear(6, 6), torch.nn.Tanh(),
                              torch.nn.Linear(6, 2))
    model = mc.MLP.from_sequential(seq)
    x = torch.randn(10, 2)
    assert torch.equal(model(x), seq(x))
    run = mc.train("two-moons", "bimt", seed=0, steps=10, model=model, swap_every=5)
    assert run.model.activation_names == ["relu", "tanh"]
    with pytest.raises(ModcircuitError, match="Dropout"):
        mc.MLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Dropout(), torch.nn.Linear(3, 2)))


class TestBrokenCheckpoints:
    @pytest.fixture()
    def run_dir(self, tmp_path):
        return mc.train("two-moons", "vanilla", seed=0, steps=2).save(tmp_path / "run")

    def test_truncated_tensors(self, run_dir):
        p = run_dir / "model.safetensors"
        p.write_bytes(p.read_bytes()[:-50])
        with pytest.raises(ModcircuitError, match="model.safetensors' is truncated or corrupt"):
            mc.load(run_dir)

    def test_truncated_json(self, run_dir):
        p = run_dir / "model.json"
        p.write_text(p.read_text()[:40])
        with pytest.raises(ModcircuitError, match="not valid JSON"):
            mc.load(run_dir)

    def test_json_and_tensors_disagree(self, run_dir):
        p = run_dir / "model.json"
        meta = json.loads(p.read_text())
        meta["model"]["widths"] = [2, 21, 20, 2]
        p.write_text(json.dumps(meta))
        with pytest.raises(ModcircuitError, match="tensor 'linears.0.weight' has shape"):
            mc.load(run_dir)

    def test_missing_folder(self, tmp_path):
        with pytest.raises(ModcircuitError, match="does not exist"):
            mc.load(tmp_path / "nope")

    def test_save_is_atomic_over_an_existing_run(self, run_dir):
        run = mc.train("two-moons", "bimt", seed=1, steps=2)
        with pytest.raises(ModcircuitError, match="already exists; pass --overwrite"):
            run.save(run_dir)
        assert mc.load(run_dir).regime == "vanilla"
        run.save(run_dir, overwrite=True)
        assert mc.load(run_dir).regime == "bimt"
        assert sorted(p.name for p in run_dir.parent.iterdir()) == ["run"]
