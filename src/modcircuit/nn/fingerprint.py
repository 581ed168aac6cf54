"""A model's fingerprint: which weights a circuit was found on, computed from the tensors themselves.

SHA-256 over every entry of `model.state_dict()` (parameters and persistent buffers, e.g. the input and
output permutations) in sorted name order: the line "<name>:<shape>\\n", then the values as little-endian
float64 (floating tensors), int64 (integer tensors) or uint8 (bool). Widening to float64 is exact, so the
fingerprint does not depend on the device or on float32 vs float64 storage: an in-memory model and the
checkpoint it was saved to agree. It identifies the weights, not the code (activations, layouts): two
models with equal tensors share a fingerprint.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def model_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu()
        if t.is_floating_point():
            values = t.to(torch.float64).numpy().astype("<f8", copy=False)
        elif t.dtype == torch.bool:
            values = t.to(torch.uint8).numpy()
        else:
            values = t.to(torch.int64).numpy().astype("<i8", copy=False)
        h.update(f"{name}:{list(t.shape)}\n".encode())
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()
