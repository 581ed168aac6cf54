"""Every regime x both induction tasks at the task defaults: steps, wall and CPU seconds, repeated-half accuracy,
the first logged step at >= 95%, and the heads the detector reads off each trained model. 1 thread.

Usage: python benchmarks/bench_induction.py [--seeds 0] [--regimes vanilla,bimt] [--out induction.jsonl]
CPU seconds (time.process_time) are what an idle core would take; wall seconds depend on the machine's load,
which is printed (1-minute load average) with every row.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

import modcircuit as mc
from modcircuit.regime_names import REGIMES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--regimes", default=",".join(REGIMES))
    ap.add_argument("--tasks", default="induction-attn-only,induction")
    ap.add_argument("--out", default="induction.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| task | regime | seed | steps | test acc | first step >= 95% | wall s | CPU s | load | prev heads | "
          "induction heads | truth edges |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for seed in map(int, args.seeds.split(",")):
        for name in args.tasks.split(","):
            for regime in args.regimes.split(","):
                task = mc.get_task(name, seed=seed)
                load = os.getloadavg()[0]
                wall, cpu = time.perf_counter(), time.process_time()
                run = mc.train(task, regime=regime, seed=seed)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                found = task.detect_heads(run.model).summary()
                first = next((h["step"] for h in run.history if h.get("test_accuracy", 0) >= 0.95), None)
                rec = dict(task=name, regime=regime, seed=seed, steps=run.timings["steps"], wall_seconds=round(wall, 1),
                           cpu_seconds=round(cpu, 1), load1=round(load, 2), test_accuracy=run.metrics["test_accuracy"],
                           first_step_95=first, detection=found)
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                edges = len(found["truth"]["edges"]) if found["truth"] else f"none ({found['reason'][:50]})"
                print(f"| {name} | {regime} | {seed} | {rec['steps']} | {rec['test_accuracy']:.3f} | {first} | "
                      f"{wall:.0f} | {cpu:.0f} | {load:.1f} | {','.join(found['prev_heads'])} | "
                      f"{','.join(found['induction_heads'])} | {edges} |", flush=True)


if __name__ == "__main__":
    main()
