"""modcircuit: train modular networks (BIMT and baselines), discover their circuits, measure both."""
from .errors import ModcircuitError
from .nn.mlp import MLP
from .tasks import Task, get_task, task_names

__all__ = ["ModcircuitError", "MLP", "Task", "get_task", "task_names"]
__version__ = "0.1.0"
