"""The work of one unit: train (or reload) a model, discover and score its circuits, profile it.

`run_unit(unit)` is a plain function of its argument (picklable, no store access): it returns the
rows and the artifacts as bytes, and the study runner writes them. That makes it run the same in
this process, in a process pool and as a Ray task on another machine.
"""
from __future__ import annotations

import dataclasses
import socket
import tempfile
import time
from pathlib import Path

import torch

from ..errors import ModcircuitError
from .spec import CircuitCell, Unit


def circuit_api():
    """(discover, evaluate) from modcircuit.circuits."""
    try:
        from ..circuits import discover, evaluate  # type: ignore[attr-defined]

        if callable(discover) and callable(evaluate):
            return discover, evaluate
    except ImportError:
        pass
    try:
        from ..circuits.discover import discover
        from ..circuits.metrics import evaluate
    except ImportError as e:
        raise ModcircuitError(f"circuit discovery is not available in this installation ({e})") from None
    return discover, evaluate


def run_rel(run_key: str) -> str:
    return f"runs/{run_key}"


def circuit_rel(circuit_key: str) -> str:
    return f"circuits/{circuit_key}.json"


def _read_dir(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()}


def _train(unit: Unit, workdir: Path):
    """Train the unit's model; returns (Run, memory report or {})."""
    from ..train import load, train

    rc = unit.run
    overrides = {k: v for k, v in rc.config.items() if k not in ("regime", "seed")}
    if unit.fresh_process:
        from ..profile.core import train_fresh

        rep = train_fresh(rc.task, rc.regime, rc.seed, overrides, rc.task_options, out_dir=workdir / "run")
        run = load(workdir / "run")
        mem = {k: rep.get(k) for k in ("peak_rss_mb", "baseline_rss_mb", "train_rss_mb", "cuda_max_allocated_mb")}
        return run, mem
    run = train(rc.task, regime=rc.regime, seed=rc.seed, progress=False, task_options=rc.task_options, **overrides)
    run.save(workdir / "run")
    return run, {}


def _load(unit: Unit, workdir: Path):
    from ..train import load

    d = workdir / "run"
    d.mkdir(parents=True)
    for name, data in (unit.checkpoint or {}).items():
        (d / name).write_bytes(data)
    return load(d)


def _base(unit: Unit) -> dict:
    rc = unit.run
    return {"study": unit.study, "task": rc.task, "regime": rc.regime, "seed": rc.seed}


def run_row(unit: Unit, run, mem: dict) -> dict:
    from ..profile.core import count_params

    rc = unit.run
    row = {"key": rc.key, **_base(unit), "task_options": rc.task_options, "overrides": rc.overrides,
           "config": rc.config, "checkpoint": run_rel(rc.key), "steps": rc.config.get("steps")}
    row.update({k: v for k, v in run.metrics.items() if isinstance(v, (int, float))})
    row.update({k: v for k, v in run.timings.items() if isinstance(v, (int, float))})
    row.update(mem)
    row.update(count_params(run.model))
    row["created_at"] = time.time()
    row["worker"] = socket.gethostname()
    return row


def circuit_row(unit: Unit, cc: CircuitCell, report: dict) -> dict:
    row = {"key": cc.key, "run_key": cc.run_key, **_base(unit)}
    for k, v in report.items():
        if v is None or isinstance(v, (bool, int, float, str, dict, list)):
            row[k] = v
    row.update({"method": cc.method, "threshold": cc.threshold, "edge_count": cc.edge_count,
                "metric": report.get("metric", cc.metric), "ablation": cc.ablation, "split_qkv": cc.split_qkv,
                "artifact": circuit_rel(cc.key)})
    row["created_at"] = time.time()
    return row


def compact_for_profile(circuit, model, allow_other_model: bool = False):
    """The compacted circuit's dense model. Compaction needs constant ablation (zero/mean); for a
    resample-ablation circuit the structure (which neurons and weights survive) is what sets the cost,
    so it is compacted with zero constants."""
    if circuit.ablation not in ("zero", "mean") or (circuit.ablation == "mean" and circuit.means is None):
        circuit = dataclasses.replace(circuit, ablation="zero")
    return circuit.compact(model, allow_other_model)


