"""Study files (TOML): tasks x regimes x seeds x methods x thresholds, validated with one-line errors.

    name = "demo"
    tasks = ["two-moons", "symbolic-independence"]
    regimes = ["vanilla", "l1", "bimt"]
    seeds = [0, 1]
    methods = ["acdc", "eap"]
    thresholds = [0.01]          # and/or edge_counts = [20, 50] (top-k circuits)
    [method_selection.eap]       # per-method selections replace the global ones for that method
    edge_counts = [20, 100]      # (score-only methods compare best at matched circuit sizes)
    ablation = "resample"        # resample | zero | mean
    metric = "default"           # the task's default metric, or a metric name discover() accepts
    split_qkv = true             # transformer tasks: q, k and v inputs as separate receivers
    positions = "all"            # transformer tasks: output positions the metric averages over
                                 # ("last" (default), "all" or a list of indices)
    task_fallbacks = {mnist = "digits"}   # use digits when mnist cannot be built (no IDX files)
    control = "permuted-labels"  # classification tasks: each circuit also for true and permuted labels
    control_seed = 0             # (logit-diff metric; see study/control.py)

    [train]                      # TrainConfig overrides for every task
    steps = 3000
    [task_train.digits]          # overrides for one task (win over [train])
    steps = 2000
    [task_options.mnist]         # options passed to get_task
    n_train = 10000
    [profile]
    enabled = true

Each cell of the study is keyed by a hash of its full configuration (the resolved training
config, task options, method settings), so a results store shared between studies never
recomputes a cell it already holds.

`name` is a file stem (letters, digits, '.', '_', '-'; starting with a letter or digit). Relative
`results` and `artifacts` paths resolve against the study file's folder, not the current one, so a
study resumes from wherever it is run. Methods are those of the discovery registry
(`modcircuit.circuits.methods.method_names()`), the same the CLI offers.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..errors import ModcircuitError, choice_error
from ..limits import SEED_MAX

# a study name becomes a file stem (results/<name>.duckdb): no separators, no leading dot
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def study_methods() -> list[str]:
    """The methods a study accepts: the discovery registry's, the single source of truth."""
    from ..circuits.methods import method_names

    return method_names()
AXIS_KEYS = ("regime", "seed")  # set by the study's axes, never in [train]


class ProfileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # train each model in a fresh child process so its peak resident set is that job's alone
    fresh_process: bool = True
    latency_repeats: int = Field(300, ge=5)
    throughput_batch: int = Field(4096, ge=1)
    throughput_repeats: int = Field(20, ge=3)


def _check_thresholds(v):
    for t in v:
        if not math.isfinite(t) or t < 0:
            raise ModcircuitError(f"threshold {t!r} must be a finite number >= 0")
    return _unique("thresholds", v)


def _check_edge_counts(v):
    for k in v:
        if k < 1:
            raise ModcircuitError(f"edge count {k!r} must be >= 1")
    return _unique("edge_counts", v)


