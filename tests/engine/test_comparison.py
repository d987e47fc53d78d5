"""Comparing expected and actual resources as `kyverno test` does (engine.comparison)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from engine.comparison import normalize_labels, resource_diff, same_resource, tidy

# (id, value, tidied)
TIDY_CASES: list[tuple[str, Any, Any]] = [
    ("scalar-kept", 1, 1),
    ("false-and-zero-kept", {"a": False, "b": 0, "c": ""}, {"a": False, "b": 0, "c": ""}),
    ("null-dropped", {"a": None, "b": 1}, {"b": 1}),
    ("empty-map-dropped", {"a": {}, "b": 1}, {"b": 1}),
    ("empty-list-dropped", {"a": [], "b": 1}, {"b": 1}),
    ("nested-empties-collapse", {"a": {"b": {"c": None, "d": []}}, "e": 1}, {"e": 1}),
    ("list-elements-tidied", {"a": [None, {}, 1, {"b": None, "c": 2}]}, {"a": [1, {"c": 2}]}),
    ("everything-empty-is-none", {"a": {"b": []}}, None),
    ("top-level-null", None, None),
]


@pytest.mark.parametrize(("value", "expected"), [case[1:] for case in TIDY_CASES], ids=[case[0] for case in TIDY_CASES])
def test_tidy(value: Any, expected: Any) -> None:
    assert tidy(value) == expected


def resource(labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "r", "namespace": "ns"}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, **({"data": spec} if spec else {})}


# (id, expected, actual, same)
COMPARE_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("identical", resource(a="1"), resource(a="1"), True),
    ("value-differs", resource(a="1"), resource(a="2"), False),
    ("extra-field-in-actual", resource(a="1"), resource(a="1", b="2"), False),
    ("missing-field-in-actual", resource(a="1", b="2"), resource(a="1"), False),
    ("null-equals-absent", {**resource(), "spec": {"x": None}}, resource(), True),
    ("empty-map-equals-absent", {**resource(), "status": {}}, resource(), True),
    ("empty-list-equals-absent", {**resource(), "spec": {"items": []}}, resource(), True),
    ("int-equals-float", {**resource(), "spec": {"n": 1}}, {**resource(), "spec": {"n": 1.0}}, True),
    ("bool-is-not-int", {**resource(), "spec": {"n": 1}}, {**resource(), "spec": {"n": True}}, False),
    ("string-is-not-int", {**resource(), "spec": {"n": "1"}}, {**resource(), "spec": {"n": 1}}, False),
    ("list-order-matters", {**resource(), "spec": {"l": [1, 2]}}, {**resource(), "spec": {"l": [2, 1]}}, False),
    (
        "generate-labels-ignored",
        resource({"a": "b"}),
        resource({"a": "b", "generate.kyverno.io/policy-name": "p"}),
        True,
    ),
    (
        "managed-by-kyverno-defaulted",
        resource({"a": "b"}),
        resource({"a": "b", "app.kubernetes.io/managed-by": "kyverno"}),
        True,
    ),
    ("managed-by-other-value-differs", resource(), resource({"app.kubernetes.io/managed-by": "helm"}), False),
    ("other-labels-compared", resource({"a": "b"}), resource({"a": "c"}), False),
    (
        "timestamp-datetime-equals-string",
        {**resource(), "metadata": {"name": "r", "creationTimestamp": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)}},
        {**resource(), "metadata": {"name": "r", "creationTimestamp": "2024-01-02T03:04:05Z"}},
        True,
    ),
    (
        "timestamp-different-instant",
        {**resource(), "metadata": {"name": "r", "creationTimestamp": dt.datetime(2024, 1, 2, tzinfo=dt.UTC)}},
        {**resource(), "metadata": {"name": "r", "creationTimestamp": "2024-01-03T00:00:00Z"}},
        False,
    ),
]


@pytest.mark.parametrize(
    ("expected", "actual", "same"), [case[1:] for case in COMPARE_CASES], ids=[case[0] for case in COMPARE_CASES]
)
def test_same_resource(expected: dict[str, Any], actual: dict[str, Any], same: bool) -> None:
    assert same_resource(expected, actual) is same
    assert same_resource(actual, expected) is same
    assert (resource_diff(expected, actual) == "") is same


def test_normalize_labels_matches_kyverno_fixup() -> None:
    original = resource({"generate.kyverno.io/x": "1", "keep": "me"})
    fixed = normalize_labels(original)
    assert fixed["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kyverno", "keep": "me"}
    assert original["metadata"]["labels"] == {"generate.kyverno.io/x": "1", "keep": "me"}, "input not mutated"
    assert normalize_labels({"kind": "X"})["metadata"] == {"labels": {"app.kubernetes.io/managed-by": "kyverno"}}


# (id, expected, actual, lines of the description)
DIFF_CASES: list[tuple[str, dict[str, Any], dict[str, Any], list[str]]] = [
    ("changed-value", resource(a="1"), resource(a="2"), ['data.a: expected "1", got "2"']),
    ("missing-key", resource(a="1", b="2"), resource(a="1"), ['data.b: missing, expected "2"']),
    ("unexpected-key", resource(a="1"), resource(a="1", b="2"), ['data.b: unexpected "2"']),
    (
        "label-keys-quoted",
        resource({"app.kubernetes.io/name": "x"}),
        resource({"app.kubernetes.io/name": "y"}),
        ['metadata.labels[\'app.kubernetes.io/name\']: expected "x", got "y"'],
    ),
    (
        "list-items",
        {**resource(), "spec": {"containers": [{"name": "a", "imagePullPolicy": "Always"}]}},
        {**resource(), "spec": {"containers": [{"name": "a"}, {"name": "b"}]}},
        ["spec.containers: expected 1 items, got 2", 'spec.containers[0].imagePullPolicy: missing, expected "Always"'],
    ),
]


@pytest.mark.parametrize(
    ("expected", "actual", "lines"), [case[1:] for case in DIFF_CASES], ids=[case[0] for case in DIFF_CASES]
)
def test_resource_diff(expected: dict[str, Any], actual: dict[str, Any], lines: list[str]) -> None:
    assert resource_diff(expected, actual).splitlines() == lines


def test_resource_diff_is_short() -> None:
    expected = resource(**{f"k{i}": "x" * 200 for i in range(20)})
    description = resource_diff(expected, resource(other="1"))
    lines = description.splitlines()
    assert len(lines) == 6 and lines[-1] == "... and more differences"
    assert all(len(line) < 120 for line in lines)
