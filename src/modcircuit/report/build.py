"""The study report (HTML + Markdown) from a results store.

    build_report("results/demo.duckdb", "report/")  -> Report (index.html, report.md, figures/*.png)

Per task: the comparison table (regime x circuit quality, sparsity, discovery time, training time,
memory, inference speed; mean ± 95% CI over seeds, Student t), one table per discovery method,
a compute table, faithfulness curves per method (regimes overlaid, mean over seeds), ROC curves
where the task has ground truth, compute bars, and network drawings with the circuit overlaid.
Then the claims: each claim of the study tested per task (and method) against every baseline
regime with a one-sided Welch t-test over seeds (Mann-Whitney U beside it), Holm-corrected over all
tests in the report; the verdict says what the data say, whichever way.
"""
from __future__ import annotations

import base64
import html
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import replace_dir, staging_dir
from ..errors import ModcircuitError
from .stats import compare, holm, mean_ci
from .modularity import modularity_section

ALPHA = 0.05
TARGET = "bimt"

# (column, label, scale, lower_is_better or None)
MAIN_CIRCUIT = [("logit_gap", "logit gap", 1, True), ("kl", "KL", 1, True), ("mse", "MSE to model", 1, True),
                ("accuracy", "circuit acc.", 1, False), ("task_mse", "circuit task MSE", 1, True),
                ("n_kept", "edges kept", 1, True), ("edge_fraction", "edge frac.", 1, True),
                ("seconds", "discovery s", 1, True)]
MORE_CIRCUIT = [("faithfulness", "faithfulness", 1, False), ("agreement", "agreement", 1, False),
                ("node_fraction", "node frac.", 1, True), ("forward_passes", "forward passes", 1, True),
                ("curve_area", "curve area", 1, False), ("auc_inputs", "input ROC AUC", 1, False),
                ("auc_edges", "edge ROC AUC", 1, False), ("compact_n_params", "circuit params", 1, True),
                ("compact_latency_ms_median", "circuit latency ms", 1, True),
                ("compact_throughput_median", "circuit throughput /s", 1, False)]
MAIN_COMPUTE = [("train_seconds", "train s", 1, True), ("peak_rss_mb", "peak RSS MB", 1, True),
                ("cuda_max_allocated_mb", "CUDA peak MB", 1, True), ("latency_ms_median", "latency ms", 1, True),
                ("throughput_median", "throughput /s", 1, False)]
MORE_COMPUTE = [("test_accuracy", "model test acc.", 1, False), ("test_mse", "model test MSE", 1, True),
                ("seconds_per_step", "ms / step", 1000, True), ("swap_share", "swap share", 1, None),
                ("train_rss_mb", "train RSS MB", 1, True), ("baseline_rss_mb", "baseline RSS MB", 1, None),
                ("n_params", "params", 1, None), ("n_nonzero", "non-zero params", 1, True),
                ("connection_cost", "connection cost", 1, True)]

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


# ---- formatting ----------------------------------------------------------------------------------
def fmt_num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def fmt_ci(s: dict, scale: float = 1) -> str:
    if s["mean"] is None:
        return "—"
    if s["half"] is None:
        return f"{fmt_num(s['mean'] * scale)} (n=1)"
    return f"{fmt_num(s['mean'] * scale)} ± {fmt_num(s['half'] * scale)}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


