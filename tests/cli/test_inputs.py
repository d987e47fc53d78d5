"""Parsing of the Kyverno CLI's input files: typed values, and located errors for malformed fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.inputs import (
    load_cluster_resources,
    parse_context,
    parse_test,
    parse_user_info,
    parse_values,
)
from engine.errors import SchemaError
from engine.loader import Document, parse_text
from engine.results import Status

HEADER = "apiVersion: cli.kyverno.io/v1alpha1\n"


def document(text: str, source: str = "<test>") -> Document:
    (parsed,) = parse_text(text, source)
    return parsed


def test_values_accepts_value_kind_and_lowercase_namespace_kind() -> None:
    values = parse_values(
        document(
            HEADER
            + """kind: Value
namespaces:
  - apiVersion: v1
    kind: namespace
    metadata: {name: prod, labels: {env: prod}}
namespaceSelector:
  - name: dev
    labels: {env: dev}
globalValues:
  request.operation: delete
"""
        )
    )
    assert values.namespaces["prod"]["kind"] == "Namespace"
    assert values.namespace_labels == {"dev": {"env": "dev"}}
    assert values.operation == "DELETE"


def test_user_info() -> None:
    user = parse_user_info(
        document(
            HEADER
            + """kind: UserInfo
userInfo: {username: alice, groups: [devs]}
clusterRoles: [view]
"""
        )
    )
    assert (user.user_info.username, user.user_info.groups, user.cluster_roles) == (
        "alice",
        ("devs",),
        ("view",),
    )


def test_context_images_by_reference() -> None:
    context = parse_context(
        document(
            HEADER
            + """kind: Context
spec:
  resources: [{apiVersion: v1, kind: ConfigMap, metadata: {name: a, namespace: b}}]
  images: [{image: nginx:1.27, manifest: {}}]
"""
        )
    )
    assert len(context.resources) == 1
    assert set(context.images) == {"nginx:1.27"}


@pytest.mark.parametrize(
    ("parse", "text", "field_path", "line"),
    [
        (parse_values, "kind: Values\n", "apiVersion", 1),
        (parse_values, HEADER + "kind: Test\n", "kind", 2),
        (
            parse_values,
            HEADER + "kind: Values\nglobalValues:\n  request.operation: PATCH\n",
            "globalValues.request.operation",
            4,
        ),
        (
            parse_values,
            HEADER + "kind: Values\nnamespaceSelector:\n  - labels: {a: b}\n",
            "namespaceSelector[0].name",
            4,
        ),
        (parse_user_info, HEADER + "kind: UserInfo\nuserInfo:\n  groups: admins\n", "userInfo.groups", 4),
        (
            parse_context,
            HEADER + "kind: Context\nspec:\n  images:\n    - manifest: {}\n",
            "spec.images[0].image",
            5,
        ),
        (
            parse_test,
            HEADER + "kind: Test\nresults:\n  - policy: p\n    result: maybe\n",
            "results[0].result",
            5,
        ),
        (parse_test, HEADER + "kind: Test\nresults:\n  - result: pass\n", "results[0].policy", 4),
        (
            parse_test,
            HEADER + "kind: Test\nresults:\n  - {policy: p, result: pass, operation: PATCH}\n",
            "results[0].operation",
            4,
        ),
        (parse_test, HEADER + "kind: Test\napiCallResponses:\n  - method: GET\n", "apiCallResponses[0]", 4),
        (parse_test, "name: old-style\npolicies: []\n", "name", 1),
    ],
    ids=[
        "missing-apiVersion",
        "wrong-kind",
        "bad-operation",
        "selector-without-name",
        "groups-not-a-list",
        "image-without-reference",
        "unknown-result",
        "missing-policy",
        "result-operation",
        "api-call-without-url",
        "deprecated-format",
    ],
)
def test_errors_are_located(parse: object, text: str, field_path: str, line: int) -> None:
    with pytest.raises(SchemaError) as caught:
        parse(document(text))  # type: ignore[operator]
    assert caught.value.field_path == field_path
    assert caught.value.location.line == line


def test_test_paths_resolve_against_the_test_file() -> None:
    test = parse_test(
        document(
            HEADER
            + """kind: Test
metadata: {name: t}
policies: [../policy.yaml]
resources: [resources]
variables: values.yaml
jsonPayload: payload.json
httpPayloads: [request.json]
results:
  - {policy: ns/p, result: pass, resources: [a, b/c], generatedResource: gen.yaml}
  - {policy: p, result: skip, resourceSpecs: [{kind: Pod, name: x}], operation: UPDATE}
""",
            "/suites/one/kyverno-test.yaml",
        )
    )
    assert test.policies == (Path("/suites/one/../policy.yaml"),)
    assert test.resources == (Path("/suites/one/resources"),)
    assert test.variables == Path("/suites/one/values.yaml")
    assert test.json_payloads == (Path("/suites/one/payload.json"),)
    assert test.unsupported_inputs == ("httpPayloads",)
    first, second = test.results
    assert (first.policy_name, first.resources, first.generated_resources) == (
        "p",
        ("a", "b/c"),
        ("gen.yaml",),
    )
    assert (second.result, second.operation, second.resource_specs[0].kind) == (Status.SKIP, "UPDATE", "Pod")


def test_cluster_resources_with_crd_files(tmp_path: Path) -> None:
    (tmp_path / "crd.yaml").write_text(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
        "spec: {group: example.com, names: {kind: Widget, plural: widgets}, versions: [{name: v1}]}\n"
    )
    (tmp_path / "cluster.yaml").write_text(
        HEADER
        + """kind: ClusterResource
spec:
  crds: [crd.yaml]
  resources: [{apiVersion: example.com/v1, kind: Widget, metadata: {name: w}}]
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
"""
    )
    context = load_cluster_resources([tmp_path / "cluster.yaml"])
    assert [r["kind"] for r in context.resources] == ["Widget", "Namespace"]
    assert [c["spec"]["names"]["plural"] for c in context.crds] == ["widgets"]
