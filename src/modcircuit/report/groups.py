"""Which configuration each row of a results file belongs to, so that statistics never mix two.

A row's *setting* is its cell's configuration minus the two axes a table spreads it over: the seed
(what is averaged) and the regime (the table's rows). For a run: the task, its options and the
resolved training config; for a circuit: its run's setting plus metric, ablation and q/k/v split
(method and selection have their own tables). A *group* is (regime, setting): every mean, CI and
test is computed inside one group. The regime's own hyperparameters (REGIME_KEYS: lam and its
schedule, BIMT's geometry and swaps, regime options) belong to the regime, not to the comparison:
BIMT is compared with every baseline whose *shared setting* (the setting without them) is its own,
so clusterability's lam or weight-sparse's density do not make it incomparable, while a change of
steps, widths or task options does. Labels name what differs: shared keys among all groups, a
regime's own keys only among that regime's groups.

Which rows are current: a results file written by `study run` holds each study's manifest (the cell
keys it plans, replaced on every run); rows outside every manifest are stale (an earlier version of
the study, e.g. before `steps` changed). The report leaves them out unless asked (`--all`), and then
labels each group by what differs (`steps=300`). Older files without manifests: every row counts as
current, and rows of different settings are still separate groups, labelled the same way.
"""
from __future__ import annotations

import json
import math

STALE = "stale"


def _json(v):
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return None
    return v if isinstance(v, dict) else None


def _plain(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    if hasattr(v, "item"):
        return v.item()
    return v


def run_setting(row: dict) -> dict:
    s = {"task": row.get("task")}
    for k, v in (_json(row.get("task_options")) or {}).items():
        s[f"task_options.{k}"] = _plain(v)
    for k, v in (_json(row.get("config")) or {}).items():
        if k not in ("seed", "regime"):
            s[k] = _plain(v)
    return s


def circuit_setting(row: dict, run_settings: dict) -> dict:
    s = dict(run_settings.get(row.get("run_key"), {"task": row.get("task")}))
    s["metric"] = _plain(row.get("metric"))
    s["ablation"] = _plain(row.get("ablation"))
    s["split_qkv"] = bool(_plain(row.get("split_qkv")) or False)  # absent in older files: not split
    return s


# training settings owned by the regime (vanilla ignores them; each rival sets its own)
REGIME_KEYS = ("lam", "lam_schedule", "l0", "weight_factor", "agg", "top_k", "swap_every", "swap_inputs",
               "swap_outputs", "regime_options")


def shared_setting(setting: dict) -> dict:
    """The setting without the regime's own hyperparameters: what BIMT and a baseline must share."""
    return {k: v for k, v in setting.items() if k not in REGIME_KEYS}


def own_setting(setting: dict) -> dict:
    return {k: setting.get(k) for k in REGIME_KEYS}


def setting_id(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True, default=str)


def difference_labels(settings: list[dict]) -> dict[str, str]:
    """setting id -> 'key=value, ...' of the keys whose values differ among `settings` ('' if one)."""
    ids = {setting_id(s): s for s in settings}
    if len(ids) < 2:
        return {i: "" for i in ids}
    keys = sorted({k for s in ids.values() for k in s})
    differ = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in ids.values()}) > 1]
    return {i: ", ".join(f"{k}={_show(s.get(k))}" for k in differ) for i, s in ids.items()}


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "-" if v is None else str(v)


def annotate(df, settings: list[dict], current_keys: set | None):
    """Add `setting` (id), `stale` (bool) to a copy of df (one setting per row, in row order)."""
    df = df.copy()
    df["setting"] = [setting_id(s) for s in settings]
    df["shared"] = [setting_id(shared_setting(s)) for s in settings]
    df["stale"] = [False if current_keys is None else k not in current_keys for k in df["key"]]
    return df


def label_groups(df, regime_order) -> tuple:
    """df with a `group` column ("bimt", or "bimt [steps=300; stale]" when settings differ) and the
    group labels in display order (current first, then regimes in order). A group's label names the
    shared keys that differ among all groups and the regime's own keys that differ among its groups."""
    if df.empty:
        df = df.copy()
        df["group"] = []
        return df, []
    settings = {sid: json.loads(sid) for sid in df["setting"].unique()}
    shared = difference_labels([shared_setting(s) for s in settings.values()])
    own: dict[str, str] = {}
    for regime in df["regime"].unique():
        sids = df.loc[df["regime"] == regime, "setting"].unique()
        labels = difference_labels([own_setting(settings[sid]) for sid in sids])
        own.update({sid: labels[setting_id(own_setting(settings[sid]))] for sid in sids})
    labels, order = [], {}
    rank = {r: i for i, r in enumerate(regime_order)}
    for regime, sid, stale in zip(df["regime"], df["setting"], df["stale"]):
        common = shared[setting_id(shared_setting(settings[sid]))]
        tags = [t for t in (common, own[sid], STALE if stale else "") if t]
        label = f"{regime} [{'; '.join(tags)}]" if tags else str(regime)
        labels.append(label)
        order.setdefault(label, (bool(stale), common, rank.get(regime, len(rank)), own[sid]))
    df = df.copy()
    df["group"] = labels
    return df, sorted(order, key=lambda g: order[g])