# ---- document blocks -------------------------------------------------------------------------------
@dataclass
class Doc:
    blocks: list = field(default_factory=list)

    def h(self, level: int, text: str, anchor: str | None = None):
        self.blocks.append(("h", level, text, anchor))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]], caption: str | None = None):
        self.blocks.append(("table", header, rows, caption))

    def img(self, rel: str, caption: str):
        self.blocks.append(("img", rel, caption))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2] + "\n")
            elif b[0] == "p":
                out.append(b[1] + "\n")
            elif b[0] == "ul":
                out.extend(f"- {x}" for x in b[1])
                out.append("")
            elif b[0] == "table":
                _, header, rows, caption = b
                if caption:
                    out.append(f"*{caption}*\n")
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out.extend("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)
                out.append("")
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})\n")
        return "\n".join(out)

    def html(self, title: str, root: Path | None = None) -> str:
        e = html.escape
        body = []
        toc = [b for b in self.blocks if b[0] == "h" and b[1] == 2]
        for b in self.blocks:
            if b[0] == "h":
                aid = f' id="{e(b[3])}"' if b[3] else ""
                body.append(f"<h{b[1]}{aid}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
            elif b[0] == "table":
                _, header, rows, caption = b
                cap = f"<caption>{e(caption)}</caption>" if caption else ""
                head = "".join(f"<th>{e(c)}</th>" for c in header)
                trs = "".join("<tr>" + "".join(f"<td class=\"{_cls(c)}\">{e(c)}</td>" for c in r) + "</tr>"
                              for r in rows)
                body.append(f'<div class="tw"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table></div>')
            elif b[0] == "img":  # embedded, so the page is one self-contained file
                src = e(b[1])
                if root is not None and (root / b[1]).is_file():
                    src = "data:image/png;base64," + base64.b64encode((root / b[1]).read_bytes()).decode()
                body.append(f'<figure><img src="{src}" alt="{e(b[2])}" title="{e(b[1])}">'
                            f'<figcaption>{e(b[2])}</figcaption></figure>')
        nav = "".join(f'<a href="#{e(b[3])}">{e(b[2])}</a>' for b in toc if b[3])
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{e(title)}</title><style>{CSS}</style></head>"
                f"<body><nav>{nav}</nav><main>{''.join(body)}</main></body></html>\n")


def _cls(cell: str) -> str:
    if cell.startswith("holds"):
        return "yes"
    if cell.startswith("opposite"):
        return "opp"
    return "" if cell[:1].isdigit() or cell[:1] in "-—<" else "t"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#fbfbfd}
