"""Internal functions behind celvern's rewrite of cel-go's two-variable comprehensions.

cel-expr-python 0.1.3 has no `transformMap`/`transformMapEntry` macros and CEL itself cannot build a map
inside a comprehension, so `engine.cel.rewriting` turns `e.transformMap(k, v, expr)` into a list of
single-entry maps and hands it to `__celvern_merge_entries`, which merges them into one map (as cel-go's
`@mapInsert` does). The names are reserved for the rewriter: policies never call them directly.
"""

from __future__ import annotations

from typing import Any, Final

from engine.cel.libraries import Library, cel

MERGE_ENTRIES: Final = "__celvern_merge_entries"
"""`__celvern_merge_entries(list(map)) -> map`: merge maps, raising on a key seen twice."""


def merge_entries(entries: list[Any]) -> dict[Any, Any]:
    """Merge a list of maps into one map; a duplicate key is an error, like cel-go's map insertion."""
    merged: dict[Any, Any] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"transformMapEntry expression must return a map, got {type(entry).__name__}: {entry!r}")
        for key, value in entry.items():
            if key in merged:
                raise ValueError(f"insert failed: key {key!r} already exists")
            merged[key] = value
    return merged


LIBRARY: Final = Library(
    "comprehensions",
    (
        cel.FunctionDecl(
            MERGE_ENTRIES,
            [
                cel.Overload(
                    "__celvern_merge_entries_list",
                    cel.Type.Map(cel.Type.DYN, cel.Type.DYN),
                    [cel.Type.List(cel.Type.DYN)],
                    impl=merge_entries,
                )
            ],
        ),
    ),
)

__all__ = ["LIBRARY", "MERGE_ENTRIES", "merge_entries"]
