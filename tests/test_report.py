"""The report: statistics, claims that follow the data, and an HTML page that renders in Chromium."""
from __future__ import annotations

import math
import subprocess
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from modcircuit.errors import ModcircuitError
from modcircuit.report import build_report, compare, holm, mean_ci
from modcircuit.study import Store, run_study

CHROMIUM = "/usr/bin/chromium"


def test_mean_ci_is_student_t():
    x = [1.0, 2.0, 4.0, 7.0]
    s = mean_ci(x)
    half = stats.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert s["mean"] == pytest.approx(3.5) and s["half"] == pytest.approx(half) and s["n"] == 4
    assert mean_ci([5.0])["half"] is None and mean_ci([])["mean"] is None
    assert mean_ci([1.0, None, float("nan"), 3.0])["n"] == 2


def test_compare_and_holm():
    lo, hi = [1.0, 1.1, 0.9, 1.05, 0.95], [2.0, 2.1, 1.9, 2.05, 1.95]
    r = compare(lo, hi, "less")
    assert r["p_welch"] < 1e-4 and r["p_welch_reverse"] > 0.99 and r["ratio"] == pytest.approx(0.5)
    assert compare(hi, lo, "less")["p_welch"] > 0.99
    assert compare([1.0], [2.0, 3.0], "less")["p_welch"] is None
    assert compare([1.0, 1.0], [1.0, 1.0], "less")["p_welch"] == 1.0
    # round-off: 1e-15-sized gaps that differ consistently are significant without a resolution, equal with one
    tiny_a, tiny_b = [1.45e-15, 1.46e-15, 1.44e-15], [1.67e-15, 1.68e-15, 1.69e-15]
    assert compare(tiny_a, tiny_b, "less")["p_welch"] < 0.01
    at_res = compare(tiny_a, tiny_b, "less", resolution=1e-9)
    assert at_res["p_welch"] == 1.0 and at_res["p_welch_reverse"] == 1.0
    assert compare([0.1, 0.11, 0.12], [0.2, 0.21, 0.22], "less", resolution=1e-9)["p_welch"] < 0.01
    assert compare([1.0, 1.0], [2.0, 2.0], "less")["p_welch"] == 0.0
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06], nan_ok=True) or \
        holm([0.01, 0.04, None, 0.03])[2] is None
    adj = holm([0.01, 0.04, None, 0.03])
    assert adj[0] == pytest.approx(0.03) and adj[3] == pytest.approx(0.06) and adj[1] == pytest.approx(0.06)


def synthetic_results(path: Path, gap_bimt: float, gap_vanilla: float, seeds=5, noise=0.01) -> Path:
    """A results file with hand-made rows: bimt vs vanilla on one task, one method."""
    rng = np.random.default_rng(0)
    runs, circuits = [], []
    for regime, gap in (("vanilla", gap_vanilla), ("bimt", gap_bimt)):
        for s in range(seeds):
            rk = f"{regime}-{s}"
            runs.append({"key": rk, "study": "syn", "task": "two-moons", "regime": regime, "seed": s,
                         "train_seconds": 1.0 + rng.normal(0, 0.01), "test_accuracy": 0.99, "checkpoint": f"runs/{rk}"})
            circuits.append({"key": f"c-{rk}", "run_key": rk, "study": "syn", "task": "two-moons", "regime": regime,
                             "seed": s, "method": "acdc", "threshold": 0.01, "edge_count": None,
                             "logit_gap": gap + rng.normal(0, noise), "n_kept": 50 + s, "n_edges": 480,
                             "seconds": 0.1 + rng.normal(0, 0.001), "artifact": f"circuits/c-{rk}.json"})
    with Store(path) as st:
        st.commit({"runs": runs, "circuits": circuits})
    return path


@pytest.mark.parametrize("gap_bimt, gap_vanilla, verdict", [
    (0.1, 0.5, "holds"), (0.5, 0.1, "opposite"), (0.3, 0.3, "not shown"),
])
def test_claims_follow_the_data(tmp_path, gap_bimt, gap_vanilla, verdict):
    res = synthetic_results(tmp_path / "r.duckdb", gap_bimt, gap_vanilla)
    rep = build_report(res, tmp_path / "out", figures=False)
    faithful = [c for c in rep.claims if c["claim"] == "faithful"]
    assert len(faithful) == 1 and faithful[0]["verdict"] == verdict
    assert faithful[0]["mean_a"] == pytest.approx(gap_bimt, abs=0.05)
    md = rep.markdown.read_text()
    assert "## Claims" in md and "two-moons" in md and verdict in md
    # the table cell is mean ± CI over the 5 seeds
    row = next(r for r in rep.tables["two-moons"][1] if r[0].startswith("bimt"))
    assert "±" in row[1] and row[0] == "bimt (n=5)"


def test_report_errors_are_one_line(tmp_path):
    with pytest.raises(ModcircuitError, match="does not exist"):
        build_report(tmp_path / "missing.duckdb", tmp_path / "o")


SPEC = """
name = "rep"
tasks = ["symbolic-independence"]
regimes = ["vanilla", "bimt"]
seeds = [0, 1]
methods = ["acdc", "eap"]
results = "{results}"
[train]
steps = 200
[profile]
fresh_process = false
latency_repeats = 20
throughput_repeats = 3
throughput_batch = 256
"""


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    (d / "s.toml").write_text(textwrap.dedent(SPEC.format(results=d / "r.duckdb")))
    run_study(d / "s.toml", progress=False, echo=lambda s: None)
    return build_report(d / "r.duckdb", d / "report")


def test_report_renders_tables_figures_and_claims(small_report):
    rep = small_report
    md = rep.markdown.read_text()
    html = rep.html.read_text()
    for needle in ("## Task: symbolic-independence", "logit gap", "edges kept", "curve area", "CPR (MIB)", "CMD (MIB)",
                   "discovery s", "train s", "latency ms", "## Claims"):
        assert needle in md
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html and "<script" not in html
    names = {p.name for p in rep.figures}
    assert "symbolic-independence-acdc-faithfulness.png" in names and "symbolic-independence-acdc-roc.png" in names
    assert "symbolic-independence-bimt-network.png" in names and "symbolic-independence-compute.png" in names
    for p in rep.figures:
        assert p.is_file() and p.stat().st_size > 1000
        assert f'title="figures/{p.name}"' in html  # embedded as a data URI, named in the title
    assert html.count('src="data:image/png;base64,') == len(rep.figures)
    assert not [p for p in rep.out.parent.iterdir() if ".tmp-" in p.name]


def _screenshot(html: Path, png: Path) -> None:
    with tempfile.TemporaryDirectory() as home:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        f"--user-data-dir={home}/p", "--hide-scrollbars", f"--screenshot={png}",
                        "--window-size=1200,1600", html.as_uri()],
                       capture_output=True, timeout=90, env={"HOME": home, "PATH": "/usr/bin:/bin"})


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs chromium")
def test_report_opens_in_headless_chromium(small_report, tmp_path):
    try:
        from browser import open_page
    except ImportError:  # the shared helper is not there: no console-error capture, screenshot only
        open_page = None
    if open_page is not None:
        page = open_page(small_report.html)
        assert page.errors == []
        assert "Task: symbolic-independence" in page.dom
    png = tmp_path / "shot.png"
    _screenshot(small_report.html, png)
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"), dtype=float)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    # non-blank: many distinct colours, real contrast, and a good share of non-background pixels
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    assert img.std() > 20
    assert (np.abs(img - img[5, -5]).sum(axis=2) > 30).mean() > 0.05
