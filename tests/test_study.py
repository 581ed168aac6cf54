"""Study files, the results store, idempotent and resumable runs (a real SIGKILL), bad study files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modcircuit.errors import ModcircuitError
from modcircuit.study import Store, load_spec, parse_spec, plan, run_study
from modcircuit.study.store import atomic_write_dir, clean_partials, is_timing_column

ROOT = Path(__file__).resolve().parents[1]


def write_spec(tmp_path: Path, body: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def tiny_spec(tmp_path: Path, regimes='["vanilla", "bimt"]', seeds="[0]", methods='["magnitude"]', steps=200,
              profile="enabled = false") -> Path:
    return write_spec(tmp_path, f"""
        name = "tiny"
        tasks = ["two-moons"]
        regimes = {regimes}
        seeds = {seeds}
        methods = {methods}
        thresholds = [0.05]
        results = "{tmp_path / 'res.duckdb'}"
        [train]
        steps = {steps}
        [profile]
        {profile}
        fresh_process = false
    """)


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not is_timing_column(k)} for r in rows]


def test_two_cell_study_runs_then_second_run_does_nothing(tmp_path):
    spec = tiny_spec(tmp_path)
    lines: list[str] = []
    r1 = run_study(spec, progress=False, echo=lines.append)
    assert r1.units_total == 2 and r1.units_done == 2 and not r1.failures
    assert sum(1 for l in lines if l.startswith("[")) == 2  # one summary line per finished unit
    with Store(r1.results, read_only=True) as s:
        rows1 = {t: s.rows(t) for t in ("runs", "circuits", "profiles")}
    assert len(rows1["runs"]) == 2 and len(rows1["circuits"]) == 2
    assert {r["regime"] for r in rows1["runs"]} == {"vanilla", "bimt"}
    for r in rows1["circuits"]:
        assert 0 < r["n_kept"] <= r["n_edges"] and r["logit_gap"] >= 0
        assert (r1.artifacts / r["artifact"]).is_file()
    assert (r1.parquet / "runs.parquet").is_file()

    lines.clear()
    r2 = run_study(spec, progress=False, echo=lines.append)
    assert r2.units_total == 0 and r2.skipped_cells == 4
    assert any("nothing to do" in l for l in lines)
    with Store(r1.results, read_only=True) as s:
        rows2 = {t: s.rows(t) for t in ("runs", "circuits", "profiles")}
    assert rows2 == rows1  # identical, timings included: nothing was recomputed


def test_adding_a_method_reuses_the_trained_models(tmp_path):
    spec = tiny_spec(tmp_path, regimes='["vanilla"]')
    run_study(spec, progress=False, echo=lambda s: None)
    with Store(tmp_path / "res.duckdb", read_only=True) as s:
        run_before = s.rows("runs")
    spec2 = tiny_spec(tmp_path, regimes='["vanilla"]', methods='["magnitude", "random"]')
    r = run_study(spec2, progress=False, echo=lambda s: None)
    assert r.units_total == 1 and r.skipped_cells == 2  # the run and the magnitude circuit
    with Store(tmp_path / "res.duckdb", read_only=True) as s:
        assert s.rows("runs") == run_before  # not retrained
        assert sorted(c["method"] for c in s.rows("circuits")) == ["magnitude", "random"]


def test_dry_run_lists_cells_and_writes_nothing(tmp_path):
    spec = tiny_spec(tmp_path, seeds="[0, 1]")
    lines: list[str] = []
    r = run_study(spec, dry_run=True, progress=False, echo=lines.append)
    assert r.dry_run and len(r.cells) == 4
    assert sum("to train" in l for l in lines) == 4
    assert not (tmp_path / "res.duckdb").exists()


def test_keys_follow_the_full_configuration(tmp_path):
    a = plan(load_spec(tiny_spec(tmp_path)))
    b = plan(load_spec(tiny_spec(tmp_path, steps=201)))
    c = plan(load_spec(tiny_spec(tmp_path)))
    assert [r.key for r in a.runs] == [r.key for r in c.runs]
    assert not {r.key for r in a.runs} & {r.key for r in b.runs}
    assert not {x.key for x in a.circuits} & {x.key for x in b.circuits}
    assert len({r.key for r in a.runs}) == len(a.runs)


KILL_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from modcircuit.study import run_study
from modcircuit.study.cells import run_unit

def slow_unit(unit):
    out = run_unit(unit)
    time.sleep(0.4)
    return out

run_study(sys.argv[1], cell_fn=slow_unit, progress=False, echo=lambda s: print(s, flush=True))
"""


