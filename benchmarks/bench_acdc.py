"""Fast ACDC vs the plain one-forward-per-edge reference across circuit densities, in one process, 1 thread.

For every size x net kind x target density (share of edges kept) a threshold is searched on the fast path
(a few fast runs, each next tau read off the previous run's scores), then fast and reference are timed at it.
  sizes:  [48,64,64,10], [64,100,100,10] (reference over the whole graph) and [784,100,100,10] (reference
          SAMPLED: the first --sample edges in ACDC order, plus a plain re-run of --receivers hidden receivers
          of linear 0 from the fast run's state; its per-edge time is scaled to all edges; said in the row).
  kinds:  random (ReLU, weights scaled so activations are O(1), uniform inputs, corrupt = shuffled clean)
          and trained (SiLU, trained on the 8x8 digits; 48 inputs = the middle 6 pixel rows; 784 inputs = the
          digits upsampled to 28x28, or real MNIST when the mnist task has its files).
"identical" means the same kept/removed decision for every compared edge and scores within 1e-9 (float64).
--precision float32 runs both sides in float32 (what `--precision float32` asks for; the compiled kernel then runs
the float64 twin, see circuits/methods/acdc.py): the column counts the compared edges whose decision differs from
the float32 reference, and the scores' max difference (float32 rounding).
--kernel picks the fast path's kernel: compiled (numba, extra `fast`), torch (batched speculative chains), auto. The
compiled kernel's one-time JIT compile (cached on disk afterwards) falls in the threshold search, not in a timed run.
Usage: python benchmarks/bench_acdc.py [--examples 100] [--densities 0.001,0.01,0.1,0.25,0.5] [--sizes 0,1,2]
       [--kernel auto] [--precision float64]
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

SIZES = [[48, 64, 64, 10], [64, 100, 100, 10], [784, 100, 100, 10]]


def trained(widths, x, y, steps, seed=0):
    torch.manual_seed(seed)
    model = MLP(widths, "silu")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(len(x), (128,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


def random_net(widths, seed=0, scale=2.5):
    torch.manual_seed(seed)
    model = MLP(widths, "relu")
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_(scale)
    return model


def digits_inputs(n_in):
    t = tasks.get_task("digits")
    x, y = t.x_train, t.y_train
    if n_in == 48:
        return x[:, 8:56], y, "digits rows 1-6"
    if n_in == 64:
        return x, y, "digits"
    if "mnist" in tasks.task_names():
        try:
            m = tasks.get_task("mnist")
            return m.x_train.reshape(len(m.x_train), -1), m.y_train, "mnist"
        except Exception:  # no local IDX files
            pass
    x = F.interpolate(x.reshape(-1, 1, 8, 8), size=(28, 28), mode="bilinear", align_corners=False)
    x = F.pad(x[:, :, 2:26, 2:26], (2, 2, 2, 2))  # MNIST-like empty border
    return x.reshape(len(x), -1), y, "digits upsampled to 28x28"


def net_and_data(widths, kind, n, steps):
    g = torch.Generator().manual_seed(1)
    if kind == "random":
        clean = torch.rand(n, widths[0], generator=g) * 2 - 1
        return random_net(widths), clean, clean[torch.randperm(n, generator=g)]
    x, y, _ = digits_inputs(widths[0])
    model = trained(widths, x, y, steps)
    clean = x[torch.randperm(len(x), generator=g)[:n]]
    return model, clean, clean.roll(1, 0)


def search_tau(run, target, tries=5, tol=0.2):
    """A threshold whose fast circuit keeps about `target` of the edges: each next tau is the score quantile
    that would keep `target` (scores move with tau, hence a few rounds). Returns the closest run."""
    tau, best = 1e-2, None
    for _ in range(tries):
        c = run(tau)
        frac = c.n_kept / c.n_edges
        if best is None or abs(frac - target) < abs(best[1].n_kept / best[1].n_edges - target):
            best = (tau, c)
        if abs(frac - target) <= tol * target:
            break
        s = torch.cat([x.flatten() for x in c.scores])
        nxt = torch.quantile(s, 1 - target).item()
        tau = nxt if nxt > 0 else tau / 10
    return best


def compare(c_fast, c_ref):
    """Decisions that differ and the scores' max difference on the edges the reference tested."""
    differ, max_diff, n = 0, 0.0, 0
    for f, r, sf, sr in zip(c_fast.mask, c_ref.mask, c_fast.scores, c_ref.scores):
        tested = ~torch.isnan(sr)
        n += int(tested.sum())
        differ += int((f[tested] != r[tested]).sum())
        if tested.any():
            max_diff = max(max_diff, (sf[tested] - sr[tested]).abs().max().item())
    return differ, max_diff, n


