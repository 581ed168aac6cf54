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
    estimate_seconds: float | None = None  # dry runs: the time estimate


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
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # on stderr: stdout stays for results (`study run --json` prints only JSON there)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=True, console=Console(stderr=True))


def _listing_without_store(p: Plan) -> tuple[list[Unit], list[dict]]:
    """Units and listing of a study whose results file does not exist yet: everything is pending."""
    units, listing = [], []
    by_run: dict[str, list] = {}
    for c in p.circuits:
        by_run.setdefault(c.run_key, []).append(c)
    profiles = {pc.run_key: pc for pc in p.profiles}
    for rc in p.runs:
        cs = by_run.get(rc.key, [])
        listing.append({"run": rc.label(), "key": rc.key, "trained": False,
                        "circuits": [(c.label(), c.key, False) for c in cs],
                        "profile": False if rc.key in profiles else None})
        units.append(Unit(study=p.spec.name, run=rc, circuits=cs, profile=profiles.get(rc.key),
                          fresh_process=p.spec.profile.fresh_process))
    return units, listing


def run_study(spec, *, executor: str = "local", workers: int = 1, address: str | None = None,
              dry_run: bool = False, cell_fn: Callable | None = None, progress: bool = True,
              echo: Callable[[str], None] | None = None, results=None, artifacts=None,
              export: bool = True, estimate: bool = True) -> StudyResult:
    """Run (or with dry_run, validate, list and time-estimate) the study's pending cells. Relative
    `results`/`artifacts` given here are taken as they are (the cwd); the study's own resolve
    against its file's folder."""
    spec = _as_spec(spec)
    if workers < 1:
        raise ModcircuitError(f"workers {workers!r} must be >= 1")
    ex = make_executor(executor, workers, address)  # validate before any work
    t0 = time.perf_counter()
    p = plan(spec)  # validates tasks, options, widths, methods against the tasks
    res_path = Path(results) if results else spec.results_path()
    art_path = Path(artifacts) if artifacts else (spec.artifacts_path() if not results else None)
    art_checked = art_path or res_path.with_name(res_path.stem + "-artifacts")
    check_location(res_path, folder=False)  # before any training
    check_location(art_checked, folder=True)
    if res_path.is_file() or not dry_run:  # a dry run reads an existing store and writes nothing
        store = Store(res_path, art_path, read_only=dry_run)
    else:
        store = None
    out = StudyResult(results=res_path, artifacts=store.artifacts if store else art_checked,
                      n_runs=len(p.runs), n_circuits=len(p.circuits), n_profiles=len(p.profiles),
                      units_total=0, dry_run=dry_run, substitutions=p.substitutions)
    say = echo or print
    for named, used in p.substitutions.items():
        say(f"task {named} cannot be built here; using {used} instead (task_fallbacks)")
    try:
        if store is None:  # dry run of a study that has never run
            units, listing = _listing_without_store(p)
            skipped = 0
        else:
            if not dry_run:
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
                f"{len(units)} units to run, {skipped} cells already done; results file {res_path}")
            if estimate:
                from .estimate import estimate as estimate_units

                est = estimate_units(units, workers, say=say)
                out.estimate_seconds = est.seconds
                say(est.line())
            return out
        store.record_manifest(spec.name, spec.fingerprint(), {"runs": [r.key for r in p.runs],
                                                              "circuits": [c.key for c in p.circuits],
                                                              "profiles": [x.key for x in p.profiles]})
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
