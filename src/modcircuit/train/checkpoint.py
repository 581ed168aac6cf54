"""Checkpoint folders: model.safetensors + model.json, written atomically, verified on load.

model.json holds the architecture and geometry (model config), task (name, options, seed), regime,
seed, hyperparameters, final metrics, training history and timings, and the name and shape of
every tensor, so a file whose JSON and tensors disagree is caught with the tensor named.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import replace_dir, staging_dir
from ..errors import ModcircuitError
from ..nn import model_from_config
from ..outputs import prepare_output

FORMAT = "modcircuit-checkpoint"
VERSION = 1


@dataclass
class Run:
    """A trained model and everything needed to reproduce and evaluate it."""

    model: torch.nn.Module
    task_name: str
    task_options: dict = field(default_factory=dict)
    seed: int = 0
    regime: str = "vanilla"
    hyperparameters: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    path: Path | None = None

    def task(self):
        from ..tasks import get_task

        return get_task(self.task_name, seed=self.seed, **self.task_options)

    def save(self, out_dir, *, overwrite: bool = False) -> Path:
        return save(self, out_dir, overwrite=overwrite)


def save(run: Run, out_dir, *, overwrite: bool = False) -> Path:
    """Write the checkpoint folder; an existing one is replaced only with overwrite=True and only if it
    is a checkpoint modcircuit wrote (see modcircuit.outputs)."""
    out_dir = prepare_output(out_dir, "checkpoint", overwrite=overwrite)
    state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": run.model.config(),
        "task": {"name": run.task_name, "options": run.task_options, "seed": run.seed},
        "regime": run.regime,
        "seed": run.seed,
        "hyperparameters": run.hyperparameters,
        "metrics": run.metrics,
        "timings": run.timings,
        "history": run.history,
        "tensors": {k: list(v.shape) for k, v in state.items()},
    }
    tmp = staging_dir(out_dir)
    try:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "model.json").write_text(json.dumps(meta, indent=1, default=_jsonable))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run.path = out_dir
    return out_dir


def _jsonable(o):
    if isinstance(o, Path):
        return str(o)
    if torch.is_tensor(o):
        return o.tolist()
    raise TypeError(f"cannot store {type(o).__name__} in model.json")


def load(run_dir, device: str = "cpu") -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModcircuitError(f"checkpoint folder {str(run_dir)!r} does not exist")
    jpath, tpath = run_dir / "model.json", run_dir / "model.safetensors"
    for p in (jpath, tpath):
        if not p.is_file():
            raise ModcircuitError(f"checkpoint {str(run_dir)!r} has no {p.name}")
    try:
        meta = json.loads(jpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModcircuitError(f"{str(jpath)!r} is not valid JSON (truncated?): {e.msg if hasattr(e, 'msg') else e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModcircuitError(f"{str(jpath)!r} is not a modcircuit checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    try:
        state = load_file(str(tpath))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise ModcircuitError(f"{str(tpath)!r} is truncated or corrupt: {str(e).splitlines()[0]}") from None
    try:
        model = model_from_config(meta["model"])
    except KeyError as e:
        raise ModcircuitError(f"{str(jpath)!r} lacks model field {e}") from None
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    declared = meta.get("tensors", {})
    for name, shape in expected.items():
        if name not in state:
            raise ModcircuitError(f"checkpoint {str(run_dir)!r}: tensor {name!r} missing from model.safetensors")
        if list(state[name].shape) != shape or declared.get(name, shape) != shape:
            raise ModcircuitError(
                f"checkpoint {str(run_dir)!r}: tensor {name!r} has shape {list(state[name].shape)}, "
                f"model.json says {declared.get(name, shape)} and the architecture needs {shape}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ModcircuitError(f"checkpoint {str(run_dir)!r}: unexpected tensor {extra[0]!r} in model.safetensors")
    model.load_state_dict(state)
    model.to(device)
    task = meta.get("task", {})
    return Run(
        model=model, task_name=task.get("name"), task_options=task.get("options", {}), seed=meta.get("seed", 0),
        regime=meta.get("regime"), hyperparameters=meta.get("hyperparameters", {}), metrics=meta.get("metrics", {}),
        history=meta.get("history", []), timings=meta.get("timings", {}), path=run_dir,
    )