class Selection(BaseModel):
    """How one method's circuits are cut: by score threshold and/or as top-k edge counts."""

    model_config = ConfigDict(extra="forbid")

    thresholds: list[float] = Field(default_factory=list)
    edge_counts: list[int] = Field(default_factory=list)

    _thresholds = field_validator("thresholds")(classmethod(lambda cls, v: _check_thresholds(v)))
    _edge_counts = field_validator("edge_counts")(classmethod(lambda cls, v: _check_edge_counts(v)))

    def pairs(self) -> list[tuple[float | None, int | None]]:
        return [(t, None) for t in self.thresholds] + [(None, k) for k in self.edge_counts]


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    tasks: list[str] = Field(min_length=1)
    regimes: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    thresholds: list[float] = Field(default_factory=lambda: [0.01])
    edge_counts: list[int] = Field(default_factory=list)
    method_selection: dict[str, Selection] = Field(default_factory=dict)
    metric: str | None = None
    ablation: str = "resample"
    curves: bool = True
    split_qkv: bool = False
    positions: str | list[int] | None = None
    control: str | None = None
    control_seed: int = Field(0, ge=0, le=SEED_MAX)
    device: str = "cpu"
    train: dict[str, Any] = Field(default_factory=dict)
    task_train: dict[str, dict[str, Any]] = Field(default_factory=dict)
    task_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    task_fallbacks: dict[str, str] = Field(default_factory=dict)
    profile: ProfileSpec = Field(default_factory=ProfileSpec)
    results: str | None = None
    artifacts: str | None = None
    # the study file's folder: relative results/artifacts paths resolve against it (None: the cwd)
    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not NAME_RE.fullmatch(v):
            raise ModcircuitError(f"study name {v!r} is not a safe file name; allowed: {NAME_RULE}")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        from ..tasks import task_names

        for t in v:
            if t not in task_names():
                raise choice_error("task", t, task_names())
        return _unique("tasks", v)

    @field_validator("regimes")
    @classmethod
    def _regimes(cls, v):
        from ..train.regimes import get_regime

        for r in v:
            get_regime(r)  # an unknown name: one line listing the registered regimes
        return _unique("regimes", v)

    @field_validator("positions")
    @classmethod
    def _positions(cls, v):
        if isinstance(v, str) and v not in ("last", "all"):
            raise ModcircuitError(f"positions {v!r} is not allowed; give \"last\", \"all\" or a list of indices")
        if isinstance(v, list) and not v:
            raise ModcircuitError("positions [] chooses no position; give \"last\", \"all\" or indices")
        return None if v == "last" else v  # the default: cells keep the keys they had before positions existed

    @field_validator("control")
    @classmethod
    def _control(cls, v):
        from .control import CONTROLS

        if v in (None, "", "none"):
            return None
        if v not in CONTROLS:
            raise choice_error("control", v, ("none", *CONTROLS))
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        return _unique("seeds", v)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        allowed = study_methods()
        for m in v:
            if m not in allowed:
                raise choice_error("method", m, allowed)
        return _unique("methods", v)

    _thresholds = field_validator("thresholds")(classmethod(lambda cls, v: _check_thresholds(v)))
    _edge_counts = field_validator("edge_counts")(classmethod(lambda cls, v: _check_edge_counts(v)))

    @field_validator("ablation")
    @classmethod
    def _ablation(cls, v):
        from ..circuits.patching import check_ablation

        return check_ablation(v)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v):
        from ..circuits.patching import METRICS

        if v in (None, "", "default"):
            return None
        if v not in METRICS:
            raise choice_error("metric", v, ("default", *METRICS))
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v):
        _check_overrides(v, "[train]")
        return v

    @model_validator(mode="after")
    def _cross(self):
        if self.control and self.positions is not None:
            raise ModcircuitError(f"control {self.control!r} compares labels, one class per example at the last "
                                  f"position; it cannot be combined with positions {self.positions!r}")
        for m, sel in self.method_selection.items():
            if m not in self.methods:
                raise ModcircuitError(f"[method_selection.{m}] names a method that is not in methods; methods: "
                                      f"{', '.join(self.methods)}")
        for m in self.methods:
            if not self.selection(m).pairs():
                raise ModcircuitError(f"method {m!r} has no thresholds or edge_counts to cut its circuits with")
        from ..tasks import task_names

        for table, mapping in (("task_train", self.task_train), ("task_options", self.task_options),
                               ("task_fallbacks", self.task_fallbacks)):
            for t in mapping:
                if t not in self.tasks:
                    raise ModcircuitError(f"[{table}.{t}] names a task that is not in tasks; tasks: {', '.join(self.tasks)}")
        for t, fb in self.task_fallbacks.items():
            if fb not in task_names():
                raise choice_error(f"fallback task for {t}", fb, task_names())
        for t, ov in self.task_train.items():
            _check_overrides(ov, f"[task_train.{t}]")
        return self

    # ---- derived --------------------------------------------------------------------------
    def selection(self, method: str) -> Selection:
        return self.method_selection.get(method) or Selection(thresholds=self.thresholds, edge_counts=self.edge_counts)

    @property
    def base_dir(self) -> Path:
        return self._base_dir if self._base_dir is not None else Path(".")

    def _resolve(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(self.base_dir / p))

    def results_path(self) -> Path:
        return self._resolve(self.results) if self.results else self._resolve(Path("results") / f"{self.name}.duckdb")

    def artifacts_path(self) -> Path:
        if self.artifacts:
            return self._resolve(self.artifacts)
        r = self.results_path()
        return r.with_name(r.stem + "-artifacts")

    def fingerprint(self) -> dict:
        """What the report needs to know about this study: its settings as written (JSON-safe)."""
        return json.loads(json.dumps(self.model_dump(), default=str))


def _unique(what, v):
    seen = set()
    for x in v:
        if x in seen:
            raise ModcircuitError(f"{what} lists {x!r} twice")
        seen.add(x)
    return v


def _check_overrides(overrides: dict, where: str) -> None:
    from ..train.config import make_config

    for k in AXIS_KEYS:
        if k in overrides:
            raise ModcircuitError(f"{where} sets {k!r}, which the study sets from its {k}s list")
    try:
        make_config({}, overrides)
    except ModcircuitError as e:
        raise ModcircuitError(f"{where}: {e}") from None


