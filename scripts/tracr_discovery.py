"""ACDC and EAP on every tracr-compiled program: edges found vs the known circuit (q/k/v apart).

    PYTHONPATH=src python scripts/tracr_discovery.py [--threshold 0.01]
Prints one row per (program, method): kept edges, true edges, true positives, precision, recall, seconds.
"""
import argparse
import json
import time

import torch

import modcircuit as mc
from modcircuit.rasp.compiled import tracr_sizes
from modcircuit.rasp.programs import SPECS

ap = argparse.ArgumentParser()
ap.add_argument("--threshold", type=float, default=0.01)
ap.add_argument("--methods", default="acdc,eap")
ap.add_argument("--ablation", default="resample")
args = ap.parse_args()
torch.set_num_threads(1)
rows = []
for name in SPECS:
    model, truth, task = mc.tracr_model(name)
    sizes = tracr_sizes(model, truth)
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        c = mc.discover(model, task, method=method, threshold=args.threshold, split_qkv=True,
                        ablation=args.ablation)
        found = c.edge_set()
        tp = len(found & truth.edges)
        rows.append(dict(program=name, method=method, ablation=args.ablation, layers=sizes["layers"], heads=sizes["heads"],
                         edges=sizes["edges"], true_edges=sizes["true_edges"], kept=len(found), true_pos=tp,
                         precision=round(tp / len(found), 3) if found else None,
                         recall=round(tp / len(truth.edges), 3),
                         seconds=round(time.perf_counter() - t0, 2),
                         missed=sorted(truth.edges - found), extra=sorted(found - truth.edges)))
        print(json.dumps(rows[-1]), flush=True)
