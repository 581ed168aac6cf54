"""EAP and EAP-IG on the MNIST-size net [784,100,100,10], single thread: seconds per discovery.
Usage: python benchmarks/bench_eap.py [--examples 100] [--steps 400] [--repeats 5]"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_acdc import mnist_like, pairs, trained  # noqa: E402

from modcircuit.circuits import discover  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    x, y, source = mnist_like()
    model, acc = trained([784, 100, 100, 10], x, y, args.steps)
    clean, corrupt = pairs(x, args.examples, seed=1)
    print(f"[784,100,100,10] {source} (train acc {acc:.3f}), {args.examples} examples, resample ablation, "
          f"median of {args.repeats} runs (min-max)")
    for method, opts in [("eap", {}), ("eap-ig", {"steps": 16}), ("magnitude", {})]:
        secs = [discover(model, clean, corrupt, method=method, **opts).seconds for _ in range(args.repeats)]
        print(f"  {method:10s} {statistics.median(secs):.3f} s ({min(secs):.3f}-{max(secs):.3f})  options {opts}")


if __name__ == "__main__":
    main()
