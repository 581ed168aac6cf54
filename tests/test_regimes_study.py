"""A tiny study with every registered regime runs end to end: the modularity metrics land in the
results store's runs table, and the report shows them per regime, draws each regime's network and
compares BIMT with every rival in its claims."""
from __future__ import annotations

import json

from modcircuit.report import build_report
from modcircuit.study import Store, run_study
from modcircuit.train import regime_names

from test_study import tiny_spec

METRICS = ("modularity_q", "clusterability", "cross_module_share")


def test_every_regime_runs_through_a_study_and_its_report(tmp_path):
    regimes = regime_names()
    spec = tiny_spec(tmp_path, regimes=json.dumps(regimes), seeds="[0]", steps=30)
    res = run_study(spec, progress=False)
    assert res.units_done == len(regimes) and not res.failures
    with Store(res.results, read_only=True) as s:
        runs = s.rows("runs")
    assert sorted({r["regime"] for r in runs}) == sorted(regimes)
    for r in runs:
        assert all(isinstance(r[m], float) for m in METRICS), r["regime"]
        assert 0 <= r["clusterability"] <= 1 and 0 <= r["cross_module_share"] <= 1 and -0.5 <= r["modularity_q"] <= 1

    rep = build_report(res.results, tmp_path / "report")
    md = rep.markdown.read_text()
    section = md.split("two-moons: modularity by regime")[1].split("\n### ")[0]
    for regime in regimes:
        assert f"| {regime} (n=1) |" in section
    assert "Newman Q" in section and (rep.out / "figures" / "two-moons-regime-networks.png").is_file()
    rivals = {c["baseline"] for c in rep.claims if c["claim"] == "modular-q"}
    assert rivals == set(regimes) - {"bimt"}
    assert {c["baseline"] for c in rep.claims if c["claim"] == "sparse"} == set(regimes) - {"bimt"}
