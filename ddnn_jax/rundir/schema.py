"""Types checked when a record is read: a record whose fields have the wrong types (a string where
a list of numbers belongs) is refused in one line at reading, instead of failing with a KeyError
or a TypeError in whatever stage uses the field later, and ``ddnn check`` reports it damaged."""

from __future__ import annotations

import functools
import re
import types
import typing
from pathlib import Path
from typing import Any, NotRequired, TypeVar, Union

from ddnn_jax.common.errors import UsageError

Record = TypeVar("Record")


def build(cls: type[Record], value: Any, what: str, path: Path, remedy: str) -> Record:
    """The dataclass ``cls`` of a JSON value read from ``path``, or a UsageError naming the
    first problem: not an object, a field of the wrong type, a field missing or unknown."""
    problem = wrong_field(cls, value) if isinstance(value, dict) else "not a JSON object"
    if problem is None:
        try:
            return cls(**value)
        except TypeError as err:
            problem = str(err)
    raise UsageError(f"{path} is not a {what} ({problem}): {remedy}")


def wrong_field(cls: type, value: dict[str, Any]) -> str | None:
    """The first field of ``value`` whose JSON value does not fit its annotation in ``cls`` (a
    dataclass or a TypedDict), as 'FIELD: expected TYPE', or None when every field fits (missing
    and unknown fields are left to the caller)."""
    for name, hint in _hints(cls).items():
        if name in value and not _fits(value[name], hint):
            return f"{name}: expected {_name(hint)}"
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # NotRequired[...] already unwrapped


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value (dict, list, str, int, float, bool, None) fits a type annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is NotRequired:
        return _fits(value, args[0])
    if typing.is_typeddict(hint):
        return isinstance(value, dict) and wrong_field(hint, value) is None
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict:
        key, item = args if args else (Any, Any)
        return isinstance(value, dict) and all(_fits(k, key) and _fits(v, item) for k, v in value.items())
    return isinstance(value, origin or hint)


def _name(hint: Any) -> str:
    plain = typing.get_origin(hint) is None and hasattr(hint, "__name__")
    return hint.__name__ if plain else re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(hint))  # no module paths
