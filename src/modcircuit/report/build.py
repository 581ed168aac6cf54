"""The study report (HTML + Markdown) from a results store.

    build_report("results/demo.duckdb", "report/")  -> Report (index.html, report.md, figures/*.png)

Per task: the comparison table (regime x circuit quality, sparsity, discovery time, training time,
memory, inference speed; mean ± 95% CI over seeds, Student t), one table per discovery method,
a compute table, faithfulness curves per method (regimes overlaid, mean over seeds), ROC curves
where the task has ground truth (input-level for symbolic tasks; for transformers with a known circuit,
head-level with q/k/v apart and merged, and MIB's), compute bars, and network drawings with the circuit overlaid.
Then the claims: each claim of the study tested per task (and method) against every baseline
regime with a one-sided Welch t-test over seeds (Mann-Whitney U beside it), Holm-corrected over all
tests in the report; the verdict says what the data say, whichever way.

Every statistic is computed inside one configuration (groups.py): rows of another setting of the
same regime (say, the 300-step runs of a study now at 400 steps) are never averaged in. By default
the report shows the cells of the studies recorded in the file and counts the rest as stale;
`include_stale=True` (`modcircuit report --all`) shows them as their own rows, labelled by what
differs. Every n printed is the number of values averaged.
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
from ..outputs import check_output, prepare_output, write_report_marker
from ..errors import ModcircuitError
from .claims import claims_section, tested_claims
from .control import control_section, split_control
from .groups import annotate, circuit_setting, label_groups, run_setting
from .stats import mean_ci
from .modularity import modularity_section
from .values import fmt_ci, group_n, group_values, method_order, regime_order


# (column, label, scale, lower_is_better or None)
MAIN_CIRCUIT = [("logit_gap", "logit gap", 1, True), ("kl", "KL", 1, True), ("mse", "MSE to model", 1, True),
                ("accuracy", "circuit acc.", 1, False), ("task_mse", "circuit task MSE", 1, True),
                ("n_kept", "edges kept", 1, True), ("edge_fraction", "edge frac.", 1, True),
                ("seconds", "discovery s", 1, True)]
MORE_CIRCUIT = [("faithfulness", "faithfulness", 1, False), ("agreement", "agreement", 1, False),
                ("node_fraction", "node frac.", 1, True), ("forward_passes", "forward passes", 1, True),
                ("curve_area", "curve area", 1, False),
                ("cpr", "CPR (MIB)", 1, False), ("cmd", "CMD (MIB)", 1, True), ("auc_inputs", "input ROC AUC", 1, False),
                ("auc_edges", "edge ROC AUC", 1, False), ("auc_heads_qkv", "head ROC AUC (q/k/v apart)", 1, False),
                ("auc_heads_merged", "head ROC AUC (heads)", 1, False), ("mib_auroc", "AUROC (MIB)", 1, False),
                ("compact_n_params", "circuit params", 1, True),
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
        frames["manifest"] = s.manifest()
    if frames["runs"].empty:
        raise ModcircuitError(f"results file {str(path)!r} holds no runs yet")
    return frames


def _selection(row) -> str:
    ec = row.get("edge_count")
    if ec is not None and not (isinstance(ec, float) and math.isnan(ec)):
        return f"top {int(ec)}"
    return f"tau={row.get('threshold'):g}"


def _present(df, cols):
    return [c for c in cols if c[0] in df.columns and df[c[0]].notna().any()]


# ---- report ----------------------------------------------------------------------------------------
@dataclass
class Report:
    out: Path
    html: Path
    markdown: Path
    figures: list[Path]
    claims: list[dict]
    tables: dict  # task -> (header, rows) of the main comparison table
    note: str = ""  # what the report shows of the file (current / stale cells)
    stale: dict = field(default_factory=dict)  # table -> stale cells in the file


def _select(frames: dict, include_stale: bool) -> tuple[dict, dict, str]:
    """Annotate every row with its setting and staleness; drop stale rows unless asked.
    Returns (frames, stale counts per table, a sentence saying what is shown)."""
    manifest = frames["manifest"]
    keys = manifest["keys"] if manifest else {}
    runs = frames["runs"]
    run_settings = {r["key"]: run_setting(r) for r in runs.to_dict("records")}
    out = dict(frames)
    out["runs"] = annotate(runs, [run_settings[k] for k in runs["key"]], keys.get("runs") if manifest else None)
    circ = frames["circuits"]
    if not circ.empty:
        out["circuits"] = annotate(circ, [circuit_setting(r, run_settings) for r in circ.to_dict("records")],
                                   keys.get("circuits") if manifest else None)
    prof = frames["profiles"]
    if not prof.empty:
        out["profiles"] = annotate(prof, [{} for _ in range(len(prof))], keys.get("profiles") if manifest else None)
    stale = {t: int(out[t]["stale"].sum()) for t in ("runs", "circuits", "profiles") if not out[t].empty}
    n_stale = sum(stale.values())
    if manifest is None:
        note = ("This results file predates study manifests, so it does not say which cells are current: every "
                "cell is shown, and cells of different configurations are separate rows (labelled by what "
                "differs). Running its study again records the manifest (finished cells are not recomputed).")
    else:
        parts = ", ".join(f"{v} {t[:-1] if v == 1 else t}" for t, v in stale.items() if v)
        studies = ", ".join(manifest["studies"]) or "—"
        if not n_stale:
            note = f"Cells of the current version of study {studies}; the file holds no stale cells."
        elif include_stale:
            note = (f"Cells of study {studies} and {n_stale} stale cells ({parts}) from earlier versions, "
                    f"shown as their own rows marked 'stale' and labelled by what differs.")
        else:
            note = (f"Cells of the current version of study {studies}. The results file also holds {n_stale} "
                    f"stale cells ({parts}) from earlier versions of the study; they are left out "
                    f"(modcircuit report --all shows them as their own rows).")
    if manifest is not None and not include_stale:
        for t in ("runs", "circuits", "profiles"):
            if not out[t].empty:
                out[t] = out[t][~out[t]["stale"]]
    return out, stale, note


def _compute_frame(runs, profiles):
    """One row per run: its training figures and (when profiled) its profile; a run profiled under
    several profile settings takes its current (else latest) profile, never several."""
    if profiles.empty:
        return runs.copy()
    prof = profiles.sort_values(["stale", "created_at"] if "created_at" in profiles else ["stale"],
                                ascending=[False, True] if "created_at" in profiles else [False])
    prof = prof.drop_duplicates("run_key", keep="last")
    keep = [c for c in prof.columns if c not in ("key", "study", "task", "regime", "seed", "created_at",
                                                 "n_params", "n_nonzero", "setting", "shared", "stale")]
    return runs.merge(prof[keep], how="left", left_on="key", right_on="run_key")


def build_report(results, out, *, title: str | None = None, figures: bool = True,
                 include_stale: bool = False, overwrite: bool = False) -> Report:
    """Write the report folder `out` from a results file: the current study's cells (include_stale: also
    stale cells, as their own rows). An existing `out` is replaced only with overwrite=True and only if it
    is a report modcircuit wrote, with no file added since (see modcircuit.outputs)."""
    final = check_output(out, "report", overwrite=overwrite)  # before reading the results
    frames = load_frames(results)
    frames, stale, note = _select(frames, include_stale)
    runs, circuits, profiles = frames["runs"], frames["circuits"], frames["profiles"]
    if runs.empty:
        raise ModcircuitError(f"results file {str(results)!r} holds no current runs; {note}")
    compute = _compute_frame(runs, profiles)
    circuits, control = split_control(circuits)  # the nonsense-target control has its own section
    if not circuits.empty:
        circuits = circuits.copy()
        circuits["selection"] = [_selection(r) for r in circuits.to_dict("records")]
    if not control.empty:
        control = control.assign(selection=[_selection(r) for r in control.to_dict("records")])

    prepare_output(final, "report", overwrite=overwrite)
    tmp = staging_dir(final)
    try:
        (tmp / "figures").mkdir()
        doc = Doc()
        title = title or f"modcircuit report: {Path(results).stem}"
        doc.h(1, title)
        studies = sorted(set(runs["study"].dropna())) if "study" in runs else []
        doc.p(f"Results file {results}: {len(runs)} trained models, {len(circuits)} circuits, {len(profiles)} "
              f"profiles shown (studies: {', '.join(studies) or '—'}). Cells show mean ± half-width of the 95% "
              f"confidence interval over seeds (Student t, n-1 degrees of freedom); n is the number of values "
              f"averaged (one per seed); n=1 means a single seed. Each row is one configuration: values of "
              f"different configurations are never averaged together.")
        doc.p(note)
        tasks = list(dict.fromkeys(runs["task"].tolist()))
        figs: list[Path] = []
        tables = {}
        claim_rows = tested_claims(tasks, compute, circuits)
        claims_section(doc, claim_rows)
        for task in tasks:
            tables[task] = _task_section(doc, task, compute[compute["task"] == task],
                                         circuits[circuits["task"] == task] if not circuits.empty else circuits,
                                         tmp, figs, frames["artifacts"], figures)
        control_section(doc, control)
        _method_notes(doc)
        (tmp / "report.md").write_text(doc.markdown())
        (tmp / "index.html").write_text(doc.html(title, tmp))
        (tmp / "claims.json").write_text(json.dumps(claim_rows, indent=1, default=str))
        write_report_marker(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    figs = [final / p.relative_to(tmp) for p in figs]
    return Report(final, final / "index.html", final / "report.md", figs, claim_rows, tables, note, stale)


def _stat_table(df, groups, cols, label_col="regime") -> tuple[list[str], list[list[str]]]:
    header = [label_col] + [c[1] for c in cols]
    rows = []
    for g in groups:
        n = group_n(df, g)
        cells = [f"{g} (n={n})"]
        for col, _, scale, _ in cols:
            cells.append(fmt_ci(mean_ci(group_values(df, g, col)), scale, n))
        rows.append(cells)
    return header, rows


def _task_section(doc: Doc, task, comp, circ, tmp: Path, figs: list, artifacts: Path, figures: bool):
    anchor = f"task-{task}"
    doc.h(2, f"Task: {task}", anchor)
    comp, groups = label_groups(comp, regime_order(comp["regime"].unique()))
    methods = method_order(circ["method"].unique()) if not circ.empty else []
    main_header, main_rows = None, None
    if methods:
        m0 = methods[0]
        sel0 = sorted(circ.loc[circ["method"] == m0, "selection"].unique())[0]
        c0, cgroups = label_groups(circ[(circ["method"] == m0) & (circ["selection"] == sel0)],
                                   regime_order(circ["regime"].unique()))
        ccols, kcols = _present(c0, MAIN_CIRCUIT), _present(comp, MAIN_COMPUTE)
        header = ["regime"] + [f"{c[1]}" for c in ccols] + [c[1] for c in kcols]
        extra = _present(c0, [("compact_latency_ms_median", "circuit latency ms", 1, True)])
        header += [c[1] for c in extra]
        rows = []
        for g in cgroups:
            n = group_n(c0, g)
            # the compute columns average exactly the runs whose circuits make this row
            runs_g = comp[comp["key"].isin(c0.loc[c0["group"] == g, "run_key"])].assign(group=g)
            row = [f"{g} (n={n})"]
            row += [fmt_ci(mean_ci(group_values(c0, g, c[0])), c[2], n) for c in ccols]
            row += [fmt_ci(mean_ci(group_values(runs_g, g, c[0])), c[2], n) for c in kcols]
            row += [fmt_ci(mean_ci(group_values(c0, g, c[0])), c[2], n) for c in extra]
            rows.append(row)
        doc.table(header, rows, f"{task}: circuit ({m0}, {sel0}) and compute, mean ± 95% CI over seeds")
        main_header, main_rows = header, rows
        for m in methods:
            for sel in sorted(circ.loc[circ["method"] == m, "selection"].unique()):
                cm, mgroups = label_groups(circ[(circ["method"] == m) & (circ["selection"] == sel)],
                                           regime_order(circ["regime"].unique()))
                cols = _present(cm, MAIN_CIRCUIT + MORE_CIRCUIT)
                h, rs = _stat_table(cm, mgroups, cols)
                doc.h(3, f"{task}: {m} ({sel})")
                doc.table(h, rs)
    doc.h(3, f"{task}: training and inference cost")
    h, rs = _stat_table(comp, groups, _present(comp, MORE_COMPUTE + MAIN_COMPUTE))
    doc.table(h, rs, "peak RSS: peak resident set of a fresh process that only trains (interpreter and torch "
                     "included); train RSS: its growth during training; latency: batch 1, per-model median of "
                     "many calls; throughput: examples/s at a large batch")
    if main_header is None:
        main_header, main_rows = h, rs
    modularity_section(doc, task, comp, groups, tmp, figs, artifacts, figures)
    if figures:
        _figures(doc, task, comp, circ, groups, methods, tmp, figs, artifacts)
    return main_header, main_rows


def _save(fig, tmp: Path, name: str, figs: list) -> str:
    path = tmp / "figures" / name
    fig.savefig(path, dpi=110)
    figs.append(path)
    return f"figures/{name}"


def _figures(doc, task, comp, circ, groups, methods, tmp, figs, artifacts):
    """Figures per group (regime and setting, as the tables); circuit figures use each method's first
    selection, so one run's curve is never counted twice."""
    try:
        from ..viz import plots
    except ImportError as e:  # pictures are optional; the tables are the report
        doc.p(f"(figures unavailable: {e})")
        return
    safe = task.replace("/", "_")
    by_method = {}
    for m in methods:
        sel = sorted(circ.loc[circ["method"] == m, "selection"].unique())[0]
        by_method[m] = label_groups(circ[(circ["method"] == m) & (circ["selection"] == sel)],
                                    regime_order(circ["regime"].unique()))
    for m in methods:
        cm, cgroups = by_method[m]
        if "curve" in cm.columns:  # (a study may store no curves; its ROC curves still show)
            curves = {}
            for r in cgroups:
                cs = [json.loads(c) for c in cm.loc[cm["group"] == r, "curve"].dropna()]
                if not cs:
                    continue
                edges = cs[0]["edges"]
                same = [c for c in cs if c["edges"] == edges]
                ys = np.array([[np.nan if v is None else v for v in c["faithfulness"]] for c in same], dtype=float)
                with np.errstate(all="ignore"):
                    mean = np.nanmean(ys, axis=0) if ys.size else ys
                areas = [a for a in cm.loc[cm["group"] == r, "curve_area"].tolist() if a is not None] \
                    if "curve_area" in cm else []
                faith = [None if not np.isfinite(v) else float(v) for v in mean]
                curves[f"{r} (n={len(same)})"] = {"edges": edges, "faithfulness": faith,
                                                  **({"area": float(np.nanmean(areas))} if areas else {})}
            if curves:
                fig = plots.faithfulness_curves(curves, title=f"{task}: {m} faithfulness vs edges (mean over seeds)")
                doc.img(_save(fig, tmp, f"{safe}-{m}-faithfulness.png", figs),
                        f"{task}, {m}: normalized faithfulness of the top-n edges by score, mean over seeds per regime")
        for spec in ROC_FIGURES:
            _roc_figure(doc, task, m, cm, cgroups, *spec, tmp, figs)
    bars = {}
    for col, label in (("train_seconds", "training s"), ("peak_rss_mb", "peak RSS MB"),
                       ("latency_ms_median", "latency ms (batch 1)")):
        if col in comp.columns and comp[col].notna().any():
            bars[label] = {r: group_values(comp, r, col) for r in groups}
    if methods and "seconds" in circ.columns:
        cm, cgroups = by_method[methods[0]]
        bars[f"{methods[0]} discovery s"] = {r: group_values(cm, r, "seconds") for r in cgroups}
    if bars:
        fig = plots.compute_bars(bars, title=f"{task}: cost by regime (mean ± 95% CI)")
        doc.img(_save(fig, tmp, f"{safe}-compute.png", figs), f"{task}: compute cost by regime")
    if methods:
        _drawings(doc, task, comp, by_method[methods[0]][0], by_method[methods[0]][1], methods[0], tmp, figs,
                  artifacts)


