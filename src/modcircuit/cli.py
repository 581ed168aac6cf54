"""The `modcircuit` command line. Each pipeline stage's module supplies its own commands; this file
wires them together and turns every user error into one line on stderr and exit status 2.

Start-up stays fast: a stage's commands (and torch with them) are imported only when that command
runs or shows its own --help; `modcircuit --help` and `--version` list them from STAGE_COMMANDS."""
from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from typer.core import TyperCommand, TyperGroup

from .errors import ModcircuitError
from .regime_names import DEFAULT_REGIME, REGIMES
from .jsonout import dumps

# command -> (module, its function; or, for a command group, {subcommand: function})
STAGE_COMMANDS = {
    "discover": ("modcircuit.circuits.cli_commands", "discover_cmd"),
    "evaluate": ("modcircuit.circuits.cli_commands", "evaluate_cmd"),
    "export-mib": ("modcircuit.circuits.cli_commands", "export_mib_cmd"),
    "import-mib": ("modcircuit.circuits.cli_commands", "import_mib_cmd"),
    "draw": ("modcircuit.viz.cli_commands", "draw_cmd"),
    "profile": ("modcircuit.study.cli_commands", "profile_cmd"),
    "report": ("modcircuit.study.cli_commands", "report_cmd"),
    "study": ("modcircuit.study.cli_commands", {"run": "study_run_cmd"}),
    "tracr": ("modcircuit.rasp.cli_commands", "tracr_cmd"),
}
GROUP_HELP = {"study": "Run studies: tasks x regimes x seeds x methods."}


