"""A report never mixes configurations: an edited and re-run study keeps n per configuration, counts
its stale cells, and `--all` shows both configurations labelled by what differs."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pytest

from modcircuit.cli import main
from modcircuit.report import build_report
from modcircuit.study import Store, run_study

SPEC = """
name = "edited"
tasks = ["two-moons"]
regimes = ["vanilla", "bimt"]
seeds = [0, 1]
methods = ["magnitude"]
thresholds = [0.05]
curves = false
results = "r.duckdb"
[train]
steps = {steps}
[profile]
enabled = false
fresh_process = false
"""


def _row(rep, label_start):
    return [r for r in rep.tables["two-moons"][1] if r[0].startswith(label_start)]


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """The study at 60 steps, its report; then edited to 80 steps, re-run (the issue's 300 -> 400)."""
    d = tmp_path_factory.mktemp("edited")
    spec = d / "s.toml"
    spec.write_text(textwrap.dedent(SPEC.format(steps=60)))
    run_study(spec, progress=False, echo=lambda s: None)
    before = build_report(d / "r.duckdb", d / "before", figures=False)
    spec.write_text(textwrap.dedent(SPEC.format(steps=80)))
    run_study(spec, progress=False, echo=lambda s: None)
    return d, before


def _new_gaps(d: Path, regime: str, steps: int) -> list[float]:
    with Store(d / "r.duckdb", read_only=True) as s:
        runs = {r["key"]: json.loads(r["config"])["steps"] for r in s.rows("runs")}
        return [c["logit_gap"] for c in s.rows("circuits") if c["regime"] == regime and runs[c["run_key"]] == steps]


def test_edited_study_report_keeps_n_per_configuration(edited):
    d, before = edited
    after = build_report(d / "r.duckdb", d / "after", figures=False)
    for rep in (before, after):
        assert [r[0] for r in rep.tables["two-moons"][1]] == ["vanilla (n=2)", "bimt (n=2)"]
        faithful = [c for c in rep.claims if c["claim"] == "faithful"]
        assert len(faithful) == 1 and (faithful[0]["n_a"], faithful[0]["n_b"]) == (2, 2)
        assert "(n=2 vs 2)" in rep.markdown.read_text()
    # the values shown are the 80-step runs' alone
    gaps = _new_gaps(d, "bimt", 80)
    assert len(gaps) == 2
    faithful = next(c for c in after.claims if c["claim"] == "faithful")
    assert faithful["mean_a"] == pytest.approx(np.mean(gaps))
    assert after.stale == {"runs": 4, "circuits": 4}
    assert "8 stale cells (4 runs, 4 circuits)" in after.note and "--all" in after.note
    assert after.note in after.markdown.read_text()
    assert before.stale == {"runs": 0, "circuits": 0}


def test_report_all_shows_stale_configurations_as_their_own_rows(edited):
    d, _ = edited
    rep = build_report(d / "r.duckdb", d / "all", figures=False, include_stale=True)
    labels = [r[0] for r in rep.tables["two-moons"][1]]
    assert labels == ["vanilla [steps=80] (n=2)", "bimt [steps=80] (n=2)",
                      "vanilla [steps=60; stale] (n=2)", "bimt [steps=60; stale] (n=2)"]
    faithful = [c for c in rep.claims if c["claim"] == "faithful"]
    assert sorted(c["config"] for c in faithful) == ["steps=60; stale", "steps=80"]
    assert all((c["n_a"], c["n_b"]) == (2, 2) for c in faithful)
    old = next(c for c in faithful if c["config"] == "steps=60; stale")
    assert old["mean_a"] == pytest.approx(np.mean(_new_gaps(d, "bimt", 60)))


def test_report_cli_all_and_json_stdout(edited, capsys):
    d, _ = edited
    assert main(["report", str(d / "r.duckdb"), "-o", str(d / "cli-all"), "--no-figures", "--all", "--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)  # stdout is the JSON document alone
    assert doc["stale_cells"] == {"runs": 4, "circuits": 4}
    assert {c["config"] for c in doc["claims"] if c["claim"] == "faithful"} == {"steps=60; stale", "steps=80"}
    assert main(["report", str(d / "r.duckdb"), "-o", str(d / "cli"), "--no-figures"]) == 0
    out, _ = capsys.readouterr()
    assert "8 stale cells" in out and "steps=60" not in out


def test_results_file_without_manifest_still_reports_each_configuration_apart(edited, tmp_path):
    d, _ = edited
    old = tmp_path / "old.duckdb"
    shutil.copy(d / "r.duckdb", old)
    con = duckdb.connect(str(old))
    con.execute("DROP TABLE study_cells")
    con.execute("DROP TABLE studies")
    con.close()
    rep = build_report(old, tmp_path / "rep", figures=False)
    assert "predates study manifests" in rep.note and rep.stale == {"runs": 0, "circuits": 0}
    labels = [r[0] for r in rep.tables["two-moons"][1]]
    assert sorted(labels) == sorted(["vanilla [steps=60] (n=2)", "bimt [steps=60] (n=2)",
                                     "vanilla [steps=80] (n=2)", "bimt [steps=80] (n=2)"])
    assert all((c["n_a"], c["n_b"]) == (2, 2) for c in rep.claims)