def _pydantic_error(e: ValidationError, source: str) -> ModcircuitError:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    ctx_err = err.get("ctx", {}).get("error")
    if isinstance(ctx_err, ModcircuitError):
        return ModcircuitError(f"{source}: {ctx_err}")
    if err["type"] == "extra_forbidden":
        parent = {1: StudySpec}.get(len(err["loc"])) or (Selection if err["loc"][0] == "method_selection" else ProfileSpec)
        allowed = ", ".join(sorted(parent.model_fields))
        return ModcircuitError(f"{source}: unknown key {loc!r}; allowed: {allowed}")
    if err["type"] == "missing":
        return ModcircuitError(f"{source}: missing required key {loc!r}")
    if err["type"] == "too_short":
        return ModcircuitError(f"{source}: {loc} is empty; list at least one value")
    msg = err["msg"].removeprefix("Value error, ")
    return ModcircuitError(f"{source}: invalid {loc}={err.get('input')!r}: {msg}")


def parse_spec(data: dict, source: str = "study", base_dir: Path | None = None) -> StudySpec:
    """A validated StudySpec; relative paths in it resolve against `base_dir` (default: the cwd)."""
    try:
        spec = StudySpec(**data)
    except ValidationError as e:
        raise _pydantic_error(e, source) from None
    except ModcircuitError as e:  # raised directly by a model validator
        raise ModcircuitError(f"{source}: {e}") from None
    spec._base_dir = base_dir
    return spec


