"""CEL list and set functions that cel-expr-python lacks: Kubernetes' lists library, cel-go's lists and sets
extensions, and the internal `__celvern_list_*` targets of calls the rewriter reroutes.

The C++ runtime ships neither the cel-go `ext.Lists()`/`ext.Sets()` extensions nor Kubernetes' lists library
(k8s.io/apiserver/pkg/cel/library/lists.go), yet Kubernetes and Kyverno policies use them. Element
comparisons follow CEL, not Python: `1 == 1.0 == 1u` but `true != 1`, NaN equals nothing, and ordering is
only defined within one kind of value. Two runtime limits shape this module: an impl receives `1u` as a plain
int, and a function declared to return `dyn` cannot hand timestamps or durations back (the runtime raises
instead of returning an error), so such results are refused with a clear error.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from engine.cel.libraries import Library, cel, cel_type_name

MAX_RANGE = 100_000
"""Largest `lists.range(n)`, so that no expression can allocate an unbounded list."""

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

_T = TypeVar("_T")


def equality_key(value: Any) -> Hashable:
    """A hashable key such that two values have equal keys exactly when they are equal in CEL."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        if value != value:  # NaN equals nothing, not even itself
            return ("nan", object())
        return ("number", value)  # 1 == 1.0 in Python, with equal hashes, as in CEL
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", bytes(value))
    if value is None:
        return ("null",)
    if isinstance(value, datetime.datetime):
        return ("timestamp", value)
    if isinstance(value, datetime.timedelta):
        return ("duration", value)
    if isinstance(value, list):
        return ("list", tuple(equality_key(item) for item in value))
    if isinstance(value, dict):
        return ("map", frozenset((equality_key(k), equality_key(v)) for k, v in value.items()))
    return ("object", id(value))


def cel_equal(left: Any, right: Any) -> bool:
    """CEL's `==` on plain values (heterogeneous numbers, bool apart from int, NaN unequal)."""
    return equality_key(left) == equality_key(right)


def _order_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, datetime.timedelta):
        return "duration"
    return None


def cel_compare(left: Any, right: Any, function: str) -> int:
    """-1, 0 or 1 as CEL's `<` orders values; ValueError for values CEL cannot order against each other."""
    kind = _order_kind(left)
    if kind is None or kind != _order_kind(right):
        raise ValueError(f"{function}: cannot compare {cel_type_name(left)} with {cel_type_name(right)}")
    a, b = (bytes(left), bytes(right)) if kind == "bytes" else (left, right)
    return (a > b) - (a < b)


def returnable(value: _T, function: str) -> _T:
    """`value`, or a clear error if it holds timestamps or durations (which a dyn result cannot carry).

    Only lists are searched: maps inside them are usually whole Kubernetes objects (containers, volumes), which
    cannot hold timestamps, and walking them cost more than the function itself; a timestamp inside a map still
    gives an error, in the runtime's own words."""
    if isinstance(value, (datetime.datetime, datetime.timedelta)):
        raise ValueError(f"{function}: lists of timestamps or durations are not supported")
    if isinstance(value, list):
        for item in value:
            if isinstance(item, (list, datetime.datetime, datetime.timedelta)):
                returnable(item, function)
    return value


def _is_sorted(items: list[Any]) -> bool:
    return all(cel_compare(items[i - 1], items[i], "isSorted") <= 0 for i in range(1, len(items)))


def _check_int(total: int, unsigned: bool) -> int:
    if unsigned and not 0 <= total <= _UINT64_MAX:
        raise ValueError("unsigned integer overflow")
    if not unsigned and not _INT64_MIN <= total <= _INT64_MAX:
        raise ValueError("integer overflow")
    return total


def _sum(items: list[Any]) -> int | float:
    if not items:
        return 0
    names = {cel_type_name(item) for item in items}
    if names == {"int"}:
        unsigned = any(item > _INT64_MAX for item in items)  # only a uint can be that large
        total = 0
        for item in items:
            total = _check_int(total + item, unsigned)
        return total
    if names == {"double"}:
        result = 0.0
        for item in items:
            result += item
        return result
    if names == {"google.protobuf.Duration"}:
        raise ValueError("sum: lists of durations are not supported")
    raise ValueError("sum: list elements must all be int, uint or double of one type, got " + ", ".join(sorted(names)))


def _extreme(items: list[Any], name: str, prefer: int) -> Any:
    if not items:
        raise ValueError(f"{name} called on empty list")
    result = items[0]
    if _order_kind(result) is None:
        raise ValueError(f"{name}: {cel_type_name(result)} values cannot be ordered")
    for item in items[1:]:
        if cel_compare(item, result, name) == prefer:
            result = item
    return returnable(result, name)


def _min(items: list[Any]) -> Any:
    return _extreme(items, "min", -1)


def _max(items: list[Any]) -> Any:
    return _extreme(items, "max", 1)


def _index_of(items: list[Any], value: Any) -> int:
    key = equality_key(value)
    return next((i for i, item in enumerate(items) if equality_key(item) == key), -1)


def _last_index_of(items: list[Any], value: Any) -> int:
    key = equality_key(value)
    return next((i for i in range(len(items) - 1, -1, -1) if equality_key(items[i]) == key), -1)


def _reverse(items: list[Any]) -> list[Any]:
    return returnable(items[::-1], "reverse")


def _flatten_into(out: list[Any], items: list[Any], depth: int) -> None:
    for item in items:
        if isinstance(item, list) and depth > 0:
            _flatten_into(out, item, depth - 1)
        else:
            out.append(item)


