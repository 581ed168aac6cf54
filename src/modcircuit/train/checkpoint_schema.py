"""What model.json must hold (pydantic, strict JSON types), checked before any tensor is read.

Versions: 1 (before the file hash) and 2 (adds `safetensors_sha256`, the SHA-256 of model.safetensors,
required). Version-1 checkpoints, e.g. inside older study results files, still load: their tensors are
checked (shapes, finite values) but there is no hash to verify. Keys this schema does not know are
ignored, so a later version can add fields without breaking older readers' error messages."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ModcircuitError, choice_error
from ..schema import HEX64

FORMAT = "modcircuit-checkpoint"
VERSION = 2
VERSIONS = (1, 2)


def regime_names() -> tuple[str, ...]:
    from . import REGIMES  # whatever the train package exports as its regimes (a tuple or a registry)

    return tuple(REGIMES)


class TaskRecord(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0


class CheckpointMeta(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    format: Literal["modcircuit-checkpoint"]
    version: Literal[1, 2]
    model: dict[str, Any]
    task: TaskRecord
    regime: str
    seed: int
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, Any] = Field(default_factory=dict)
    history: list[Any] = Field(default_factory=list)
    tensors: dict[str, list[int]]
    safetensors_sha256: str | None = Field(None, pattern=HEX64)
    # a transformer task's known circuit read off this model (circuits.truth.HeadTruth.to_dict), when the task has one
    head_truth: dict[str, Any] | None = None
    head_truth_reason: str = ""

    @field_validator("regime")
    @classmethod
    def _known_regime(cls, v):
        if v not in regime_names():
            raise choice_error("regime", v, regime_names())
        return v

    @model_validator(mode="after")
    def _hash_for_version(self):
        if self.version >= 2 and self.safetensors_sha256 is None:
            raise ModcircuitError("version-2 checkpoints record safetensors_sha256 (the SHA-256 of model.safetensors)")
        return self


def check_version(meta: dict, source: str) -> None:
    """A clear line for a file from a newer modcircuit, before its fields are judged by this version's schema."""
    v = meta.get("version")
    if type(v) is not int or v not in VERSIONS:
        raise ModcircuitError(f"{source}: unknown checkpoint version {v!r}; allowed: "
                              f"{', '.join(map(str, VERSIONS))} (written by a newer modcircuit?)")
