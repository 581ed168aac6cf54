"""The training loop: task loss + the regime's hooks (penalty gradient, after-step projection or BIMT
swaps; see regimes/), Adam or AdamW, progress, modularity metrics, checkpoints.

Deterministic per seed: the seed fixes the task data (unless a Task object is passed), the
initial weights and the mini-batch order.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..errors import ModcircuitError
from ..limits import check_seed
from ..tasks import Task, get_task
from .checkpoint import Run
from .config import make_config
from ..nn.modularity import modularity_metrics
from .regimes import DEFAULT_REGIME, connection_cost, get_regime, lam_at


class TrainingDiverged(ModcircuitError):
    """The loss became NaN or infinite."""


REFRESH_SECONDS = 0.5  # the progress line's figures are never older than this (plus one step)
_clock = time.monotonic  # (a test replaces it)


def _own_model(model: torch.nn.Module, task: Task) -> torch.nn.Module:
    """The user's model as one the trainer can train on `task`: an MLP or transformer as is, a plain
    nn.Sequential of Linear layers and activations converted to an MLP (a copy laid out like the task's)."""
    from ..nn.mlp import MLP
    from ..nn.transformer import GeometricTransformer

    if isinstance(model, GeometricTransformer):
        return model
    if isinstance(model, torch.nn.Sequential):
        widths = task.check_widths(MLP.from_sequential(model).widths)  # (the first import validates the layers)
        model = MLP.from_sequential(model, task.layouts_for(widths))
    if not isinstance(model, MLP):
        raise ModcircuitError(
            f"model of type {type(model).__name__} cannot be trained; allowed: modcircuit.MLP, GeometricTransformer, "
            "or an nn.Sequential of Linear layers and activations (converted with MLP.from_sequential)"
        )
    task.check_widths(model.widths)
    if bool(task.embedding) != (model.embedding is not None):
        raise ModcircuitError(
            f"task {task.name} {'feeds tokens through an embedding' if task.embedding else 'has no token embedding'}; "
            f"the given model {'lacks' if task.embedding else 'has'} one: build it with task.build_model()"
        )
    return model


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not enabled, transient=False,
    )


def _info(loss: float, entry: dict | None, cost: float) -> str:
    """The progress line's figures: this step's loss and cost, the test score of the last log."""
    metric = "" if entry is None else ("test_accuracy" if "test_accuracy" in entry else "test_mse")
    score = f" {metric[5:]} {entry[metric]:.3g}" if metric in (entry or {}) else ""
    return f"loss {loss:.3g}{score} cost {cost:.3g}"


