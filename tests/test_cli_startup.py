"""Start-up: `modcircuit --help` and `--version` load no stage (no torch); every command still shows its
own options; `dir(modcircuit)` is the public API; `modcircuit tasks` fits an 80-column terminal."""
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import modcircuit as mc
from modcircuit.cli import STAGE_COMMANDS, load_stage_command, main, stage_summary

SRC = str(Path(mc.__file__).resolve().parents[1])


def _fresh(code: str) -> str:
    """Run `code` in a new interpreter (nothing imported yet) and return its stdout."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_help_and_version_import_no_stage_and_no_torch():
    out = _fresh(
        "import contextlib, io, json, sys\n"
        "from modcircuit.cli import main\n"
        "seen = {}\n"
        "for args in (['--help'], ['--version'], []):\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        rc = main(args)\n"
        "    seen[' '.join(args) or '(none)'] = [rc, buf.getvalue()]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'sklearn', 'matplotlib')"
        " or m.startswith(('modcircuit.circuits', 'modcircuit.study', 'modcircuit.viz', 'modcircuit.train')))\n"
        "print(json.dumps({'seen': seen, 'heavy': heavy}))\n"
    )
    result = json.loads(out)
    assert result["heavy"] == []
    rc, text = result["seen"]["--help"]
    assert rc == 0
    for name in ("tasks", "train", *STAGE_COMMANDS):
        assert name in text
    assert result["seen"]["--version"] == [0, f"modcircuit {version('modcircuit')}\n"]
    assert result["seen"]["(none)"][0] == 0 and "train" in result["seen"]["(none)"][1]  # no arguments: the help


def test_import_modcircuit_is_light_and_version_is_the_package_metadata():
    out = _fresh("import sys, modcircuit as mc; print('torch' in sys.modules, mc.__version__)")
    assert out.split() == ["False", version("modcircuit")]


def test_dir_lists_the_public_api_and_every_name_resolves():
    listed = dir(mc)
    for name in ("train", "load", "discover", "evaluate", "draw", "load_circuit", "Circuit", "TransformerCircuit",
                 "GeometricTransformer", "MLP", "get_task", "to_transformer_lens", "DEFAULT_REGIME", "__version__"):
        assert name in listed
    assert set(mc.__all__) <= set(listed)
    for name in mc.__all__:
        assert getattr(mc, name) is not None, name


def test_train_stays_the_function_after_the_train_subpackage_is_imported(monkeypatch):
    import modcircuit.train  # noqa: F401  (the import system binds the subpackage to modcircuit.train)
    from modcircuit.train.trainer import train

    assert mc.train is train
    monkeypatch.setattr(mc, "train", len)  # tests may still replace it
    assert mc.train is len


@pytest.mark.parametrize("name", sorted(STAGE_COMMANDS))
def test_each_stage_command_shows_its_own_options_and_its_summary(name, capsys):
    command = load_stage_command(name)
    assert main([name, "--help"]) == 0
    text = capsys.readouterr().out
    commands = getattr(command, "commands", {None: command})
    for sub in commands.values():
        if sub is not command:  # a group: each subcommand's own help
            assert main([name, sub.name, "--help"]) == 0
            text = capsys.readouterr().out
        for param in sub.params:
            shown = param.opts[0] if param.opts[0].startswith("-") else param.name  # an option or an argument
            assert shown in text.lower(), f"{name}: {shown} missing from --help"
    if not hasattr(command, "commands"):
        assert stage_summary(name) == command.help.splitlines()[0]  # the listing's line is the docstring's


def test_tasks_table_keeps_every_name_whole_at_80_columns(monkeypatch, capfd):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["tasks"]) == 0
    out = capfd.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    table_names = [line.split()[0] for line in out.splitlines() if line.startswith(" ") and line.split()]
    for name in mc.task_names():
        assert name in table_names, f"{name} cut in the table"


def test_a_mistyped_stage_command_gets_a_suggestion(capsys):
    assert main(["discovr", "run"]) == 2
    err = capsys.readouterr().err
    assert "No such command 'discovr'. Did you mean 'discover'?" in err and err.count("\n") == 1
