"""Study-side bad input refused before any work (one line, exit 2, nothing written), paths that follow
the study file, every discovery method, `--dry-run` validation and time estimate, JSON-only stdout."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from modcircuit.circuits.methods import method_names
from modcircuit.cli import main
from modcircuit.study import Store, load_spec, parse_spec, plan, run_study

BASE = """
name = "{name}"
tasks = ["{task}"]
regimes = ["vanilla", "bimt"]
seeds = [0]
methods = {methods}
thresholds = [0.05]
curves = false
results = "{results}"
{extra}
[train]
steps = 30
{train}
[profile]
enabled = false
fresh_process = false
"""


def study(folder: Path, name="t", task="two-moons", methods='["magnitude"]', results="out/r.duckdb", extra="",
          train="") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "s.toml"
    p.write_text(textwrap.dedent(BASE.format(name=name, task=task, methods=methods, results=results, extra=extra,
                                             train=train)))
    return p


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(args: list[str], root: Path, needle: str, capsys) -> str:
    """The command exits 2 with one line naming the problem and writes nothing under root."""
    before = listing(root)
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert listing(root) == before
    return lines[0]


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 100, None])
def test_damaged_results_file_is_one_line_for_report_and_study(tmp_path, capsys, content):
    good = tmp_path / "good.duckdb"
    with Store(good) as s:
        s.commit({"runs": [{"key": "a", "study": "t", "task": "two-moons", "regime": "bimt", "seed": 0}]})
    data = good.read_bytes()
    good.unlink()
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(data[: len(data) // 3] if content is None else content)  # None: a truncated real file
    msg = refused(["report", str(bad), "-o", str(tmp_path / "rep")], tmp_path, "not a readable DuckDB", capsys)
    assert str(bad) in msg
    spec = study(tmp_path / "st", results=str(bad))
    refused(["study", "run", str(spec), "--no-progress"], tmp_path, "not a readable DuckDB", capsys)
    refused(["study", "run", str(spec), "--dry-run", "--no-estimate"], tmp_path, "not a readable DuckDB", capsys)


@pytest.mark.parametrize("kw, needle", [
    ({"name": "../../evil"}, "study name '../../evil' is not a safe file name; allowed: 1-64 letters"),
    ({"name": "a/b"}, "not a safe file name"),
    ({"extra": 'metric = "foo"'}, "unknown metric 'foo'; allowed: default, kl, logit-diff, mse"),
    ({"train": "widths = [2, 8, 3]"}, "widths [2, 8, 3] do not fit task two-moons"),
    ({"train": 'activation = "nope"'}, "unknown activation 'nope'"),
    ({"task": "incontext-regression", "methods": '["magnitude-act"]'}, "method 'magnitude-act' does not support"),
    ({"methods": '["acdc", "telepathy"]'}, "unknown method 'telepathy'"),
    ({"results": "afile/r.duckdb"}, "afile' is a file, not a folder"),
    ({"extra": 'device = "cuda:99"'}, "device 'cuda:99'"),
    ({"extra": 'device = "gpu"'}, "invalid device='gpu'"),
])
def test_bad_study_refused_at_dry_run_and_run(tmp_path, capsys, kw, needle):
    (tmp_path / "afile").write_text("mine")
    spec = study(tmp_path, **kw)
    refused(["study", "run", str(spec), "--dry-run", "--no-estimate"], tmp_path, needle, capsys)
    refused(["study", "run", str(spec), "--no-progress"], tmp_path, needle, capsys)


def test_studies_accept_every_method_of_the_discovery_registry(tmp_path):
    spec = parse_spec({"name": "m", "tasks": ["two-moons"], "regimes": ["bimt"], "seeds": [0],
                       "methods": method_names()})
    assert {"magnitude-act", "acdc-plain"} <= set(spec.methods)
    p = plan(spec)
    assert sorted({c.method for c in p.circuits}) == sorted(method_names())


def test_study_paths_follow_the_study_file_not_the_cwd(tmp_path, monkeypatch):
    spec = study(tmp_path / "project" / "studies", results="../results/r.duckdb")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_spec(Path("..") / "project" / "studies" / "s.toml").results_path().resolve() == \
        (tmp_path / "project" / "results" / "r.duckdb").resolve()
    r1 = run_study(spec, progress=False, echo=lambda s: None)
    assert r1.units_done == 2 and (tmp_path / "project" / "results" / "r.duckdb").is_file()
    assert (tmp_path / "project" / "results" / "r-artifacts" / "runs").is_dir()
    assert listing(elsewhere) == []
    monkeypatch.chdir(tmp_path / "project")  # another folder again: the study resumes, nothing recomputed
    r2 = run_study(Path("studies") / "s.toml", progress=False, echo=lambda s: None)
    assert r2.units_total == 0 and r2.skipped_cells == 4


def test_study_run_json_prints_only_json_on_stdout(tmp_path, capsys):
    spec = study(tmp_path)
    assert main(["study", "run", str(spec), "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["units_run"] == 2 and summary["failures"] == []
    assert "two-moons/vanilla/seed 0" in err  # progress went to stderr
    assert main(["study", "run", str(spec), "--json", "--dry-run", "--no-estimate"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["dry_run"] is True and "already done" in err


def test_dry_run_prints_a_time_estimate_and_writes_nothing(tmp_path):
    spec = study(tmp_path, methods='["magnitude", "eap"]')
    lines: list[str] = []
    r = run_study(spec, dry_run=True, progress=False, echo=lines.append)
    est = [l for l in lines if l.startswith("estimated time: about")]
    assert len(est) == 1 and "an estimate from a" in est[0] and "ms/step" in est[0], lines
    assert r.estimate_seconds is not None and r.estimate_seconds > 0
    assert sum(l.startswith("calibrating two-moons/") for l in lines) == 2  # one per (task, regime)
    assert listing(tmp_path) == ["s.toml"]
