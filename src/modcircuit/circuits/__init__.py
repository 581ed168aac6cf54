"""Circuits: the graph of an MLP, patching, discovery methods, metrics, circuit files."""
from ..nn.fingerprint import model_fingerprint
from .circuit import Circuit, load_circuit
from .discover import discover
from .graph import Graph
from .methods import MethodResult, describe_methods, method_names, register_method
from .mib import load_mib
from .metrics import evaluate, faithfulness_curve, roc
from .patching import METRICS, PatchContext

__all__ = ["Circuit", "load_circuit", "discover", "evaluate", "Graph", "MethodResult", "register_method",
           "method_names", "describe_methods", "faithfulness_curve", "roc", "METRICS", "PatchContext",
           "model_fingerprint", "load_mib"]
