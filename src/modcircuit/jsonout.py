"""The one JSON writer of every `--json` output: strict JSON, with NaN and infinities written as null.

Python's json writes NaN as the bare word NaN, which no strict JSON parser reads; a metric that is not
defined (a faithfulness whose normaliser is zero, a score of a diverged model) is `null` instead.
"""
from __future__ import annotations

import json
import math
from pathlib import PurePath


def jsonable(obj):
    """obj with non-finite floats as None, numpy/torch scalars and arrays as Python numbers and lists,
    paths as strings, tuples and sets as lists; anything else unknown as its str()."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy and torch scalars and arrays
        return jsonable(obj.tolist())
    return str(obj)


def dumps(obj, **kwargs) -> str:
    return json.dumps(jsonable(obj), allow_nan=False, **kwargs)