def test_killed_study_resumes_with_every_cell_once(tmp_path):
    spec = tiny_spec(tmp_path, regimes='["vanilla", "l1", "bimt"]', seeds="[0, 1]")
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    finished = 0
    deadline = time.time() + 60
    while finished < 2 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        finished += line.startswith("[")
    assert finished == 2, proc.stderr.read() if proc.poll() is not None else "no progress"
    time.sleep(0.25)  # somewhere inside the next unit
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()

    with Store(tmp_path / "res.duckdb", read_only=True) as s:
        done_before = len(s.rows("runs"))
    assert 2 <= done_before < 6

    r = run_study(spec, progress=False, echo=lambda s: None)
    assert r.units_total == 6 - done_before
    p = plan(load_spec(spec))
    with Store(tmp_path / "res.duckdb", read_only=True) as s:
        runs, circuits = s.rows("runs"), s.rows("circuits")
        assert sorted(x["key"] for x in runs) == sorted(x.key for x in p.runs)
        assert sorted(x["key"] for x in circuits) == sorted(x.key for x in p.circuits)
        n_runs = s.con.execute("SELECT count(*), count(DISTINCT key) FROM runs").fetchone()
        assert n_runs == (6, 6)
    art = tmp_path / "res-artifacts"
    leftovers = [q for q in art.rglob("*") if ".tmp-" in q.name or ".old-" in q.name]
    assert leftovers == []
    import json

    import modcircuit as mc

    assert sorted(q.name for q in (art / "runs").iterdir()) == sorted(x.key for x in p.runs)
    for q in (art / "runs").iterdir():
        mc.load(q)  # complete, verified checkpoint
    for q in (art / "circuits").iterdir():
        json.loads(q.read_text())


def test_partial_artifacts_are_cleaned_and_writes_are_atomic(tmp_path):
    root = tmp_path / "a"
    atomic_write_dir(root / "runs" / "k", {"x.bin": b"1" * 10})
    (root / "runs" / ".k2.tmp-abc").mkdir()
    (root / "runs" / ".k2.tmp-abc" / "model.json").write_text("{")
    (root / "circuits").mkdir()
    (root / "circuits" / ".c.json.tmp-1").write_text("{")
    removed = clean_partials(root)
    assert len(removed) == 2
    assert sorted(p.name for p in root.rglob("*")) == ["circuits", "k", "runs", "x.bin"]
    atomic_write_dir(root / "runs" / "k", {"x.bin": b"2"})  # replacing keeps one complete folder
    assert (root / "runs" / "k" / "x.bin").read_bytes() == b"2"
    assert clean_partials(root) == []


def test_store_transaction_is_all_or_nothing(tmp_path):
    with Store(tmp_path / "r.duckdb") as s:
        s.commit({"runs": [{"key": "a", "x": 1.0}]})
        with pytest.raises(Exception):
            s.commit({"runs": [{"key": "b", "x": 2.0}], "circuits": [{"key": "c", "x": object()}]})
        assert s.keys("runs") == {"a"} and s.keys("circuits") == set()


# ---- bad study files ------------------------------------------------------------------------
BASE = """
name = "bad"
tasks = ["two-moons"]
regimes = ["vanilla"]
seeds = [0]
methods = ["acdc"]
"""


