"""Compute profile of a trained model: training time, peak memory, inference latency/throughput, sizes.

Memory on CPU is the peak resident set of a fresh child process that runs only the training job
(`train_fresh`), reported beside that process's resident set just before training began (the
interpreter, torch and the data), so the part due to training itself can be read off. On CUDA it is
`torch.cuda.max_memory_allocated` over the training job. Timings come with their spread: median and
interquartile range over many repeats (latency, throughput) or over repeated fresh trainings.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ModcircuitError
from ..lifeline import child_env


# ---- small helpers ---------------------------------------------------------------------------
def rss_mb_now() -> float | None:
    """Current resident set of this process in MiB (Linux /proc; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb_self() -> float:
    """High-water mark of this process's resident set in MiB.

    On Linux this is VmHWM of /proc/self/status, the peak of this process image only: getrusage's
    ru_maxrss keeps the high-water mark of the image replaced by exec, so a child started with
    fork/vfork + exec would report its parent's peak when the parent is larger."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def spread(values, prefix: str) -> dict:
    """{prefix}_median, _q25, _q75, _n of a list of numbers (NaN-free)."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return {f"{prefix}_median": None, f"{prefix}_q25": None, f"{prefix}_q75": None, f"{prefix}_n": 0}
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {f"{prefix}_median": float(med), f"{prefix}_q25": float(q25), f"{prefix}_q75": float(q75),
            f"{prefix}_n": int(a.size)}


def count_params(model: torch.nn.Module, prefix: str = "") -> dict:
    n = sum(p.numel() for p in model.parameters())
    nz = sum(int((p != 0).sum()) for p in model.parameters())
    return {f"{prefix}n_params": int(n), f"{prefix}n_nonzero": int(nz)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- inference -------------------------------------------------------------------------------
def inference_stats(model: torch.nn.Module, x: torch.Tensor, *, prefix: str = "", latency_repeats: int = 300,
                    throughput_batch: int = 4096, throughput_repeats: int = 20, warmup: int = 20) -> dict:
    """Batch-1 latency (ms; median and IQR of `latency_repeats` calls) and large-batch throughput
    (examples/s; median and IQR of `throughput_repeats` calls) of `model` on inputs like `x`."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = x.to(device)
    reps = -(-throughput_batch // len(x))
    xb = x.repeat(reps, *([1] * (x.dim() - 1)))[:throughput_batch]
    was_training = model.training
    model.eval()
    lat, thr = [], []
    with torch.inference_mode():
        x1 = x[:1]
        for _ in range(warmup):
            model(x1)
        _sync(device)
        for i in range(latency_repeats):
            x1 = x[i % len(x): i % len(x) + 1]
            t = time.perf_counter()
            model(x1)
            _sync(device)
            lat.append((time.perf_counter() - t) * 1e3)
        for _ in range(max(2, warmup // 5)):
            model(xb)
        _sync(device)
        for _ in range(throughput_repeats):
            t = time.perf_counter()
            model(xb)
            _sync(device)
            thr.append(throughput_batch / (time.perf_counter() - t))
    model.train(was_training)
    out = {}
    out.update(spread(lat, f"{prefix}latency_ms"))
    out.update(spread(thr, f"{prefix}throughput"))
    out[f"{prefix}throughput_batch"] = int(throughput_batch)
    return out


# ---- training in a fresh process -------------------------------------------------------------
def train_fresh(task: str, regime: str, seed: int, overrides: dict, task_options: dict | None = None,
                out_dir=None, timeout: float | None = None) -> dict:
    """Train in a fresh child process that runs only this job; save the checkpoint to `out_dir`.

    Returns the child's report: timings, metrics, peak_rss_mb (peak resident set of the child),
    baseline_rss_mb (its resident set after imports and data, before training), train_rss_mb (the
    difference), cuda_max_allocated_mb (CUDA jobs), and `checkpoint` (the folder written).
    """
    with tempfile.TemporaryDirectory(prefix="modcircuit-fresh-") as td:
        job = {"task": task, "regime": regime, "seed": int(seed), "overrides": overrides,
               "task_options": task_options or {}, "out_dir": str(out_dir) if out_dir else None}
        jpath, rpath = Path(td) / "job.json", Path(td) / "result.json"
        jpath.write_text(json.dumps(job))
        env = child_env(dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
        proc = subprocess.run([sys.executable, "-m", "modcircuit.profile.child", str(jpath), str(rpath)],
                              capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0 or not rpath.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()
            last = tail[-1] if tail else f"exit status {proc.returncode}"
            raise ModcircuitError(f"training {task}/{regime}/seed {seed} in a fresh process failed: {last}")
        return json.loads(rpath.read_text())


def _child_main(job_path: str, result_path: str) -> None:
    torch.set_num_threads(1)
    from .. import train as train_mod  # noqa: F401  (imports torch-side code before the baseline)
    from ..tasks import get_task
    from ..train import train

    job = json.loads(Path(job_path).read_text())
    overrides = dict(job["overrides"])
    task = get_task(job["task"], seed=job["seed"], **job["task_options"])
    device = overrides.get("device", "cpu") or "cpu"
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_mb_now()
    run = train(task, regime=job["regime"], seed=job["seed"], progress=False, **overrides)
    peak = peak_rss_mb_self()
    res = {"timings": run.timings, "metrics": run.metrics, "peak_rss_mb": peak, "baseline_rss_mb": baseline,
           "train_rss_mb": (peak - baseline) if baseline is not None else None,
           "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}
    res.update(count_params(run.model))
    if job.get("out_dir"):
        run.save(job["out_dir"])
        res["checkpoint"] = job["out_dir"]
    tmp = Path(result_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, result_path)


# ---- a whole profile -------------------------------------------------------------------------
def profile_run(run, *, circuit=None, train_repeats: int = 3, train_steps: int | None = 1000,
                latency_repeats: int = 300, throughput_batch: int = 4096, throughput_repeats: int = 20) -> dict:
    """Profile a trained Run (or a checkpoint folder): sizes, inference, and training cost.

    Training cost: the checkpoint's own record (one run) plus `train_repeats` fresh-process
    retrainings of the same configuration capped at `train_steps` steps (None = the full run),
    reported as median and IQR (seconds per step, swap share, peak memory). With `circuit` (a
    discovered Circuit) the compacted circuit is profiled too.
    """
    from ..train import load

    if isinstance(run, (str, os.PathLike)):
        run = load(run)
    torch.set_num_threads(1)
    task = run.task()
    model = run.model
    out: dict = {"task": run.task_name, "regime": run.regime, "seed": run.seed,
                 "device": str(next(model.parameters()).device)}
    out.update(count_params(model))
    for k in ("train_seconds", "seconds_per_step", "swap_seconds", "swap_share", "n_swaps", "steps"):
        if k in run.timings:
            out[f"recorded_{k}"] = run.timings[k]
    out.update(inference_stats(model, task.x_test, latency_repeats=latency_repeats,
                               throughput_batch=throughput_batch, throughput_repeats=throughput_repeats))
    if circuit is not None:
        small = circuit.compact(model)
        out.update(count_params(small, "compact_"))
        out.update(inference_stats(small, task.x_test, prefix="compact_", latency_repeats=latency_repeats,
                                   throughput_batch=throughput_batch, throughput_repeats=throughput_repeats))
        if out.get("compact_latency_ms_median") and out.get("latency_ms_median"):
            out["latency_ratio_compact_to_full"] = out["compact_latency_ms_median"] / out["latency_ms_median"]
    if train_repeats > 0:
        hp = {k: v for k, v in run.hyperparameters.items() if k not in ("regime", "seed")}
        if train_steps is not None:
            hp["steps"] = min(int(hp.get("steps", train_steps)), int(train_steps))
        reports = [train_fresh(run.task_name, run.regime, run.seed, hp, run.task_options) for _ in range(train_repeats)]
        out["train_repeats"] = train_repeats
        out["train_steps_profiled"] = hp.get("steps")
        for key in ("seconds_per_step", "swap_share", "train_seconds"):
            out.update(spread([r["timings"][key] for r in reports], key))
        for key in ("peak_rss_mb", "baseline_rss_mb", "train_rss_mb", "cuda_max_allocated_mb"):
            vals = [r.get(key) for r in reports]
            if any(v is not None for v in vals):
                out.update(spread(vals, key))
    return out
