"""Run a study: plan its cells, skip the finished ones, execute the rest, store every result.

    result = run_study("studies/demo.toml")                       # local, sequential
    result = run_study(spec, executor="local", workers=2)         # process pool
    result = run_study(spec, executor="ray", address="auto")      # Ray tasks
    run_study(spec, dry_run=True)                                  # list the cells, run nothing

A unit of work is one trained model with its pending circuits and profile; the unit's function
(`cell_fn`, default `cells.run_unit`) returns rows and artifacts, and this process writes them
(artifacts atomically, then the rows in one transaction), printing one line per finished unit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ModcircuitError
from ..outputs import check_location
from .executors import make_executor
from .spec import Plan, StudySpec, Unit, load_spec, plan
from .store import Store, clean_partials


@dataclass
class StudyResult:
    results: Path
    artifacts: Path
    n_runs: int
    n_circuits: int
    n_profiles: int
    units_total: int
    units_done: int = 0
    failures: list[str] = field(default_factory=list)
    skipped_cells: int = 0
    wall_seconds: float = 0.0
    dry_run: bool = False
    cells: list[dict] = field(default_factory=list)
    substitutions: dict = field(default_factory=dict)
    parquet: Path | None = None


def _as_spec(spec) -> StudySpec:
    if isinstance(spec, StudySpec):
        return spec
    return load_spec(spec)


def build_units(p: Plan, store: Store, fresh_process: bool) -> tuple[list[Unit], list[dict], int]:
    """The pending units, a listing of every cell with its status, and how many cells were already done."""
    have = {t: store.keys(t) for t in ("runs", "circuits", "profiles")}
    by_run_c: dict[str, list] = {}
    for c in p.circuits:
        by_run_c.setdefault(c.run_key, []).append(c)
    by_run_p = {pc.run_key: pc for pc in p.profiles}
    units, listing, skipped = [], [], 0
    for rc in p.runs:
        rel = f"runs/{rc.key}"
        run_done = rc.key in have["runs"] and (store.artifacts / rel / "model.json").is_file()
        circuits = by_run_c.get(rc.key, [])
        pend_c = [c for c in circuits if c.key not in have["circuits"] or not run_done]
        pc = by_run_p.get(rc.key)
        pend_p = pc if pc is not None and (pc.key not in have["profiles"] or not run_done) else None
        skipped += (1 if run_done else 0) + (len(circuits) - len(pend_c)) + (1 if pc is not None and pend_p is None else 0)
        listing.append({"run": rc.label(), "key": rc.key, "trained": run_done,
                        "circuits": [(c.label(), c.key, c not in pend_c) for c in circuits],
                        "profile": None if pc is None else pend_p is None})
        if run_done and not pend_c and pend_p is None:
            continue
        u = Unit(study=p.spec.name, run=rc, circuits=pend_c, profile=pend_p, run_done=run_done,
                 fresh_process=fresh_process)
        if run_done:
            u.checkpoint = store.read_dir(rel)
        units.append(u)
    return units, listing, skipped


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=True)


def run_study(spec, *, executor: str = "local", workers: int = 1, address: str | None = None,
              dry_run: bool = False, cell_fn: Callable | None = None, progress: bool = True,
              echo: Callable[[str], None] | None = None, results=None, artifacts=None,
              export: bool = True) -> StudyResult:
    spec = _as_spec(spec)
    if workers < 1:
        raise ModcircuitError(f"workers {workers!r} must be >= 1")
    ex = make_executor(executor, workers, address)  # validate before any work
    t0 = time.perf_counter()
    p = plan(spec)
    res_path = Path(results) if results else spec.results_path()
    art_path = Path(artifacts) if artifacts else (spec.artifacts_path() if not results else None)
    check_location(res_path, folder=False)  # before any training
    check_location(art_path or res_path.with_name(res_path.stem + "-artifacts"), folder=True)
    store = None if (dry_run and not res_path.is_file()) else Store(res_path, art_path)
    out = StudyResult(results=res_path, artifacts=store.artifacts if store else Path(art_path or ""),
                      n_runs=len(p.runs), n_circuits=len(p.circuits), n_profiles=len(p.profiles),
                      units_total=0, dry_run=dry_run, substitutions=p.substitutions)
    say = echo or print
    for named, used in p.substitutions.items():
        say(f"task {named} cannot be built here; using {used} instead (task_fallbacks)")
    try:
        if store is None:  # dry run of a study that has never run
            units, listing = [], []
            for rc in p.runs:
                cs = [c for c in p.circuits if c.run_key == rc.key]
                listing.append({"run": rc.label(), "key": rc.key, "trained": False,
                                "circuits": [(c.label(), c.key, False) for c in cs],
                                "profile": False if spec.profile.enabled else None})
                units.append(rc)
            skipped = 0
        else:
            clean_partials(store.artifacts)
            units, listing, skipped = build_units(p, store, spec.profile.fresh_process)
        out.cells, out.skipped_cells, out.units_total = listing, skipped, len(units)
        if dry_run:
            for item in listing:
                n_c = len(item["circuits"])
                done_c = sum(1 for c in item["circuits"] if c[2])
                prof = "" if item["profile"] is None else (" profile done" if item["profile"] else " profile pending")
                state = "trained" if item["trained"] else "to train"
                say(f"{item['key']}  {item['run']}: {state}; circuits {done_c}/{n_c} done"
                    f" ({', '.join(c[0] for c in item['circuits'])});{prof}")
            say(f"{len(listing)} runs, {len(p.circuits)} circuits, {len(p.profiles)} profiles; "
                f"{len(units)} units to run, {skipped} cells already done")
            return out
        if not units:
            say(f"nothing to do: all {skipped} cells of study {spec.name!r} are in {res_path}")
        fn = cell_fn
        if fn is None:
            from .cells import run_unit as fn
        with _progress(progress) as bar:
            tid = bar.add_task(spec.name, total=len(units))
            for unit, result, error in ex.run(fn, units):
                out.units_done += 1
                prefix = f"[{out.units_done}/{len(units)}] {unit.label()}"
                if error is not None:
                    out.failures.append(f"{unit.label()}: {error}")
                    (bar.console.print if progress else say)(f"{prefix}: FAILED: {error}")
                else:
                    store.write_artifacts(result.get("artifacts", {}))
                    store.commit(result["rows"])
                    line = f"{prefix}: {result.get('summary', 'done')}"
                    if progress and bar.console.is_terminal:
                        bar.console.print(line, highlight=False, markup=False)
                    else:
                        say(line)
                bar.advance(tid)
        if export:
            out.parquet = store.export_parquet()
    finally:
        if store is not None:
            store.close()
    out.wall_seconds = time.perf_counter() - t0
    if units:
        say(f"study {spec.name!r}: {out.units_done - len(out.failures)}/{len(units)} units done, "
            f"{skipped} cells skipped as finished, {out.wall_seconds:.1f}s; results in {res_path}")
    if out.failures:
        raise ModcircuitError(f"{len(out.failures)} of {len(units)} units failed; first: {out.failures[0]}")
    return out
