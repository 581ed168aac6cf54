"""Numbers as the report prints them, and the values of one group (regime and configuration)."""
from __future__ import annotations

import math


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


def fmt_ci(s: dict, scale: float = 1, row_n: int | None = None) -> str:
    """mean ± CI half-width; the cell's own n is shown when it is not the row's (a missing value)."""
    if s["mean"] is None:
        return "—"
    own = f" (n={s['n']})" if s["n"] != row_n else ""
    if s["half"] is None:
        return f"{fmt_num(s['mean'] * scale)} (n=1)"
    return f"{fmt_num(s['mean'] * scale)} ± {fmt_num(s['half'] * scale)}{own}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def regime_order(regimes) -> list[str]:
    from ..train.regimes import regime_names

    order = [r for r in regime_names() if r in set(regimes)]
    return order + sorted(set(regimes) - set(order))


METHOD_ORDER = ("acdc", "acdc-plain", "eap", "eap-ig", "magnitude", "magnitude-act", "probing", "random")


def method_order(methods) -> list[str]:
    order = [m for m in METHOD_ORDER if m in set(methods)]
    return order + sorted(set(methods) - set(order))


def group_values(df, group, col):
    """The values of one column in one group (regime and setting; see groups.py)."""
    if df.empty or col not in df.columns:
        return []
    return [v for v in df.loc[df["group"] == group, col].tolist() if v is not None]


def group_n(df, group) -> int:
    return int((df["group"] == group).sum()) if not df.empty else 0


