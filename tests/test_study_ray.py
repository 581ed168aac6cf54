"""The Ray executor on a local 2-CPU cluster gives the same rows as the local executor."""
from __future__ import annotations

import os
import textwrap

import pytest

from modcircuit.study import Store, run_study
from modcircuit.study.store import is_timing_column

SPEC = """
name = "ray-tiny"
tasks = ["two-moons"]
regimes = ["vanilla", "bimt"]
seeds = [0]
methods = ["acdc", "magnitude"]
thresholds = [0.02]
results = "{results}"
[train]
steps = 200
[profile]
fresh_process = false
latency_repeats = 20
throughput_repeats = 3
throughput_batch = 256
"""


def _rows(path):
    with Store(path, read_only=True) as s:
        return {t: [{k: v for k, v in r.items() if not is_timing_column(k)} for r in s.rows(t)]
                for t in ("runs", "circuits", "profiles")}


@pytest.mark.slow  # ~30 s on an idle 2-core machine (Ray start ~7 s), minutes when the cores are busy
def test_ray_gives_the_same_rows_as_local(tmp_path):
    pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    for name in ("local", "ray"):
        (tmp_path / f"{name}.toml").write_text(textwrap.dedent(SPEC.format(results=tmp_path / f"{name}.duckdb")))
    run_study(tmp_path / "local.toml", progress=False, echo=lambda s: None)
    res = run_study(tmp_path / "ray.toml", executor="ray", workers=2, progress=False, echo=lambda s: None)
    assert res.units_done == 2 and not res.failures
    local, ray_rows = _rows(tmp_path / "local.duckdb"), _rows(tmp_path / "ray.duckdb")
    assert len(local["circuits"]) == 4
    assert ray_rows == local
    # the checkpoints are the same tensors too
    for r in local["runs"]:
        a = (tmp_path / "local-artifacts" / r["checkpoint"] / "model.safetensors").read_bytes()
        b = (tmp_path / "ray-artifacts" / r["checkpoint"] / "model.safetensors").read_bytes()
        assert a == b