def _flatten_depth(items: list[Any], depth: int) -> list[Any]:
    if depth < 0:
        raise ValueError("level must be non-negative")
    out: list[Any] = []
    _flatten_into(out, items, depth)
    return returnable(out, "flatten")


def _flatten(items: list[Any]) -> list[Any]:
    return _flatten_depth(items, 1)


def _distinct(items: list[Any]) -> list[Any]:
    seen: set[Hashable] = set()
    out: list[Any] = []
    for item in items:
        key = equality_key(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return returnable(out, "distinct")


def _slice(items: list[Any], start: int, end: int) -> list[Any]:
    if start < 0 or end < 0:
        raise ValueError(f"cannot slice({start}, {end}), negative indexes not supported")
    if start > end:
        raise ValueError(f"cannot slice({start}, {end}), start index must be less than or equal to end index")
    if len(items) < end:
        raise ValueError(f"cannot slice({start}, {end}), list is length {len(items)}")
    return returnable(items[start:end], "slice")


def _sort(items: list[Any]) -> list[Any]:
    if not items:
        return []
    first = cel_type_name(items[0])
    if any(cel_type_name(item) != first for item in items):
        raise ValueError("list elements must have the same type")
    if _order_kind(items[0]) is None:
        raise ValueError(f"sort: {first} values cannot be ordered")
    key: Callable[[Any], Any] = (lambda item: bytes(item)) if first == "bytes" else (lambda item: item)
    return returnable(sorted(items, key=key), "sort")


def _range(count: int) -> list[int]:
    if count > MAX_RANGE:
        raise ValueError(f"lists.range: {count} exceeds the limit of {MAX_RANGE} elements")
    return list(range(max(count, 0)))


def _keys(items: list[Any]) -> set[Hashable]:
    return {equality_key(item) for item in items}


def _sets_contains(items: list[Any], sublist: list[Any]) -> bool:
    keys = _keys(items)
    return all(equality_key(item) in keys for item in sublist)


def _sets_equivalent(left: list[Any], right: list[Any]) -> bool:
    return _sets_contains(left, right) and _sets_contains(right, left)


def _sets_intersects(left: list[Any], right: list[Any]) -> bool:
    keys = _keys(left)
    return any(equality_key(item) in keys for item in right)


_D = cel.Type.DYN
_L = cel.Type.List(_D)
_INT = cel.Type.INT
_BOOL = cel.Type.BOOL

VALUE_TYPES: dict[str, Any] = {
    "string": cel.Type.STRING,
    "int": cel.Type.INT,
    "uint": cel.Type.UINT,
    "double": cel.Type.DOUBLE,
    "bool": cel.Type.BOOL,
    "bytes": cel.Type.BYTES,
    "null": cel.Type.NULL,
    "timestamp": cel.Type.TIMESTAMP,
    "duration": cel.Type.DURATION,
    "list": _L,
    "map": cel.Type.Map(_D, _D),
}
"""One parameter type per kind of CEL value: `dyn` parameters do not dispatch lists and maps at runtime."""


def _member(overload_id: str, result: Any, params: list[Any], impl: Any) -> Any:
    return cel.Overload(overload_id, result, params, is_member=True, impl=impl)


def _per_value_type(name: str, prefix: str, impl: Callable[[list[Any], Any], int]) -> Any:
    return cel.FunctionDecl(
        name,
        [cel.Overload(f"{prefix}_{kind}", _INT, [_L, param], impl=impl) for kind, param in VALUE_TYPES.items()],
    )


LIBRARY = Library(
    "kubernetes.lists",
    (
        cel.FunctionDecl("isSorted", [_member("list_is_sorted", _BOOL, [_L], _is_sorted)]),
        cel.FunctionDecl("sum", [_member("list_sum", _D, [_L], _sum)]),
        cel.FunctionDecl("min", [_member("list_min", _D, [_L], _min)]),
        cel.FunctionDecl("max", [_member("list_max", _D, [_L], _max)]),
        _per_value_type("__celvern_list_indexOf", "celvern_list_index_of", _index_of),
        _per_value_type("__celvern_list_lastIndexOf", "celvern_list_last_index_of", _last_index_of),
        cel.FunctionDecl("__celvern_list_reverse", [cel.Overload("celvern_list_reverse", _L, [_L], impl=_reverse)]),
        cel.FunctionDecl(
            "flatten",
            [
                _member("list_flatten", _L, [_L], _flatten),
                _member("list_flatten_int", _L, [_L, _INT], _flatten_depth),
            ],
        ),
        cel.FunctionDecl("distinct", [_member("list_distinct", _L, [_L], _distinct)]),
        cel.FunctionDecl("slice", [_member("list_slice", _L, [_L, _INT, _INT], _slice)]),
        cel.FunctionDecl("sort", [_member("list_sort", _L, [_L], _sort)]),
        cel.FunctionDecl("lists.range", [cel.Overload("lists_range", cel.Type.List(_INT), [_INT], impl=_range)]),
        cel.FunctionDecl(
            "sets.contains", [cel.Overload("list_sets_contains_list", _BOOL, [_L, _L], impl=_sets_contains)]
        ),
        cel.FunctionDecl(
            "sets.equivalent",
            [cel.Overload("list_sets_equivalent_list", _BOOL, [_L, _L], impl=_sets_equivalent)],
        ),
        cel.FunctionDecl(
            "sets.intersects",
            [cel.Overload("list_sets_intersects_list", _BOOL, [_L, _L], impl=_sets_intersects)],
        ),
    ),
)
"""List and set functions. `sortBy` is a macro (it needs the parser) and is not provided here."""
