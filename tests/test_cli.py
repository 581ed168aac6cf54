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
    tracr = [row for row in json.loads(r.stdout) if row["task"] == "tracr"]
    assert tracr and tracr[0]["note"] == "model built on demand"  # listed without compiling a program


# bad train arguments (and every other bad input) are cases of the table in test_bad_inputs.py


def test_unknown_command_and_missing_option_are_one_line(capsys):
    assert main(["trian"]) == 2
    assert main(["train", "--task", "two-moons"]) == 2  # --out missing
    errs = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(errs) == 2 and all(e.startswith("error:") for e in errs) and "--out" in errs[1]
