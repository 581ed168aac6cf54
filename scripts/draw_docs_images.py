"""Make the drawings in docs/images/: two-moons, symbolic-independence and digits, vanilla and BIMT,
each with its ACDC circuit overlaid, plus training curves and a two-moons BIMT training animation.

    .venv/bin/python scripts/draw_docs_images.py [--out docs/images] [--runs runs/docs]

Prints one JSON line per model (test metric, connection cost, circuit size, ACDC time)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import modcircuit as mc
from modcircuit.viz import Recorder, draw, save_figure, training_curves

SETTINGS = {  # steps per task, ACDC threshold (the task's metric: KL for classification, MSE for regression)
    "two-moons": dict(steps=10000, tau=0.01),
    "symbolic-independence": dict(steps=20000, tau=0.002),
    "digits": dict(steps=5000, tau=0.01),
}
REGIMES = ("vanilla", "bimt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--runs", type=Path, default=Path("runs/docs"))
    ap.add_argument("--tasks", nargs="*", default=list(SETTINGS))
    ap.add_argument("--examples", type=int, default=200, help="patching examples for ACDC")
    ap.add_argument("--redraw", action="store_true", help="reuse the saved runs and circuits; only draw")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        from modcircuit.circuits import discover
    except ImportError:
        discover = None
    for name in args.tasks:
        s = SETTINGS[name]
        runs = {}
        for regime in REGIMES:
            run_dir = args.runs / f"{name}-{regime}-0"
            if args.redraw:
                run = runs[regime] = mc.load(run_dir)
                circuit = None
                if discover is not None and (run_dir.with_name(run_dir.name + "-acdc.json")).exists():
                    from modcircuit.circuits import Circuit

                    circuit = Circuit.load(run_dir.with_name(run_dir.name + "-acdc.json"), run.model)
                save_figure(draw(run, circuit), args.out / f"{name}-{regime}.png", dpi=110, overwrite=True)
                save_figure(draw(run), args.out / f"{name}-{regime}-weights.png", dpi=110, overwrite=True)
                continue
            t0 = time.perf_counter()
            rec = None
            if name == "two-moons" and regime == "bimt":
                rec = Recorder(mc.get_task(name), every=s["steps"] // 20, title=f"{name} \u00b7 {regime}")
            run = mc.train(name, regime=regime, seed=0, steps=s["steps"], callback=rec,
                           callback_every=rec.every if rec else None)
            run.save(run_dir, overwrite=True)
            train_s = time.perf_counter() - t0
            if rec is not None:
                rec.save(args.out / f"{name}-{regime}-training.gif", overwrite=True)
            runs[regime] = run
            circuit, acdc_s = None, None
            if discover is not None:
                t0 = time.perf_counter()
                circuit = discover(run.model, run.task(), method="acdc", threshold=s["tau"], n=args.examples, seed=0)
                acdc_s = time.perf_counter() - t0
                circuit.save(run_dir.with_name(run_dir.name + "-acdc.json"), overwrite=True)
            save_figure(draw(run, circuit), args.out / f"{name}-{regime}.png", dpi=110, overwrite=True)
            save_figure(draw(run), args.out / f"{name}-{regime}-weights.png", dpi=110, overwrite=True)
            row = {"task": name, "regime": regime, "train_s": round(train_s, 1),
                   **{k: round(v, 5) for k, v in run.metrics.items()}}
            if circuit is not None:
                row.update(acdc_tau=s["tau"], acdc_kept=circuit.n_kept, edges=circuit.n_edges,
                           acdc_s=round(acdc_s, 2))
            print(json.dumps(row), flush=True)
        save_figure(training_curves(runs, title=name), args.out / f"{name}-training.png", dpi=110, overwrite=True)


if __name__ == "__main__":
    main()
