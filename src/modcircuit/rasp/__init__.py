"""RASP programs compiled by tracr into GeometricTransformers, with their known circuits (the `tracr` task).

Needs the [tracr] extra (tracr-pypi with jax on CPU); everything else in modcircuit works without it.
"""
from .programs import SPECS, program_spec  # noqa: F401
from .task import TracrTask, tracr_model  # noqa: F401

__all__ = ["SPECS", "program_spec", "TracrTask", "tracr_model"]
