"""The study's claims, each tested per task (and method, selection and configuration) against every
baseline regime: one-sided Welch t-test over seeds (Mann-Whitney U beside it), Holm-corrected over
all tests of the report. BIMT is compared only with a baseline of the same configuration (groups.py).
"""
from __future__ import annotations

import json

from .groups import difference_labels, label_groups
from .stats import compare, holm
from .values import fmt_num, fmt_p, group_values, method_order, regime_order

ALPHA = 0.05
TARGET = "bimt"

# the study's claims: (id, statement, table, column, direction of BIMT vs baseline, per-method?)
CLAIMS = [
    ("faithful", "BIMT circuits are more faithful (lower logit gap)", "circuits", "logit_gap", "less", True),
    ("sparse", "BIMT circuits are sparser (fewer edges kept)", "circuits", "n_kept", "less", True),
    ("fast-discovery", "Circuit discovery is faster on BIMT models", "circuits", "seconds", "less", True),
    ("memory", "BIMT training needs more memory (peak RSS)", "compute", "peak_rss_mb", "greater", False),
    ("train-time", "BIMT training takes longer", "compute", "train_seconds", "greater", False),
    ("inference-overhead", "The BIMT model is slower at inference (batch-1 latency)", "compute",
     "latency_ms_median", "greater", False),
    ("compact-speed", "The compacted BIMT circuit is faster at inference (batch-1 latency)", "circuits",
     "compact_latency_ms_median", "less", True),
    ("modular-q", "BIMT models are more modular (higher Newman Q of the |W| graph)", "compute", "modularity_q",
     "greater", False),
    ("clusterable", "BIMT models are more clusterable (higher C)", "compute", "clusterability", "greater", False),
]
# values below this are round-off, not a difference: a circuit that keeps every edge that matters has a logit gap
# of 1e-15 or so (float64), and two regimes' 1e-15s must not make a significant claim
RESOLUTION = {"logit_gap": 1e-9}


def tested_claims(tasks, compute, circuits) -> list[dict]:
    rows = []
    for cid, statement, table, col, direction, per_method in CLAIMS:
        for task in tasks:
            if table == "circuits":
                if circuits.empty or col not in circuits.columns:
                    continue
                df_t = circuits[circuits["task"] == task]
                groups = [(m, s, df_t[(df_t["method"] == m) & (df_t["selection"] == s)])
                          for m in method_order(df_t["method"].unique())
                          for s in sorted(df_t.loc[df_t["method"] == m, "selection"].unique())]
            else:
                if col not in compute.columns:
                    continue
                groups = [(None, None, compute[compute["task"] == task])]
            for m, sel, df_all in groups:
                if df_all.empty:
                    continue
                labels = difference_labels([json.loads(x) for x in df_all["shared"].unique()])
                # BIMT is compared only with baselines of the same shared setting (groups.py): each group
                # (regime and its own hyperparameters) against each other group there
                for sid in sorted(df_all["shared"].unique(), key=lambda x: (labels[x], x)):
                    df, glabels = label_groups(df_all[df_all["shared"] == sid],
                                               regime_order(df_all["regime"].unique()))
                    regime_of = df.groupby("group")["regime"].first().to_dict()
                    for target in [g for g in glabels if regime_of[g] == TARGET]:
                        a = group_values(df, target, col)
                        if not a:
                            continue
                        config = "; ".join(t for t in (labels[sid], target[len(TARGET):].strip(" []")) if t)
                        for base in glabels:
                            b = group_values(df, base, col)
                            if regime_of[base] == TARGET or not b:
                                continue
                            res = compare(a, b, direction, RESOLUTION.get(col, 0.0))
                            rows.append({"claim": cid, "statement": statement, "task": task, "method": m,
                                         "selection": sel, "config": config, "baseline": base, "metric": col,
                                         "direction": direction, **res})
    adj = holm([r["p_welch"] for r in rows])
    adj_rev = holm([r["p_welch_reverse"] for r in rows])
    for r, p, q in zip(rows, adj, adj_rev):
        r["p_holm"], r["p_holm_reverse"] = p, q
        if p is not None and p < ALPHA:
            r["verdict"] = "holds"
        elif q is not None and q < ALPHA:
            r["verdict"] = "opposite"
        elif p is None:
            r["verdict"] = "untestable"
        else:
            r["verdict"] = "not shown"
    return rows


def claims_section(doc: Doc, rows: list[dict]):
    doc.h(2, "Claims", "claims")
    doc.p(f"Each claim compares BIMT with each baseline regime on per-seed values: one-sided Welch t-test "
          f"in the claimed direction, Holm-corrected over all {len(rows)} tests in this report (alpha {ALPHA}). "
          f"'holds': the corrected p is below alpha; 'opposite': the reverse one-sided test is significant "
          f"after correction; 'not shown': neither; 'untestable': fewer than two seeds per group. "
          f"Mann-Whitney U p values are given beside (with n seeds per group its smallest possible value is "
          f"1/C(2n, n), e.g. 0.167 for n=2, 0.004 for n=5).")
    if not rows:
        doc.p("No claim could be tested: the results need a bimt regime and at least one baseline.")
        return
    summary = []
    for cid, statement, *_ in CLAIMS:
        rs = [r for r in rows if r["claim"] == cid]
        if not rs:
            continue
        k = sum(r["verdict"] == "holds" for r in rs)
        o = sum(r["verdict"] == "opposite" for r in rs)
        summary.append(f"{statement}: holds in {k} of {len(rs)} comparisons, opposite in {o}.")
    doc.ul(summary)
    header = ["claim", "task", "method", "baseline", "bimt mean", "baseline mean", "ratio", "p Welch",
              "p Holm", "p MWU", "verdict"]
    table = []
    for r in rows:
        where = "" if r["method"] is None else f"{r['method']} ({r['selection']})"
        if r.get("config"):
            where = f"{where} [{r['config']}]".strip()
        table.append([r["statement"], r["task"], where, r["baseline"],
                      fmt_num(r["mean_a"]), fmt_num(r["mean_b"]), fmt_num(r["ratio"]),
                      fmt_p(r["p_welch"]), fmt_p(r["p_holm"]), fmt_p(r["p_mwu"]),
                      f"{r['verdict']} (n={r['n_a']} vs {r['n_b']})"])
    doc.table(header, table, "BIMT against each baseline; ratio = BIMT mean / baseline mean")


