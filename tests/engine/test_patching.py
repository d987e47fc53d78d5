"""ApplyConfiguration merges, JSON patches and diffs (engine.patching)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from engine.comparison import resource_diff, same_resource
from engine.patching import apply_configuration, apply_json_patch, diff
from engine.schemas import Schema, SchemaIndex, default_schema_index

SHARED = Path(__file__).resolve().parents[3] / "shared" / "conformance"


@pytest.fixture(scope="module")
def index() -> SchemaIndex:
    return default_schema_index()


def pod(spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **metadata}}
    if spec is not None:
        result["spec"] = spec
    return result


def container(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, **fields}


# ----------------------------------------------------------------------------------------------------------------
# Merges against the Pod schema: (id, object, apply configuration, expected object)

POD_MERGES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    (
        "struct-adds-field",
        pod({"containers": [container("a", image="x")]}),
        {"spec": {"runtimeClassName": "prodclass"}},
        pod({"containers": [container("a", image="x")], "runtimeClassName": "prodclass"}),
    ),
    (
        "scalar-replaced",
        pod({"containers": [container("a", image="x")]}),
        {"spec": {"containers": [container("a", image="y")]}},
        pod({"containers": [container("a", image="y")]}),
    ),
    (
        "granular-map-merges-keys",
        pod(labels={"foo": "bar", "keep": "me"}),
        {"metadata": {"labels": {"foo": "baz", "new": "1"}}},
        pod(labels={"foo": "baz", "keep": "me", "new": "1"}),
    ),
    (
        "absent-parents-created",
        pod(),
        {"metadata": {"annotations": {"a/b": "c"}}, "spec": {"containers": [container("a", imagePullPolicy="Always")]}},
        {
            **pod({"containers": [container("a", imagePullPolicy="Always")]}),
            "metadata": {"name": "p", "annotations": {"a/b": "c"}},
        },
    ),
    (
        "map-list-merges-by-name-keeping-order",
        pod({"containers": [container("a", image="1"), container("b", image="2")]}),
        {"spec": {"containers": [container("b", imagePullPolicy="Always"), container("a", imagePullPolicy="Always")]}},
        # shared elements take the patch's order (structured-merge-diff)
        pod(
            {
                "containers": [
                    container("b", image="2", imagePullPolicy="Always"),
                    container("a", image="1", imagePullPolicy="Always"),
                ]
            }
        ),
    ),
    (
        "map-list-merges-subset",
        pod({"containers": [container("a", image="1"), container("b", image="2"), container("c", image="3")]}),
        {"spec": {"containers": [container("b", imagePullPolicy="Always")]}},
        pod(
            {
                "containers": [
                    container("a", image="1"),
                    container("b", image="2", imagePullPolicy="Always"),
                    container("c", image="3"),
                ]
            }
        ),
    ),
    (
        "map-list-new-element-appended",
        pod({"containers": [container("a", image="1")]}),
        {"spec": {"containers": [container("a"), container("sidecar", image="s")]}},
        pod({"containers": [container("a", image="1"), container("sidecar", image="s")]}),
    ),
    (
        "map-list-new-element-placed-before-shared",
        pod({"containers": [container("a", image="1"), container("b", image="2")]}),
        {"spec": {"initContainers": [container("init", image="i")], "containers": [container("x"), container("a")]}},
        pod(
            {
                "containers": [container("x"), container("a", image="1"), container("b", image="2")],
                "initContainers": [container("init", image="i")],
            }
        ),
    ),
    (
        "composite-key-protocol-defaults-to-tcp",
        pod({"containers": [container("a", ports=[{"containerPort": 80}])]}),
        {"spec": {"containers": [container("a", ports=[{"containerPort": 80, "protocol": "TCP", "name": "http"}])]}},
        pod({"containers": [container("a", ports=[{"containerPort": 80, "protocol": "TCP", "name": "http"}])]}),
    ),
    (
        "composite-key-other-protocol-is-new-element",
        pod({"containers": [container("a", ports=[{"containerPort": 53}])]}),
        {"spec": {"containers": [container("a", ports=[{"containerPort": 53, "protocol": "UDP"}])]}},
        pod({"containers": [container("a", ports=[{"containerPort": 53}, {"containerPort": 53, "protocol": "UDP"}])]}),
    ),
    (
        "volume-mounts-by-mount-path-env-by-name",
        pod(
            {
                "containers": [
                    container(
                        "a",
                        volumeMounts=[{"name": "v", "mountPath": "/data"}],
                        env=[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    )
                ]
            }
        ),
        {
            "spec": {
                "containers": [
                    container(
                        "a",
                        volumeMounts=[{"name": "v", "mountPath": "/data", "readOnly": True}],
                        env=[{"name": "B", "value": "3"}],
                    )
                ]
            }
        },
        pod(
            {
                "containers": [
                    container(
                        "a",
                        volumeMounts=[{"name": "v", "mountPath": "/data", "readOnly": True}],
                        env=[{"name": "A", "value": "1"}, {"name": "B", "value": "3"}],
                    )
                ]
            }
        ),
    ),
    (
        "set-list-union",
        pod(finalizers=["a", "b", "c"]),
        {"metadata": {"finalizers": ["b", "x"]}},
        pod(finalizers=["a", "b", "c", "x"]),
    ),
    (
        "set-list-patch-order-for-shared",
        pod(finalizers=["a", "b", "c"]),
        {"metadata": {"finalizers": ["c", "a"]}},
        pod(finalizers=["b", "c", "a"]),  # structured-merge-diff merge_test.go "associative list"
    ),
    (
        "atomic-list-replaced",
        pod({"containers": [container("a", args=["1", "2"])], "tolerations": [{"key": "a"}, {"key": "b"}]}),
        {"spec": {"containers": [container("a", args=["3"])], "tolerations": [{"key": "c"}]}},
        pod({"containers": [container("a", args=["3"])], "tolerations": [{"key": "c"}]}),
    ),
    (
        "atomic-map-replaced",
        pod({"containers": [container("a")], "nodeSelector": {"zone": "a", "disk": "ssd"}}),
        {"spec": {"nodeSelector": {"zone": "b"}}},
        pod({"containers": [container("a")], "nodeSelector": {"zone": "b"}}),
    ),
    (
        "atomic-struct-replaced",
        pod({"containers": [container("a")], "imagePullSecrets": [{"name": "x"}]}),
        {"spec": {"imagePullSecrets": [{"name": "x"}, {"name": "y"}]}},
        pod({"containers": [container("a")], "imagePullSecrets": [{"name": "x"}, {"name": "y"}]}),
    ),
    (
        "empty-patch-list-keeps-map-list",
        pod({"containers": [container("a")]}),
        {"spec": {"containers": []}},
        pod({"containers": [container("a")]}),
    ),
    (
        "empty-patch-map-keeps-map",
        pod(labels={"a": "b"}),
        {"metadata": {"labels": {}}},
        pod(labels={"a": "b"}),
    ),
    (
        "empty-patch-map-over-absent",
        pod(),
        {"metadata": {"labels": {}}},
        pod(labels={}),
    ),
    (
        "empty-patch-list-replaces-atomic",
        pod({"containers": [container("a", args=["x"])]}),
        {"spec": {"containers": [container("a", args=[])]}},
        pod({"containers": [container("a", args=[])]}),
    ),
    (
        "null-scalar-sets-null",
        pod({"containers": [container("a", image="x")]}),
        {"spec": {"containers": [container("a", image=None)]}},
        pod({"containers": [container("a", image=None)]}),
    ),
    (
        "null-granular-map-is-no-op",
        pod(labels={"a": "b"}),
        {"metadata": {"labels": None}},
        pod(labels={"a": "b"}),
    ),
    (
        "null-over-absent-map-sets-null",
        pod(),
        {"metadata": {"annotations": None}},
        pod(annotations=None),
    ),
    (
        "null-map-list-is-no-op",
        pod({"containers": [container("a")]}),
        {"spec": {"containers": None}},
        pod({"containers": [container("a")]}),
    ),
    (
        "null-atomic-list-sets-null",
        pod({"containers": [container("a")], "tolerations": [{"key": "a"}]}),
        {"spec": {"tolerations": None}},
        pod({"containers": [container("a")], "tolerations": None}),
    ),
    (
        "null-atomic-map-sets-null",
        pod({"containers": [container("a")], "nodeSelector": {"a": "b"}}),
        {"spec": {"nodeSelector": None}},
        pod({"containers": [container("a")], "nodeSelector": None}),
    ),
    (
        "object-value-of-wrong-type-is-replaced",
        pod({"containers": "garbage"}),
        {"spec": {"containers": [container("a")]}},
        pod({"containers": [container("a")]}),
    ),
    (
        "object-duplicates-kept-when-not-patched",
        pod({"containers": [container("a", image="1"), container("a", image="2"), container("b")]}),
        {"spec": {"containers": [container("b", image="3")]}},
        pod({"containers": [container("a", image="1"), container("a", image="2"), container("b", image="3")]}),
    ),
    (
        "object-duplicates-replaced-by-patched-element",
        pod({"containers": [container("a", image="1"), container("b"), container("a", image="2")]}),
        {"spec": {"containers": [container("a", args=["x"]), container("c"), container("b")]}},
        pod({"containers": [container("a", args=["x"]), container("c"), container("b")]}),
    ),
    (
        "untyped-quantity-accepts-number-and-string",
        pod({"containers": [container("a")]}),
        {"spec": {"containers": [container("a", resources={"limits": {"cpu": 1, "memory": "1Gi"}})]}},
        pod({"containers": [container("a", resources={"limits": {"cpu": 1, "memory": "1Gi"}})]}),
    ),
]


@pytest.mark.parametrize(
    ("obj", "patch", "expected"), [case[1:] for case in POD_MERGES], ids=[case[0] for case in POD_MERGES]
)
def test_merge_pod(index: SchemaIndex, obj: dict[str, Any], patch: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(obj)
    outcome = apply_configuration(obj, patch, index.for_kind("v1", "Pod"))
    assert outcome.error is None
    assert outcome.notes == ()
    assert outcome.object == expected
    assert obj == before, "the input object must not be mutated"
    assert jsonpatch.apply_patch(obj, diff(obj, outcome.object)) == outcome.object


def test_merge_deployment_selector_is_atomic(index: SchemaIndex) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {
            "selector": {"matchLabels": {"a": "1", "b": "2"}},
            "template": {"spec": {"containers": [container("c")]}},
        },
    }
    patch = {"spec": {"selector": {"matchLabels": {"a": "3"}}, "template": {"spec": {"priorityClassName": "high"}}}}
    outcome = apply_configuration(deployment, patch, index.for_kind("apps/v1", "Deployment"))
    assert outcome.error is None
    assert outcome.object["spec"] == {
        "selector": {"matchLabels": {"a": "3"}},
        "template": {"spec": {"containers": [container("c")], "priorityClassName": "high"}},
    }


# ----------------------------------------------------------------------------------------------------------------
# Errors: (id, object, apply configuration, substring of the error)

POD_ERRORS: list[tuple[str, dict[str, Any], Any, str]] = [
    (
        "map-where-list",
        pod({"containers": []}),
        {"spec": {"containers": {"name": "a"}}},
        "spec.containers: expected list, got map",
    ),
    ("list-where-map", pod(), {"spec": [1]}, "spec: expected map, got list"),
    ("scalar-where-map", pod(), {"metadata": {"labels": "x"}}, "metadata.labels: expected map, got string"),
    ("string-for-integer", pod(), {"spec": {"priority": "high"}}, "spec.priority: expected integer, got string"),
    ("bool-for-string", pod(), {"metadata": {"labels": {"a": True}}}, "expected string, got bool"),
    (
        "element-without-key",
        pod(),
        {"spec": {"containers": [{"image": "x"}]}},
        "spec.containers[0]: element omits key field 'name'",
    ),
    (
        "composite-key-missing-part",
        pod(),
        {"spec": {"containers": [container("a", ports=[{"protocol": "TCP"}])]}},
        "spec.containers[0].ports[0]: element omits key field 'containerPort'",
    ),
    (
        "duplicate-keys-in-patch",
        pod(),
        {"spec": {"containers": [container("a"), container("a")]}},
        "spec.containers: duplicate entries for key [name='a']",
    ),
    (
        "scalar-element-in-map-list",
        pod(),
        {"spec": {"containers": ["a"]}},
        "spec.containers[0]: expected a map element",
    ),
    ("undeclared-field", pod(), {"spec": {"bogus": 1}}, "spec.bogus: field not declared in schema"),
    (
        "undeclared-field-inside-atomic",
        pod(),
        {"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"bogus": 1}}}}},
        "requiredDuringSchedulingIgnoredDuringExecution.bogus: field not declared",
    ),
    ("patch-not-a-map", pod(), ["not", "a", "map"], "the apply configuration must be a map, got list"),
]


@pytest.mark.parametrize(
    ("obj", "patch", "message"), [case[1:] for case in POD_ERRORS], ids=[case[0] for case in POD_ERRORS]
)
def test_merge_errors(index: SchemaIndex, obj: dict[str, Any], patch: Any, message: str) -> None:
    outcome = apply_configuration(obj, patch, index.for_kind("v1", "Pod"))
    assert outcome.error is not None and message in outcome.error, outcome.error
    assert outcome.object is obj


@pytest.mark.parametrize(
    ("patch", "paths"),
    [
        ({"spec": {"tolerations": [{"key": "a"}]}}, "spec.tolerations"),
        (
            {"spec": {"nodeSelector": {"a": "b"}, "containers": [container("a", args=["x"])]}},
            "spec.nodeSelector, spec.containers[0].args",
        ),
        ({"spec": {"imagePullSecrets": [{"name": "x"}]}}, "spec.imagePullSecrets[0]"),
    ],
    ids=["atomic-list", "atomic-map-and-nested-list", "atomic-struct-in-map-list"],
)
def test_reject_atomic(index: SchemaIndex, patch: dict[str, Any], paths: str) -> None:
    """Kyverno's default (useServerSideApply: false) runs the upstream guard against atomic values."""
    outcome = apply_configuration(pod(), patch, index.for_kind("v1", "Pod"), reject_atomic=True)
    assert outcome.error == f"may not mutate atomic arrays, maps or structs: {paths}"
    allowed = apply_configuration(
        pod(), {"spec": {"containers": [container("a", image="x")]}}, index.for_kind("v1", "Pod"), reject_atomic=True
    )
    assert allowed.error is None


