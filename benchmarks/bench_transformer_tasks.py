"""Vanilla vs BIMT on the two transformer tasks (small budgets), then ACDC on each trained model.

    python benchmarks/bench_transformer_tasks.py [--steps-mod 3000] [--steps-icl 3000] [--threshold 0.01]

Prints one row per (task, regime): test accuracy / MSE, connection cost, train seconds, ACDC edges kept
of all, logit gap (mean |circuit - model| at the last position) and ACDC seconds.
"""
import argparse
import time

import torch

import modcircuit as mc
from modcircuit.circuits.transformer_graph import discover_transformer, logit_gap
from modcircuit.tasks import sequence  # noqa: F401

torch.set_num_threads(1)
torch.set_flush_denormal(True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps-mod", type=int, default=3000)
    ap.add_argument("--steps-icl", type=int, default=3000)
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--p", type=int, default=23)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    specs = [
        ("modular-addition-transformer", dict(p=args.p, d_model=32, n_heads=4, d_head=8, d_mlp=64),
         dict(steps=args.steps_mod, lr=3e-3)),
        ("incontext-regression", dict(), dict(steps=args.steps_icl)),
    ]
    print("| task | regime | steps | test acc / mse | connection cost | train s | ACDC kept/edges | logit gap | ACDC s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, opts, train_kw in specs:
        task = mc.get_task(name, seed=args.seed, **opts)
        for regime in ("vanilla", "bimt"):
            t0 = time.perf_counter()
            run = mc.train(task, regime, seed=args.seed, **train_kw)
            secs = time.perf_counter() - t0
            score = run.metrics.get("test_accuracy", run.metrics.get("test_mse"))
            clean, corrupt, _ = task.patching_pairs("test", n=200, seed=args.seed)
            c = discover_transformer(run.model, clean, corrupt, method="acdc", threshold=args.threshold,
                                     metric="kl" if task.kind == "classification" else "mse")
            gap = logit_gap(run.model, c, clean, corrupt)
            print(f"| {name} | {regime} | {train_kw['steps']} | {score:.4g} | {run.metrics['connection_cost']:.4g} | "
                  f"{secs:.1f} | {c.n_kept}/{c.n_edges} | {gap:.4g} | {c.seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
