"""Task families; importing this package registers them all."""
from .base import ABLATIONS, Task, get_task, register_task, task_names
from . import algebraic, classic, mnist, planted, sequence, symbolic  # noqa: F401  (registration)

__all__ = ["Task", "get_task", "register_task", "task_names", "ABLATIONS"]