# ----------------------------------------------------------------------------------------------------------------
# No schema, CRD schemas


def test_no_schema_merges_maps_and_replaces_lists() -> None:
    obj = {"apiVersion": "x/v1", "kind": "Thing", "spec": {"a": {"b": 1}, "items": [1, 2], "keep": True}}
    patch = {"spec": {"a": {"c": 2}, "items": [3]}}
    outcome = apply_configuration(obj, patch, None)
    assert outcome.error is None
    assert outcome.object == {
        "apiVersion": "x/v1",
        "kind": "Thing",
        "spec": {"a": {"b": 1, "c": 2}, "items": [3], "keep": True},
    }
    assert outcome.notes == ("spec.items: no schema, list replaced",)


WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "spec": {
        "group": "example.com",
        "names": {"kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "parts": {
                                        "type": "array",
                                        "x-kubernetes-list-type": "map",
                                        "x-kubernetes-list-map-keys": ["id", "kind"],
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "id": {"type": "integer"},
                                                "kind": {"type": "string", "default": "bolt"},
                                                "size": {"type": "integer"},
                                            },
                                        },
                                    },
                                    "tags": {
                                        "type": "array",
                                        "x-kubernetes-list-type": "set",
                                        "items": {"type": "string"},
                                    },
                                    "steps": {"type": "array", "items": {"type": "string"}},
                                    "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                    "amount": {"x-kubernetes-int-or-string": True},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def widget_schema(index: SchemaIndex) -> Schema:
    schema = index.with_crds([WIDGET_CRD]).for_kind("example.com/v1", "Widget")
    assert schema is not None
    return schema