def plain_receivers(model, clean, corrupt, fast, threshold, receivers, dtype):
    """Plain re-run (one full forward per edge) of some receivers of linear 0, starting from the state the
    fast run had reached there (later linears final, earlier receivers of linear 0 decided)."""
    ctx = PatchContext(model, clean, corrupt, metric=fast.metric, ablation=fast.ablation, dtype=dtype)
    differ, n, max_diff = 0, 0, 0.0
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
                differ += int(masks[0][j, i] != fast.mask[0][j, i])
                n += 1
    return differ, n, max_diff


def verdict(differ: int, max_diff: float, n: int, precision: str) -> str:
    if precision == "float64":
        return "yes" if differ == 0 and max_diff < 1e-9 else "NO"
    return f"{differ} of {n} decisions differ"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--densities", default="0.001,0.01,0.1,0.25,0.5")
    ap.add_argument("--sizes", default="0,1,2", help="indices into " + str(SIZES))
    ap.add_argument("--kinds", default="random,trained")
    ap.add_argument("--sample", type=int, default=1500, help="reference edges in ACDC order for the biggest size")
    ap.add_argument("--receivers", type=int, default=2, help="linear-0 receivers re-run plainly for the biggest size")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--kernel", default="auto", choices=["auto", "compiled", "torch"])
    ap.add_argument("--precision", default="float64", choices=["float64", "float32"])
    args = ap.parse_args()
    dtype = getattr(torch, args.precision)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    densities = [float(d) for d in args.densities.split(",")]
    print(f"{args.examples} examples, kl, resample ablation, {args.precision}, 1 thread, kernel {args.kernel}")
    print(f"{'size':18} {'net':8} {'target':>7} {'tau':>9} {'kept %':>7} {'fast s':>7} {'plain s':>8} {'ratio':>6}  identical")
    for si in [int(s) for s in args.sizes.split(",")]:
        widths = SIZES[si]
        sampled = widths[0] > 100
        for kind in args.kinds.split(","):
            model, clean, corrupt = net_and_data(widths, kind, args.examples, args.steps)

            def run(tau, method="acdc", **kw):
                if method == "acdc":
                    kw["kernel"] = args.kernel
                return discover(model, clean, corrupt, method=method, threshold=tau, dtype=dtype, **kw)

            for target in densities:
                tau, _ = search_tau(run, target)
                fast = run(tau)  # timed on its own, after the search
                if not sampled:
                    ref = run(tau, "acdc-plain")
                    differ, diff, n = compare(fast, ref)
                    plain_s, note = ref.seconds, ""
                else:
                    ref = run(tau, "acdc-plain", max_edges=args.sample)
                    differ, diff, n = compare(fast, ref)
                    alive = torch.nonzero(fast.mask[1].any(0)).flatten().tolist() or [0]
                    picks = [alive[k * len(alive) // args.receivers] for k in range(args.receivers)]
                    t0 = time.perf_counter()
                    differ0, n0, diff0 = plain_receivers(model, clean, corrupt, fast, tau, picks, dtype)
                    t_rec = time.perf_counter() - t0
                    differ, diff, n = differ + differ0, max(diff, diff0), n + n0
                    plain_s = (ref.seconds + t_rec) / n * fast.n_edges
                    note = f" (reference on {n} of {fast.n_edges} edges, scaled)"
                kept = 100 * fast.n_kept / fast.n_edges
                print(f"{str(widths):18} {kind:8} {100 * target:6.1f}% {tau:9.2e} {kept:7.2f} {fast.seconds:7.2f} "
                      f"{plain_s:8.1f} {plain_s / fast.seconds:5.1f}x  {verdict(differ, diff, n, args.precision)} "
                      f"(max diff {diff:.1e}){note}", flush=True)


if __name__ == "__main__":
    main()
