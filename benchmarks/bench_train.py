"""Step time of every registered regime / vanilla's on the MNIST-size net [784,100,100,10] at the reference
settings (batch 100, BIMT swaps every 500 steps with top_k 30; weight-sparse at its default density;
clusterability co-clustered once). Random data of MNIST's shape: this times the step, not the learning.
All regimes in one process, interleaved, REPEATS rounds; the median ms/step of the training loop
(run.timings, which leaves out the end-of-training metrics) per regime. Goal: every regime <= 1.3x.

    PYTHONPATH=src python benchmarks/bench_train.py [--steps 600] [--repeats 5] [--regimes bimt l1 ...]
"""
import argparse
import statistics

import torch

import modcircuit as mc
from modcircuit.tasks import Task
from modcircuit.train import regime_names

torch.set_num_threads(1)
GOAL = 1.3


def mnist_shaped_task(steps: int, n=6000) -> Task:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)
    layouts = [{"kind": "grid", "shape": [28, 28]}, {"kind": "grid", "shape": [10, 10]},
               {"kind": "grid", "shape": [10, 10]}, {"kind": "ring"}]
    defaults = dict(steps=steps, lr=1e-3, batch_size=100, lam=0.01, l0=0.5, weight_factor=2.0, agg="mean",
                    top_k=30, swap_every=500, swap_outputs=True, log_every=steps)
    return Task("mnist-shaped", "classification", x, y, x[:500], y[:500], [784, 100, 100, 10], "mse-onehot",
                layouts=layouts, defaults=defaults)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--regimes", nargs="*", default=regime_names())
    args = p.parse_args()
    task = mnist_shaped_task(args.steps)
    regimes = ["vanilla"] + [r for r in args.regimes if r != "vanilla"]
    mc.train(task, "vanilla", steps=50)  # warm-up
    samples: dict[str, list[float]] = {r: [] for r in regimes}
    for _ in range(args.repeats):  # interleaved, so load on the (shared) machine hits every regime alike
        for regime in regimes:
            run = mc.train(task, regime, seed=0)
            samples[regime].append(run.timings["train_seconds"] / args.steps)
        print(f"round {len(samples['vanilla'])}: " + ", ".join(f"{r} {samples[r][-1] * 1e3:.2f}" for r in regimes)
              + " ms/step", flush=True)
    base = statistics.median(samples["vanilla"])
    print(f"[784,100,100,10], batch 100, {args.steps} steps, median of {args.repeats} interleaved repeats, one thread")
    print(f"{'regime':16s} {'ms/step':>8s} {'ratio':>6s}")
    for regime in regimes:
        med = statistics.median(samples[regime])
        flag = "" if med / base <= GOAL else f"   over the {GOAL}x goal"
        print(f"{regime:16s} {med * 1e3:8.3f} {med / base:5.2f}x{flag}")


if __name__ == "__main__":
    main()