WIDGET_MERGES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], tuple[str, ...]]] = [
    (
        "metadata-from-object-meta",
        {"metadata": {"name": "w", "labels": {"a": "1"}}},
        {"metadata": {"labels": {"b": "2"}, "finalizers": ["f"]}},
        {"metadata": {"name": "w", "labels": {"a": "1", "b": "2"}, "finalizers": ["f"]}},
        (),
    ),
    (
        "composite-keys-with-schema-default",
        {"spec": {"parts": [{"id": 1, "size": 3}, {"id": 1, "kind": "nut", "size": 4}]}},
        {"spec": {"parts": [{"id": 1, "kind": "bolt", "size": 5}, {"id": 2, "size": 1}]}},
        {
            "spec": {
                "parts": [
                    {"id": 1, "kind": "bolt", "size": 5},
                    {"id": 1, "kind": "nut", "size": 4},
                    {"id": 2, "size": 1},
                ]
            }
        },
        (),
    ),
    (
        "set-and-atomic-lists",
        {"spec": {"tags": ["a"], "steps": ["1", "2"]}},
        {"spec": {"tags": ["b", "a"], "steps": ["3"]}},
        {"spec": {"tags": ["b", "a"], "steps": ["3"]}},
        (),
    ),
    (
        "preserve-unknown-fields-deduced",
        {"spec": {"config": {"x": {"y": 1}, "list": [1, 2]}}},
        {"spec": {"config": {"x": {"z": 2}, "list": [3], "new": {"deep": [True]}}}},
        {"spec": {"config": {"x": {"y": 1, "z": 2}, "list": [3], "new": {"deep": [True]}}}},
        ("spec.config.list: no schema, list replaced", "spec.config.new.deep: no schema, list replaced"),
    ),
    (
        "int-or-string-accepts-both",
        {"spec": {"amount": 1}},
        {"spec": {"amount": "50%"}},
        {"spec": {"amount": "50%"}},
        (),
    ),
]


