"""matchConstraints: selectors, resource rules, exclusions, scope, names and the unknown-namespace error."""

from __future__ import annotations

from typing import Any

import pytest

from engine.matching import (
    UNKNOWN_NAMESPACE,
    MatchError,
    NamespaceLabels,
    RequestShape,
    decide_statically,
    matches,
    selector_matches,
)
from engine.model import LabelSelector, LabelSelectorRequirement, MatchResources, ResourceRule
from engine.request import request_for_resource

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web"}},
}
DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "prod"}}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod", "labels": {"env": "prod"}}}
NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}
GENERATED = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "namespace": "prod"}}


def rule(
    groups: str = "",
    versions: str = "v1",
    resources: str = "pods",
    operations: str = "CREATE,UPDATE",
    **extra: Any,
) -> ResourceRule:
    return ResourceRule(
        api_groups=tuple(groups.split(",")),
        api_versions=tuple(versions.split(",")),
        resources=tuple(resources.split(",")),
        operations=tuple(operations.split(",")),
        **extra,
    )


def labels(**values: str) -> LabelSelector:
    return LabelSelector(match_labels=values)


def expression(key: str, operator: str, *values: str) -> LabelSelector:
    return LabelSelector(match_expressions=(LabelSelectorRequirement(key, operator, values),))


PROD = NamespaceLabels({"env": "prod"})

CASES = [
    ("pod-matches-pod-rule", MatchResources(resource_rules=(rule(),)), POD, "CREATE", PROD, True),
    ("operation-not-listed", MatchResources(resource_rules=(rule(),)), POD, "DELETE", PROD, False),
    ("wildcard-operation", MatchResources(resource_rules=(rule(operations="*"),)), POD, "DELETE", PROD, True),
    ("group-mismatch", MatchResources(resource_rules=(rule(groups="apps"),)), POD, "CREATE", PROD, False),
    (
        "deployment-rule",
        MatchResources(resource_rules=(rule("apps", "v1", "deployments"),)),
        DEPLOYMENT,
        "CREATE",
        PROD,
        True,
    ),
    (
        "star-resources",
        MatchResources(resource_rules=(rule("*", "*", "*"),)),
        DEPLOYMENT,
        "CREATE",
        PROD,
        True,
    ),
    ("empty-rules-match-all", MatchResources(), DEPLOYMENT, "CREATE", PROD, True),
    (
        "exclude-wins",
        MatchResources(resource_rules=(rule("*", "*", "*"),), exclude_resource_rules=(rule(),)),
        POD,
        "CREATE",
        PROD,
        False,
    ),
    (
        "namespace-selector-match",
        MatchResources(namespace_selector=labels(env="prod"), resource_rules=(rule(),)),
        POD,
        "CREATE",
        PROD,
        True,
    ),
    (
        "namespace-selector-miss",
        MatchResources(namespace_selector=labels(env="dev"), resource_rules=(rule(),)),
        POD,
        "CREATE",
        PROD,
        False,
    ),
    (
        "namespace-selector-notin-empty-labels",
        MatchResources(
            namespace_selector=expression("kubernetes.io/metadata.name", "NotIn", "kube-system"),
            resource_rules=(rule(),),
        ),
        POD,
        "CREATE",
        NamespaceLabels({}),
        True,
    ),
    (
        "namespace-selector-on-namespace-uses-own-labels",
        MatchResources(namespace_selector=labels(env="prod"), resource_rules=(rule(resources="namespaces"),)),
        NAMESPACE,
        "CREATE",
        UNKNOWN_NAMESPACE,
        True,
    ),
    (
        "namespace-selector-ignored-for-cluster-scoped",
        MatchResources(namespace_selector=labels(env="dev"), resource_rules=(rule(resources="nodes"),)),
        NODE,
        "CREATE",
        UNKNOWN_NAMESPACE,
        True,
    ),
    (
        "object-selector-match",
        MatchResources(object_selector=labels(app="web"), resource_rules=(rule(),)),
        POD,
        "CREATE",
        PROD,
        True,
    ),
    (
        "object-selector-miss",
        MatchResources(object_selector=expression("app", "In", "db"), resource_rules=(rule(),)),
        POD,
        "CREATE",
        PROD,
        False,
    ),
    (
        "object-selector-exists",
        MatchResources(object_selector=expression("app", "Exists"), resource_rules=(rule(),)),
        POD,
        "CREATE",
        PROD,
        True,
    ),
    (
        "object-selector-does-not-exist",
        MatchResources(object_selector=expression("app", "DoesNotExist"), resource_rules=(rule(),)),
        POD,
        "CREATE",
        PROD,
        False,
    ),
    (
        "object-selector-on-delete-uses-old-object",
        MatchResources(object_selector=labels(app="web"), resource_rules=(rule(operations="DELETE"),)),
        POD,
        "DELETE",
        PROD,
        True,
    ),
    (
        "scope-cluster-excludes-namespaced",
        MatchResources(resource_rules=(rule(scope="Cluster"),)),
        POD,
        "CREATE",
        PROD,
        False,
    ),
    (
        "scope-namespaced",
        MatchResources(resource_rules=(rule(scope="Namespaced"),)),
        POD,
        "CREATE",
        PROD,
        True,
    ),
    (
        "resource-names-match",
        MatchResources(resource_rules=(rule(resource_names=("web",)),)),
        POD,
        "CREATE",
        PROD,
        True,
    ),
    (
        "resource-names-miss",
        MatchResources(resource_rules=(rule(resource_names=("db",)),)),
        POD,
        "CREATE",
        PROD,
        False,
    ),
    (
        "resource-names-generate-name-prefix",
        MatchResources(resource_rules=(rule(resource_names=("web-abc",)),)),
        GENERATED,
        "CREATE",
        PROD,
        True,
    ),
    (
        "subresource-rule-does-not-match-main-resource",
        MatchResources(resource_rules=(rule(resources="pods/status"),)),
        POD,
        "CREATE",
        PROD,
        False,
    ),
    ("no-constraints-match-nothing", None, POD, "CREATE", PROD, False),
]


