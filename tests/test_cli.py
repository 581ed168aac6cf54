"""The command line: real processes, one-line errors, non-zero exits, nothing half-written."""
import json
import subprocess
import sys

import pytest

from modcircuit.cli import main


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "modcircuit.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_train_writes_a_checkpoint_and_prints_json(tmp_path):
    out = tmp_path / "moons"
    r = cli("train", "--task", "two-moons", "--regime", "bimt", "--steps", "30", "--swap-every", "10",
            "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["out"] == str(out) and 0 <= info["metrics"]["test_accuracy"] <= 1
    meta = json.loads((out / "model.json").read_text())
    assert meta["regime"] == "bimt" and meta["hyperparameters"]["steps"] == 30
    assert meta["model"]["widths"] == [2, 20, 20, 2] and meta["task"]["name"] == "two-moons"


def test_tasks_lists_every_task():
    r = cli("tasks", "--json")
    assert r.returncode == 0
    names = {row["task"] for row in json.loads(r.stdout)}
    assert {"two-moons", "digits", "symbolic-independence"} <= names


@pytest.mark.parametrize("args,needle", [
    (["--task", "moons"], "unknown task 'moons'"),
    (["--task", "two-moons", "--regime", "bimtx"], "unknown regime 'bimtx'"),
    (["--task", "two-moons", "--lr", "abc"], "--lr"),
    (["--task", "two-moons", "--lr", "-1"], "lr=-1.0"),
    (["--task", "two-moons", "--widths", "3,20,2"], "widths [3, 20, 2] do not fit"),
    (["--task", "two-moons", "--widths", "2,x,2"], "--widths '2,x,2'"),
    (["--task", "two-moons", "--lr", "1e30", "--steps", "100"], "loss became"),
])
def test_bad_input_one_line_nonzero_nothing_written(tmp_path, capsys, args, needle):
    # in-process (the same main() the console script calls) to keep the suite fast
    out = tmp_path / "run"
    code = main(["train", *args, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_command_and_missing_option_are_one_line(capsys):
    assert main(["trian"]) == 2
    assert main(["train", "--task", "two-moons"]) == 2  # --out missing
    errs = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(errs) == 2 and all(e.startswith("error:") for e in errs) and "--out" in errs[1]
