"""How long a study's pending units will take: an estimate from a tiny calibration run in this process.

For every pending (task, regime) one calibration unit runs here, in process: the model is trained
for a few steps (`CAL_STEPS`, logging as often as the real run; a swapping regime gets two swap
passes in them), then the unit's
circuits are discovered and the model profiled, exactly as the study would. From it:

    seconds per step    = (training seconds - swap seconds) / calibration steps
    seconds per swap    = swap seconds / swap passes
    rest of the unit    = unit seconds - training seconds       (discovery, scoring, profile)

and a pending unit is estimated as steps x s/step + passes x s/swap (when it still has to train)
plus the rest, plus the start-up of a fresh process when the study trains in one (measured once).
Units are then packed onto the workers longest first. What it cannot see: discovery on the trained
model (ACDC visits more or fewer edges once the weights have structure; the calibration model is
barely trained), a machine shared with other work, and Ray start-up. It is an estimate, printed as one.
"""
from __future__ import annotations

import heapq
import subprocess
import sys
import time
from dataclasses import dataclass, replace

from ..errors import ModcircuitError
from .spec import RunCell, Unit

CAL_STEPS = 40


@dataclass
class Estimate:
    seconds: float  # wall time with the given workers
    cpu_seconds: float  # the sum over units
    units: int
    workers: int
    calibration_seconds: float
    per_step: dict  # "task/regime" -> seconds per step

    def line(self) -> str:
        if not self.units:
            return "estimated time: nothing to run"
        rate = ", ".join(f"{k} {v * 1e3:.2f} ms/step" for k, v in self.per_step.items())
        return (f"estimated time: about {_human(self.seconds)} with {self.workers} worker(s) "
                f"({_human(self.cpu_seconds)} of work in {self.units} units; an estimate from a "
                f"{self.calibration_seconds:.0f}s calibration run here: {rate})")


def _human(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _swap_passes(cfg: dict, steps: int) -> int:
    return steps // cfg["swap_every"] if cfg["regime"] == "bimt" else 0  # (only bimt swaps)


def _process_start_seconds() -> float:
    """Start-up of the fresh process a study trains in (python, torch and modcircuit imports)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, modcircuit.train, modcircuit.tasks"],
                   capture_output=True, timeout=300)
    return time.perf_counter() - t0


def estimate(units: list[Unit], workers: int = 1, say=None) -> Estimate:
    """Calibrate on one unit per pending (task, regime), then estimate every unit."""
    from .cells import run_unit

    t_cal = time.perf_counter()
    costs: dict[tuple, dict] = {}
    for u in units:
        rc = u.run
        if (rc.task, rc.regime) in costs:
            continue
        if say:
            say(f"calibrating {rc.task}/{rc.regime} ({CAL_STEPS} steps, {len(u.circuits)} circuits"
                f"{', profile' if u.profile else ''})")
        cfg = dict(rc.config, steps=min(CAL_STEPS, rc.config["steps"]))
        # log (evaluate the model) as often as the real run does, not every step of this short one
        cfg["log_every"] = rc.config.get("log_every") or max(1, rc.config["steps"] // 100)
        if _swap_passes(rc.config, rc.config["steps"]):
            cfg["swap_every"] = max(1, cfg["steps"] // 2)
        cal_run = RunCell(rc.task, rc.task_options, rc.regime, rc.seed, rc.overrides, cfg, key="calibration")
        cal = replace(u, run=cal_run, run_done=False, checkpoint=None, fresh_process=False)
        t0 = time.perf_counter()
        try:
            out = run_unit(cal)
        except ModcircuitError as e:
            raise ModcircuitError(f"calibration run of {rc.task}/{rc.regime} failed: {e}") from None
        total = time.perf_counter() - t0
        row = out["rows"]["runs"][0]
        passes = _swap_passes(cfg, cfg["steps"])
        swap = float(row.get("swap_seconds") or 0.0)
        costs[(rc.task, rc.regime)] = {
            "step": max(0.0, float(row["train_seconds"]) - swap) / cfg["steps"],
            "swap": swap / passes if passes else 0.0,
            "rest": max(0.0, total - float(row["train_seconds"])),
            "parts": len(u.circuits) + (1 if u.profile else 0),  # what `rest` paid for
        }
    start = _process_start_seconds() if any(u.fresh_process and not u.run_done for u in units) else 0.0
    per_unit = []
    for u in units:
        c = costs[(u.run.task, u.run.regime)]
        s = 0.0
        if not u.run_done:
            steps = u.run.config["steps"]
            s += steps * c["step"] + _swap_passes(u.run.config, steps) * c["swap"]
            s += start if u.fresh_process else 0.0
        if c["parts"]:
            s += c["rest"] * (len(u.circuits) + (1 if u.profile else 0)) / c["parts"]
        per_unit.append(s)
    w = max(1, min(workers, len(units)))
    loads = [0.0] * w
    for s in sorted(per_unit, reverse=True):  # longest first onto the least loaded worker
        heapq.heapreplace(loads, loads[0] + s)
    return Estimate(seconds=max(loads) if units else 0.0, cpu_seconds=sum(per_unit), units=len(units), workers=w,
                    calibration_seconds=time.perf_counter() - t_cal,
                    per_step={f"{t}/{r}": c["step"] for (t, r), c in costs.items()})
