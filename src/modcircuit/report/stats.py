"""Statistics over seeds: mean with a Student-t 95% CI, one-sided Welch and Mann-Whitney tests, Holm."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def clean(values) -> np.ndarray:
    a = np.asarray([np.nan if v is None else v for v in values], dtype=float).ravel()
    return a[np.isfinite(a)]


def mean_ci(values, level: float = 0.95) -> dict:
    """mean, half-width of the `level` CI (t distribution, n-1 dof), lo, hi, n, sd."""
    a = clean(values)
    n = int(a.size)
    if n == 0:
        return {"mean": None, "half": None, "lo": None, "hi": None, "n": 0, "sd": None}
    m = float(a.mean())
    if n == 1:
        return {"mean": m, "half": None, "lo": None, "hi": None, "n": 1, "sd": None}
    sd = float(a.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return {"mean": m, "half": half, "lo": m - half, "hi": m + half, "n": n, "sd": sd}


def compare(a, b, alternative: str, resolution: float = 0.0) -> dict:
    """Is a `alternative` ("less" | "greater") than b? One-sided Welch t-test and Mann-Whitney U.

    Values smaller in size than `resolution` are taken as exactly 0 (round-off: two groups of such values are
    equal, not significantly different). Returns p_welch, p_mwu, p_welch_reverse (the opposite direction),
    mean_a, mean_b, ratio, n_a, n_b. p values are None when a test is undefined (fewer than two values per
    group, or no variance at all with equal means)."""
    a, b = clean(a), clean(b)
    if resolution > 0:
        a, b = (np.where(np.abs(v) < resolution, 0.0, v) for v in (a, b))
    out = {"n_a": int(a.size), "n_b": int(b.size), "mean_a": float(a.mean()) if a.size else None,
           "mean_b": float(b.mean()) if b.size else None, "p_welch": None, "p_welch_reverse": None, "p_mwu": None}
    if out["mean_a"] is not None and out["mean_b"] not in (None, 0.0):
        out["ratio"] = out["mean_a"] / out["mean_b"]
    else:
        out["ratio"] = None
    if a.size < 2 or b.size < 2:
        return out
    reverse = "greater" if alternative == "less" else "less"
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread: the t statistic is undefined
        if a[0] == b[0]:
            out.update(p_welch=1.0, p_welch_reverse=1.0)
        else:  # every value of one group beats every value of the other: t is infinite
            better = (a[0] < b[0]) if alternative == "less" else (a[0] > b[0])
            out.update(p_welch=0.0 if better else 1.0, p_welch_reverse=1.0 if better else 0.0)
    else:
        out["p_welch"] = float(stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)
        out["p_welch_reverse"] = float(stats.ttest_ind(a, b, equal_var=False, alternative=reverse).pvalue)
    try:
        out["p_mwu"] = float(stats.mannwhitneyu(a, b, alternative=alternative).pvalue)
    except ValueError:
        out["p_mwu"] = None
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p values (None stays None and does not count)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(idx)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda k: pvalues[k])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
