"""Entry point of the fresh process that trains one model for the memory profile: child JOB.json RESULT.json."""
import sys

from ..lifeline import die_with_parent_env

die_with_parent_env()  # first: a killed study or profile must not leave this process training

from .core import _child_main  # noqa: E402

if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
