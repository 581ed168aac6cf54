"""The head-level transformer graph's public names in one place, and `discover_transformer`.

The code lives by concern: the patch context (and circuit_outputs, logit_gap) in transformer_patching.py,
the fast ACDC kernel in transformer_acdc_kernel.py (its per-candidate forward pass in transformer_acdc_tail.py),
the methods in methods/ beside the MLP ones (transformer_acdc.py, transformer_eap.py, magnitude.py, random.py,
probing.py), registered for the "transformer" graph kind. `discover` runs them all through one path (kinds.py).
"""
from __future__ import annotations

import torch

from ..errors import ModcircuitError
from ..nn.transformer import GeometricTransformer
from .circuit import TransformerCircuit
from .graph import TransformerGraph
from .methods import MethodResult, get_method, method_names
from .methods.eap import _objective
from .methods.magnitude import weight_magnitudes
from .methods.transformer_acdc import acdc_fast, acdc_plain
from .methods.transformer_eap import eap_signed
from .transformer_patching import (
    ABLATIONS, METRICS, TransformerPatchContext, circuit_outputs, divergence, logit_gap,
)

METHODS = {name: get_method(name, "transformer") for name in method_names("transformer")}


def discover_transformer(model, data, corrupt=None, *, method: str = "acdc", threshold: float = 0.01,
                         metric: str | None = None, ablation: str = "resample", split_qkv: bool = False,
                         top_k: int | None = None, split: str = "test", n: int | None = None,
                         seed: int | None = None, dtype: torch.dtype = torch.float64,
                         **options) -> TransformerCircuit:
    """`discover` for a GeometricTransformer on the head-level graph (same arguments; n and seed are
    discover's examples and data_seed)."""
    from .discover import discover

    if not isinstance(model, GeometricTransformer):
        raise ModcircuitError(f"the transformer graph needs a GeometricTransformer, got {type(model).__name__}")
    return discover(model, data, corrupt, method=method, threshold=threshold, metric=metric, ablation=ablation,
                    split_qkv=split_qkv, top_k=top_k, split=split, examples=n, data_seed=seed, dtype=dtype,
                    **options)


__all__ = ["ABLATIONS", "METHODS", "METRICS", "MethodResult", "TransformerGraph", "TransformerPatchContext",
           "acdc_fast", "acdc_plain", "circuit_outputs", "discover_transformer", "divergence", "eap_signed",
           "logit_gap", "weight_magnitudes", "_objective"]
