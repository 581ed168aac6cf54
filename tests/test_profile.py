"""Compute profile: spreads, sizes, fresh-process peak memory that tracks the job, the profile command."""
from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

import modcircuit as mc
from modcircuit.profile import count_params, inference_stats, spread, train_fresh
from modcircuit.study.cli_commands import profile_cmd


def test_spread_and_counts():
    s = spread([1.0, 2.0, 3.0, 4.0, 100.0], "x")
    assert s == {"x_median": 3.0, "x_q25": 2.0, "x_q75": 4.0, "x_n": 5}
    m = torch.nn.Linear(3, 2)
    with torch.no_grad():
        m.weight[0] = 0.0
    assert count_params(m) == {"n_params": 8, "n_nonzero": 5}


def test_inference_stats_have_spread_and_scale_with_size():
    x = torch.randn(64, 16)
    small = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    big = torch.nn.Sequential(torch.nn.Linear(16, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048),
                              torch.nn.ReLU(), torch.nn.Linear(2048, 4))
    a = inference_stats(small, x, latency_repeats=60, throughput_batch=1024, throughput_repeats=5)
    b = inference_stats(big, x, latency_repeats=60, throughput_batch=1024, throughput_repeats=5)
    for r in (a, b):
        assert r["latency_ms_q25"] <= r["latency_ms_median"] <= r["latency_ms_q75"] and r["latency_ms_n"] == 60
        assert r["throughput_q25"] <= r["throughput_median"] <= r["throughput_q75"] and r["throughput_n"] == 5
    assert b["throughput_median"] < a["throughput_median"] / 5  # ~4M more multiply-adds per example
    assert b["latency_ms_median"] > a["latency_ms_median"]


def test_fresh_process_training_is_that_job_alone(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # two fresh processes side by side
        fs = pool.submit(train_fresh, "two-moons", "bimt", 3, {"steps": 60, "swap_every": 20}, out_dir=tmp_path / "small")
        fb = pool.submit(train_fresh, "two-moons", "vanilla", 3, {"steps": 2, "widths": [2, 3000, 3000, 2]},
                         out_dir=tmp_path / "big")
        small, big = fs.result(), fb.result()
    for r in (small, big):
        assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 50
        assert r["train_rss_mb"] == pytest.approx(r["peak_rss_mb"] - r["baseline_rss_mb"])
    # 9M weights, their gradients and two Adam moments: 4 x 36 MB more than the small job
    assert big["peak_rss_mb"] - small["peak_rss_mb"] > 80
    assert big["n_params"] > 9_000_000
    # same result as training in this process: the fresh process runs exactly the job
    run = mc.train("two-moons", regime="bimt", seed=3, steps=60, swap_every=20)
    loaded = mc.load(tmp_path / "small")
    assert loaded.metrics["test_accuracy"] == run.metrics["test_accuracy"]
    for a, b in zip(loaded.model.parameters(), run.model.parameters()):
        assert torch.equal(a, b)
    assert small["timings"]["n_swaps"] > 0 and 0 <= small["timings"]["swap_share"] < 1


def _profile(tmp_path, *args):
    run = mc.train("two-moons", regime="bimt", seed=0, steps=200)
    run.save(tmp_path / "run", overwrite=True)  # called more than once per test
    app = typer.Typer()
    app.command("profile")(profile_cmd)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "run"), *args])
    return res


def test_profile_command_json(tmp_path):
    res = _profile(tmp_path, "--json", "--method", "acdc", "--train-repeats", "0", "--latency-repeats", "30",
                   "--throughput-batch", "512")
    assert res.exit_code == 0, res.output
    p = json.loads(res.output)
    assert p["n_params"] == 522 and p["regime"] == "bimt" and p["recorded_steps"] == 200
    assert p["latency_ms_n"] == 30 and p["compact_latency_ms_n"] == 30
    assert p["compact_n_params"] < p["n_params"]  # the ACDC circuit drops neurons
    assert "train_repeats" not in p
    bad = _profile(tmp_path, "--train-repeats", "-1")
    assert bad.exit_code != 0 and "--train-repeats -1" in str(bad.exception)


@pytest.mark.slow
def test_profile_command_retrains_in_fresh_processes(tmp_path):
    res = _profile(tmp_path, "--json", "--train-repeats", "2", "--train-steps", "20", "--latency-repeats", "30",
                   "--throughput-batch", "512")
    assert res.exit_code == 0, res.output
    p = json.loads(res.output)
    assert p["train_repeats"] == 2 and p["seconds_per_step_n"] == 2 and p["peak_rss_mb_n"] == 2
    assert p["train_steps_profiled"] == 20 and p["peak_rss_mb_median"] > p["baseline_rss_mb_median"]
