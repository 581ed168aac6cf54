"""Train every MLP task under vanilla and bimt (plus l1 where asked) at its reference settings and
print test accuracy / MSE, connection cost and training time. Usage:
    python examples/reference_runs.py [--tasks two-moons digits ...] [--regimes vanilla bimt] [--steps N]
"""
import argparse
import json
import time

import torch

import modcircuit as mc
from modcircuit.nn.modularity import cross_module_share

torch.set_num_threads(1)
p = argparse.ArgumentParser()
p.add_argument("--tasks", nargs="*", default=["two-moons", "symbolic-independence", "symbolic-sharing",
                                              "symbolic-composition", "digits", "modular-addition",
                                              "permutation-s4", "mnist"])
p.add_argument("--regimes", nargs="*", default=["vanilla", "bimt"])
p.add_argument("--steps", type=int, default=None)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", default=None, help="folder to save the checkpoints in")
args = p.parse_args()
for name in args.tasks:
    try:
        task = mc.get_task(name, seed=args.seed)
    except mc.ModcircuitError as e:
        print(json.dumps({"task": name, "skipped": str(e)}), flush=True)
        continue
    for regime in args.regimes:
        t = time.perf_counter()
        run = mc.train(task, regime, seed=args.seed, steps=args.steps)
        row = {"task": name, "regime": regime, "steps": run.timings["steps"], **run.metrics,
               "train_seconds": round(time.perf_counter() - t, 1), "n_swaps": run.timings["n_swaps"]}
        if name == "symbolic-independence":
            truth = task.ground_truth.int().argmax(0).tolist()  # input i -> the output that uses it
            row["cross_module_weight_share"] = cross_module_share(run.model, truth)
        if args.out:
            run.save(f"{args.out}/{name}-{regime}-{args.seed}")
        print(json.dumps(row), flush=True)
