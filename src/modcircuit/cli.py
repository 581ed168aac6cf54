"""The `modcircuit` command line. Each pipeline stage's module supplies its own commands; this file
wires them together and turns every user error into one line on stderr and exit status 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click
import typer

from .errors import ModcircuitError
from .train.regimes import describe_regimes, regime_names

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train modular networks (BIMT and baselines), discover their circuits, measure both.")


def _parse_widths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(w) for w in text.replace(" ", "").split(",")]
    except ValueError:
        raise ModcircuitError(f"--widths {text!r} must be comma-separated integers, e.g. 4,20,20,2") from None


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ModcircuitError(f"--set {item!r} must look like key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


@app.command("tasks")
def tasks_cmd(json_output: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List tasks with their default model and regime settings."""
    from .tasks.base import _REGISTRY, get_task

    rows = []
    for name in sorted(_REGISTRY):
        try:
            t = get_task(name)
            rows.append({"task": name, "description": _REGISTRY[name][1], "widths": t.widths, "loss": t.loss,
                         "defaults": t.defaults})
        except ModcircuitError as e:  # e.g. mnist without its files: still listed
            rows.append({"task": name, "description": _REGISTRY[name][1], "widths": None, "loss": None,
                         "defaults": {}, "note": str(e)})
    if json_output:
        typer.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    keys = ("steps", "lr", "lam", "l0", "weight_factor", "top_k", "swap_every", "agg")
    table = Table("task", "widths", "loss", *keys, title="tasks and their reference settings (all overridable)")
    for r in rows:
        widths = ",".join(map(str, r["widths"])) if r["widths"] else "-"
        table.add_row(r["task"], widths, r["loss"] or "-", *(str(r["defaults"].get(k, "-")) for k in keys))
    console = Console(markup=False, width=max(120, Console().width))
    console.print(table)
    for r in rows:
        console.print(f"{r['task']}: {r['description']}" + (f" ({r['note']})" if r.get("note") else ""))
    _print_regimes(console)


def _print_regimes(console) -> None:
    """The registered regimes with their own options (set with --set key=value or a study's [train])."""
    from rich.table import Table

    from .train.regimes import get_regime

    table = Table("regime", "what it trains with", "options (default)", title="regimes (--regime)")
    for name, description in describe_regimes().items():
        fields = get_regime(name).Options.model_fields
        table.add_row(name, description, ", ".join(f"{k} ({f.default})" for k, f in fields.items()) or "-")
    console.print(table)


@app.command("train")
def train_cmd(
    task: str = typer.Option(..., "--task", help="task name (see `modcircuit tasks`)"),
    regime: str = typer.Option("bimt", "--regime", help=f"{' | '.join(regime_names())} (see `modcircuit tasks`; "
                                "regime options via --set, e.g. --set density=0.05)"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(..., "--out", help="checkpoint folder to write"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    lam: Optional[float] = typer.Option(None, "--lam", help="penalty strength (before the schedule)"),
    l0: Optional[float] = typer.Option(None, "--l0", help="layer-to-layer distance in the connection cost"),
    weight_factor: Optional[float] = typer.Option(None, "--weight-factor"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="neurons considered per swap pass"),
    swap_every: Optional[int] = typer.Option(None, "--swap-every"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    agg: Optional[str] = typer.Option(None, "--agg", help="sum | mean"),
    widths: Optional[str] = typer.Option(None, "--widths", help="e.g. 4,20,20,2"),
    activation: Optional[str] = typer.Option(None, "--activation"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    threads: int = typer.Option(1, "--threads", help="CPU threads (small MLPs train fastest on one)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder with the task's data files (mnist)"),
    download: bool = typer.Option(False, "--download", help="download the task's data when missing (mnist)"),
    sets: list[str] = typer.Option([], "--set", help="any other hyperparameter, key=value (JSON values)"),
    animate: Optional[Path] = typer.Option(None, "--animate", help="write a training animation (.gif or .mp4)"),
    frames: int = typer.Option(40, "--frames", help="animation frames"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    json_output: bool = typer.Option(False, "--json", help="print the final metrics as JSON"),
):
    """Train one model and write its checkpoint folder."""
    import torch

    from .tasks import get_task
    from .train import train

    torch.set_num_threads(max(1, threads))
    options = {}
    if data_dir is not None:
        options["data_dir"] = str(data_dir)
    if download:
        options["download"] = True
    overrides = dict(steps=steps, lr=lr, lam=lam, l0=l0, weight_factor=weight_factor, top_k=top_k,
                     swap_every=swap_every, batch_size=batch_size, agg=agg, widths=_parse_widths(widths),
                     activation=activation, device=device)
    overrides.update(_parse_sets(sets))
    t = get_task(task, seed=seed, **options)
    recorder = None
    if animate is not None:
        from .viz.animate import Recorder

        recorder = Recorder.for_path(animate, t)
        n_steps = overrides.get("steps") or t.defaults.get("steps", 2000)
        overrides["callback"], overrides["callback_every"] = recorder, max(1, n_steps // max(1, frames - 1))
    run = train(t, regime=regime, seed=seed, progress=progress and not json_output, **overrides)
    run.save(out)
    if recorder is not None:
        recorder.save(animate)
    if json_output:
        typer.echo(json.dumps({"out": str(out), "metrics": run.metrics, "timings": run.timings}))
    else:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in run.metrics.items())
        typer.echo(f"{task}/{regime}/seed {seed}: {shown}; {run.timings['train_seconds']:.1f} s -> {out}")


def _register_stage_commands() -> None:
    """Commands of the later pipeline stages, each defined next to the code it drives."""
    import importlib

    for module, name, attr in [
        ("modcircuit.circuits.cli_commands", "discover", "discover_cmd"),
        ("modcircuit.circuits.cli_commands", "evaluate", "evaluate_cmd"),
        ("modcircuit.viz.cli_commands", "draw", "draw_cmd"),
        ("modcircuit.study.cli_commands", "profile", "profile_cmd"),
        ("modcircuit.study.cli_commands", "report", "report_cmd"),
    ]:
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        app.command(name)(fn)
    try:
        from .study.cli_commands import study_run_cmd
    except ImportError:
        return
    study_app = typer.Typer(no_args_is_help=True, help="Run studies: tasks x regimes x seeds x methods.")
    study_app.command("run")(study_run_cmd)
    app.add_typer(study_app, name="study")


_register_stage_commands()


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except ModcircuitError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except (typer.Exit, click.exceptions.Exit) as e:
        return getattr(e, "exit_code", 0)
    except (typer.Abort, click.exceptions.Abort):
        typer.echo("aborted", err=True)
        return 130
    except (typer.TyperException, click.ClickException) as e:  # typer >= 0.20 vendors its own click
        if type(e).__name__ == "NoArgsIsHelpError":  # help was already printed
            return 0
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        param = getattr(e, "param", None)
        if param is not None and getattr(param, "opts", None) and param.opts[0] not in msg:
            msg = f"invalid value for {param.opts[0]}: {msg}"
        typer.echo(f"error: {' '.join(msg.split())}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


def entry() -> None:
    sys.exit(main())
