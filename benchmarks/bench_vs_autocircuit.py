"""Our transformer ACDC and EAP against auto-circuit 1.0.1's, on the same exported model and data.

    pip install 'modcircuit[bench]'      # auto-circuit==1.0.1, attrs, transformer-lens==3.9.0
    python benchmarks/bench_vs_autocircuit.py [--checkpoint RUN_DIR] [--steps 1000] [--batch 100]
                                              [--methods acdc,eap] [--dtype float32|float64]

    python benchmarks/bench_vs_autocircuit.py --random --sizes 4x8x128x12,6x8x128x16,4x12x192x24 \
        --thresholds 1e-4,1e-3,1e-2,1e-1 --batch 16 --methods acdc       # random weights, one table
    python benchmarks/bench_vs_autocircuit.py --layers 4 --heads 8 --d-model 128 --positions 12 ...

With --random, --sizes or any of --layers/--heads/--d-model/--positions it builds random-weight token
models instead (d_head = d_model / heads, d_mlp = 4 d_model, --vocab tokens and classes, the unembedding
scaled by 4 so the outputs are far from uniform; random clean and corrupted tokens) and prints one ACDC
table across the sizes and thresholds. Without a checkpoint otherwise it trains a 2-block modular-addition transformer (p=23, d_model 64, 4 heads) for
--steps steps. Both libraries see the same model (ours, and its TransformerLens export with
use_attn_result / use_split_qkv_input / hook_mlp_in), the same clean and corrupted batch (resample
ablation) and the same edge graph (embed / heads / MLPs -> q, k, v of each head, MLPs, output).

ACDC: auto-circuit's `acdc_prune_scores` with one threshold per call (tao_exps=[e], tao_bases=[b]); its
circuit is the edges never removed (score inf). Times are medians (min-max) of --repeats runs on both sides,
the two sides alternating, each
ours including its whole setup (clean and corrupted source outputs; in float32 the model is used through a
view sharing its storage, in float64 a converted copy made on the first call is shared by later ones while
the model is unchanged, as auto-circuit's patchable model is built once, outside its timings). Ours: `method="acdc"` at the same threshold, KL to the model
at the last position, in auto-circuit's edge order (receivers sorted by layer only, edges within a layer in
its set order; our fast ACDC accepts any such order); Jaccard compares the two circuits' edge sets; where they
differ, the first differing edge in ACDC's order (the decision that split them; the rest follow) is printed with
our score, and ours is run again in float64 on the same order to say whose float32 round-off flipped it.
EAP (medians of 10 x --repeats runs, the two sides alternating): auto-circuit's
`mask_gradient_prune_scores(grad_function="logit", answer_function="avg_diff", mask_val=0)` with
answer = the model's top class and wrong answers = all other classes; ours `method="eap",
objective="logit-diff"` (top logit minus the mean logit), which is the same objective up to the factor
(V-1)/V, so the two rank edges identically; compared as top-k edge sets.

Two fixes auto-circuit 1.0.1 needs beside TransformerLens 3.x (see DESIGN): `attrs` installed, and an
alias module for `transformer_lens.past_key_value_caching` (moved in TL 3.x; auto-circuit uses it only
as a type); its graph_utils also imports `HookedTransformerKeyValueCache` from the package top level, so
the same class is set there as well.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
import warnings

import torch

warnings.filterwarnings("ignore")


def import_auto_circuit():
    import transformer_lens

    if not hasattr(transformer_lens, "HookedTransformerKeyValueCache"):  # graph_utils imports it from the top
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        transformer_lens.HookedTransformerKeyValueCache = TransformerLensKeyValueCache
    if "transformer_lens.past_key_value_caching" not in sys.modules:
        try:
            import transformer_lens.past_key_value_caching  # noqa: F401  (TL < 3)
        except ImportError:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            alias = types.ModuleType("transformer_lens.past_key_value_caching")
            alias.HookedTransformerKeyValueCache = TransformerLensKeyValueCache
            sys.modules["transformer_lens.past_key_value_caching"] = alias
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune_algos.ACDC import acdc_prune_scores
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.utils.graph_utils import patchable_model

    return PromptDataLoader, PromptDataset, acdc_prune_scores, mask_gradient_prune_scores, patchable_model


def our_names(edge) -> tuple[str, str]:
    """auto-circuit edge -> (our source name, our destination name)."""
    src, dst = edge.src.name, edge.dest.name
    src = {"Resid Start": "embed"}.get(src, src.replace("MLP ", "MLP"))
    if dst == "Resid End":
        dst = "output"
    elif dst.startswith("MLP "):
        dst = dst.replace("MLP ", "MLP")
    else:  # A{l}.{h}.Q
        dst = dst[:-1] + dst[-1].lower()
    return src, dst


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), (min(times), max(times))


def spread(ts: list[float]) -> str:
    """median (min-max) of a list of times."""
    return f"{statistics.median(ts):.3g} ({min(ts):.3g}-{max(ts):.3g})"


def parse_sizes(text: str) -> list[tuple[int, int, int, int]]:
    """"4x8x128x12,6x8x128x16" -> [(layers, heads, d_model, positions), ...]."""
    out = []
    for part in text.split(","):
        vals = [int(v) for v in part.lower().split("x")]
        if len(vals) != 4 or min(vals) < 1:
            raise SystemExit(f"size {part!r} must be LAYERSxHEADSxD_MODELxPOSITIONS, e.g. 4x8x128x12")
        out.append(tuple(vals))
    return out


def random_model(layers: int, heads: int, d_model: int, positions: int, vocab: int, batch: int, seed: int):
    """A random-weight token transformer (d_head = d_model / heads, d_mlp = 4 d_model, vocab tokens in and
    classes out) and a clean and corrupted batch of random tokens. The unembedding is scaled up so the output
    is far from uniform (KL effects of edges then span the thresholds' range, as in a trained model)."""
    from modcircuit.nn.transformer import GeometricTransformer

    if d_model % heads:
        raise SystemExit(f"d_model {d_model} must be a multiple of heads {heads}")
    torch.manual_seed(seed)
    model = GeometricTransformer(n_layers=layers, d_model=d_model, n_heads=heads, d_head=d_model // heads,
                                 d_mlp=4 * d_model, n_ctx=positions, d_out=vocab, d_vocab=vocab).eval()
    with torch.no_grad():
        model.W_U.mul_(4.0)
    gen = torch.Generator().manual_seed(seed + 1)
    clean = torch.randint(0, vocab, (batch, positions), generator=gen)
    corrupt = torch.randint(0, vocab, (batch, positions), generator=gen)
    return model, clean, corrupt


def auto_circuit_inputs(model, clean, corrupt):
    """auto-circuit's patchable copy of `model` (exported through TransformerLens, q/k/v apart, last position)
    and its data loader: answers = the model's top class, wrong answers = every other class."""
    from modcircuit.export.transformer_lens import to_transformer_lens

    PromptDataLoader, PromptDataset, _, _, patchable_model = import_auto_circuit()
    with torch.no_grad():
        top = model(clean).argmax(-1)
    V = model.d_out
    answers = top[:, None]
    wrong = torch.stack([torch.cat([torch.arange(c), torch.arange(c + 1, V)]) for c in top.tolist()])
    tl = to_transformer_lens(model, use_attn_result=True, use_split_qkv_input=True)
    tl.set_use_hook_mlp_in(True)
    assert (tl(clean)[:, -1] - model(clean)).abs().max().item() < 1e-4
    pm = patchable_model(tl, factorized=True, slice_output="last_seq", separate_qkv=True, device=torch.device("cpu"))
    dl = PromptDataLoader(PromptDataset(clean, corrupt, list(answers), list(wrong)), seq_len=None, diverge_idx=0,
                          batch_size=len(clean), shuffle=False)
    return pm, dl


def acdc_table(label, model, clean, corrupt, thresholds, repeats, dtype, header):
    """ACDC rows of one model: both sides timed `repeats` times, interleaved (a varying background load then
    hits both alike); circuits compared as edge sets (Jaccard), ours in auto-circuit's edge order."""
    from modcircuit.circuits.transformer_graph import discover_transformer

    acdc_prune_scores = import_auto_circuit()[2]
    pm, dl = auto_circuit_inputs(model, clean, corrupt)
    edges = sorted(pm.edges, key=lambda e: e.dest.layer, reverse=True)  # auto-circuit's ACDC order
    names = {e: our_names(e) for e in edges}
    probe = discover_transformer(model, clean, corrupt, method="random", split_qkv=True)
    ours_index = {(src, dst): (k, s) for k, s, src, dst in probe.graph.edges()}
    assert set(names.values()) == set(ours_index), "the two edge graphs differ"
    ac_order = [ours_index[names[e]] for e in edges]
    n = len(edges)
    if header:
        print("| model | threshold | edges | kept (ac / ours) | kept % | ours s | auto-circuit s | ratio | Jaccard |")
        print("|---|---|---|---|---|---|---|---|---|")
    for thr in thresholds:
        mant, exp = f"{thr:e}".split("e")

        def theirs():
            with torch.no_grad():
                return acdc_prune_scores(pm, dl, None, tao_exps=[int(exp)], tao_bases=[float(mant)])

        def ours():
            return discover_transformer(model, clean, corrupt, method="acdc", threshold=thr, metric="kl",
                                        split_qkv=True, order=ac_order, dtype=dtype)
        t_ac, t_ours = [], []
        for _ in range(repeats):
            (ps, t), (c, u) = timed(theirs, 1)[:2], timed(ours, 1)[:2]
            t_ac.append(t)
            t_ours.append(u)
        ac_kept = {names[e] for e in edges if torch.isinf(ps[e.dest.module_name][e.patch_idx])}
        ratio = statistics.median(t_ac) / statistics.median(t_ours)
        print(f"| {label} | {thr:g} | {n} | {len(ac_kept)} / {c.n_kept} | {100 * len(ac_kept) / n:.1f} | "
              f"{spread(t_ours)} | {spread(t_ac)} | {ratio:.1f}x | {jaccard(ac_kept, c.edge_set()):.3f} |",
              flush=True)
        if ac_kept == c.edge_set():
            continue
        # ACDC is sequential: the first edge of the order on which the two decide differently is the cause (a score
        # within round-off of the threshold), the later differences its consequences. Ours again in float64, same
        # order, says whose float32 round-off flipped it.
        inv = {v: k for k, v in ours_index.items()}
        first = next(inv[ks] for ks in ac_order if (inv[ks] in ac_kept) != (inv[ks] in c.edge_set()))
        k, s = ours_index[first]
        print(f"    {len(ac_kept ^ c.edge_set())} edges differ; the first in ACDC's order: {first[0]} -> {first[1]}, "
              f"our score {float(c.scores[0][k, s]):.6g} vs threshold {thr:g}")
        if dtype != torch.float64:
            c64 = discover_transformer(model, clean, corrupt, method="acdc", threshold=thr, metric="kl",
                                       split_qkv=True, order=ac_order, dtype=torch.float64)
            print(f"    float64 check (ours, same order): Jaccard with our float32 circuit "
                  f"{jaccard(c64.edge_set(), c.edge_set()):.3f}, with auto-circuit's {jaccard(c64.edge_set(), ac_kept):.3f}; "
                  f"float64 score of that edge {float(c64.scores[0][k, s]):.6g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--p", type=int, default=23)
    ap.add_argument("--random", action="store_true",
                    help="random-weight models of the given architecture(s) instead of a trained one")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--positions", type=int, default=None)
    ap.add_argument("--sizes", default=None,
                    help="several random-weight architectures in one table: LxHxDxT,... (e.g. 4x8x128x12,6x8x128x16)")
    ap.add_argument("--vocab", type=int, default=32, help="tokens and classes of a random-weight model")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--thresholds", default="0.001,0.003,0.01,0.03,0.1")
    ap.add_argument("--topk", default="5,10,20,40")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="acdc,eap", help="which comparisons to run (comma-separated)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="precision of our patched runs (auto-circuit runs in the model's float32)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    methods = args.methods.split(",")

    import modcircuit as mc
    from modcircuit.circuits.transformer_graph import discover_transformer
    from modcircuit.tasks import sequence  # noqa: F401

    arch = (args.layers, args.heads, args.d_model, args.positions)
    if args.sizes or args.random or any(v is not None for v in arch):
        sizes = parse_sizes(args.sizes) if args.sizes else [
            tuple(v if v is not None else dflt for v, dflt in zip(arch, (4, 8, 128, 12)))]
        print(f"random-weight models (d_mlp 4 d_model, vocab {args.vocab}), batch {args.batch}, torch threads "
              f"{args.threads}, {args.dtype}; KL at the last position, resample ablation; times: median (min-max) "
              f"of {args.repeats} interleaved runs\n")
        for i, (L, H, d, T) in enumerate(sizes):
            model, clean, corrupt = random_model(L, H, d, T, args.vocab, args.batch, seed=i)
            acdc_table(f"{L}x{H} d{d} T{T}", model, clean, corrupt, thresholds, args.repeats, dtype, header=i == 0)
        return

    mask_gradient_prune_scores = import_auto_circuit()[3]
    if args.checkpoint:
        run = mc.load(args.checkpoint)
        task = run.task()
    else:
        task = mc.get_task("modular-addition-transformer", seed=0, p=args.p, n_layers=2, d_model=64, n_heads=4,
                           d_head=16, d_mlp=128)
        t0 = time.perf_counter()
        run = mc.train(task, "bimt", seed=0, steps=args.steps, lr=3e-3)
        print(f"trained {args.steps} steps in {time.perf_counter() - t0:.1f} s: test accuracy "
              f"{run.metrics['test_accuracy']:.3f}")
    model = run.model.eval()
    clean, corrupt, _ = task.patching_pairs("test", n=args.batch, seed=0)
    print(f"model: {model.n_layers} blocks, d_model {model.d_model}, {model.n_heads} heads; batch {len(clean)}; "
          f"torch threads {args.threads}\n")
    if "acdc" in methods:
        print("ACDC (KL at the last position, resample ablation)")
        acdc_table(f"{model.n_layers}x{model.n_heads} d{model.d_model} T{model.n_ctx}", model, clean, corrupt,
                   thresholds, args.repeats, dtype, header=True)
    if "eap" not in methods:
        return
    pm, dl = auto_circuit_inputs(model, clean, corrupt)
    V = model.d_out
    edges = list(pm.edges)
    names = {e: our_names(e) for e in edges}
    probe = discover_transformer(model, clean, corrupt, method="random", split_qkv=True)
    ours_index = {(src, dst): (k, s) for k, s, src, dst in probe.graph.edges()}
    print("\nEAP (logit difference: top class vs the others)")

    def theirs_eap():
        return mask_gradient_prune_scores(pm, dl, None, grad_function="logit", answer_function="avg_diff",
                                          mask_val=0.0)
    def ours_eap():
        return discover_transformer(model, clean, corrupt, method="eap", split_qkv=True, objective="logit-diff",
                                    dtype=dtype)
    # a run takes milliseconds: 10x the repeats, the two sides alternating so that a varying background load
    # hits both alike
    t_ac, t_ours = [], []
    for _ in range(10 * args.repeats):
        (ps, t), (c, u) = timed(theirs_eap, 1)[:2], timed(ours_eap, 1)[:2]
        t_ac.append(t)
        t_ours.append(u)
    t_ac, t_ours = statistics.median(t_ac), statistics.median(t_ours)
    ac_scores = {names[e]: abs(float(ps[e.dest.module_name][e.patch_idx])) for e in edges}
    our_scores = {(src, dst): float(c.scores[0][k, s]) for (src, dst), (k, s) in ours_index.items()}
    ratio = [ac_scores[e] / our_scores[e] for e in ac_scores if our_scores[e] > 1e-9]
    print(f"auto-circuit {t_ac:.4f} s, ours {t_ours:.4f} s, ratio {t_ac / t_ours:.1f}x; "
          f"score ratio theirs/ours median {statistics.median(ratio):.4f} (expected V/(V-1) = {V / (V - 1):.4f})")
    print("| top k | Jaccard |")
    print("|---|---|")
    for k in [int(v) for v in args.topk.split(",")]:
        a = set(sorted(ac_scores, key=ac_scores.get, reverse=True)[:k])
        b = set(sorted(our_scores, key=our_scores.get, reverse=True)[:k])
        print(f"| {k} | {jaccard(a, b):.3f} |")


if __name__ == "__main__":
    main()
