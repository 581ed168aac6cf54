"""CLI commands of the study stage: `modcircuit study run`, `modcircuit report`, `modcircuit profile`.

    modcircuit study run studies/demo.toml [--workers 2] [--report report/demo]
    modcircuit study run studies/paper.toml --executor ray [--address auto]
    modcircuit study run studies/paper.toml --dry-run
    modcircuit report results/demo.duckdb -o report/demo [--all]

With --json, stdout carries only the JSON document; progress and messages go to stderr.
    modcircuit profile runs/mnist-bimt-0 --json
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ModcircuitError
from ..jsonout import dumps


def _console(stderr: bool = False):
    from rich.console import Console

    c = Console(markup=False, highlight=False, stderr=stderr)
    return Console(markup=False, highlight=False, width=max(140, c.width), stderr=stderr)


def _say(to_stderr: bool):
    return (lambda s: typer.echo(s, err=True)) if to_stderr else typer.echo


TERMINAL_COLUMNS = ("logit gap", "KL", "MSE to model", "edges kept", "discovery s", "train s", "peak RSS MB",
                    "latency ms", "circuit latency ms")


def print_report_tables(rep, console=None) -> None:
    """The main comparison table of each task and the claims summary, in the terminal."""
    from rich.table import Table

    console = console or _console()
    for task, (header, rows) in rep.tables.items():
        if header is None:
            continue
        keep = [i for i, h in enumerate(header) if i == 0 or h in TERMINAL_COLUMNS]
        t = Table(*[header[i] for i in keep], title=f"{task} (mean ± 95% CI over seeds; all columns in the report)")
        for r in rows:
            t.add_row(*[r[i] for i in keep])
        console.print(t)
    if rep.note:
        console.print(rep.note)
    verdicts: dict[str, list[str]] = {}
    for c in rep.claims:
        verdicts.setdefault(c["statement"], []).append(c["verdict"])
    for statement, vs in verdicts.items():
        console.print(f"claim: {statement}: holds in {vs.count('holds')} of {len(vs)} comparisons, "
                      f"opposite in {vs.count('opposite')}")


def study_run_cmd(
    spec: Annotated[Path, typer.Argument(help="study file (TOML), e.g. studies/demo.toml")],
    executor: Annotated[str, typer.Option("--executor", help="local | ray")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (e.g. auto); "
                                                                     "default: start a local cluster")] = None,
    workers: Annotated[int, typer.Option("--workers", help="parallel processes (local) or CPUs of a local "
                                                           "Ray cluster")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate the study, list its cells and what is "
                                                            "already done, estimate the time; run nothing")] = False,
    no_estimate: Annotated[bool, typer.Option("--no-estimate", help="dry run without the time estimate (its "
                                                                    "calibration trains a few steps per task "
                                                                    "and regime)")] = False,
    results: Annotated[Optional[Path], typer.Option("--results", help="results file (default: the study's "
                                                                      "`results`, else results/<name>.duckdb)")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="write the report to this folder "
                                                                    "when the study finishes")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="print a JSON summary at the end")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --report folder, only "
                                                                "one modcircuit wrote")] = False,
):
    """Run a study: every task x regime x seed x method cell not yet in the results store."""
    from ..outputs import check_output
    from .runner import run_study

    if report is not None:
        check_output(report, "report", overwrite=overwrite)  # before any training

    say = _say(json_output)
    res = run_study(spec, executor=executor, workers=workers, address=address, dry_run=dry_run,
                    progress=not no_progress, results=results, echo=say, estimate=not no_estimate)
    rep = None
    if report is not None and not dry_run:
        from ..report import build_report

        rep = build_report(res.results, report, overwrite=overwrite)
        print_report_tables(rep, _console(stderr=json_output))
        say(f"report: {rep.html} and {rep.markdown}")
    if json_output:
        typer.echo(dumps({
            "results": str(res.results), "artifacts": str(res.artifacts), "runs": res.n_runs,
            "circuits": res.n_circuits, "profiles": res.n_profiles, "units_run": res.units_done,
            "cells_skipped": res.skipped_cells, "failures": res.failures, "wall_seconds": res.wall_seconds,
            "dry_run": res.dry_run, "substitutions": res.substitutions,
            "estimate_seconds": res.estimate_seconds, "report": str(rep.html) if rep else None,
        }, indent=1))


def report_cmd(
    results: Annotated[Path, typer.Argument(help="results file written by `modcircuit study run`")],
    out: Annotated[Path, typer.Option("-o", "--out", help="folder for index.html, report.md and figures/")] = Path("report"),
    title: Annotated[Optional[str], typer.Option("--title")] = None,
    no_figures: Annotated[bool, typer.Option("--no-figures", help="tables and claims only")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="print the claims as JSON")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output, only one "
                                                                "modcircuit wrote")] = False,
    all_cells: Annotated[bool, typer.Option("--all", help="also show stale cells (from earlier versions of "
                                                          "a study) as their own rows, labelled by what "
                                                          "differs")] = False,
):
    """Write the study report (HTML + Markdown): comparison tables, curves, drawings, tested claims."""
    from ..report import build_report

    rep = build_report(results, out, title=title, figures=not no_figures, include_stale=all_cells,
                       overwrite=overwrite)
    if json_output:
        typer.echo(dumps({"html": str(rep.html), "markdown": str(rep.markdown),
                          "figures": [str(p) for p in rep.figures], "claims": rep.claims,
                          "note": rep.note, "stale_cells": rep.stale}, indent=1))
        return
    print_report_tables(rep)
    typer.echo(f"report: {rep.html} and {rep.markdown} ({len(rep.figures)} figures)")


def profile_cmd(
    run: Annotated[Path, typer.Argument(help="checkpoint folder (from `modcircuit train` or a study's artifacts)")],
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    circuit: Annotated[Optional[Path], typer.Option("--circuit", help="circuit JSON whose compacted model to "
                                                                      "profile too")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="discover a circuit with this method to "
                                                                   "profile its compacted model")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="threshold for --method")] = 0.01,
    train_repeats: Annotated[int, typer.Option("--train-repeats", help="fresh-process retrainings for the time "
                                                                       "and memory spread (0: none)")] = 3,
    train_steps: Annotated[Optional[int], typer.Option("--train-steps", help="cap the steps of each profiling "
                                                                             "retraining")] = 1000,
    latency_repeats: Annotated[int, typer.Option("--latency-repeats")] = 300,
    throughput_batch: Annotated[int, typer.Option("--throughput-batch")] = 4096,
    allow_other_model: Annotated[bool, typer.Option("--allow-other-model",
                                                    help="compact a --circuit found on another model with the same "
                                                         "widths (deliberate transfer); refused by default")] = False,
):
    """Compute profile of a trained model: training time and memory, inference latency/throughput, sizes."""
    from ..profile import profile_run
    from ..train import load

    if train_repeats < 0:
        raise ModcircuitError(f"--train-repeats {train_repeats} must be >= 0")
    if train_steps is not None and train_steps < 1:
        raise ModcircuitError(f"--train-steps {train_steps} must be >= 1")
    if latency_repeats < 5 or throughput_batch < 1:
        raise ModcircuitError("--latency-repeats must be >= 5 and --throughput-batch >= 1")
    if circuit is not None and method is not None:
        raise ModcircuitError("give --circuit or --method, not both")
    loaded = load(run)
    circ = None
    if circuit is not None:
        from ..circuits.circuit import Circuit

        circ = Circuit.load(circuit, loaded.model, allow_other_model)
    elif method is not None:
        from .cells import circuit_api

        discover, _ = circuit_api()
        circ = discover(loaded.model, loaded.task(), method=method, threshold=threshold)
    if circ is not None:
        from .cells import compact_for_profile

        class _Structural:  # profile_run calls .compact(model)
            def compact(self, model, _c=circ):
                return compact_for_profile(_c, model, allow_other_model)

        circ = _Structural()
    prof = profile_run(loaded, circuit=circ, train_repeats=train_repeats, train_steps=train_steps,
                       latency_repeats=latency_repeats, throughput_batch=throughput_batch)
    prof["run"] = str(run)
    if json_output:
        typer.echo(dumps(prof, indent=1))
        return
    from rich.table import Table

    t = Table("measure", "median", "IQR", "n", title=f"profile of {run} ({prof['task']}, {prof['regime']}, "
                                                      f"seed {prof['seed']})")
    for key, label in (("seconds_per_step", "training s/step"), ("train_seconds", "training s (profiled steps)"),
                       ("swap_share", "share of training in swaps"), ("peak_rss_mb", "peak RSS MB (fresh process)"),
                       ("train_rss_mb", "RSS growth in training MB"), ("cuda_max_allocated_mb", "CUDA peak MB"),
                       ("latency_ms", "latency ms (batch 1)"), ("throughput", "throughput examples/s"),
                       ("compact_latency_ms", "circuit latency ms (batch 1)"),
                       ("compact_throughput", "circuit throughput examples/s")):
        if prof.get(f"{key}_median") is not None:
            t.add_row(label, f"{prof[f'{key}_median']:.4g}", f"{prof[f'{key}_q25']:.4g} – {prof[f'{key}_q75']:.4g}",
                      str(prof[f"{key}_n"]))
    con = _console()
    con.print(t)
    sizes = f"parameters {prof['n_params']}, non-zero {prof['n_nonzero']}"
    if "compact_n_params" in prof:
        sizes += f"; compacted circuit {prof['compact_n_params']} parameters"
    if "recorded_train_seconds" in prof:
        sizes += f"; recorded training {prof['recorded_train_seconds']:.2f}s for {prof.get('recorded_steps')} steps"
    con.print(sizes)