def load_spec(path) -> StudySpec:
    path = Path(path)
    if not path.is_file():
        raise ModcircuitError(f"study file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ModcircuitError(f"study file {str(path)!r} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ModcircuitError(f"study file {str(path)!r} is not UTF-8 text") from None
    return parse_spec(data, str(path), base_dir=path.parent)


# ---- cells -------------------------------------------------------------------------------
def config_key(cfg: dict) -> str:
    """A stable hash of a configuration: canonical JSON, sha256, 16 hex digits."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class RunCell:
    task: str
    task_options: dict
    regime: str
    seed: int
    overrides: dict  # what the study sets (train + task_train); the full config is in `config`
    config: dict  # the resolved TrainConfig, regime and seed included
    key: str = ""

    def __post_init__(self):
        self.key = self.key or config_key({"kind": "run", "task": self.task, "task_options": self.task_options,
                                           "train": self.config})

    def label(self) -> str:
        return f"{self.task}/{self.regime}/seed {self.seed}"


@dataclass
class CircuitCell:
    run_key: str
    method: str
    threshold: float | None
    edge_count: int | None
    metric: str | None
    ablation: str
    curves: bool
    split_qkv: bool = False  # transformer tasks only
    positions: str | list[int] | None = None  # transformer tasks only (None: the last position)
    target: str | None = None  # control cells: "labels" or "permuted-labels" (study/control.py); None: the study's
    label_seed: int | None = None  # the permutation's seed (permuted-labels only)
    key: str = ""

    def __post_init__(self):
        cfg = {"kind": "circuit", "run": self.run_key, "method": self.method, "threshold": self.threshold,
               "edge_count": self.edge_count, "metric": self.metric, "ablation": self.ablation, "curves": self.curves}
        if self.split_qkv:  # (absent otherwise, so the keys of studies without it stay as they were)
            cfg["split_qkv"] = True
        if self.positions is not None:  # (likewise: only when set)
            cfg["positions"] = self.positions
        if self.target is not None:  # (likewise)
            cfg["target"], cfg["label_seed"] = self.target, self.label_seed
        self.key = self.key or config_key(cfg)

    def label(self) -> str:
        sel = f"tau={self.threshold:g}" if self.threshold is not None else f"top {self.edge_count}"
        return f"{self.method} {sel}" + (f" [control: {self.target}]" if self.target else "")


@dataclass
class ProfileCell:
    run_key: str
    latency_repeats: int
    throughput_batch: int
    throughput_repeats: int
    device: str
    key: str = ""

    def __post_init__(self):
        self.key = self.key or config_key({"kind": "profile", "run": self.run_key, "latency_repeats": self.latency_repeats,
                                           "throughput_batch": self.throughput_batch,
                                           "throughput_repeats": self.throughput_repeats, "device": self.device})


@dataclass
class Unit:
    """What one worker does: train (or reload) one model, then its pending circuits and profile."""

    study: str
    run: RunCell
    circuits: list[CircuitCell] = field(default_factory=list)
    profile: ProfileCell | None = None
    run_done: bool = False  # the model exists: reload it from `checkpoint` instead of training
    checkpoint: dict[str, bytes] | None = None  # file name -> bytes of the stored checkpoint
    fresh_process: bool = True

    def label(self) -> str:
        return self.run.label()


@dataclass
class Plan:
    spec: StudySpec
    runs: list[RunCell]
    circuits: list[CircuitCell]
    profiles: list[ProfileCell]
    substitutions: dict[str, str]  # task -> fallback used


def resolve_tasks(spec: StudySpec) -> tuple[dict[str, str], dict[str, str]]:
    """task as named -> task actually used (fallbacks applied when a task cannot be built)."""
    from ..tasks import get_task

    used, subs = {}, {}
    for t in spec.tasks:
        if t in spec.task_fallbacks:
            try:
                get_task(t, seed=spec.seeds[0], **spec.task_options.get(t, {}))
                used[t] = t
            except ModcircuitError:
                used[t] = spec.task_fallbacks[t]
                subs[t] = spec.task_fallbacks[t]
        else:
            used[t] = t
    return used, subs


def check_task_fits(spec: StudySpec, named: str, task, cfg) -> None:
    """What training or discovery would refuse later, refused now: the widths and activation of the
    model (built on the meta device: no memory), methods the task's model type has."""
    import torch

    from ..tasks.sequence import SequenceTask

    where = f"task {named}"
    try:
        with torch.device("meta"):
            task.build_model(cfg.widths, cfg.activation)
    except ModcircuitError as e:
        raise ModcircuitError(f"{where}: {e}") from None
    if isinstance(task, SequenceTask):
        from ..circuits.transformer_graph import METHODS as TRANSFORMER_METHODS

        for m in spec.methods:
            if m not in TRANSFORMER_METHODS:
                raise ModcircuitError(f"{where} trains a transformer, which method {m!r} does not support; "
                                      f"allowed: {', '.join(sorted(TRANSFORMER_METHODS))}")


def plan(spec: StudySpec) -> Plan:
    """Every cell of the study, in a stable order (task, regime, seed; then methods, selections)."""
    from ..circuits.discover import task_metric
    from ..tasks import get_task
    from ..train.config import check_device, make_config

    check_device(spec.device)
    used, subs = resolve_tasks(spec)
    runs, circuits, profiles = [], [], []
    for named in spec.tasks:
        t = used[named]
        opts = dict(spec.task_options.get(named, {})) if t == named else {}
        overrides = {**spec.train, **spec.task_train.get(named, {}), "device": spec.device}
        try:
            task = get_task(t, seed=spec.seeds[0], **opts)
        except TypeError as e:
            raise ModcircuitError(f"[task_options.{named}]: {e}") from None
        defaults = task.defaults
        metric = spec.metric or task_metric(task)  # resolved here so it is part of each circuit cell's key
        from ..tasks.sequence import SequenceTask

        split = spec.split_qkv and isinstance(task, SequenceTask)  # (MLP tasks have no q/k/v)
        positions = spec.positions
        if positions is not None:
            if not isinstance(task, SequenceTask):
                raise ModcircuitError(f"positions {positions!r} apply to transformer tasks; task {named!r} trains an MLP")
            from ..circuits.positions import resolve_positions

            resolve_positions(positions, 1, task.arch["n_ctx"])  # out-of-range indices fail here, before any work
        check_task_fits(spec, named, task, make_config(defaults, {**overrides, "regime": spec.regimes[0]}))
        for regime in spec.regimes:
            for seed in spec.seeds:
                cfg = make_config(defaults, {**overrides, "regime": regime, "seed": seed}).model_dump()
                rc = RunCell(task=t, task_options=opts, regime=regime, seed=seed, overrides=overrides, config=cfg)
                runs.append(rc)
                for m in spec.methods:
                    for thr, k in spec.selection(m).pairs():
                        circuits.append(CircuitCell(rc.key, m, thr, k, metric, spec.ablation, spec.curves, split,
                                                    positions))
                        if spec.control and task.kind == "classification":  # (regression has no classes)
                            from .control import CONTROL_METRIC, TARGETS

                            circuits += [CircuitCell(rc.key, m, thr, k, CONTROL_METRIC, spec.ablation, spec.curves,
                                                     split, positions, target,
                                                     spec.control_seed if target == "permuted-labels" else None)
                                         for target in TARGETS]
                if spec.profile.enabled:
                    p = spec.profile
                    profiles.append(ProfileCell(rc.key, p.latency_repeats, p.throughput_batch, p.throughput_repeats,
                                                spec.device))
    return Plan(spec, runs, circuits, profiles, subs)
