"""Kubernetes' CEL libraries (k8s.io/apiserver/pkg/cel/library) for cel-expr-python, gathered in one place.

Kubernetes and Kyverno policies call quantity, ip/cidr, url, regex, lists/sets, semver and format functions
that Google's C++ runtime does not have. Each family lives in its own module with its own `LIBRARY`;
`LIBRARIES` lists them all for the environment. This module holds what spans families: the comparisons
`isLessThan`/`isGreaterThan`/`compareTo`, whose one declaration must serve both quantities and semvers
(a function name can be declared only once), and `__celvern_string`, the target the rewriter gives
`string(x)` for opaque values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.cel.libraries import (
    Library,
    cel,
    formats,
    lists,
    network,
    opaque_type,
    quantity,
    regex,
    semver,
    url,
)

_COMPARERS: dict[str, Callable[[Any, Any, str], int]] = {
    quantity.TYPE_NAME: quantity.compare,
    semver.TYPE_NAME: semver.compare,
}


def _compare(left: Any, right: Any, function: str) -> int:
    kind = opaque_type(left)
    comparer = _COMPARERS.get(kind or "")
    if comparer is None:
        raise ValueError(f"{function}: expected a quantity or a semver, got {kind or 'map'}")
    if opaque_type(right) != kind:
        raise ValueError(f"{function}: cannot compare {kind} with {opaque_type(right) or 'map'}")
    return comparer(left, right, function)


def _is_less_than(left: dict[str, Any], right: dict[str, Any]) -> bool:
    return _compare(left, right, "isLessThan") < 0


def _is_greater_than(left: dict[str, Any], right: dict[str, Any]) -> bool:
    return _compare(left, right, "isGreaterThan") > 0


def _compare_to(left: dict[str, Any], right: dict[str, Any]) -> int:
    return _compare(left, right, "compareTo")


def _string(value: dict[str, Any]) -> str:
    text = network.to_string(value)
    if text is None:
        raise ValueError(f"string() not supported for {opaque_type(value) or 'map'}")
    return text


_M = cel.Type.Map(cel.Type.DYN, cel.Type.DYN)

LIBRARY = Library(
    "kubernetes",
    (
        cel.FunctionDecl(
            "isLessThan",
            [cel.Overload("opaque_is_less_than", cel.Type.BOOL, [_M, _M], is_member=True, impl=_is_less_than)],
        ),
        cel.FunctionDecl(
            "isGreaterThan",
            [cel.Overload("opaque_is_greater_than", cel.Type.BOOL, [_M, _M], is_member=True, impl=_is_greater_than)],
        ),
        cel.FunctionDecl(
            "compareTo",
            [cel.Overload("opaque_compare_to", cel.Type.INT, [_M, _M], is_member=True, impl=_compare_to)],
        ),
        cel.FunctionDecl(
            "__celvern_string", [cel.Overload("celvern_string_opaque", cel.Type.STRING, [_M], impl=_string)]
        ),
    ),
)

LIBRARIES: tuple[Library, ...] = (
    quantity.LIBRARY,
    network.LIBRARY,
    url.LIBRARY,
    regex.LIBRARY,
    lists.LIBRARY,
    semver.LIBRARY,
    formats.LIBRARY,
    LIBRARY,
)
"""Every Kubernetes library; register all of them (each function name is declared by exactly one)."""

__all__ = ["LIBRARIES", "LIBRARY"]
