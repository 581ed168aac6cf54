"""The report's "control: nonsense targets" section (cells of a study run with control = "permuted-labels").

For each task, regime, method and selection it sets the circuit found for the true labels beside the one
found for labels permuted across examples (study/control.py; both with the logit-diff metric, each scored
against its own labels): edges kept, edge fraction and faithfulness, mean ± 95% CI over seeds, and the
nonsense target's normalizer (the logit difference the empty circuit loses, M_empty - M_model, the
denominator of its faithfulness; near 0 the faithfulness is a ratio of two small numbers).

Warning rule: a nonsense circuit (one seed's) that keeps at most WARN_EDGE_FRACTION of the edges and
reaches faithfulness >= WARN_FAITHFULNESS is flagged: a method (or regime) that explains a target the
model does not compute with a tiny faithful circuit does not show that its real circuits are real.
Every such circuit is named in a warning sentence under the table.
"""
from __future__ import annotations

import math

from .stats import mean_ci
from .values import fmt_ci, method_order, regime_order

WARN_EDGE_FRACTION = 0.05
WARN_FAITHFULNESS = 0.8
REAL, NONSENSE = "labels", "permuted-labels"


def split_control(circuits):
    """(the study's own circuit rows, the control's rows): control rows carry a `target`."""
    if circuits.empty or "target" not in circuits.columns:
        return circuits, circuits.iloc[0:0]
    is_control = circuits["target"].notna()
    return circuits[~is_control], circuits[is_control]


def _number(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def flagged(rows) -> list[dict]:
    """The nonsense-target circuits that break the rule: tiny (edge fraction <= WARN_EDGE_FRACTION) and
    faithful (faithfulness >= WARN_FAITHFULNESS)."""
    out = []
    for r in rows.to_dict("records"):
        frac, faith = _number(r.get("edge_fraction")), _number(r.get("faithfulness"))
        if (r.get("target") == NONSENSE and frac is not None and faith is not None
                and frac <= WARN_EDGE_FRACTION and faith >= WARN_FAITHFULNESS):
            out.append(r)
    return out


def _cell(df, col: str) -> str:
    s = mean_ci(df[col].tolist()) if col in df.columns else {"mean": None}
    return fmt_ci(s, 1, len(df)) if s["mean"] is not None else "—"


def control_table(control) -> tuple[list[str], list[list[str]]]:
    """One row per task, regime, method and selection: the true and the permuted target side by side."""
    header = ["task", "regime", "method", "selection", "seeds", "edges kept (true)", "edge frac. (true)",
              "faithfulness (true)", "edges kept (nonsense)", "edge frac. (nonsense)", "faithfulness (nonsense)",
              "normalizer (nonsense)"]
    rows = []
    for task in dict.fromkeys(control["task"]):
        ct = control[control["task"] == task]
        for regime in regime_order(ct["regime"].unique()):
            for method in method_order(ct.loc[ct["regime"] == regime, "method"].unique()):
                cm = ct[(ct["regime"] == regime) & (ct["method"] == method)]
                for sel in sorted(cm["selection"].unique()):
                    cs = cm[cm["selection"] == sel]
                    real, fake = cs[cs["target"] == REAL], cs[cs["target"] == NONSENSE]
                    rows.append([task, regime, method, sel, str(cs["seed"].nunique()),
                                 _cell(real, "n_kept"), _cell(real, "edge_fraction"), _cell(real, "faithfulness"),
                                 _cell(fake, "n_kept"), _cell(fake, "edge_fraction"), _cell(fake, "faithfulness"),
                                 _cell(fake, "divergence_empty")])
    return header, rows


def warnings(control) -> list[str]:
    """One sentence per (task, regime, method, selection) with flagged nonsense circuits."""
    groups: dict[tuple, list[dict]] = {}
    for r in flagged(control):
        groups.setdefault((r["task"], r["regime"], r["method"], r["selection"]), []).append(r)
    out = []
    for (task, regime, method, sel), rs in groups.items():
        n = int(((control["task"] == task) & (control["regime"] == regime) & (control["method"] == method)
                 & (control["selection"] == sel) & (control["target"] == NONSENSE)).sum())
        worst = max(rs, key=lambda r: float(r["faithfulness"]))
        out.append(f"WARNING: {method} ({sel}) on {task}/{regime} found a tiny circuit that looks faithful to a "
                   f"nonsense target in {len(rs)} of {n} seeds (e.g. seed {int(worst['seed'])}: "
                   f"{int(worst['n_kept'])} edges, edge fraction {float(worst['edge_fraction']):.3g}, faithfulness "
                   f"{float(worst['faithfulness']):.3g}); its small faithful circuits there are not evidence of a "
                   f"real mechanism.")
    return out


def control_section(doc, control) -> list[str]:
    """Add the section to `doc` (nothing when the study ran no control); returns its warning sentences."""
    if control is None or control.empty:
        return []
    doc.h(2, "Control: nonsense targets", "control-nonsense-targets")
    seeds = sorted({int(s) for s in control["label_seed"].dropna()}) if "label_seed" in control else []
    doc.p("Each circuit of a classification task was also discovered for its test examples' true labels and "
          "for the same labels permuted across examples (a derangement, label seed "
          f"{', '.join(map(str, seeds)) or '—'}), both with the logit-difference metric (the target class's "
          "logit minus the mean logit; EAP's objective likewise), each scored against the labels it was found "
          "for. A method should not find a small faithful circuit for the permuted labels, which no mechanism "
          f"of the model computes. Rule: a nonsense circuit with edge fraction <= {WARN_EDGE_FRACTION:g} and "
          f"faithfulness >= {WARN_FAITHFULNESS:g} (per seed) is flagged. The normalizer is the logit difference "
          "toward the nonsense labels that the empty circuit loses (M_empty - M_model); near zero, faithfulness "
          "divides two small numbers and is not meaningful either way.")
    header, rows = control_table(control)
    doc.table(header, rows, "control: nonsense targets, mean ± 95% CI over seeds")
    sentences = warnings(control)
    if sentences:
        doc.ul(sentences)
    else:
        doc.p(f"No method or regime found a nonsense circuit with edge fraction <= {WARN_EDGE_FRACTION:g} and "
              f"faithfulness >= {WARN_FAITHFULNESS:g}.")
    return sentences