# (roc column, auc column, file suffix, title, what the curve is): input-level truth (symbolic tasks), then
# the head-level truth of transformer tasks (circuits/truth_scoring.py)
ROC_FIGURES = [
    ("roc_inputs", "auc_inputs", "roc", "input-level ROC",
     "ROC of input-to-output path scores against the ground truth"),
    ("roc_heads_qkv", "auc_heads_qkv", "roc-heads-qkv", "head-level ROC, q/k/v apart",
     "head-level ROC, q/k/v inputs apart, of the edge scores against the known circuit"),
    ("roc_heads_merged", "auc_heads_merged", "roc-heads-merged", "head-level ROC, whole heads",
     "head-level ROC, q/k/v merged into whole heads (a head's score: max over its q, k, v inputs), against the "
     "known circuit"),
    ("mib_roc", "mib_auroc", "roc-mib", "MIB's ROC",
     "MIB's ROC: ten greedy, pruned circuits at MIB's edge fractions against the known circuit (area from the "
     "first point, FPR over the last point's)"),
]


def _roc_figure(doc, task, m, cm, cgroups, roc_col, auc_col, suffix, title, what, tmp, figs):
    """One ROC figure for method m: per group the curve of its lowest seed, AUC mean ± CI over seeds."""
    from ..viz import plots

    if roc_col not in cm.columns or not cm[roc_col].notna().any():
        return
    rocs = {}
    for r in cgroups:
        sub = cm[(cm["group"] == r) & cm[roc_col].notna()].sort_values("seed")
        if sub.empty:
            continue
        first = json.loads(sub[roc_col].iloc[0])
        if not first or any(v is None for v in first["fpr"] + first["tpr"]):
            continue
        auc = mean_ci(sub[auc_col].tolist() if auc_col in sub else [])
        rocs[f"{r} (mean AUC {fmt_ci(auc)})"] = {"fpr": first["fpr"], "tpr": first["tpr"], "auc": auc["mean"]}
    if rocs:
        safe = task.replace("/", "_")
        fig = plots.roc_curves(rocs, title=f"{task}: {m} {title}")
        doc.img(_save(fig, tmp, f"{safe}-{m}-{suffix}.png", figs),
                f"{task}, {m}: {what} (curve of the lowest seed, AUC mean ± CI over seeds)")