def stage_summary(name: str) -> str:
    """The line `modcircuit --help` shows for a stage command: its docstring's first line, read from the
    source so that listing the commands imports none of them."""
    if name in GROUP_HELP:
        return GROUP_HELP[name]
    module, function = STAGE_COMMANDS[name]
    source = Path(__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return (ast.get_docstring(node) or "").split("\n")[0]
    return ""


def load_stage_command(name: str) -> click.Command:
    """The full command `name` of STAGE_COMMANDS, with every option (this imports its stage)."""
    module, functions = STAGE_COMMANDS[name]
    stage = importlib.import_module(module)
    sub = typer.Typer(no_args_is_help=True, help=GROUP_HELP.get(name))
    if isinstance(functions, str):
        sub.command(name)(getattr(stage, functions))
        command = typer.main.get_command(sub)
    else:
        for sub_name, function in functions.items():
            sub.command(sub_name)(getattr(stage, function))
        command = typer.main.get_group(sub)
    command.name = name
    return command


class _StandIn(TyperCommand):
    """A stage command as `modcircuit --help` lists it: its name and summary, nothing imported."""


class _LazyStages(TyperGroup):
    """The command group: stage commands are stand-ins until one runs or shows its own --help."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        for name in STAGE_COMMANDS:
            self.commands.setdefault(name, _StandIn(name, short_help=stage_summary(name)))

    def resolve_command(self, ctx, args):
        if args and isinstance(self.commands.get(args[0]), _StandIn):
            self.commands[args[0]] = load_stage_command(args[0])
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=_LazyStages, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"modcircuit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    """Train modular networks (BIMT and baselines), discover their circuits, measure both."""


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
    """List tasks with their default model, training settings and task options."""
    from .tasks.base import _BUILT_ON_DEMAND, _REGISTRY, get_task, task_option_defaults

    rows = []
    for name in sorted(_REGISTRY):
        row = {"task": name, "description": _REGISTRY[name][1], "options": task_option_defaults(name)}
        if name in _BUILT_ON_DEMAND:  # compiling it would take seconds: its model is known once built
            row.update(widths=None, loss=None, defaults={}, note="model built on demand")
            rows.append(row)
            continue
        try:
            t = get_task(name)
            row.update(widths=t.widths, loss=t.loss, defaults=t.defaults)
        except ModcircuitError as e:  # e.g. mnist without its files: still listed
            row.update(widths=None, loss=None, defaults={}, note=str(e))
        rows.append(row)
    if json_output:
        typer.echo(dumps(rows, indent=1))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    keys = ("steps", "lr", "lam", "l0", "weight_factor", "top_k", "swap_every", "agg")
    # task names are never cut, at any terminal width: the settings column wraps instead
    table = Table(title="tasks and their reference settings (all overridable)", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("task", no_wrap=True, min_width=max(len(r["task"]) for r in rows))
    table.add_column("widths", overflow="fold")
    table.add_column("loss", no_wrap=True)
    table.add_column("reference settings (--set key=value)")
    for r in rows:
        widths = ",".join(map(str, r["widths"])) if r["widths"] else "-"
        settings = " ".join(f"{k}={r['defaults'][k]}" for k in keys if k in r["defaults"]) or "-"
        table.add_row(r["task"], widths, r["loss"] or "-", settings)
    console = Console(markup=False, highlight=False)
    console.print(table)
    for r in rows:
        options = ", ".join(f"{k}={json.dumps(v)}" for k, v in r["options"].items())
        console.print(f"{r['task']}: {r['description']}" + (f" ({r['note']})" if r.get("note") else "")
                      + f"\n  --task-option: {options or 'none'}")
    _print_regimes(console)


def _print_regimes(console) -> None:
    """The registered regimes with their own options (set with --set key=value or a study's [train])."""
    from rich.table import Table

    from .train.regimes import describe_regimes, get_regime

    table = Table("regime", "what it trains with", "options (default)", title="regimes (--regime)")
    for name, description in describe_regimes().items():
        fields = get_regime(name).Options.model_fields
        table.add_row(name, description, ", ".join(f"{k} ({f.default})" for k, f in fields.items()) or "-")
    console.print(table)


@app.command("train")
def train_cmd(
    task: str = typer.Option(..., "--task", help="task name (see `modcircuit tasks`)"),
    regime: str = typer.Option(DEFAULT_REGIME, "--regime", help=f"{' | '.join(REGIMES)} (see `modcircuit tasks`; "
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
    threads: int = typer.Option(1, "--threads", help="CPU threads, 1..1024 (small MLPs train fastest on one)"),
    max_parameters: Optional[int] = typer.Option(None, "--max-parameters",
                                                 help="refuse larger models (default 10,000,000 parameters)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder with the task's data files (mnist)"),
    download: bool = typer.Option(False, "--download", help="download the task's data when missing (mnist)"),
    sets: list[str] = typer.Option([], "--set", help="any other hyperparameter, key=value (JSON values)"),
    task_options: list[str] = typer.Option([], "--task-option", help="a task option, key=value, e.g. p=23 "
                                                                     "(modular-addition), noise=0.2 (two-moons)"),
    animate: Optional[Path] = typer.Option(None, "--animate", help="write a training animation (.gif or .mp4)"),
    frames: int = typer.Option(40, "--frames", help="animation frames"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    json_output: bool = typer.Option(False, "--json", help="print the final metrics as JSON"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output, only one modcircuit wrote"),
):
    """Train one model and write its checkpoint folder."""
    from .outputs import check_output

    check_output(out, "checkpoint", overwrite=overwrite)  # before any work
    import torch

    from .limits import check_threads
    from .tasks import get_task, parse_task_options
    from .train import train

    torch.set_num_threads(check_threads(threads))
    options = parse_task_options(task, task_options)
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

        recorder = Recorder.for_path(animate, t, overwrite=overwrite)
        n_steps = overrides.get("steps") or t.defaults.get("steps", 2000)
        overrides["callback"], overrides["callback_every"] = recorder, max(1, n_steps // max(1, frames - 1))
    run = train(t, regime=regime, seed=seed, progress=progress and not json_output, max_parameters=max_parameters,
                **overrides)
    run.save(out, overwrite=overwrite)
    if recorder is not None:
        recorder.save(animate)
    if json_output:
        typer.echo(dumps({"out": str(out), "metrics": run.metrics, "timings": run.timings}))
    else:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in run.metrics.items())
        typer.echo(f"{task}/{regime}/seed {seed}: {shown}; {run.timings['train_seconds']:.1f} s -> {out}")


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
