"""Fast ACDC vs the plain one-forward-per-edge reference, in one process, single thread.

  [64,100,100,10]  digits model (briefly trained): both run the whole graph; circuits compared.
  [784,100,100,10] MNIST-size model: the fast path runs the whole graph; the reference runs the first
                   SAMPLE edges in ACDC order (the whole output layer and part of the next), its time is
                   scaled up to all edges (said in the output), and both circuits are compared on those edges.
Inputs for the MNIST-size net are the 8x8 digits upsampled to 28x28 (real MNIST when the mnist task exists).
Usage: python benchmarks/bench_acdc.py [--threshold 0.01] [--examples 100] [--sample 3000] [--steps 400]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import modcircuit.tasks as tasks
from modcircuit.circuits import discover
from modcircuit.circuits.patching import PatchContext
from modcircuit.nn.mlp import MLP


def trained(widths, x, y, steps, seed=0):
    torch.manual_seed(seed)
    model = MLP(widths, "silu")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(len(x), (128,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    return model, acc


def mnist_like():
    if "mnist" in tasks.task_names():
        try:
            t = tasks.get_task("mnist")
            return t.x_train.reshape(len(t.x_train), -1), t.y_train, "mnist"
        except Exception as e:  # no local IDX files
            print(f"(mnist task unavailable: {e}; using upsampled digits)")
    t = tasks.get_task("digits")
    x = F.interpolate(t.x_train.reshape(-1, 1, 8, 8), size=(28, 28), mode="bilinear", align_corners=False)
    x = F.pad(x[:, :, 2:26, 2:26], (2, 2, 2, 2))  # MNIST-like empty border
    return x.reshape(len(x), -1), t.y_train, "digits upsampled to 28x28"


def pairs(x, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[:n]
    clean = x[idx]
    return clean, clean.roll(1, 0)


def same(c_fast, c_ref, n_tested=None):
    """Identical decisions and scores (float64 rounding) on the edges the reference tested."""
    ok, max_diff = True, 0.0
    for f, r, sf, sr in zip(c_fast.mask, c_ref.mask, c_fast.scores, c_ref.scores):
        tested = ~torch.isnan(sr)
        ok &= torch.equal(f[tested], r[tested])
        if tested.any():
            max_diff = max(max_diff, (sf[tested] - sr[tested]).abs().max().item())
    return ok and max_diff < 1e-9, max_diff


def spot_check(model, clean, corrupt, fast, threshold, receivers):
    """Plain re-run (one full forward per edge) of some first-layer receivers, starting from the state the
    fast run had reached there (later layers final, earlier receivers of the layer decided)."""
    ctx = PatchContext(model, clean, corrupt, metric=fast.metric, ablation=fast.ablation)
    ok, n, max_diff = True, 0, 0.0
    with torch.no_grad():
        for j in receivers:
            masks = [m.clone().to(ctx.device) for m in fast.mask]
            masks[0][j:] = True
            cur = ctx.metric(ctx.forward(masks)).item()
            for i in range(masks[0].shape[1]):
                masks[0][j, i] = False
                new = ctx.metric(ctx.forward(masks)).item()
                max_diff = max(max_diff, abs((new - cur) - fast.scores[0][j, i].item()))
                if new - cur < threshold:
                    cur = new
                else:
                    masks[0][j, i] = True
                ok &= bool(masks[0][j, i] == fast.mask[0][j, i])
                n += 1
    return ok and max_diff < 1e-9, n, max_diff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--mnist-threshold", type=float, default=None, help="threshold for the MNIST-size run (default: --threshold)")
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--sample", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)

    t = tasks.get_task("digits")
    model, acc = trained([64, 100, 100, 10], t.x_train, t.y_train, args.steps)
    clean, corrupt = pairs(t.x_test, args.examples)
    fast = discover(model, clean, corrupt, method="acdc", threshold=args.threshold)
    ref = discover(model, clean, corrupt, method="acdc-plain", threshold=args.threshold)
    ok, diff = same(fast, ref)
    print(f"[64,100,100,10] digits (train acc {acc:.3f}), {args.examples} examples, threshold {args.threshold}, kl, resample")
    print(f"  edges {fast.n_edges}, kept {fast.n_kept} (reference kept {ref.n_kept})")
    print(f"  identical circuit and scores: {'yes' if ok else 'NO'} (max |score diff| {diff:.2e})")
    print(f"  fast {fast.seconds:.2f} s ({fast.forward_passes} batched passes, {fast.extra['candidates']} candidates); "
          f"reference {ref.seconds:.2f} s ({ref.forward_passes} forwards); speed ratio {ref.seconds / fast.seconds:.1f}x")

    if args.mnist_threshold is not None:
        args.threshold = args.mnist_threshold
    x, y, source = mnist_like()
    model, acc = trained([784, 100, 100, 10], x, y, args.steps)
    clean, corrupt = pairs(x, args.examples, seed=1)
    fast = discover(model, clean, corrupt, method="acdc", threshold=args.threshold)
    ref = discover(model, clean, corrupt, method="acdc-plain", threshold=args.threshold, max_edges=args.sample)
    ok, diff = same(fast, ref)
    scaled = ref.seconds * fast.n_edges / args.sample
    print(f"[784,100,100,10] {source} (train acc {acc:.3f}), {args.examples} examples, threshold {args.threshold}")
    print(f"  edges {fast.n_edges}, kept {fast.n_kept}; fast whole run {fast.seconds:.2f} s "
          f"({fast.forward_passes} batched passes, {fast.extra['candidates']} candidates)")
    print(f"  reference on the first {args.sample} edges in ACDC order: {ref.seconds:.2f} s, "
          f"scaled to all {fast.n_edges} edges: {scaled:.1f} s (estimate, not measured)")
    print(f"  identical on the sampled edges: {'yes' if ok else 'NO'} (max |score diff| {diff:.2e}); "
          f"speed ratio (scaled reference / fast) {scaled / fast.seconds:.1f}x")
    alive = torch.nonzero(fast.mask[1].any(0)).flatten().tolist()
    spots = (alive[:1] + alive[len(alive) // 2:len(alive) // 2 + 1] + alive[-1:]) if alive else [0]
    ok, n, diff = spot_check(model, clean, corrupt, fast, args.threshold, spots)
    print(f"  first-layer spot check: plain re-run of receivers {spots} of linear 0 (hidden neurons the circuit "
          f"still uses) from the fast run's state, {n} edges: identical: {'yes' if ok else 'NO'} (max |score diff| {diff:.2e})")


if __name__ == "__main__":
    main()
