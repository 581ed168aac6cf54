"""BIMT step time vs vanilla step time on the MNIST-size net [784,100,100,10] at the reference settings
(batch 100, swaps every 500 steps, top_k 30). Random data of MNIST's shape: this times the step, not
the learning. Prints the ratio from one run (goal: <= 1.3x)."""
import time

import torch

import modcircuit as mc
from modcircuit.tasks import Task

torch.set_num_threads(1)
STEPS = 1500


def mnist_shaped_task(n=6000) -> Task:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)
    layouts = [{"kind": "grid", "shape": [28, 28]}, {"kind": "grid", "shape": [10, 10]},
               {"kind": "grid", "shape": [10, 10]}, {"kind": "ring"}]
    defaults = dict(steps=STEPS, lr=1e-3, batch_size=100, lam=0.01, l0=0.5, weight_factor=2.0, agg="mean",
                    top_k=30, swap_every=500, swap_outputs=True, log_every=STEPS)
    return Task("mnist-shaped", "classification", x, y, x[:500], y[:500], [784, 100, 100, 10], "mse-onehot",
                layouts=layouts, defaults=defaults)


def main():
    task = mnist_shaped_task()
    mc.train(task, "vanilla", steps=50)  # warm-up
    times = {}
    for regime in ("vanilla", "bimt") * 3:  # interleaved, best of three (the machine is shared)
        t = time.perf_counter()
        run = mc.train(task, regime, seed=0)
        times[regime] = min(times.get(regime, 1e9), (time.perf_counter() - t) / STEPS)
        if regime == "bimt":
            swaps = run.timings["swap_seconds"]
    print(f"[784,100,100,10], batch 100, {STEPS} steps, swap every 500 (top_k 30)")
    print(f"vanilla {times['vanilla'] * 1e3:.2f} ms/step   bimt {times['bimt'] * 1e3:.2f} ms/step "
          f"(swaps {swaps * 1e3:.0f} ms in all)")
    print(f"bimt / vanilla step time: {times['bimt'] / times['vanilla']:.2f}x   (goal <= 1.3x)")


if __name__ == "__main__":
    main()