def _drawings(doc, task, comp, circ, groups, method, tmp, figs, artifacts):
    try:
        from ..circuits.circuit import load_circuit
        from ..train import load
        from ..viz import draw
    except ImportError as e:
        doc.p(f"(network drawings unavailable: {e})")
        return
    for i, g in enumerate(groups):
        runs_r = comp[comp["key"].isin(circ.loc[circ["group"] == g, "run_key"])].sort_values("seed")
        if runs_r.empty:
            continue
        run_row = runs_r.iloc[0]
        r = run_row["regime"] if i == 0 or g == run_row["regime"] else f"{run_row['regime']}-{i}"
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
            fig = draw(run, circuit, title=f"{task} / {g} / seed {run_row['seed']}: {method} circuit")
        except ModcircuitError as e:
            doc.p(f"(drawing of {task}/{r} failed: {e})")
            continue
        doc.img(_save(fig, tmp, f"{task.replace('/', '_')}-{r}-network.png", figs),
                f"{task}, {g}, seed {run_row['seed']}: network with the {method} circuit overlaid "
                f"({int(cs.iloc[0]['n_kept'])} of {int(cs.iloc[0]['n_edges'])} edges)")


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
        "head ROC AUC (transformers with a known circuit): threshold-free ROC of the edge scores against the "
        "known edges, with q/k/v inputs apart and with whole heads (a head's score: the max over its inputs); "
        "AUROC (MIB): MIB's protocol, ten greedy circuits built from the output at MIB's edge fractions, pruned "
        "to what is connected, area over their (FPR, TPR) points from the first one.",
    ])
