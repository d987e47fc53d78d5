"""Function libraries that make cel-expr-python speak Kubernetes' and Kyverno's CEL dialect.

Each module here declares one family of functions (as Kyverno keeps one `lib.go` per library) and exposes
a module-level `LIBRARY: Library`. The environment registers every library's declarations once.

Conventions shared by every library:
- Function implementations receive plain Python values (dict, list, str, int, float, bool, None, bytes,
  datetime, timedelta) and must return plain values; a raised exception becomes a CEL error value whose
  message is the exception's text, so raise `ValueError` with a message a policy author can act on.
- Values of Kubernetes' opaque types (quantity, ip, cidr, url, semver, image, ...) are represented as maps
  carrying the reserved key `OPAQUE_TYPE_KEY` (see `opaque`), so they survive the trip through the C++
  runtime and compare equal when their canonical forms are equal.
- Functions that the C++ runtime already declares (`indexOf`, `reverse`, `string`, `orValue`, ...) cannot
  get new overloads; `engine.cel.rewriting` routes such calls to internal functions named `__celvern_*`.
- A function that needs per-request data (cluster lookups, HTTP mocks, the clock) reads it from
  `engine.cel.services.current()`, never from a global.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel

OPAQUE_TYPE_KEY = "@celvern.type"
"""Reserved map key that marks a map as a value of an opaque library type (its value names the type)."""


@dataclass(frozen=True, slots=True)
class Library:
    """A named set of CEL function declarations with their Python implementations."""

    name: str
    functions: tuple[Any, ...]  # tuple[cel.FunctionDecl, ...]; cel-expr-python ships no usable stubs


def opaque(type_name: str, **fields: Any) -> dict[str, Any]:
    """Build the map that stands for a value of an opaque library type."""
    return {OPAQUE_TYPE_KEY: type_name, **fields}


def opaque_type(value: Any) -> str | None:
    """Name of the opaque type `value` stands for, or None for ordinary values."""
    if isinstance(value, dict):
        name = value.get(OPAQUE_TYPE_KEY)
        if isinstance(name, str):
            return name
    return None


def cel_type_name(value: Any) -> str:
    """The CEL type name of a plain value, as error messages spell it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if value is None:
        return "null_type"
    if isinstance(value, datetime.datetime):
        return "google.protobuf.Timestamp"
    if isinstance(value, datetime.timedelta):
        return "google.protobuf.Duration"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return opaque_type(value) or "map"
    return type(value).__name__


__all__ = ["OPAQUE_TYPE_KEY", "Library", "cel", "cel_type_name", "opaque", "opaque_type"]


def ordered(value: Any) -> Any:
    """`value` with every map's keys sorted: the runtime hands maps back in an order that varies from one
    evaluation to the next, and generated or mutated objects must come out the same every time."""
    if isinstance(value, dict):
        try:
            keys = sorted(value)
        except TypeError:  # keys of different types (CEL allows int, uint, bool and string keys in one map)
            keys = sorted(value, key=lambda key: (type(key).__name__, str(key)))
        return {key: ordered(value[key]) for key in keys}
    if isinstance(value, list):
        return [ordered(item) for item in value]
    return value
