"""Step time of every registered regime / vanilla's, over a small sweep: the MNIST-size net [784,100,100,10]
and a smaller one [64,64,64,10], each at several batch sizes (100 is the MNIST task's own; the others are
sweep rows, the default is not changed). Reference settings otherwise: BIMT swaps every 500 steps with
top_k 30; weight-sparse at its default density; clusterability co-clustered once. Random data of the
input's shape: this times the step, not the learning.

Per row, all regimes run in one process, interleaved, REPEATS rounds, so load on a shared machine hits
every regime alike; ms/step is the median over rounds of the training loop's time (run.timings, which
leaves out the end-of-training metrics): its CPU time by default (--clock cpu; on a loaded machine wall
time is mostly the waits for a core), or its wall time (--clock wall). ratio = median / vanilla's median,
spread = the lowest and highest of the per-round ratios (each round's time / that round's vanilla).
Goal: every ratio <= 1.3.

    PYTHONPATH=src python benchmarks/bench_train.py [--steps 600] [--repeats 5] [--regimes bimt l1 ...]
        [--nets 784,100,100,10 64,64,64,10] [--batches 64 100 128 512] [--clock cpu|wall]
"""
import argparse
import gc
import statistics

import torch

import modcircuit as mc
from modcircuit.tasks import Task
from modcircuit.train import regime_names

torch.set_num_threads(1)
GOAL = 1.3
MNIST = [784, 100, 100, 10]


def _layout(width: int) -> dict:
    side = int(round(width ** 0.5))
    return {"kind": "grid", "shape": [side, side]} if side * side == width else {"kind": "line"}


def shaped_task(widths: list[int], steps: int, n=6000) -> Task:
    """Random classification data with widths[0] inputs and widths[-1] classes, the MNIST task's defaults."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, widths[0], generator=g), torch.randint(0, widths[-1], (n,), generator=g)
    layouts = [_layout(w) for w in widths[:-1]] + [{"kind": "ring"}]
    defaults = dict(steps=steps, lr=1e-3, batch_size=100, lam=0.01, l0=0.5, weight_factor=2.0, agg="mean",
                    top_k=30, swap_every=500, swap_outputs=True, log_every=steps)
    return Task("shaped", "classification", x, y, x[:500], y[:500], widths, "mse-onehot",
                layouts=layouts, defaults=defaults)


def bench_row(widths, batch, regimes, steps, repeats, clock="cpu") -> dict[str, list[float]]:
    task = shaped_task(widths, steps)
    for regime in regimes:  # warm-up: one-time costs (imports, a compiled kernel's load) stay out of the rounds
        mc.train(task, regime, steps=50, batch_size=batch)
    samples: dict[str, list[float]] = {r: [] for r in regimes}
    for _ in range(repeats):  # interleaved
        for regime in regimes:
            gc.collect()  # the previous run's garbage (its modularity graphs) is not collected inside this run's loop
            run = mc.train(task, regime, seed=0, batch_size=batch)
            samples[regime].append(run.timings["train_cpu_seconds" if clock == "cpu" else "train_seconds"] / steps)
    return samples


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--regimes", nargs="*", default=regime_names())
    p.add_argument("--nets", nargs="*", default=["784,100,100,10", "64,64,64,10"])
    p.add_argument("--batches", nargs="*", type=int, default=[64, 100, 128, 512])
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = p.parse_args()
    regimes = ["vanilla"] + [r for r in args.regimes if r != "vanilla"]
    print(f"{args.steps} steps, median of {args.repeats} interleaved rounds, one thread, {args.clock} time; "
          f"ratio to vanilla (spread: lowest-highest per-round ratio)", flush=True)
    print(f"{'net':>16s} {'batch':>5s} {'vanilla ms':>10s}  " + "  ".join(f"{r:>16s}" for r in regimes[1:]), flush=True)
    over = []
    for net in args.nets:
        widths = [int(w) for w in net.split(",")]
        for batch in args.batches:
            s = bench_row(widths, batch, regimes, args.steps, args.repeats, args.clock)
            base = statistics.median(s["vanilla"])
            cells = []
            for r in regimes[1:]:
                ratio = statistics.median(s[r]) / base
                per_round = [a / b for a, b in zip(s[r], s["vanilla"])]
                cells.append(f"{ratio:4.2f} ({min(per_round):4.2f}-{max(per_round):4.2f})")
                if ratio > GOAL:
                    over.append(f"{r} on [{net}] batch {batch}: {ratio:.2f}x")
            print(f"{'[' + net + ']':>16s} {batch:5d} {base * 1e3:10.2f}  " + "  ".join(f"{c:>16s}" for c in cells),
                  flush=True)
    print(f"over the {GOAL}x goal: " + ("; ".join(over) if over else "none"))


if __name__ == "__main__":
    main()
