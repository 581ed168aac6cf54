"""Task families; importing this package registers them all."""
from .base import ABLATIONS, Task, get_task, parse_task_options, register_task, task_names, task_option_defaults
from . import algebraic, classic, induction, mnist, planted, sequence, symbolic  # noqa: F401  (registration)
from ..rasp import task as _tracr_task  # noqa: F401,E402  (registration of `tracr`; tracr itself loads on use)

__all__ = ["Task", "get_task", "register_task", "task_names", "task_option_defaults", "parse_task_options",
           "ABLATIONS"]
