"""`make demo`: a small but real study. Runs studies/demo.toml (train, discover, evaluate, profile,
report) when the study module is present; otherwise trains vanilla and bimt on two tasks and
prints the comparison table."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch


def train_table() -> None:
    from rich.console import Console
    from rich.table import Table

    import modcircuit as mc
    from modcircuit.nn.modularity import cross_module_share

    torch.set_num_threads(1)
    table = Table("task", "regime", "test metric", "connection cost", "cross-module |W| share", "train s", "swaps",
                  title="vanilla vs bimt (seed 0, reference settings)")
    for name in ("two-moons", "symbolic-independence"):
        task = mc.get_task(name, seed=0)
        for regime in ("vanilla", "bimt"):
            run = mc.train(task, regime, seed=0, progress=True)
            run.save(Path("runs") / f"{name}-{regime}-0")
            metric = "test_accuracy" if "test_accuracy" in run.metrics else "test_mse"
            share = "-"
            if task.ground_truth is not None and task.ground_truth.sum(0).max() == 1:
                share = f"{cross_module_share(run.model, task.ground_truth.int().argmax(0).tolist()):.3f}"
            table.add_row(name, regime, f"{metric[5:]} {run.metrics[metric]:.4g}",
                          f"{run.metrics['connection_cost']:.3g}", share, f"{run.timings['train_seconds']:.1f}",
                          str(run.timings["n_swaps"]))
    Console().print(table)


def main() -> int:
    t0 = time.perf_counter()
    spec = Path("studies/demo.toml")
    try:
        from modcircuit.study.cli_commands import run_demo  # the full study, when present
    except ImportError:
        run_demo = None
    if run_demo is not None and spec.exists():
        run_demo(spec)
    else:
        train_table()
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
