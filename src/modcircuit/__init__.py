"""modcircuit: train modular networks (BIMT and baselines), discover their circuits, measure both."""
import torch as _torch

from .errors import ModcircuitError
from .nn.mlp import MLP
from .tasks import Task, get_task, task_names
from .train import REGIMES, Run, TrainConfig, connection_cost, load, train

# Weight penalties push weights into denormal floats, which slows CPU math several-fold.
_torch.set_flush_denormal(True)

# Later pipeline stages load on first use, so `import modcircuit` stays light (no plotly, duckdb, ray).
_LAZY = {
    "discover": "circuits", "evaluate": "circuits", "Circuit": "circuits", "load_circuit": "circuits",
    "draw": "viz", "interactive": "viz",
    "to_transformer_lens": "export", "from_transformer_lens": "export",
    "GeometricTransformer": "nn.transformer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'modcircuit' has no attribute {name!r}")


__all__ = ["ModcircuitError", "MLP", "Task", "get_task", "task_names", "REGIMES", "Run", "TrainConfig",
           "connection_cost", "load", "train", *_LAZY]
__version__ = "0.1.0"
