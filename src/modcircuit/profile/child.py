"""Entry point of the fresh process that trains one model for the memory profile: child JOB.json RESULT.json."""
import sys

from .core import _child_main

if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