@pytest.mark.parametrize(
    ("obj", "patch", "expected", "notes"), [case[1:] for case in WIDGET_MERGES], ids=[case[0] for case in WIDGET_MERGES]
)
def test_merge_crd(
    widget_schema: Schema, obj: dict[str, Any], patch: dict[str, Any], expected: dict[str, Any], notes: tuple[str, ...]
) -> None:
    outcome = apply_configuration(obj, patch, widget_schema)
    assert outcome.error is None
    assert outcome.object == expected
    assert outcome.notes == notes


def test_merge_crd_errors(widget_schema: Schema) -> None:
    missing_key = apply_configuration({}, {"spec": {"parts": [{"size": 1}]}}, widget_schema)
    assert missing_key.error == "spec.parts[0]: element omits key field 'id' (and it has no default value)"
    undeclared = apply_configuration({}, {"spec": {"shape": "round"}}, widget_schema)
    assert undeclared.error is not None and undeclared.error.startswith("spec.shape: field not declared in schema")


# ----------------------------------------------------------------------------------------------------------------
# Conformance examples from the shared suites


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def test_always_pull_images_conformance(index: SchemaIndex) -> None:
    folder = SHARED / "kyverno-policies" / "other-mpol" / "always-pull-images" / ".kyverno-test"
    if not folder.is_dir():
        pytest.skip(f"shared conformance suites not found at {folder}")
    expected = {
        doc["metadata"]["name"]: doc
        for name in ("patchedResource1.yaml", "patchedResource2.yaml")
        for doc in _load_all(folder / name)
    }
    resources = _load_all(folder / "resource.yaml")
    assert {r["metadata"]["name"] for r in resources} == set(expected)
    for resource in resources:
        # Object{spec: Object.spec{containers: object.spec.containers.map(container,
        #     Object.spec.containers{name: container.name, imagePullPolicy: "Always"})}}
        patch = {
            "spec": {
                "containers": [{"name": c["name"], "imagePullPolicy": "Always"} for c in resource["spec"]["containers"]]
            }
        }
        outcome = apply_configuration(resource, patch, index.for_kind(resource["apiVersion"], resource["kind"]))
        assert outcome.error is None and outcome.notes == ()
        want = expected[resource["metadata"]["name"]]
        assert same_resource(want, outcome.object), resource_diff(want, outcome.object)
        assert not same_resource(want, resource)


