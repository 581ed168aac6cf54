"""EAP, EAP-IG and exact ACDC on a GPT-2-small-shaped model, and auto-circuit's ACDC per edge beside ours.

    python benchmarks/bench_gpt2_size.py [--positions last,all] [--steps 8] [--acdc-blocks 2]
                                         [--threshold 0.01] [--ac-sample 24] [--device cpu|cuda]

The model: random weights from a TransformerLens HookedTransformerConfig (12 layers, 12 heads, d_model
768, d_head 64, d_mlp 3072, d_vocab --vocab (1000), n_ctx 16, LayerNorm, gelu_new, learned positions; seed
0), imported with `from_transformer_lens`. The graph: heads with q, k and v inputs apart (32,491 edges
at that size). Data: --batch (16) clean and corrupted token sequences of --seq (16) positions, uniformly
random (seeded); resample ablation, float32, KL to the model averaged over the --positions ("last": the
last position of each example; "all": every position; each measured in turn).

Every measurement runs in a fresh child process (this script with --child), so its peak resident memory
(getrusage ru_maxrss of the child, which includes building the model through TransformerLens) is its own;
the RSS before the method ran is printed beside it. Times are the method's own (`Circuit.seconds`:
the patch context and the method, not the model building or the fingerprint).

  * EAP and EAP-IG (--steps, 8) score every edge (objective "recovered").
  * ACDC: our exact ACDC (method "acdc") over the destinations of the last --acdc-blocks blocks and the
    output only (`destinations=`; the other edges stay in the circuit): its time per visited edge (its
    setup, the clean and corrupted source outputs, included), and a
    PROJECTED whole-graph time = that per-edge time x all edges (not measured; earlier destinations
    recompute more layers per candidate, so the projection is optimistic).
  * auto-circuit 1.0.1's ACDC (if installed; else "not installed"), on the same model exported to
    TransformerLens, the same batch and threshold, one threshold per call: SAMPLED and SCALED -- its
    `acdc_prune_scores` is run over a random sample of --ac-sample edges (its edge set narrowed to the
    sample) and over one edge, and (t_sample - t_one) / (sample - 1) is its per-edge time; done for edges
    into the same last blocks and for edges drawn uniformly from the whole graph (auto-circuit starts each
    edge's forward pass at the edge's layer, so early edges cost more); the whole-graph figure is that
    per-edge time x all edges, PROJECTED.

--device cuda runs the same on a GPU (model and data on the device; the peak GPU memory is printed too).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def build(args):
    """The model (ours, imported from TransformerLens) and the clean and corrupted batch, on args.device."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from modcircuit.export.transformer_lens import from_transformer_lens

    cfg = HookedTransformerConfig(
        n_layers=args.layers, n_heads=args.heads, d_model=args.d_model, d_head=args.d_model // args.heads,
        d_mlp=args.d_mlp, d_vocab=args.vocab, n_ctx=max(args.seq, 16), act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", seed=0, dtype=torch.float32, device=args.device)
    model = from_transformer_lens(HookedTransformer(cfg))
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(args.device)
    corrupt = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(args.device)
    return model, clean, corrupt


def last_blocks(graph, blocks: int) -> list[str]:
    """The destination names of the last `blocks` blocks and the output (ACDC visits them first)."""
    first = graph.n_layers - blocks
    return [n for k, n in enumerate(graph.dest_names()) if k == graph.dest_out or graph.dest_layer(k) >= first]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def ours(args, what: str, positions: str) -> dict:
    import modcircuit as mc

    model, clean, corrupt = build(args)
    before = rss_mb()
    common = dict(split_qkv=True, dtype=torch.float32, positions=positions, metric="kl")
    if what == "eap":
        c = mc.discover(model, clean, corrupt, method="eap", **common)
    elif what == "eap-ig":
        c = mc.discover(model, clean, corrupt, method="eap-ig", steps=args.steps, **common)
    else:
        from modcircuit.circuits.graph import TransformerGraph

        dests = last_blocks(TransformerGraph(n_layers=args.layers, n_heads=args.heads, split_qkv=True),
                            args.acdc_blocks)
        c = mc.discover(model, clean, corrupt, method="acdc", threshold=args.threshold, destinations=dests,
                        **common)
    scores = c.scores[0]
    visited = int((~torch.isnan(scores)).sum())
    out = dict(seconds=c.seconds, visited=visited, edges=int(c.graph.n_edges), kept=int(c.n_kept),
               rss_before_mb=before, peak_rss_mb=rss_mb(), finite=bool(torch.isfinite(scores[~torch.isnan(scores)]).all()))
    if args.device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def auto_circuit(args, where: str, positions: str) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from bench_vs_autocircuit import import_auto_circuit, our_names
        PromptDataLoader, PromptDataset, acdc_prune_scores, _, patchable_model = import_auto_circuit()
    except ImportError as e:
        return {"not_installed": str(e)}
    from modcircuit.export.transformer_lens import to_transformer_lens

    model, clean, corrupt = build(args)
    tl = to_transformer_lens(model, use_attn_result=True, use_split_qkv_input=True)
    tl.set_use_hook_mlp_in(True)
    pm = patchable_model(tl, factorized=True, slice_output="last_seq" if positions == "last" else None,
                         separate_qkv=True, device=torch.device(args.device))
    with torch.no_grad():
        top = model.logits_all(clean).argmax(-1)[:, -1]
    ds = PromptDataset(clean, corrupt, list(top[:, None]), list(top[:, None]))
    dl = PromptDataLoader(ds, seq_len=None, diverge_idx=0, batch_size=len(clean), shuffle=False)
    edges = sorted(pm.edges, key=lambda e: (e.dest.layer, e.name))
    if where == "last":
        from modcircuit.circuits.graph import TransformerGraph
        names = set(last_blocks(TransformerGraph(n_layers=args.layers, n_heads=args.heads, split_qkv=True),
                                args.acdc_blocks))
        edges = [e for e in edges if our_names(e)[1] in names]
    rng = random.Random(0)
    sample = rng.sample(edges, min(args.ac_sample, len(edges)))
    mant, exp = f"{args.threshold:e}".split("e")
    all_edges = pm.edges

    def timed(subset) -> float:
        pm.edges = set(subset)  # auto-circuit's ACDC visits model.edges: narrowed to the sample
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                acdc_prune_scores(pm, dl, None, tao_exps=[int(exp)], tao_bases=[float(mant)])
            return time.perf_counter() - t0
        finally:
            pm.edges = all_edges
    one = min(timed(sample[:1]) for _ in range(2))  # its setup (source outputs, clean run) and one edge
    full = timed(sample)
    return dict(per_edge=(full - one) / (len(sample) - 1), sample=len(sample), one_edge_s=one, sample_s=full,
                edges=len(all_edges), pool=len(edges), peak_rss_mb=rss_mb())


def child(args) -> None:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    kind, what, positions = args.child.split(":")
    res = ours(args, what, positions) if kind == "ours" else auto_circuit(args, what, positions)
    print("RESULT " + json.dumps(res), flush=True)


def run_child(args, spec: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", spec] + args.passthrough
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}


def table(args) -> None:
    from modcircuit.circuits.graph import TransformerGraph

    g = TransformerGraph(n_layers=args.layers, n_heads=args.heads, split_qkv=True)
    n_edges = g.n_edges
    acdc_edges = int(g.allowed[[k for k in range(g.n_dest) if k == g.dest_out or
                                g.dest_layer(k) >= args.layers - args.acdc_blocks]].sum())
    print(f"model: {args.layers} layers, {args.heads} heads, d_model {args.d_model}, d_mlp {args.d_mlp}, d_vocab "
          f"{args.vocab}, gelu_new, LN (random TransformerLens weights, seed 0); q/k/v apart: {n_edges:,} edges; "
          f"batch {args.batch} x {args.seq} positions; float32, resample ablation, KL; device {args.device}, "
          f"torch threads {args.threads}; each row a fresh process")
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min load average, {os.cpu_count()} CPUs)\n", flush=True)
    print("| positions | measurement | seconds | goal | peak RSS MB (before method) | note |")
    print("|---|---|---|---|---|---|")
    for pos in args.positions.split(","):
        for what, goal in (("eap", 20.0), ("eap-ig", 120.0)):
            if what not in args.measure:
                continue
            r = run_child(args, f"ours:{what}:{pos}")
            if "error" in r:
                print(f"| {pos} | {what} | error | | | {r['error']} |", flush=True)
                continue
            ok = "met" if r["seconds"] < goal else "MISSED"
            mem = "met" if r["peak_rss_mb"] < 6144 else "MISSED"
            label = f"{what} ({args.steps} steps)" if what == "eap-ig" else what
            print(f"| {pos} | {label}, all {r['edges']:,} edges | {r['seconds']:.1f} | < {goal:.0f} s: {ok} | "
                  f"{r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}); < 6 GB: {mem} | "
                  f"{'finite scores' if r['finite'] else 'NON-FINITE scores'}"
                  f"{'; GPU peak %.0f MB' % r['peak_gpu_mb'] if 'peak_gpu_mb' in r else ''} |", flush=True)
        if pos not in args.acdc_positions.split(","):
            print(f"| {pos} | acdc (ours and auto-circuit's) | not run (--acdc-positions) | | | |", flush=True)
            continue
        r = run_child(args, f"ours:acdc:{pos}") if "acdc" in args.measure else None
        if r is not None and "error" in r:
            print(f"| {pos} | acdc | error | | | {r['error']} |", flush=True)
        elif r is not None:
            per = r["seconds"] / r["visited"]
            print(f"| {pos} | ours acdc (exact), last {args.acdc_blocks} blocks + output: {r['visited']:,} edges "
                  f"| {r['seconds']:.1f} ({per * 1e3:.2f} ms/edge) | | {r['peak_rss_mb']:.0f} "
                  f"({r['rss_before_mb']:.0f}) | threshold {args.threshold:g}; "
                  f"{r['visited'] - (r['edges'] - r['kept'])} of them kept |", flush=True)
            print(f"| {pos} | ours acdc, whole graph: PROJECTED ({per * 1e3:.2f} ms x {n_edges:,}) | "
                  f"{per * n_edges:.0f} ({per * n_edges / 60:.1f} min) | | | not measured |", flush=True)
        for where in ("last", "all") if "auto-circuit" in args.measure else ():
            r = run_child(args, f"ac:{where}:{pos}")
            label = f"edges into the last {args.acdc_blocks} blocks + output" if where == "last" else "edges of the whole graph"
            if "not_installed" in r:
                print(f"| {pos} | auto-circuit acdc, {label} | not installed | | | {r['not_installed']} |", flush=True)
                continue
            if "error" in r:
                print(f"| {pos} | auto-circuit acdc, {label} | error | | | {r['error']} |", flush=True)
                continue
            per = r["per_edge"]
            print(f"| {pos} | auto-circuit 1.0.1 acdc, SAMPLED: {r['sample']} random {label} | "
                  f"{per * 1e3:.1f} ms/edge | | {r['peak_rss_mb']:.0f} | (t {r['sample']} edges {r['sample_s']:.2f} s "
                  f"- t 1 edge {r['one_edge_s']:.2f} s) / {r['sample'] - 1} |", flush=True)
            n = acdc_edges if where == "last" else n_edges
            print(f"| {pos} | auto-circuit acdc, SCALED to {n:,} edges ({label}): PROJECTED | "
                  f"{per * n:.0f} ({per * n / 60:.1f} min) | | | not measured |", flush=True)
    print(f"\nload after: {os.getloadavg()[0]:.2f}")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--d-mlp", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--positions", default="last,all", help="comma-separated: last, all")
    ap.add_argument("--measure", default="eap,eap-ig,acdc,auto-circuit",
                    help="comma-separated: eap, eap-ig, acdc (ours), auto-circuit (its ACDC)")
    ap.add_argument("--acdc-positions", default=None, help="the positions settings ACDC runs for (default: all)")
    ap.add_argument("--steps", type=int, default=8, help="EAP-IG steps")
    ap.add_argument("--acdc-blocks", type=int, default=2, help="ACDC over the destinations of this many last blocks")
    ap.add_argument("--threshold", type=float, default=0.01, help="ACDC threshold (ours and auto-circuit's)")
    ap.add_argument("--ac-sample", type=int, default=24, help="auto-circuit: edges timed per sample")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here")
    if args.d_model % args.heads:
        ap.error(f"--d-model {args.d_model} is not a multiple of --heads {args.heads}")
    bad = set(args.measure.split(",")) - {"eap", "eap-ig", "acdc", "auto-circuit"}
    if bad:
        ap.error(f"--measure {sorted(bad)[0]!r} is not allowed; give eap, eap-ig, acdc, auto-circuit")
    args.measure = args.measure.split(",")
    if args.acdc_positions is None:
        args.acdc_positions = args.positions
    args.passthrough = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