@pytest.mark.parametrize("body, needle", [
    (BASE + "colour = 'red'\n", "unknown key 'colour'"),
    (BASE.replace('"two-moons"', '"three-moons"'), "unknown task 'three-moons'"),
    (BASE.replace("seeds = [0]", "seeds = []"), "seeds is empty"),
    (BASE.replace('"acdc"', '"acdcx"'), "unknown method 'acdcx'"),
    (BASE.replace('"vanilla"', '"bimtt"'), "unknown regime 'bimtt'"),
    (BASE + "[profile]\nrepeats = 3\n", "unknown key 'profile.repeats'"),
    (BASE + "[train]\nstepz = 3\n", "unknown hyperparameter 'stepz'"),
    (BASE + "[train]\nseed = 3\n", "sets 'seed'"),
    (BASE + "thresholds = [-1.0]\n", "threshold -1.0"),
    (BASE.replace("seeds = [0]", "seeds = [0, 0]"), "seeds lists 0 twice"),
    (BASE + "[task_train.digits]\nsteps = 3\n", "task_train.digits"),
    (BASE.replace('name = "bad"', ""), "missing required key 'name'"),
    ("name = [", "not valid TOML"),
])
def test_bad_study_files_get_one_line_errors(tmp_path, body, needle):
    p = write_spec(tmp_path, body)
    with pytest.raises(ModcircuitError) as e:
        load_spec(p)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and str(p) in msg


def test_missing_study_file(tmp_path):
    with pytest.raises(ModcircuitError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")


def test_task_fallback_substitutes_when_a_task_cannot_be_built(tmp_path):
    spec = parse_spec({"name": "f", "tasks": ["mnist"], "regimes": ["vanilla"], "seeds": [0], "methods": ["acdc"],
                       "task_options": {"mnist": {"data_dir": str(tmp_path / "no-data")}},
                       "task_fallbacks": {"mnist": "digits"}})
    p = plan(spec)
    assert p.substitutions == {"mnist": "digits"} and p.runs[0].task == "digits"


def test_shipped_studies_are_valid():
    for name in ("demo", "paper"):
        spec = load_spec(ROOT / "studies" / f"{name}.toml")
        assert spec.tasks and spec.seeds
    demo = load_spec(ROOT / "studies" / "demo.toml")
    assert "bimt" in demo.regimes and "vanilla" in demo.regimes


def test_an_edge_count_above_the_graph_keeps_every_edge(tmp_path):
    # two-moons' MLP has 480 edges: top 5000 is the whole graph, recorded under the size the spec asked for
    spec = tiny_spec(tmp_path, regimes='["vanilla"]', methods='["eap"]', steps=50)
    spec.write_text(spec.read_text().replace("thresholds = [0.05]", "edge_counts = [10, 5000]"))
    r = run_study(spec, progress=False, echo=lambda s: None)
    assert not r.failures
    with Store(r.results, read_only=True) as s:
        rows = sorted((row for row in s.rows("circuits") if row.get("edge_count")), key=lambda row: int(row["edge_count"]))
    assert [(int(row["edge_count"]), row["n_kept"]) for row in rows] == [(10, 10), (5000, rows[0]["n_edges"])]


def test_cells_that_differ_only_in_size_share_one_run_of_the_method(tmp_path, monkeypatch):
    # eap at three sizes and acdc at one threshold: eap's scores are computed once, acdc's once
    import modcircuit.circuits as circuits

    calls = []
    real = circuits.discover

    def counting(*a, **kw):
        calls.append((kw.get("method"), kw.get("top_k")))
        return real(*a, **kw)

    monkeypatch.setattr(circuits, "discover", counting)  # (what the study's units call)
    spec = tiny_spec(tmp_path, regimes='["vanilla"]', methods='["eap", "acdc"]', steps=50)
    spec.write_text(spec.read_text().replace("thresholds = [0.05]", "thresholds = [0.05]\nedge_counts = [5, 10, 5000]"))
    r = run_study(spec, progress=False, echo=lambda s: None)
    assert not r.failures
    sized = sorted((m, tuple(k)) for m, k in calls if isinstance(k, list))
    assert sized == [("acdc", (5, 10, 480)), ("eap", (5, 10, 480))]
    assert sorted(m for m, k in calls if k is None) == ["acdc", "eap"]
    with Store(r.results, read_only=True) as s:
        rows = [row for row in s.rows("circuits") if row["method"] == "eap" and row.get("edge_count")]
    assert sorted((int(row["edge_count"]), row["n_kept"]) for row in rows) == [(5, 5), (10, 10), (5000, 480)]
    assert len({row["seconds"] for row in rows}) == 1  # one run, its time on every size
    assert len({(row["curve_area"], row["cpr"], row["cmd"]) for row in rows}) == 1  # one scoring, one curve