def test_mutate_custom_crd_conformance(index: SchemaIndex) -> None:
    folder = SHARED / "kyverno-cli" / "test-mutating-policy" / "mutate-custom-crd"
    if not folder.is_dir():
        pytest.skip(f"shared conformance suites not found at {folder}")
    crds = _load_all(folder / "crds" / "widget-crd.yaml")
    (widget,) = _load_all(folder / "widget.yaml")
    (want,) = _load_all(folder / "patched-widget.yaml")
    schema = index.with_crds(crds).for_kind(widget["apiVersion"], widget["kind"])
    assert schema is not None
    # Object{metadata: Object.metadata{annotations: {"testing": "true"}}}
    outcome = apply_configuration(widget, {"metadata": {"annotations": {"testing": "true"}}}, schema)
    assert outcome.error is None
    assert same_resource(want, outcome.object), resource_diff(want, outcome.object)


# ----------------------------------------------------------------------------------------------------------------
# JSON patch

DOCUMENT: dict[str, Any] = {
    "metadata": {"name": "n", "labels": {"app.kubernetes.io/name": "x", "a~b": "tilde"}},
    "spec": {"list": [1, 2, 3], "nested": {"deep": {"value": 1}}},
}

# (id, operations, expected document)
JSON_PATCHES: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [
    (
        "add-label-with-slash-escaped",
        [{"op": "add", "path": "/metadata/labels/team~1owner", "value": "me"}],
        {
            **DOCUMENT,
            "metadata": {**DOCUMENT["metadata"], "labels": {**DOCUMENT["metadata"]["labels"], "team/owner": "me"}},
        },
    ),
    (
        "remove-key-with-slash",
        [{"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1name"}],
        {**DOCUMENT, "metadata": {"name": "n", "labels": {"a~b": "tilde"}}},
    ),
    (
        "replace-key-with-tilde",
        [{"op": "replace", "path": "/metadata/labels/a~0b", "value": "t"}],
        {**DOCUMENT, "metadata": {"name": "n", "labels": {"app.kubernetes.io/name": "x", "a~b": "t"}}},
    ),
    (
        "append-with-dash",
        [{"op": "add", "path": "/spec/list/-", "value": 4}],
        {**DOCUMENT, "spec": {**DOCUMENT["spec"], "list": [1, 2, 3, 4]}},
    ),
    (
        "insert-at-index",
        [{"op": "add", "path": "/spec/list/0", "value": 0}],
        {**DOCUMENT, "spec": {**DOCUMENT["spec"], "list": [0, 1, 2, 3]}},
    ),
    (
        "move",
        [{"op": "move", "from": "/spec/nested/deep", "path": "/spec/moved"}],
        {**DOCUMENT, "spec": {"list": [1, 2, 3], "nested": {}, "moved": {"value": 1}}},
    ),
    (
        "copy-then-modify-copy-only",
        [
            {"op": "copy", "from": "/spec/nested", "path": "/spec/copied"},
            {"op": "replace", "path": "/spec/copied/deep/value", "value": 2},
        ],
        {**DOCUMENT, "spec": {**DOCUMENT["spec"], "copied": {"deep": {"value": 2}}}},
    ),
    (
        "test-passes-then-applies",
        [{"op": "test", "path": "/spec/list/0", "value": 1}, {"op": "remove", "path": "/spec/list/0"}],
        {**DOCUMENT, "spec": {**DOCUMENT["spec"], "list": [2, 3]}},
    ),
    (
        "failing-test-drops-whole-patch",
        [{"op": "remove", "path": "/spec/list/0"}, {"op": "test", "path": "/metadata/name", "value": "other"}],
        DOCUMENT,
    ),
    (
        "test-bool-is-not-number",
        [{"op": "test", "path": "/spec/list/0", "value": True}, {"op": "remove", "path": "/spec"}],
        DOCUMENT,
    ),
    (
        "test-missing-member-fails-quietly",
        [{"op": "test", "path": "/metadata/namespace", "value": "ns"}, {"op": "remove", "path": "/spec"}],
        DOCUMENT,
    ),
    (
        "test-missing-member-equals-null",
        [{"op": "test", "path": "/metadata/namespace", "value": None}, {"op": "remove", "path": "/spec"}],
        {"metadata": DOCUMENT["metadata"]},
    ),
    ("no-operations", [], DOCUMENT),
]


