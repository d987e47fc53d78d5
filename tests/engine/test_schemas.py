"""Structural schemas: built-in kinds from kubernetes-validate's OpenAPI definitions, and CRDs."""

from __future__ import annotations

from typing import Any

import pytest

from engine.schemas import NO_DEFAULT, Schema, SchemaIndex, default_schema_index


def walk(schema: Schema | None, path: str) -> Schema | None:
    """Follow a dotted path; `[]` steps into list items (`spec.containers[].ports`)."""
    for part in path.split("."):
        if schema is None:
            return None
        schema = schema.field(part.removesuffix("[]"))
        if part.endswith("[]") and schema is not None:
            schema = schema.items()
    return schema


@pytest.fixture(scope="module")
def index() -> SchemaIndex:
    return default_schema_index()


# (id, apiVersion, kind, path, expected attributes)
BUILT_IN_CASES: list[tuple[str, str, str, str, dict[str, Any]]] = [
    ("pod-spec-is-struct", "v1", "Pod", "spec", {"kind": "struct", "map_type": "granular"}),
    ("containers-map-list-by-name", "v1", "Pod", "spec.containers", {"list_type": "map", "list_map_keys": ("name",)}),
    (
        "ports-composite-key",
        "v1",
        "Pod",
        "spec.containers[].ports",
        {"list_type": "map", "list_map_keys": ("containerPort", "protocol")},
    ),
    ("volume-mounts-by-mount-path", "v1", "Pod", "spec.containers[].volumeMounts", {"list_map_keys": ("mountPath",)}),
    ("env-by-name", "v1", "Pod", "spec.initContainers[].env", {"list_type": "map", "list_map_keys": ("name",)}),
    ("ephemeral-containers", "v1", "Pod", "spec.ephemeralContainers", {"list_type": "map"}),
    ("volumes-by-name", "v1", "Pod", "spec.volumes", {"list_type": "map", "list_map_keys": ("name",)}),
    ("args-atomic", "v1", "Pod", "spec.containers[].args", {"list_type": "atomic", "is_atomic": True}),
    ("tolerations-atomic", "v1", "Pod", "spec.tolerations", {"list_type": "atomic"}),
    (
        "capabilities-add-atomic",
        "v1",
        "Pod",
        "spec.containers[].securityContext.capabilities.add",
        {"list_type": "atomic"},
    ),
    ("finalizers-set", "v1", "Pod", "metadata.finalizers", {"list_type": "set"}),
    ("labels-granular-map", "v1", "Pod", "metadata.labels", {"kind": "map", "map_type": "granular"}),
    ("label-values-are-strings", "v1", "Pod", "metadata.labels.anything", {"kind": "scalar", "scalar_type": "string"}),
    ("node-selector-atomic-map", "v1", "Pod", "spec.nodeSelector", {"kind": "map", "map_type": "atomic"}),
    ("image-pull-secret-atomic-struct", "v1", "Pod", "spec.imagePullSecrets[]", {"kind": "struct", "is_atomic": True}),
    ("quantity-untyped-scalar", "v1", "Pod", "spec.containers[].resources.limits.cpu", {"scalar_type": None}),
    ("priority-integer", "v1", "Pod", "spec.priority", {"kind": "scalar", "scalar_type": "integer"}),
    ("selector-atomic-struct", "apps/v1", "Deployment", "spec.selector", {"kind": "struct", "map_type": "atomic"}),
    ("template-pod-spec", "apps/v1", "Deployment", "spec.template.spec.containers", {"list_map_keys": ("name",)}),
    (
        "cronjob-nested-pod-spec",
        "batch/v1",
        "CronJob",
        "spec.jobTemplate.spec.template.spec.containers",
        {"list_type": "map"},
    ),
    ("service-ports", "v1", "Service", "spec.ports", {"list_map_keys": ("port", "protocol")}),
    ("owner-references-by-uid", "v1", "ConfigMap", "metadata.ownerReferences", {"list_map_keys": ("uid",)}),
    ("configmap-data-map", "v1", "ConfigMap", "data", {"kind": "map", "map_type": "granular"}),
]


@pytest.mark.parametrize(
    ("api_version", "kind", "path", "expected"),
    [case[1:] for case in BUILT_IN_CASES],
    ids=[case[0] for case in BUILT_IN_CASES],
)
def test_built_in_schema(index: SchemaIndex, api_version: str, kind: str, path: str, expected: dict[str, Any]) -> None:
    schema = walk(index.for_kind(api_version, kind), path)
    assert schema is not None
    for attribute, value in expected.items():
        assert getattr(schema, attribute) == value, attribute


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [("example.com/v1", "Widget"), ("apps/v1", "Pod"), ("v2", "Pod"), ("v1", "NoSuchKind")],
    ids=["unknown-group", "wrong-group", "wrong-version", "unknown-kind"],
)
def test_unknown_kinds_have_no_schema(index: SchemaIndex, api_version: str, kind: str) -> None:
    assert index.for_kind(api_version, kind) is None


def test_port_protocol_key_defaults_to_tcp(index: SchemaIndex) -> None:
    ports = walk(index.for_kind("v1", "Pod"), "spec.containers[].ports")
    assert ports is not None
    assert ports.key_default("protocol") == "TCP"
    assert ports.key_default("containerPort") is NO_DEFAULT


