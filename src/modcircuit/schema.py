"""Validate a parsed JSON file (model.json, a circuit file) against its pydantic schema. The first problem
becomes one ModcircuitError line naming the file, the field (as `edges[3].kept`) and what is allowed."""
from __future__ import annotations

import types
import typing

from pydantic import BaseModel, ValidationError

from .errors import ModcircuitError

HEX64 = r"^[0-9a-f]{64}$"  # a SHA-256 digest as lowercase hex
_EXPECTED = {"bool_type": "true or false", "int_type": "an integer", "float_type": "a number",
             "string_type": "a string", "dict_type": "a JSON object", "list_type": "a list",
             "finite_number": "a finite number"}  # pydantic's error types, in JSON words


def validate(schema: type[BaseModel], data: dict, source: str) -> BaseModel:
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise ModcircuitError(describe(e, schema, source)) from None


def field_path(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def describe(e: ValidationError, schema: type[BaseModel], source: str) -> str:
    err = e.errors()[0]
    where = field_path(err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ModcircuitError):  # a validator's own one-line message (e.g. a choice_error)
        return f"{source}: {where}: {cause}" if err["loc"] else f"{source}: {cause}"
    if err["type"] == "missing":
        return f"{source}: required field {where!r} is missing"
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(schema, err["loc"][:-1])
        return f"{source}: unknown field {where!r}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if err["type"] in _EXPECTED:
        msg = f"expected {_EXPECTED[err['type']]}"
    elif err["type"] == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == HEX64:
        msg = "expected 64 lowercase hex digits (a SHA-256)"
    else:
        msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
    return f"{source}: {where}={_short(err.get('input'))} is not allowed; {msg}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_at(schema, loc) -> list[str]:
    """The field names of the (nested) schema at `loc`, best effort (list items and optionals unwrapped)."""
    t = schema
    for part in loc:
        while typing.get_origin(t) in (list, typing.Union, types.UnionType):
            t = next(a for a in typing.get_args(t) if a is not type(None))
        if isinstance(part, int):
            continue
        if not (isinstance(t, type) and issubclass(t, BaseModel)) or part not in t.model_fields:
            return []
        t = t.model_fields[part].annotation
    return sorted(t.model_fields) if isinstance(t, type) and issubclass(t, BaseModel) else []