@pytest.mark.parametrize(
    ("constraints", "resource", "operation", "namespace", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_matches(
    constraints: MatchResources | None,
    resource: dict[str, Any],
    operation: str,
    namespace: NamespaceLabels,
    expected: bool,
) -> None:
    request = request_for_resource(resource, operation=operation)
    assert matches(constraints, request, namespace) is expected


def test_unknown_namespace_labels_are_an_error_not_a_bypass() -> None:
    constraints = MatchResources(namespace_selector=expression("env", "NotIn", "prod"), resource_rules=(rule(),))
    with pytest.raises(MatchError, match="labels of namespace 'prod' are not available"):
        matches(constraints, request_for_resource(POD), UNKNOWN_NAMESPACE)


@pytest.mark.parametrize(
    ("selector", "given", "expected"),
    [
        (labels(a="1"), {"a": "1", "b": "2"}, True),
        (labels(a="1"), {"a": "2"}, False),
        (expression("a", "NotIn", "1"), {}, True),
        (expression("a", "In", "1", "2"), {"a": "2"}, True),
        (LabelSelector(), {}, True),
    ],
    ids=["match-labels", "match-labels-mismatch", "notin-absent", "in-one-of", "empty-selector"],
)
def test_selector_matches(selector: LabelSelector, given: dict[str, str], expected: bool) -> None:
    assert selector_matches(selector, given) is expected


STATIC = [
    ("rules-only", MatchResources(resource_rules=(rule(),)), POD, "CREATE", True),
    ("other-operation", MatchResources(resource_rules=(rule(),)), POD, "DELETE", False),
    (
        "excluded",
        MatchResources(resource_rules=(rule("*", "*", "*"),), exclude_resource_rules=(rule(),)),
        POD,
        "CREATE",
        False,
    ),
    ("names-decide", MatchResources(resource_rules=(rule(resource_names=("web",)),)), POD, "CREATE", None),
    ("excluded-by-name", MatchResources(exclude_resource_rules=(rule(resource_names=("web",)),)), POD, "CREATE", None),
    (
        "namespace-selector",
        MatchResources(namespace_selector=labels(env="prod"), resource_rules=(rule(),)),
        POD,
        "CREATE",
        None,
    ),
    (
        "object-selector",
        MatchResources(object_selector=labels(app="web"), resource_rules=(rule(),)),
        POD,
        "CREATE",
        None,
    ),
    ("no-constraints", None, POD, "CREATE", False),
]


@pytest.mark.parametrize(
    ("constraints", "resource", "operation", "expected"), [c[1:] for c in STATIC], ids=[c[0] for c in STATIC]
)
def test_decide_statically(
    constraints: MatchResources | None, resource: dict[str, Any], operation: str, expected: bool | None
) -> None:
    request = request_for_resource(resource, operation=operation)
    assert decide_statically(constraints, RequestShape.of(request)) is expected


@pytest.mark.parametrize(
    ("constraints", "resource", "operation", "namespace", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_static_decisions_agree_with_matching(
    constraints: MatchResources | None,
    resource: dict[str, Any],
    operation: str,
    namespace: NamespaceLabels,
    expected: bool,
) -> None:
    """Whatever is decided from the request's shape alone is what full matching answers."""
    request = request_for_resource(resource, operation=operation)
    decision = decide_statically(constraints, RequestShape.of(request))
    assert decision is None or decision is expected
