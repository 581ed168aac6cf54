"""Plots the report uses: faithfulness curves, ROC curves, compute bars, training curves.

Every function takes plain data (numbers, sequences, dicts), draws on `ax` when given, and
returns the matplotlib Figure. Curves are given as {label: curve}, where a curve is an (x, y)
pair or a dict with the named keys.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # noqa: E402

import numpy as np
from matplotlib.figure import Figure

from ..errors import ModcircuitError


def _axes(ax, figsize=(5.5, 4.0)):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def _xy(label: str, curve, xkeys: tuple[str, ...], ykeys: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, dict]:
    extra = {}
    if isinstance(curve, Mapping) and isinstance(curve.get("roc"), Mapping):  # circuits.metrics.roc output
        curve = {**curve["roc"], **{k: v for k, v in curve.items() if k != "roc"}}
    if isinstance(curve, Mapping):
        xk = next((k for k in xkeys if k in curve), None)
        yk = next((k for k in ykeys if k in curve), None)
        if xk is None or yk is None:
            raise ModcircuitError(
                f"curve {label!r} has keys {sorted(curve)}; expected one of {xkeys} and one of {ykeys}"
            )
        x, y, extra = curve[xk], curve[yk], dict(curve)
    else:
        try:
            x, y = curve[0], curve[1]
        except (TypeError, IndexError, KeyError):
            raise ModcircuitError(f"curve {label!r} must be an (x, y) pair or a dict with {xkeys[0]}/{ykeys[0]}")
    def as_floats(values) -> np.ndarray:
        return np.array([math.nan if v is None else float(v) for v in np.asarray(values, dtype=object).ravel()])

    x, y = as_floats(x), as_floats(y)
    if len(x) != len(y):
        raise ModcircuitError(f"curve {label!r} has {len(x)} x values but {len(y)} y values")
    return x, y, extra


def faithfulness_curves(curves: Mapping, *, ax=None, ylabel: str = "normalized faithfulness",
                        logx: bool = True, title: str | None = None) -> Figure:
    """Metric vs number of edges kept, one line per method (or regime)."""
    fig, ax = _axes(ax)
    for label, curve in curves.items():
        x, y, extra = _xy(label, curve, ("n_edges", "edges", "x"), ("faithfulness", "metric", "values", "y"))
        order = np.argsort(x)
        area = extra.get("area")
        name = f"{label} (area {area:.3g})" if area is not None else str(label)
        ax.plot(x[order], y[order], marker="o", markersize=3, label=name, gid=f"faithfulness-{label}")
    if logx:
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("edges kept")
    ax.set_ylabel(ylabel)
    ax.axhline(1.0, color="#999999", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def roc_auc(fpr, tpr) -> float:
    fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
    order = np.argsort(fpr, kind="stable")
    return float(np.trapezoid(tpr[order], fpr[order]) if hasattr(np, "trapezoid") else np.trapz(tpr[order], fpr[order]))


def roc_curves(curves: Mapping, *, ax=None, title: str | None = None) -> Figure:
    """True- vs false-positive rate of edge (or input) scores against ground truth; AUC in the legend."""
    fig, ax = _axes(ax, (4.5, 4.2))
    for label, curve in curves.items():
        fpr, tpr, extra = _xy(label, curve, ("fpr", "x"), ("tpr", "y"))
        auc = float(extra["auc"]) if extra.get("auc") is not None else roc_auc(fpr, tpr)
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})", gid=f"roc-{label}")
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    return fig


def mean_ci(samples) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval (Student t); a single value has no interval."""
    a = np.asarray(samples, dtype=float).ravel()
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return math.nan, 0.0
    if len(a) == 1:
        return float(a[0]), 0.0
    from scipy import stats

    return float(a.mean()), float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))


def compute_bars(data: Mapping, *, title: str | None = None, log: bool = False) -> Figure:
    """Bars of mean ± 95% CI over seeds: {metric: {regime: samples}}, one panel per metric.

    A flat {regime: samples} makes a single panel. Samples are a number or a sequence of numbers.
    """
    if data and not isinstance(next(iter(data.values())), Mapping):
        data = {"": data}
    n = len(data)
    fig = Figure(figsize=(max(3.2 * n, 4.0), 3.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    palette = matplotlib.colormaps["tab10"]
    for ax, (metric, groups) in zip(axes, data.items()):
        labels = list(groups)
        stats = [mean_ci(np.atleast_1d(groups[g])) for g in labels]
        means = [m for m, _ in stats]
        errs = [e for _, e in stats]
        ax.bar(range(len(labels)), means, yerr=errs, capsize=4, color=[palette(i % 10) for i in range(len(labels))],
               gid=f"bars-{metric}")
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
        ax.set_title(metric, fontsize=10)
        if log:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    return fig


def _history(obj) -> list[dict]:
    if hasattr(obj, "history"):
        obj = obj.history
    if not isinstance(obj, Sequence) or (obj and not isinstance(obj[0], Mapping)):
        raise ModcircuitError("training curves need a Run or its history (a list of dicts with 'step')")
    return list(obj)


def training_curves(histories, *, title: str | None = None) -> Figure:
    """Loss, connection cost and test accuracy (or MSE) over training steps.

    histories: a Run, a run.history list, or {label: Run or history} to compare regimes.
    """
    if isinstance(histories, Mapping):
        items = [(str(k), _history(v)) for k, v in histories.items()]
    else:
        items = [("", _history(histories))]
    fig = Figure(figsize=(11.0, 3.4), layout="constrained")
    ax_loss, ax_cost, ax_test = fig.subplots(1, 3)
    test_key = None
    for label, hist in items:
        if not hist:
            continue
        steps = [h["step"] for h in hist]
        ax_loss.plot(steps, [h["loss"] for h in hist], label=label or None, gid=f"loss-{label}")
        ax_cost.plot(steps, [h["cost"] for h in hist], label=label or None, gid=f"cost-{label}")
        key = "test_accuracy" if "test_accuracy" in hist[0] else ("test_mse" if "test_mse" in hist[0] else None)
        if key:
            test_key = key
            ax_test.plot(steps, [h[key] for h in hist], label=label or None, gid=f"test-{label}")
    for ax, name in ((ax_loss, "training loss"), (ax_cost, "connection cost"),
                     (ax_test, (test_key or "test metric").replace("_", " "))):
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
    ax_loss.set_yscale("log")
    ax_cost.set_yscale("log")
    if test_key == "test_mse":
        ax_test.set_yscale("log")
    if any(label for label, _ in items):
        ax_cost.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
