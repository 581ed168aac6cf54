"""modcircuit: train modular networks (BIMT and baselines), discover their circuits, measure both.

Every public name loads on first use, so `import modcircuit` (and with it the command line's
`--help` and `--version`) does not import torch; `dir(modcircuit)` lists the public API.
"""
import importlib
import sys
import types
# public name -> the module (relative to this package) that defines it
_LAZY = {
    "ModcircuitError": "errors",
    "MLP": "nn.mlp", "GeometricTransformer": "nn.transformer",
    "Task": "tasks", "get_task": "tasks", "task_names": "tasks", "register_task": "tasks",
    "REGIMES": "train.regimes", "DEFAULT_REGIME": "train.regimes", "connection_cost": "train.regimes",
    "Run": "train.checkpoint", "load": "train.checkpoint", "TrainConfig": "train.config",
    "train": "train.trainer",
    "discover": "circuits", "evaluate": "circuits", "Circuit": "circuits", "load_circuit": "circuits", "load_mib": "circuits",
    "register_method": "circuits", "method_names": "circuits", "TransformerCircuit": "circuits.circuit",
    "HeadTruth": "circuits.truth", "load_head_truth": "circuits.truth_scoring",
    "draw": "viz", "interactive": "viz", "record_training": "viz",
    "run_study": "study", "build_report": "report", "profile_run": "profile",
    "to_transformer_lens": "export", "from_transformer_lens": "export",
    "tracr_model": "rasp",
}
__all__ = sorted(_LAZY)


def _resolve(name: str):
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # ~0.1 s to import: only when asked

    try:
        return version("modcircuit")  # single source: pyproject.toml
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name):
    if name == "__version__":
        globals()[name] = _version()
        return globals()[name]
    if name in _LAZY:
        value = _resolve(name)
        if name != "train":  # see _Package.train
            globals()[name] = value
        return value
    raise AttributeError(f"module 'modcircuit' has no attribute {name!r}")


def __dir__():
    return [*__all__, "__version__"]


class _Package(types.ModuleType):
    """`modcircuit.train` is both a subpackage and the training function. The import system binds the
    subpackage to this attribute when it first loads it; the name keeps meaning the function."""

    @property
    def train(self):
        return self.__dict__.get("_train_override") or _resolve("train")

    @train.setter
    def train(self, value):
        if not isinstance(value, types.ModuleType):  # e.g. a test's monkeypatch
            self.__dict__["_train_override"] = value


sys.modules[__name__].__class__ = _Package
