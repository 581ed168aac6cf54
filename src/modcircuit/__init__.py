"""modcircuit: train modular networks (BIMT and baselines), discover their circuits, measure both."""
import torch as _torch

from .errors import ModcircuitError
from .nn.mlp import MLP
from .tasks import Task, get_task, task_names
from .train import REGIMES, Run, TrainConfig, connection_cost, load, train

# Weight penalties push weights into denormal floats, which slows CPU math several-fold.
_torch.set_flush_denormal(True)

__all__ = ["ModcircuitError", "MLP", "Task", "get_task", "task_names", "REGIMES", "Run", "TrainConfig",
           "connection_cost", "load", "train"]
__version__ = "0.1.0"
