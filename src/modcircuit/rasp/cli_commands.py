"""`modcircuit tracr PROGRAM --out RUN`: compile a RASP program into a run folder discovery reads."""
from __future__ import annotations

from pathlib import Path

import typer

from ..jsonout import dumps


def tracr_cmd(
    program: str = typer.Argument(..., help="RASP program: frac_prevs, histogram, neighbours, reverse, sort"),
    out: Path = typer.Option(..., "--out", help="run folder to write (then: modcircuit discover RUN)"),
    seed: int = typer.Option(0, "--seed", help="shuffles the valid inputs into the train and test halves"),
    json_output: bool = typer.Option(False, "--json", help="machine-readable output"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output, only one modcircuit wrote"),
):
    """Compile a RASP program with tracr into a run folder (model, task tracr, known circuit)."""
    from ..limits import check_seed
    from ..outputs import check_output
    from .programs import program_spec

    program_spec(program)  # before any work
    check_seed(seed)
    check_output(out, "checkpoint", overwrite=overwrite)
    from ..train.checkpoint import Run, save
    from .compiled import tracr_sizes
    from .task import tracr_model

    model, truth, task = tracr_model(program, seed=seed)
    metrics = task.evaluate(model)
    save(Run(model, "tracr", {"program": program}, seed=seed, hyperparameters={"compiled_by": "tracr"},
             metrics=metrics), out, overwrite=overwrite)
    summary = {"out": str(out), "program": program, **tracr_sizes(model, truth), "metrics": metrics}
    if json_output:
        typer.echo(dumps(summary))
    else:
        typer.echo(f"tracr {program}: {summary['layers']} layers x {summary['heads']} heads, "
                   f"{summary['true_edges']}/{summary['edges']} edges in the known circuit -> {out}")
