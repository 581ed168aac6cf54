"""Every discovery method on every tracr-compiled program, scored against the known circuit.

    PYTHONPATH=src python scripts/tracr_discovery.py [--ablations resample,zero] [--json]

One row per (program, ablation, method[, ACDC threshold]): AUC of the method's edge scores against the truth
with q/k/v apart and with whole heads (circuits/truth_scoring.py), MIB's AUROC, and the circuit the method
returns (ACDC: at its threshold; score-only methods: the top-|truth| edges) as found / true edges.
These models are compiled, not trained: they score the methods, not the training regimes.
"""
import argparse
import json
import time

import torch

import modcircuit as mc
from modcircuit.rasp.compiled import tracr_sizes
from modcircuit.rasp.programs import SPECS

ap = argparse.ArgumentParser()
ap.add_argument("--methods", default="acdc,eap,eap-ig,magnitude,probing,random")
ap.add_argument("--thresholds", default="0.001,0.01,0.1", help="ACDC's sweep")
ap.add_argument("--ablations", default="resample,zero")
ap.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
args = ap.parse_args()
torch.set_num_threads(1)


def runs(method):
    if method == "acdc":
        return [(f"acdc tau={t}", dict(threshold=float(t))) for t in args.thresholds.split(",")]
    if method == "probing":
        return [(method, dict(threshold=0.01))]
    return [(method, dict(seed=0) if method == "random" else {})]


header = f"{'program':<11} {'ablation':<9} {'method':<15} {'AUC qkv':>7} {'AUC head':>8} {'MIB':>5} {'found/true':>10} {'kept':>5} {'s':>5}"
if not args.json:
    print(header)
for name in SPECS:
    model, truth, task = mc.tracr_model(name)
    sizes = tracr_sizes(model, truth)
    for ablation in args.ablations.split(","):
        for method in args.methods.split(","):
            for label, kw in runs(method):
                t0 = time.perf_counter()
                if method not in ("acdc", "probing"):
                    kw = dict(kw, top_k=sizes["true_edges"])
                c = mc.discover(model, task, method=method, split_qkv=True, ablation=ablation, **kw)
                seconds = time.perf_counter() - t0
                r = mc.evaluate(model, c, task)
                found = c.edge_set()
                row = dict(program=name, layers=sizes["layers"], heads=sizes["heads"], edges=sizes["edges"],
                           true_edges=sizes["true_edges"], ablation=ablation, method=label,
                           auc_qkv=r["auc_heads_qkv"], auc_heads=r["auc_heads_merged"], mib_auroc=r["mib_auroc"],
                           kept=len(found), true_found=len(found & truth.edges), seconds=round(seconds, 2))
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"{name:<11} {ablation:<9} {label:<15} {row['auc_qkv']:>7.3f} {row['auc_heads']:>8.3f} "
                          f"{row['mib_auroc']:>5.2f} {row['true_found']:>4}/{row['true_edges']:<5} {row['kept']:>5} "
                          f"{seconds:>5.1f}", flush=True)
