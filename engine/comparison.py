"""Comparing an expected resource with an actual one, the way `kyverno test` does.

`kyverno test` checks `patchedResources` and `generatedResource` files against what the engine produced
(`cmd/cli/kubectl-kyverno/commands/test/compare.go` -> `resource/compare.go`, `tidy.go`, `labels.go`):

1. Labels are fixed up on **both** sides (`FixupGenerateLabels`): every `generate.kyverno.io/*` label is dropped
   and `app.kubernetes.io/managed-by: kyverno` is added. The spec summary calls this "forced", but Kyverno
   builds the new label map starting from `managed-by: kyverno` and then copies the resource's own labels over
   it, so a resource that already has `app.kubernetes.io/managed-by` keeps its own value. We do exactly that:
   the label is a default, not an override. A missing label therefore matches `kyverno`, while two different
   explicit values (`helm` vs `kyverno`) still differ.
2. Both sides are tidied: nulls, empty maps and empty lists are dropped recursively (`tidy`).
3. They are equal iff the JSON merge patch between them is `{}`, i.e. deep JSON equality: numbers compare by
   value (1 == 1.0), booleans are not numbers, lists compare element by element in order.

YAML timestamps that the YAML loader turned into `datetime` values compare equal to the same instant written
as an RFC 3339 string, since Kyverno compares JSON, where both are strings.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

import orjson

__all__ = ["GENERATE_LABEL_PREFIX", "MANAGED_BY_LABEL", "normalize_labels", "resource_diff", "same_resource", "tidy"]

GENERATE_LABEL_PREFIX: Final = "generate.kyverno.io/"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
_MANAGED_BY_KYVERNO: Final = "kyverno"


def tidy(value: Any) -> Any:
    """`value` without nulls, empty maps and empty lists, recursively; None when nothing is left.

    As Kyverno's `tidy`, list elements that tidy away are dropped too (`[null, 1]` becomes `[1]`).
    """
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            item = tidy(item)
            if item is not None:
                out[key] = item
        return out or None
    if isinstance(value, list | tuple):
        items = [tidied for tidied in (tidy(item) for item in value) if tidied is not None]
        return items or None
    return value


def normalize_labels(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `resource` with Kyverno's label fix-up: `generate.kyverno.io/*` dropped, managed-by defaulted."""
    metadata = resource.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
    labels = metadata.get("labels")
    fixed: dict[str, Any] = {MANAGED_BY_LABEL: _MANAGED_BY_KYVERNO}
    if isinstance(labels, Mapping):
        fixed.update((key, value) for key, value in labels.items() if not str(key).startswith(GENERATE_LABEL_PREFIX))
    metadata["labels"] = fixed
    return {**resource, "metadata": metadata}


def _prepared(resource: Mapping[str, Any]) -> Any:
    return tidy(normalize_labels(resource))


def same_resource(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """Whether `kyverno test` would consider `actual` to match the `expected` resource."""
    return _equal(_prepared(expected), _prepared(actual))


def resource_diff(expected: Mapping[str, Any], actual: Mapping[str, Any], *, limit: int = 5) -> str:
    """A short description of the first differences (one per line), or "" when the resources match."""
    differences: list[str] = []
    _describe(_prepared(expected), _prepared(actual), "", differences, limit + 1)
    if len(differences) > limit:
        return "\n".join([*differences[:limit], "... and more differences"])
    return "\n".join(differences)


def _equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping)
            and len(a) == len(b)
            and all(key in b and _equal(value, b[key]) for key, value in a.items())
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return _scalar_equal(a, b)


def _scalar_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dt.date) or isinstance(b, dt.date):
        return _instant(a) is not None and _instant(a) == _instant(b)
    return type(a) is type(b) and bool(a == b)


def _instant(value: Any) -> dt.datetime | dt.date | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
    return None


def _describe(expected: Any, actual: Any, path: str, out: list[str], limit: int) -> None:
    if len(out) >= limit or _equal(expected, actual):
        return
    where = path or "<root>"
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        for key, value in expected.items():
            if key not in actual:
                out.append(f"{_join(path, key)}: missing, expected {_render(value)}")
            else:
                _describe(value, actual[key], _join(path, key), out, limit)
            if len(out) >= limit:
                return
        for key, value in actual.items():
            if key not in expected:
                out.append(f"{_join(path, key)}: unexpected {_render(value)}")
                if len(out) >= limit:
                    return
        return
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            out.append(f"{where}: expected {len(expected)} items, got {len(actual)}")
        for index, (want, got) in enumerate(zip(expected, actual, strict=False)):
            _describe(want, got, f"{path}[{index}]", out, limit)
            if len(out) >= limit:
                return
        return
    out.append(f"{where}: expected {_render(expected)}, got {_render(actual)}")


def _join(path: str, key: Any) -> str:
    text = str(key)
    if text.replace("-", "_").isidentifier():
        return f"{path}.{text}" if path else text
    return f"{path}[{text!r}]"


def _render(value: Any, width: int = 80) -> str:
    try:
        text = orjson.dumps(value, default=str).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