@pytest.mark.parametrize(
    ("operations", "expected"), [case[1:] for case in JSON_PATCHES], ids=[case[0] for case in JSON_PATCHES]
)
def test_json_patch(operations: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(DOCUMENT)
    outcome = apply_json_patch(DOCUMENT, operations)
    assert outcome.error is None
    assert outcome.object == expected
    assert before == DOCUMENT, "the input object must not be mutated"


# (id, operations, expected error prefix)
JSON_PATCH_ERRORS: list[tuple[str, list[Any], str]] = [
    ("remove-missing", [{"op": "remove", "path": "/spec/x"}], "jsonPatch[0] (remove /spec/x): can't remove"),
    ("replace-missing", [{"op": "replace", "path": "/spec/x", "value": 1}], "jsonPatch[0] (replace /spec/x): "),
    (
        "add-under-missing-parent",
        [{"op": "add", "path": "/spec/a", "value": 1}, {"op": "add", "path": "/spec/missing/b", "value": 1}],
        "jsonPatch[1] (add /spec/missing/b): member 'missing' not found",
    ),
    ("index-out-of-range", [{"op": "add", "path": "/spec/list/9", "value": 1}], "jsonPatch[0] (add /spec/list/9): "),
    (
        "bad-index",
        [{"op": "remove", "path": "/spec/list/01"}],
        "jsonPatch[0] (remove /spec/list/01): '01' is not a valid",
    ),
    ("path-without-slash", [{"op": "add", "path": "spec", "value": 1}], "jsonPatch[0] (add spec): "),
    ("unknown-op", [{"op": "merge", "path": "/spec"}], "jsonPatch[0] (merge /spec): unknown operation 'merge'"),
    ("missing-op", [{"path": "/spec"}], "jsonPatch[0] (None /spec): no 'op'"),
    ("missing-value", [{"op": "add", "path": "/spec/x"}], "jsonPatch[0] (add /spec/x): no 'value'"),
    ("missing-from", [{"op": "move", "path": "/spec/x"}], "jsonPatch[0] (move /spec/x): 'from' must be a string"),
    ("move-from-missing", [{"op": "move", "from": "/nope", "path": "/spec/x"}], "jsonPatch[0] (move /spec/x): "),
    ("move-into-own-child", [{"op": "move", "from": "/spec", "path": "/spec/x"}], "jsonPatch[0] (move /spec/x): "),
    ("test-under-missing-parent", [{"op": "test", "path": "/nope/x", "value": 1}], "jsonPatch[0] (test /nope/x): "),
    ("operation-not-a-map", ["add"], "jsonPatch[0]: an operation must be a map, got string"),
    (
        "replace-root-with-scalar",
        [{"op": "replace", "path": "", "value": 1}],
        "the patched document is not an object (got int)",
    ),
]


@pytest.mark.parametrize(
    ("operations", "message"), [case[1:] for case in JSON_PATCH_ERRORS], ids=[case[0] for case in JSON_PATCH_ERRORS]
)
def test_json_patch_errors(operations: list[Any], message: str) -> None:
    outcome = apply_json_patch(DOCUMENT, operations)
    assert outcome.error is not None and outcome.error.startswith(message), outcome.error
    assert len(outcome.error) < 300
    assert outcome.object is DOCUMENT


def test_json_patch_values_are_not_aliased() -> None:
    value: dict[str, Any] = {"k": []}
    outcome = apply_json_patch(
        {},
        [
            {"op": "add", "path": "/a", "value": value},
            {"op": "add", "path": "/b", "value": value},
            {"op": "add", "path": "/a/k/-", "value": 1},
        ],
    )
    assert outcome.object == {"a": {"k": [1]}, "b": {"k": []}}
    assert value == {"k": []}


def test_json_patch_copies_on_write() -> None:
    """Only containers on an operation's path are copied; the input stays intact and the rest is shared."""
    obj: dict[str, Any] = {"a": [{"b": {"c": 1}}, {"d": 1}], "x": {"y": 1}, "untouched": {"big": [1, 2, 3]}}
    before = copy.deepcopy(obj)
    operations = [
        {"op": "replace", "path": "/a/0/b/c", "value": 2},
        {"op": "add", "path": "/a/1/e", "value": {"f": []}},
        {"op": "add", "path": "/a/1/e/f/-", "value": 1},
        {"op": "move", "from": "/x", "path": "/a/0/b/x"},
        {"op": "add", "path": "/a/0/b/x/z", "value": 3},
        {"op": "copy", "from": "/a/0/b/x", "path": "/copied"},
        {"op": "remove", "path": "/copied/y"},
    ]
    outcome = apply_json_patch(obj, operations)
    assert outcome.error is None
    assert obj == before
    assert outcome.object == {
        "a": [{"b": {"c": 2, "x": {"y": 1, "z": 3}}}, {"d": 1, "e": {"f": [1]}}],
        "untouched": {"big": [1, 2, 3]},
        "copied": {"z": 3},
    }
    shared = apply_json_patch(obj, [{"op": "add", "path": "/a/0/new", "value": 1}])
    assert shared.object["untouched"] is obj["untouched"] and shared.object["a"][1] is obj["a"][1]
    assert obj == before


# ----------------------------------------------------------------------------------------------------------------
# Diff

# (id, original, final, expected operations)
DIFFS: list[tuple[str, Any, Any, list[dict[str, Any]]]] = [
    ("identical", {"a": 1}, {"a": 1}, []),
    ("add-key", {"a": 1}, {"a": 1, "b": [1]}, [{"op": "add", "path": "/b", "value": [1]}]),
    ("remove-key", {"a": 1, "b": 2}, {"a": 1}, [{"op": "remove", "path": "/b"}]),
    ("escaped-keys", {"a/b": 1, "c~d": 1}, {"a/b": 2, "c~d": 1}, [{"op": "replace", "path": "/a~1b", "value": 2}]),
    ("escaped-tilde", {"c~d": 1}, {}, [{"op": "remove", "path": "/c~0d"}]),
    ("nested", {"a": {"b": {"c": 1}}}, {"a": {"b": {"c": 2}}}, [{"op": "replace", "path": "/a/b/c", "value": 2}]),
    ("same-length-list", {"l": [1, 2]}, {"l": [1, 3]}, [{"op": "replace", "path": "/l/1", "value": 3}]),
    (
        "append",
        {"l": [1]},
        {"l": [1, 2, 3]},
        [{"op": "add", "path": "/l/1", "value": 2}, {"op": "add", "path": "/l/2", "value": 3}],
    ),
    ("truncate", {"l": [1, 2, 3]}, {"l": [1]}, [{"op": "remove", "path": "/l/2"}, {"op": "remove", "path": "/l/1"}]),
    ("replace-list", {"l": [1, 2]}, {"l": [2]}, [{"op": "replace", "path": "/l", "value": [2]}]),
    ("bool-is-not-number", {"a": 1}, {"a": True}, [{"op": "replace", "path": "/a", "value": True}]),
    ("int-equals-float", {"a": 1}, {"a": 1.0}, []),
    ("type-change", {"a": {"b": 1}}, {"a": [1]}, [{"op": "replace", "path": "/a", "value": [1]}]),
    ("to-null", {"a": 1}, {"a": None}, [{"op": "replace", "path": "/a", "value": None}]),
    ("empty-key", {"": 1}, {"": 2}, [{"op": "replace", "path": "/", "value": 2}]),
]


@pytest.mark.parametrize(
    ("original", "final", "expected"), [case[1:] for case in DIFFS], ids=[case[0] for case in DIFFS]
)
def test_diff(original: Any, final: Any, expected: list[dict[str, Any]]) -> None:
    operations = diff(original, final)
    assert operations == expected
    assert jsonpatch.apply_patch(original, operations) == final


def test_diff_round_trip_after_merge(index: SchemaIndex) -> None:
    obj = pod({"containers": [container("a", image="1"), container("b", image="2")]}, labels={"x": "y"})
    patch = {"metadata": {"labels": {"z": "1"}}, "spec": {"containers": [container("c"), container("b", image="3")]}}
    outcome = apply_configuration(obj, patch, index.for_kind("v1", "Pod"))
    operations = diff(obj, outcome.object)
    assert jsonpatch.apply_patch(obj, operations) == outcome.object


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev extra
    given = None

if given is not None:
    _scalars = (
        st.none()
        | st.booleans()
        | st.integers(-5, 5)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=3)
    )
    _keys = st.sampled_from(["a", "b", "c/d", "e~f", "~1", ""])
    _json = st.recursive(
        _scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
        max_leaves=20,
    )

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(_keys, _json, max_size=5), st.dictionaries(_keys, _json, max_size=5))
    def test_diff_round_trips_any_json(original: dict[str, Any], final: dict[str, Any]) -> None:
        operations = diff(original, final)
        patched = jsonpatch.apply_patch(original, operations)
        assert same_json(patched, final)
        assert diff(patched, final) == []


def same_json(a: Any, b: Any) -> bool:
    """Equality that, unlike ==, tells True from 1."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return isinstance(a, bool) == isinstance(b, bool) and a == b
