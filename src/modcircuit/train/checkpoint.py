"""Checkpoint folders: model.safetensors + model.json, written atomically, verified on load.

model.json holds the architecture and geometry (model config), task (name, options, seed), regime,
seed, hyperparameters, final metrics, training history and timings, the name and shape of every
tensor, and the SHA-256 of model.safetensors. Loading checks model.json against its schema
(checkpoint_schema.py), the file hash (one flipped byte is caught), the tensors' names and shapes
against the JSON and the architecture, and that every weight is finite; each failure is one line.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..atomic import ordinary_permissions, replace_dir, staging_dir
from ..errors import ModcircuitError
from ..nn import model_from_config
from ..schema import validate
from .checkpoint_schema import FORMAT, VERSION, CheckpointMeta, check_version
from ..outputs import prepare_output

__all__ = ["Run", "save", "load", "FORMAT", "VERSION"]


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
    # the task's known head-level circuit read off this model (circuits.truth.HeadTruth; induction), or None;
    # also set as model.head_truth, and kept in model.json
    head_truth: object | None = None
    head_truth_reason: str = ""  # why there is none, when the task looked

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
    for name, t in state.items():  # a file load() would refuse is never written
        _check_finite(name, t, "cannot save the model")
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
    if run.head_truth is not None:
        meta["head_truth"] = run.head_truth.to_dict()
    if run.head_truth_reason:
        meta["head_truth_reason"] = run.head_truth_reason
    data = save_safetensors(state)
    meta["safetensors_sha256"] = hashlib.sha256(data).hexdigest()
    text = json.dumps(meta, indent=1, default=_jsonable)
    validate(CheckpointMeta, json.loads(text), f"model.json for {str(out_dir)!r}")  # what load() will demand
    tmp = staging_dir(out_dir)
    try:
        (tmp / "model.safetensors").write_bytes(data)
        ordinary_permissions(tmp / "model.safetensors")
        (tmp / "model.json").write_text(text)
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


def _check_finite(name: str, t: torch.Tensor, where: str) -> None:
    if t.is_floating_point():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ModcircuitError(f"{where}: tensor {name!r} holds {bad} NaN/inf value(s) of {t.numel()}; "
                                  "a usable model has finite weights (did training diverge?)")


def load(run_dir, device: str = "cpu") -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModcircuitError(f"checkpoint folder {str(run_dir)!r} does not exist")
    jpath, tpath = run_dir / "model.json", run_dir / "model.safetensors"
    for p in (jpath, tpath):
        if not p.is_file():
            raise ModcircuitError(f"checkpoint {str(run_dir)!r} has no {p.name}")
    where = f"checkpoint {str(run_dir)!r}"
    try:
        meta = json.loads(jpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModcircuitError(f"{str(jpath)!r} is not valid JSON (truncated?): {e.msg if hasattr(e, 'msg') else e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModcircuitError(f"{str(jpath)!r} is not a modcircuit checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    check_version(meta, str(jpath))
    m = validate(CheckpointMeta, meta, str(jpath))
    data = tpath.read_bytes()
    try:
        state = load_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise ModcircuitError(f"{str(tpath)!r} is truncated or corrupt: {str(e).splitlines()[0]}") from None
    if m.safetensors_sha256 is not None:  # version 1 files have no hash to check
        actual = hashlib.sha256(data).hexdigest()
        if actual != m.safetensors_sha256:
            raise ModcircuitError(
                f"{where}: model.safetensors has SHA-256 {actual[:12]}..., model.json records "
                f"{m.safetensors_sha256[:12]}...: the file changed or was corrupted after it was written")
    model = _model(m.model, str(jpath))
    _check_tensors(model, state, m.tensors, where)
    model.load_state_dict(state)
    model.to(device)
    truth = None
    if m.head_truth is not None:
        from ..circuits.truth import HeadTruth

        try:
            truth = HeadTruth.from_dict(m.head_truth)
        except ModcircuitError as e:
            raise ModcircuitError(f"{str(jpath)!r}: head_truth: {e}") from None
        model.head_truth = truth
    return Run(
        model=model, task_name=m.task.name, task_options=m.task.options, seed=m.seed, regime=m.regime,
        hyperparameters=m.hyperparameters, metrics=m.metrics, history=m.history, timings=m.timings, path=run_dir,
        head_truth=truth, head_truth_reason=m.head_truth_reason,
    )


def _model(config: dict, source: str):
    try:
        return model_from_config(config)
    except ModcircuitError as e:
        raise ModcircuitError(f"{source}: model: {e}") from None
    except KeyError as e:
        raise ModcircuitError(f"{source} lacks model field {e}") from None
    except (TypeError, ValueError, IndexError, AttributeError) as e:
        raise ModcircuitError(f"{source}: model config is not valid: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _check_tensors(model, state: dict, declared: dict, where: str) -> None:
    """The file's tensors, model.json's list and the architecture name the same tensors with the same
    shapes, and every weight is finite."""
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    for name, shape in expected.items():
        if name not in state:
            raise ModcircuitError(f"{where}: tensor {name!r} missing from model.safetensors")
        if name not in declared:
            raise ModcircuitError(f"{where}: model.json does not list tensor {name!r}")
        if list(state[name].shape) != shape or declared[name] != shape:
            raise ModcircuitError(
                f"{where}: tensor {name!r} has shape {list(state[name].shape)}, "
                f"model.json says {declared[name]} and the architecture needs {shape}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ModcircuitError(f"{where}: unexpected tensor {extra[0]!r} in model.safetensors")
    extra = sorted(set(declared) - set(expected))
    if extra:
        raise ModcircuitError(f"{where}: model.json lists tensor {extra[0]!r}, which the architecture does not have")
    for name, t in state.items():
        _check_finite(name, t, where)
