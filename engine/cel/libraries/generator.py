"""Kyverno's `generator` library: `generator.Apply(namespace, objects)` queues downstream resources.

A GeneratingPolicy's `generate[].expression` calls `generator.Apply` (or its alias `generator.apply`) and must
return true; the objects are what the policy generates. The call cannot write anywhere itself (evaluation is
pure), so it appends to the collector of the evaluation in progress (`collecting()`), which the engine then
normalises (List expansion, namespaces) and labels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from engine.cel.libraries import Library, cel, ordered


@dataclass(frozen=True, slots=True)
class Generated:
    """One `generator.Apply` call: the target namespace and the objects, as the expression gave them."""

    namespace: str
    objects: tuple[Any, ...]


_collector: ContextVar[list[Generated] | None] = ContextVar("celvern_generated", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[list[Generated]]:
    """Collect the `generator.Apply` calls made inside the block."""
    calls: list[Generated] = []
    token = _collector.set(calls)
    try:
        yield calls
    finally:
        _collector.reset(token)


def _apply(namespace: str, objects: list[Any]) -> bool:
    calls = _collector.get()
    if calls is None:
        raise ValueError("generator.Apply is only available in GeneratingPolicy generate expressions")
    calls.append(Generated(namespace, tuple(ordered(obj) for obj in objects)))  # maps arrive in no fixed order
    return True


_OVERLOADS = [
    ("string_list", [cel.Type.STRING, cel.Type.List(cel.Type.DYN)]),
]

LIBRARY = Library(
    "kyverno.generator",
    tuple(
        cel.FunctionDecl(
            name,
            [
                cel.Overload(f"{name.replace('.', '_')}_{suffix}", cel.Type.BOOL, params, impl=_apply)
                for suffix, params in _OVERLOADS
            ],
        )
        for name in ("generator.Apply", "generator.apply")
    ),
)
