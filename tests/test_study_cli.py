"""The study commands through typer: dry run, run + report, report of a missing file."""
from __future__ import annotations

import json
import textwrap

import typer
from typer.testing import CliRunner

from modcircuit.errors import ModcircuitError
from modcircuit.study.cli_commands import report_cmd, study_run_cmd


def app():
    a = typer.Typer()
    study = typer.Typer()
    study.command("run")(study_run_cmd)
    a.add_typer(study, name="study")
    a.command("report")(report_cmd)
    return a


def test_study_run_dry_run_then_run_with_report(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "cli"
        tasks = ["two-moons"]
        regimes = ["vanilla", "bimt"]
        seeds = [0]
        methods = ["magnitude"]
        results = "{tmp_path / 'r.duckdb'}"
        [train]
        steps = 100
        [profile]
        fresh_process = false
        latency_repeats = 10
        throughput_repeats = 3
        throughput_batch = 128
    """))
    r = CliRunner().invoke(app(), ["study", "run", str(spec), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert r.output.count("to train") == 2 and not (tmp_path / "r.duckdb").exists()
    r = CliRunner().invoke(app(), ["study", "run", str(spec), "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert summary["units_run"] == 2 and summary["failures"] == []
    r = CliRunner().invoke(app(), ["report", str(tmp_path / "r.duckdb"), "-o", str(tmp_path / "rep"), "--no-figures"])
    assert r.exit_code == 0, r.output
    assert "two-moons" in r.output and (tmp_path / "rep" / "index.html").is_file()


def test_bad_executor_is_a_one_line_error(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('name = "x"\ntasks = ["two-moons"]\nregimes = ["vanilla"]\nseeds = [0]\nmethods = ["acdc"]\n')
    r = CliRunner().invoke(app(), ["study", "run", str(spec), "--executor", "slurm"])
    assert r.exit_code != 0 and isinstance(r.exception, ModcircuitError)
    assert "unknown executor 'slurm'" in str(r.exception)