def train(
    task: Task | str,
    regime: str = DEFAULT_REGIME,
    seed: int = 0,
    *,
    progress: bool = False,
    callback: Callable[[int, torch.nn.Module, dict], None] | None = None,
    callback_every: int | None = None,
    model: torch.nn.Module | None = None,
    task_options: dict | None = None,
    max_parameters: int | None = None,
    **overrides,
) -> Run:
    """Train a model on `task` under `regime`; every TrainConfig field can be overridden by keyword.

    model: your own MLP, or a plain nn.Sequential of Linear layers and activations (trained as an MLP
    copy laid out like the task's: run.model is that MLP; the Sequential itself is not changed).
    max_parameters: refuse a model built from `widths` above this many parameters (default
    limits.MAX_PARAMETERS, 10 million) before it is allocated.
    callback(step, model, info) runs after step 0 and then every `callback_every` steps (e.g. to
    draw animation frames); info has loss, cost, lam.
    """
    check_seed(seed)
    task_options = dict(task_options or {})
    if isinstance(task, str):
        task = get_task(task, seed=seed, **task_options)
    else:
        task_options = dict(task.options)
    cfg = make_config(task.defaults, {**overrides, "regime": regime, "seed": seed})
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModcircuitError(f"device {cfg.device!r} requested but CUDA is not available; use --device cpu")

    if model is None:
        task.check_size(cfg.widths, max_parameters)
    else:
        model = _own_model(model, task)
    torch.manual_seed(seed)
    if model is None:
        model = task.build_model(cfg.widths, cfg.activation)
    model.to(device)
    optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = optimizer(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    x_all, y_all = task.x_train.to(device), task.y_train.to(device)
    n = len(x_all)
    batch = n if cfg.batch_size is None else min(cfg.batch_size, n)
    gen = torch.Generator().manual_seed(seed)
    log_every = cfg.log_every or max(1, cfg.steps // 100)
    history: list[dict] = []
    order, cursor = None, n
    hooks = get_regime(cfg.regime)(model, cfg, opt)

    def cost_now() -> float:
        with torch.no_grad():
            return float(connection_cost(model, cfg.weight_factor, cfg.l0, cfg.agg))

    t0, cpu0 = time.perf_counter(), time.process_time()
    shown_at, last_entry = _clock(), None
    with _progress(progress) as bar:
        bar_id = bar.add_task(f"{task.name}/{regime}/seed {seed}", total=cfg.steps, info="")
        for step in range(cfg.steps):
            if batch == n:
                xb, yb = x_all, y_all
            else:  # epochs of a seeded shuffle
                if cursor + batch > n:
                    order, cursor = torch.randperm(n, generator=gen).to(device), 0
                idx = order[cursor : cursor + batch]
                cursor += batch
                xb, yb = x_all[idx], y_all[idx]
            lam = lam_at(step, cfg.steps, cfg.lam, cfg.lam_schedule)
            if cfg.lr_schedule:  # piecewise constant, read like lam's
                for group in opt.param_groups:
                    group["lr"] = lam_at(step, cfg.steps, cfg.lr, cfg.lr_schedule)
            out = task.model_outputs(model, xb)
            loss = task.loss_fn(out, yb)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            # the penalty's gradient is added directly (identical to autograd's, cheaper per step)
            with torch.no_grad():
                hooks.add_penalty_grad_(lam, step)
            logging = step % log_every == 0 or step == cfg.steps - 1
            if logging or step % 50 == 0:  # a divergence check without a device sync every step
                if not torch.isfinite(loss) or any(not torch.isfinite(p.grad).all() for p in model.parameters()):
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at step {step} (task {task.name}, regime {regime}, "
                        f"lr {cfg.lr}, lam {lam}); try a smaller --lr or --lam"
                    )
            opt.step()
            with torch.no_grad():  # hooks edit weights and optimizer state in place
                hooks.after_step(step)
            if logging:
                with torch.no_grad():
                    pen = hooks.penalty(lam).item()
                entry = {"step": step, "loss": loss.item(), "penalty": pen, "lam": lam, "cost": cost_now()}
                entry.update({f"test_{k}": v for k, v in task.evaluate(model, "test").items() if k != "loss"})
                history.append(entry)
                last_entry, shown_at = entry, _clock()
                bar.update(bar_id, info=_info(entry["loss"], entry, entry["cost"]))
            elif progress and _clock() - shown_at >= REFRESH_SECONDS:  # the figures of this step, not the last log's
                shown_at = _clock()
                bar.update(bar_id, info=_info(loss.item(), last_entry, cost_now()))
            if callback is not None and (step == 0 or (callback_every and (step + 1) % callback_every == 0)):
                callback(step, model, {"loss": loss.item(), "cost": cost_now(), "lam": lam})
            bar.advance(bar_id)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0

    model.eval()
    metrics = {f"train_{k}": v for k, v in task.evaluate(model, "train").items()}
    metrics.update({f"test_{k}": v for k, v in task.evaluate(model, "test").items()})
    metrics["connection_cost"] = cost_now()
    metrics.update(modularity_metrics(model, task, seed))
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise TrainingDiverged(f"final {k} is {v} (task {task.name}, regime {regime}); try a smaller --lr or --lam")
    truth = task.head_truth_for(model)  # the task's circuit read off the trained model (induction), or None
    if truth is not None:
        model.head_truth = truth
    swap_seconds, n_swaps = hooks.swap_seconds, hooks.n_swaps
    timings = {
        # CPU time too: on a shared machine it is what the loop cost, where wall time adds the waits for a core
        "train_seconds": seconds, "train_cpu_seconds": cpu_seconds, "seconds_per_step": seconds / cfg.steps,
        "swap_seconds": swap_seconds,
        "swap_share": swap_seconds / seconds if seconds else 0.0, "n_swaps": n_swaps, "steps": cfg.steps,
    }
    return Run(
        model=model, task_name=task.name, task_options=task_options, seed=seed, regime=cfg.regime,
        hyperparameters=cfg.model_dump(), metrics=metrics, history=history, timings=timings,
        head_truth=truth, head_truth_reason="" if truth is not None else task.truth_reason,
    )