def test_fields_unknown_versus_untyped(index: SchemaIndex) -> None:
    pod = index.for_kind("v1", "Pod")
    assert pod is not None
    spec = pod.field("spec")
    assert spec is not None
    assert spec.field("noSuchField") is None and not spec.has_field("noSuchField")
    assert spec.has_field("containers")
    labels = walk(pod, "metadata.labels")
    assert labels is not None and labels.has_field("any/key")


def test_definitions_are_shared_and_memoised(index: SchemaIndex) -> None:
    pod_spec = walk(index.for_kind("v1", "Pod"), "spec")
    template_spec = walk(index.for_kind("apps/v1", "Deployment"), "spec.template.spec")
    assert pod_spec is template_spec
    assert index.definition("io.k8s.api.core.v1.PodSpec") is pod_spec


@pytest.mark.parametrize("spelling", ["1.32", "v1.32", "1.32.0", " v1.32.0 "])
def test_for_version_accepts_spellings(spelling: str) -> None:
    assert SchemaIndex.for_version(spelling).version == "1.32"


def test_default_is_newest_and_versions_are_cached() -> None:
    versions = SchemaIndex.available_versions()
    assert "1.32" in versions
    assert default_schema_index().version == versions[-1]
    first = SchemaIndex.for_version("1.32").for_kind("v1", "Pod")
    assert first is not None and first is SchemaIndex.for_version("1.32").for_kind("v1", "Pod")
    assert SchemaIndex.for_version("1.32").load_seconds is not None


@pytest.mark.parametrize("version", ["0.1", "1.999", "latest"], ids=["too-old", "too-new", "not-a-version"])
def test_for_version_rejects_unknown_versions(version: str) -> None:
    with pytest.raises(ValueError, match=r"available: .*1\.32|not a Kubernetes version"):
        SchemaIndex.for_version(version)


WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "names": {"kind": "Widget", "plural": "widgets"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "color": {"type": "string"},
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
                                    "selector": {
                                        "type": "object",
                                        "x-kubernetes-map-type": "atomic",
                                        "additionalProperties": {"type": "string"},
                                    },
                                    "amount": {"x-kubernetes-int-or-string": True},
                                },
                            }
                        },
                    }
                },
            },
            {"name": "v2", "served": True, "storage": False},
        ],
    },
}

CRD_CASES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("metadata-is-object-meta", "metadata", {"name": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
    ("metadata-labels-granular", "metadata.labels", {"kind": "map", "map_type": "granular"}),
    ("api-version-string", "apiVersion", {"kind": "scalar", "scalar_type": "string"}),
    ("map-list-composite-keys", "spec.parts", {"list_type": "map", "list_map_keys": ("id", "kind")}),
    ("set-list", "spec.tags", {"list_type": "set"}),
    ("unmarked-list-atomic", "spec.steps", {"list_type": "atomic"}),
    ("preserve-unknown-no-schema", "spec.config", None),
    ("atomic-map", "spec.selector", {"kind": "map", "map_type": "atomic"}),
    ("int-or-string-untyped", "spec.amount", {"kind": "scalar", "scalar_type": None}),
]


@pytest.mark.parametrize(("path", "expected"), [case[1:] for case in CRD_CASES], ids=[case[0] for case in CRD_CASES])
def test_crd_schema(index: SchemaIndex, path: str, expected: dict[str, Any] | None) -> None:
    schema = walk(index.with_crds([WIDGET_CRD]).for_kind("example.com/v1", "Widget"), path)
    if expected is None:
        assert schema is None
        return
    assert schema is not None
    for attribute, value in expected.items():
        assert getattr(schema, attribute) == value, attribute


def test_crd_key_default_from_schema(index: SchemaIndex) -> None:
    parts = walk(index.with_crds([WIDGET_CRD]).for_kind("example.com/v1", "Widget"), "spec.parts")
    assert parts is not None
    assert parts.key_default("kind") == "bolt"
    assert parts.key_default("id") is NO_DEFAULT


def test_with_crds_returns_a_new_index(index: SchemaIndex) -> None:
    extended = index.with_crds([WIDGET_CRD])
    assert extended.for_kind("example.com/v1", "Widget") is not None
    assert extended.for_kind("example.com/v2", "Widget") is None  # that version has no schema
    assert index.for_kind("example.com/v1", "Widget") is None
    assert extended.for_kind("v1", "Pod") is index.for_kind("v1", "Pod")


def test_with_crds_skips_what_is_not_a_crd(index: SchemaIndex) -> None:
    junk: list[Any] = [{"kind": "ConfigMap"}, {"kind": "CustomResourceDefinition", "spec": "nope"}, "text", {}]
    assert index.with_crds(junk).for_kind("example.com/v1", "Widget") is None


def test_v1beta1_crd_validation_schema(index: SchemaIndex) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1beta1",
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "example.com",
            "version": "v1alpha1",
            "names": {"kind": "Gadget"},
            "validation": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}}}},
        },
    }
    schema = index.with_crds([crd]).for_kind("example.com/v1alpha1", "Gadget")
    assert schema is not None and schema.has_field("spec") and schema.field("spec") is None