nav{position:sticky;top:0;background:#24324a;padding:.5em 1em;z-index:1}
nav a{color:#fff;margin-right:1.2em;text-decoration:none;font-size:.9em}
main{max-width:1200px;margin:0 auto;padding:1em 2em 4em}
h1{color:#24324a}h2{border-bottom:2px solid #24324a;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.5em;color:#34435e}
.tw{overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em;background:#fff}
caption{text-align:left;font-style:italic;padding:.3em 0;color:#555}
th,td{border:1px solid #d5d9e2;padding:.3em .55em;text-align:right;white-space:nowrap}
th{background:#eef1f6}td:first-child,th:first-child{text-align:left}
td.t{text-align:left}td.yes{background:#dff3e4;text-align:left}td.opp{background:#f8e1e1;text-align:left}
figure{display:inline-block;margin:.5em 1em 1em 0;vertical-align:top;background:#fff;padding:.4em;border:1px solid #e3e6ec}
figure img{max-width:560px;height:auto;display:block}
figcaption{font-size:.8em;color:#555;max-width:560px}
"""


# ---- data ----------------------------------------------------------------------------------------
def load_frames(results) -> dict:
    from ..study.store import Store

    path = Path(results)
    if not path.is_file():
        raise ModcircuitError(f"results file {str(path)!r} does not exist; run a study first (modcircuit study run ...)")
    with Store(path, read_only=True) as s:
        frames = {t: s.df(t) for t in ("runs", "circuits", "profiles")}
        frames["artifacts"] = s.artifacts
    if frames["runs"].empty:
        raise ModcircuitError(f"results file {str(path)!r} holds no runs yet")
    return frames


def _regime_order(regimes) -> list[str]:
    from ..train import regime_names

    order = [r for r in regime_names() if r in set(regimes)]
    return order + sorted(set(regimes) - set(order))


def _method_order(methods) -> list[str]:
    from ..study.spec import METHODS

    order = [m for m in METHODS if m in set(methods)]
    return order + sorted(set(methods) - set(order))


def _selection(row) -> str:
    ec = row.get("edge_count")
    if ec is not None and not (isinstance(ec, float) and math.isnan(ec)):
        return f"top {int(ec)}"
    return f"tau={row.get('threshold'):g}"


def _present(df, cols):
    return [c for c in cols if c[0] in df.columns and df[c[0]].notna().any()]


def _values(df, regime, col):
    if df.empty or col not in df.columns:
        return []
    return [v for v in df.loc[df["regime"] == regime, col].tolist() if v is not None]


# ---- report ----------------------------------------------------------------------------------------
@dataclass
class Report:
    out: Path
    html: Path
    markdown: Path
    figures: list[Path]
    claims: list[dict]
    tables: dict  # task -> (header, rows) of the main comparison table


def build_report(results, out, *, title: str | None = None, figures: bool = True) -> Report:
    import pandas as pd

    frames = load_frames(results)
    runs, circuits, profiles = frames["runs"], frames["circuits"], frames["profiles"]
    compute = runs.copy()
    if not profiles.empty:
        keep = [c for c in profiles.columns if c not in ("key", "study", "task", "regime", "seed", "created_at",
                                                         "n_params", "n_nonzero")]
        compute = compute.merge(profiles[keep], how="left", left_on="key", right_on="run_key")
    if not circuits.empty:
        circuits = circuits.copy()
        circuits["selection"] = [_selection(r) for r in circuits.to_dict("records")]

    final = Path(out)
    tmp = staging_dir(final)
    try:
        (tmp / "figures").mkdir()
        doc = Doc()
        title = title or f"modcircuit report: {Path(results).stem}"
        doc.h(1, title)
        studies = sorted(set(runs["study"].dropna())) if "study" in runs else []
        doc.p(f"Results file {results}: {len(runs)} trained models, {len(circuits)} circuits, {len(profiles)} "
              f"profiles (studies: {', '.join(studies) or '—'}). Cells show mean ± half-width of the 95% "
              f"confidence interval over seeds (Student t, n-1 degrees of freedom); n=1 means a single seed.")
        tasks = list(dict.fromkeys(runs["task"].tolist()))
        figs: list[Path] = []
        tables = {}
        claim_rows = _claims(tasks, compute, circuits)
        _claims_section(doc, claim_rows)
        for task in tasks:
            tables[task] = _task_section(doc, task, compute[compute["task"] == task],
                                         circuits[circuits["task"] == task] if not circuits.empty else circuits,
                                         tmp, figs, frames["artifacts"], figures)
        _method_notes(doc)
        (tmp / "report.md").write_text(doc.markdown())
        (tmp / "index.html").write_text(doc.html(title, tmp))
        (tmp / "claims.json").write_text(json.dumps(claim_rows, indent=1, default=str))
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    figs = [final / p.relative_to(tmp) for p in figs]
    del pd
    return Report(final, final / "index.html", final / "report.md", figs, claim_rows, tables)


def _stat_table(df, regimes, cols, label_col="regime") -> tuple[list[str], list[list[str]]]:
    header = [label_col] + [c[1] for c in cols]
    rows = []
    for r in regimes:
        cells = [r]
        for col, _, scale, _ in cols:
            cells.append(fmt_ci(mean_ci(_values(df, r, col)), scale))
        n = len(set(df.loc[df["regime"] == r, "seed"].tolist())) if not df.empty else 0
        cells[0] = f"{r} (n={n})"
        rows.append(cells)
    return header, rows


def _task_section(doc: Doc, task, comp, circ, tmp: Path, figs: list, artifacts: Path, figures: bool):
    anchor = f"task-{task}"
    doc.h(2, f"Task: {task}", anchor)
    regimes = _regime_order(comp["regime"].unique())
    methods = _method_order(circ["method"].unique()) if not circ.empty else []
    main_header, main_rows = None, None
    if methods:
        m0 = methods[0]
        sel0 = sorted(circ.loc[circ["method"] == m0, "selection"].unique())[0]
        c0 = circ[(circ["method"] == m0) & (circ["selection"] == sel0)]
        ccols, kcols = _present(c0, MAIN_CIRCUIT), _present(comp, MAIN_COMPUTE)
        header = ["regime"] + [f"{c[1]}" for c in ccols] + [c[1] for c in kcols]
        extra = _present(c0, [("compact_latency_ms_median", "circuit latency ms", 1, True)])
        header += [c[1] for c in extra]
        rows = []
        for r in regimes:
            n = len(set(comp.loc[comp["regime"] == r, "seed"]))
            row = [f"{r} (n={n})"]
            row += [fmt_ci(mean_ci(_values(c0, r, c[0])), c[2]) for c in ccols]
            row += [fmt_ci(mean_ci(_values(comp, r, c[0])), c[2]) for c in kcols]
            row += [fmt_ci(mean_ci(_values(c0, r, c[0])), c[2]) for c in extra]
            rows.append(row)
        doc.table(header, rows, f"{task}: circuit ({m0}, {sel0}) and compute, mean ± 95% CI over seeds")
        main_header, main_rows = header, rows
        for m in methods:
            for sel in sorted(circ.loc[circ["method"] == m, "selection"].unique()):
                cm = circ[(circ["method"] == m) & (circ["selection"] == sel)]
                cols = _present(cm, MAIN_CIRCUIT + MORE_CIRCUIT)
                h, rs = _stat_table(cm, regimes, cols)
                doc.h(3, f"{task}: {m} ({sel})")
                doc.table(h, rs)
    doc.h(3, f"{task}: training and inference cost")
    h, rs = _stat_table(comp, regimes, _present(comp, MORE_COMPUTE + MAIN_COMPUTE))
    doc.table(h, rs, "peak RSS: peak resident set of a fresh process that only trains (interpreter and torch "
                     "included); train RSS: its growth during training; latency: batch 1, per-model median of "
                     "many calls; throughput: examples/s at a large batch")
    if main_header is None:
        main_header, main_rows = h, rs
    modularity_section(doc, task, comp, regimes, tmp, figs, artifacts, figures)
    if figures:
        _figures(doc, task, comp, circ, regimes, methods, tmp, figs, artifacts)
    return main_header, main_rows


def _save(fig, tmp: Path, name: str, figs: list) -> str:
    path = tmp / "figures" / name
    fig.savefig(path, dpi=110)
    figs.append(path)
    return f"figures/{name}"


def _figures(doc, task, comp, circ, regimes, methods, tmp, figs, artifacts):
    try:
        from ..viz import plots
    except ImportError as e:  # pictures are optional; the tables are the report
        doc.p(f"(figures unavailable: {e})")
        return
    safe = task.replace("/", "_")
    for m in methods:
        cm = circ[circ["method"] == m]
        if "curve" not in cm.columns:
            continue
        curves = {}
        for r in regimes:
            cs = [json.loads(c) for c in cm.loc[cm["regime"] == r, "curve"].dropna()]
            if not cs:
                continue
            edges = cs[0]["edges"]
            same = [c for c in cs if c["edges"] == edges]
            ys = np.array([[np.nan if v is None else v for v in c["faithfulness"]] for c in same], dtype=float)
            with np.errstate(all="ignore"):
                mean = np.nanmean(ys, axis=0) if ys.size else ys
            areas = [a for a in cm.loc[cm["regime"] == r, "curve_area"].tolist() if a is not None] \
                if "curve_area" in cm else []
            curves[f"{r} (n={len(same)})"] = {"edges": edges, "faithfulness": [None if not np.isfinite(v) else float(v) for v in mean],
                                              **({"area": float(np.nanmean(areas))} if areas else {})}
        if curves:
            fig = plots.faithfulness_curves(curves, title=f"{task}: {m} faithfulness vs edges (mean over seeds)")
            doc.img(_save(fig, tmp, f"{safe}-{m}-faithfulness.png", figs),
                    f"{task}, {m}: normalized faithfulness of the top-n edges by score, mean over seeds per regime")
        if "roc_inputs" in cm.columns and cm["roc_inputs"].notna().any():
            rocs = {}
            for r in regimes:
                sub = cm[(cm["regime"] == r) & cm["roc_inputs"].notna()].sort_values("seed")
                if sub.empty:
                    continue
                first = json.loads(sub["roc_inputs"].iloc[0])
                if not first:
                    continue
                auc = mean_ci(sub["auc_inputs"].tolist())
                rocs[f"{r} (mean AUC {fmt_ci(auc)})"] = {"fpr": first["fpr"], "tpr": first["tpr"],
                                                        "auc": auc["mean"]}
            if rocs:
                fig = plots.roc_curves(rocs, title=f"{task}: {m} input-level ROC")
                doc.img(_save(fig, tmp, f"{safe}-{m}-roc.png", figs),
                        f"{task}, {m}: ROC of input-to-output path scores against the ground truth "
                        f"(curve of the lowest seed, AUC mean ± CI over seeds)")
    bars = {}
    for col, label in (("train_seconds", "training s"), ("peak_rss_mb", "peak RSS MB"),
                       ("latency_ms_median", "latency ms (batch 1)")):
        if col in comp.columns and comp[col].notna().any():
            bars[label] = {r: _values(comp, r, col) for r in regimes}
    if methods and "seconds" in circ.columns:
        bars[f"{methods[0]} discovery s"] = {r: _values(circ[circ["method"] == methods[0]], r, "seconds") for r in regimes}
    if bars:
        fig = plots.compute_bars(bars, title=f"{task}: cost by regime (mean ± 95% CI)")
        doc.img(_save(fig, tmp, f"{safe}-compute.png", figs), f"{task}: compute cost by regime")
    if methods:
        _drawings(doc, task, comp, circ, regimes, methods[0], tmp, figs, artifacts)


def _drawings(doc, task, comp, circ, regimes, method, tmp, figs, artifacts):
    try:
        from ..circuits.circuit import load_circuit
        from ..train import load
        from ..viz import draw
    except ImportError as e:
        doc.p(f"(network drawings unavailable: {e})")
        return
    for r in regimes:
        runs_r = comp[comp["regime"] == r].sort_values("seed")
        if runs_r.empty:
            continue
        run_row = runs_r.iloc[0]
        cs = circ[(circ["run_key"] == run_row["key"]) & (circ["method"] == method)]
        ck = artifacts / str(run_row.get("checkpoint", ""))
        if cs.empty or not (ck / "model.json").is_file():
            continue
        cpath = artifacts / cs.iloc[0]["artifact"]
        if not cpath.is_file():
            continue
        try:
            run = load(ck)
            circuit = load_circuit(cpath, run.model)
            fig = draw(run, circuit, title=f"{task} / {r} / seed {run_row['seed']}: {method} circuit")
        except ModcircuitError as e:
            doc.p(f"(drawing of {task}/{r} failed: {e})")
            continue
        doc.img(_save(fig, tmp, f"{task.replace('/', '_')}-{r}-network.png", figs),
                f"{task}, {r}, seed {run_row['seed']}: network with the {method} circuit overlaid "
                f"({int(cs.iloc[0]['n_kept'])} of {int(cs.iloc[0]['n_edges'])} edges)")


# ---- claims --------------------------------------------------------------------------------------
def _claims(tasks, compute, circuits) -> list[dict]:
    rows = []
    for cid, statement, table, col, direction, per_method in CLAIMS:
        for task in tasks:
            if table == "circuits":
                if circuits.empty or col not in circuits.columns:
                    continue
                df_t = circuits[circuits["task"] == task]
                groups = [(m, s, df_t[(df_t["method"] == m) & (df_t["selection"] == s)])
                          for m in _method_order(df_t["method"].unique())
                          for s in sorted(df_t.loc[df_t["method"] == m, "selection"].unique())]
            else:
                if col not in compute.columns:
                    continue
                groups = [(None, None, compute[compute["task"] == task])]
            for m, sel, df in groups:
                regimes = _regime_order(df["regime"].unique())
                if TARGET not in regimes:
                    continue
                a = _values(df, TARGET, col)
                if not a:
                    continue
                for base in regimes:
                    if base == TARGET:
                        continue
                    b = _values(df, base, col)
                    if not b:
                        continue
                    res = compare(a, b, direction)
                    rows.append({"claim": cid, "statement": statement, "task": task, "method": m, "selection": sel,
                                 "baseline": base, "metric": col, "direction": direction, **res})
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


def _claims_section(doc: Doc, rows: list[dict]):
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
        table.append([r["statement"], r["task"], "" if r["method"] is None else f"{r['method']} ({r['selection']})",
                      r["baseline"], fmt_num(r["mean_a"]), fmt_num(r["mean_b"]), fmt_num(r["ratio"]),
                      fmt_p(r["p_welch"]), fmt_p(r["p_holm"]), fmt_p(r["p_mwu"]),
                      f"{r['verdict']} (n={r['n_a']} vs {r['n_b']})"])
    doc.table(header, table, "BIMT against each baseline; ratio = BIMT mean / baseline mean")


def _method_notes(doc: Doc):
    doc.h(2, "How these numbers were measured", "methods")
    doc.ul([
        "logit gap: mean |circuit outputs - model outputs| on the test split (corrupted inputs from "
        "resample ablation unless the study says otherwise); KL(model || circuit) for classification, "
        "MSE to the model for regression.",
        "edges kept: weight entries in the circuit; edge frac. = kept / all; discovery s = wall time of "
        "the method (one thread).",
        "train s: wall time of the training loop; peak RSS: ru_maxrss of a fresh process that runs only "
        "that training job; CUDA peak: torch.cuda.max_memory_allocated when trained on a GPU.",
        "latency: batch-1 forward pass, median of many calls per model; throughput: examples per second at "
        "a large batch, median of repeats; circuit latency: the same for the compacted circuit (a smaller "
        "dense MLP; resample-ablation circuits are compacted by structure with zero constants).",
    ])
