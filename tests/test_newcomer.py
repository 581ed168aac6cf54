"""A newcomer's first hour: one default regime, task options from the command line, `--json` output that
is only JSON, and files with ordinary permissions."""
import inspect
import json
import os
import stat

import pytest

import modcircuit as mc
from modcircuit.cli import app, main
from modcircuit.train.config import TrainConfig


def _cli_default(command: str, option: str):
    import typer

    group = typer.main.get_command(app)
    cmd = group.commands[command]
    return next(p.default for p in cmd.params if p.name == option)


def test_one_default_regime_everywhere():
    from modcircuit.viz import record_training

    defaults = {
        "mc.train": inspect.signature(mc.train).parameters["regime"].default,
        "TrainConfig": TrainConfig().regime,
        "modcircuit train": _cli_default("train", "regime"),
        "record_training": inspect.signature(record_training).parameters["regime"].default,
    }
    assert set(defaults.values()) == {"bimt"} == {mc.DEFAULT_REGIME}, defaults
    assert mc.train("two-moons", steps=2).regime == "bimt"


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    """A two-moons run trained from the command line with a task option, and its circuit."""
    folder = tmp_path_factory.mktemp("first-hour")
    run = folder / "run"
    assert main(["train", "--task", "two-moons", "--task-option", "noise=0.3", "--task-option", "n=60",
                 "--steps", "30", "--out", str(run), "--json"]) == 0
    assert main(["discover", str(run), "--method", "eap", "--top-k", "10", "--out", str(folder / "c.json")]) == 0
    return run, folder / "c.json"


def test_task_option_reaches_the_task_and_the_checkpoint(moons):
    run = mc.load(moons[0])
    assert run.task_options == {"noise": 0.3, "n": 60}
    task = run.task()
    assert len(task.x_train) == 60
    assert not task.x_train.equal(mc.get_task("two-moons", n=60).x_train)  # noise 0.3, not the default 0.1


def test_task_option_types_follow_the_defaults(tmp_path):
    assert main(["train", "--task", "modular-addition", "--task-option", "p=7", "--regime", "vanilla",
                 "--steps", "2", "--out", str(tmp_path / "ma"), "--no-progress"]) == 0
    run = mc.load(tmp_path / "ma")
    assert run.task_options == {"p": 7} and run.model.widths[-1] == 7
    assert mc.tasks.parse_task_options("incontext-regression", ["layernorm=false", "act=gelu", "d_model=16"]) == {
        "layernorm": False, "act": "gelu", "d_model": 16}


@pytest.mark.parametrize("args, needle", [
    (["train", "--task", "two-moons", "--task-option", "nois=0.3"], "task two-moons takes no option 'nois'; its options: n, noise"),
    (["train", "--task", "two-moons", "--task-option", "noise"], "must look like key=value"),
    (["train", "--task", "two-moons", "--task-option", "noise=lots"], "option noise takes a value like its default, 0.1"),
    (["train", "--task", "two-moons", "--task-option", "noise=NaN"], "option noise takes a value like its default"),
    (["train", "--task", "two-moons", "--task-option", "noise=-1"], "noise=-1.0 must be a number from 0 to 100"),
    (["train", "--task", "modular-addition", "--task-option", "p=2.5"], "option p takes a value like its default, 59"),
])
def test_bad_task_options_are_one_line(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    assert main([*args, "--out", str(out), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_task_option_that_does_not_fit_the_run_is_refused(tmp_path, capsys):
    assert main(["train", "--task", "modular-addition", "--task-option", "p=7", "--steps", "2",
                 "--out", str(tmp_path / "ma"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["discover", str(tmp_path / "ma"), "--task-option", "p=11", "--out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert "--task-option p=11: the run's model cannot take" in err and err.count("\n") == 1
    assert not (tmp_path / "c.json").exists()


def test_json_output_is_only_json_on_stdout(moons, tmp_path, capfd):
    run, circuit = moons
    commands = {
        "tasks": ["tasks", "--json"],
        "train": ["train", "--task", "two-moons", "--steps", "5", "--out", str(tmp_path / "r"), "--json"],
        "discover": ["discover", str(run), "--task-option", "noise=0.2", "--out", str(tmp_path / "c.json"),
                     "--json"],
        "evaluate": ["evaluate", str(run), str(circuit), "--json"],
        "profile": ["profile", str(run), "--train-repeats", "0", "--latency-repeats", "5",
                    "--throughput-batch", "8", "--json"],
        "draw": ["draw", str(run), "--circuit", str(circuit), "-o", str(tmp_path / "d.svg"), "--json"],
    }
    capfd.readouterr()
    for name, args in commands.items():
        assert main(args) == 0, name
        out = capfd.readouterr().out  # file-descriptor level: child processes and stray prints count too
        assert isinstance(json.loads(out), (dict, list)), name
    assert (tmp_path / "d.svg").is_file()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoints_and_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        folder = mc.train("two-moons", "vanilla", steps=2).save(tmp_path / "run")
        circuit = mc.discover(mc.load(folder).model, mc.get_task("two-moons"), method="magnitude", top_k=5)
        circuit.save(tmp_path / "c.json")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(folder) == 0o777 & ~umask
    for f in (folder / "model.safetensors", folder / "model.json", tmp_path / "c.json"):
        assert mode(f) == 0o666 & ~umask, f