def run_unit(unit: Unit) -> dict:
    """Do the unit's work. Returns {"rows": {table: [row, ...]}, "artifacts": {rel: bytes | {name: bytes}},
    "summary": str}. Raises ModcircuitError (or TrainingDiverged) on failure; nothing is written."""
    from ..profile.core import count_params, inference_stats

    torch.set_num_threads(1)
    rows: dict[str, list[dict]] = {"runs": [], "circuits": [], "profiles": []}
    artifacts: dict = {}
    parts = []
    with tempfile.TemporaryDirectory(prefix="modcircuit-unit-") as td:
        workdir = Path(td)
        if unit.run_done:
            run = _load(unit, workdir)
        else:
            run, mem = _train(unit, workdir)
            rows["runs"].append(run_row(unit, run, mem))
            artifacts[run_rel(unit.run.key)] = _read_dir(workdir / "run")
            metric = "test_accuracy" if "test_accuracy" in run.metrics else "test_mse"
            parts.append(f"{metric[5:]} {run.metrics[metric]:.3g} in {run.timings['train_seconds']:.1f}s")
        run.model.eval()
        task = run.task()
        if unit.circuits:
            discover, evaluate = circuit_api()
        sized = _size_groups(unit.circuits)
        scored: dict[tuple, dict[int, object]] = {}
        curves: dict[tuple, dict] = {}  # the curves of each scoring (they depend on the scores alone)
        for cc in unit.circuits:
            kw = {"threshold": cc.threshold if cc.threshold is not None else 0.0}
            if cc.split_qkv:
                kw["split_qkv"] = True
            if cc.positions is not None:
                kw["positions"] = cc.positions
            data = task
            if cc.target is not None:  # a control cell: true or permuted labels, logit-diff (study/control.py)
                from .control import control_inputs, control_options

                data = control_inputs(task, cc.target, cc.label_seed)
                kw.update(control_options(run.model, cc.method))
            group = _scoring_key(cc) if cc.edge_count is not None else None
            if group is None:
                circuit = discover(run.model, data, method=cc.method, metric=cc.metric, ablation=cc.ablation, **kw)
            else:
                if group not in scored:  # one run of the method gives the circuits of every size asked for
                    counts = sized[group]
                    # a size above the graph's keeps every edge (one spec, tasks of any size)
                    n = _n_edges(run.model, cc.split_qkv)
                    found = discover(run.model, data, method=cc.method, metric=cc.metric, ablation=cc.ablation,
                                     top_k=[min(k, n) for k in counts], **kw)
                    scored[group] = dict(zip(counts, found))
                circuit = scored[group][cc.edge_count]
            # control cells need no curves: the control table reads their size and faithfulness only
            report = evaluate(run.model, circuit, data, curves_of=curves.get(group), curves=cc.target is None)
            if group is not None:
                curves.setdefault(group, {k: report[k] for k in ("curve", "mib_curve") if k in report})
            if not cc.curves:
                report.pop("curve", None)
                report.pop("mib_curve", None)
            path = workdir / "circuits" / f"{cc.key}.json"
            circuit.save(path)
            artifacts[circuit_rel(cc.key)] = path.read_bytes()
            row = circuit_row(unit, cc, report)
            if cc.target is not None:
                row["target"] = cc.target
                if cc.label_seed is not None:  # (a None would make the column text)
                    row["label_seed"] = cc.label_seed
            elif unit.profile is not None and hasattr(circuit, "compact"):  # (head-level circuits do not compact)
                small = compact_for_profile(circuit, run.model)
                row.update(count_params(small, "compact_"))
                row["compact_widths"] = list(small.widths)
                row.update(inference_stats(small, task.x_test, prefix="compact_",
                                           latency_repeats=unit.profile.latency_repeats,
                                           throughput_batch=unit.profile.throughput_batch,
                                           throughput_repeats=unit.profile.throughput_repeats))
            rows["circuits"].append(row)
            gap = report.get("logit_gap")
            parts.append(f"{cc.label()}: gap {gap:.3g}, {report.get('n_kept')}/{report.get('n_edges')} edges, "
                         f"{report.get('seconds', 0):.2f}s")
        if unit.profile is not None:
            pc = unit.profile
            prow = {"key": pc.key, "run_key": pc.run_key, **_base(unit), "device": pc.device,
                    "latency_repeats": pc.latency_repeats, "throughput_batch": pc.throughput_batch,
                    "throughput_repeats": pc.throughput_repeats}
            prow.update(count_params(run.model))
            prow.update(inference_stats(run.model, task.x_test, latency_repeats=pc.latency_repeats,
                                        throughput_batch=pc.throughput_batch,
                                        throughput_repeats=pc.throughput_repeats))
            prow["created_at"] = time.time()
            rows["profiles"].append(prow)
            parts.append(f"latency {prow['latency_ms_median']:.3f} ms")
    return {"rows": rows, "artifacts": artifacts, "summary": "; ".join(parts)}


def _scoring_key(cc: CircuitCell) -> tuple:
    """What a method's scores depend on: everything about a cell but the circuit size it is cut at."""
    return (cc.method, cc.threshold, cc.metric, cc.ablation, cc.split_qkv, repr(cc.positions), cc.target,
            cc.label_seed)


def _size_groups(circuits: list[CircuitCell]) -> dict[tuple, list[int]]:
    """The edge counts asked of each scoring (cells that differ only in their size share one run)."""
    groups: dict[tuple, list[int]] = {}
    for cc in circuits:
        if cc.edge_count is not None:
            groups.setdefault(_scoring_key(cc), []).append(cc.edge_count)
    return groups


def _n_edges(model, split_qkv) -> int:
    from ..circuits.kinds import graph_kind

    kind = graph_kind(model)
    return kind.n_edges(kind.prepare(model), **({"split_qkv": True} if split_qkv else {}))
