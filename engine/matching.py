"""Does a policy apply to a request? matchConstraints, the cheap part of every evaluation.

Kubernetes' matching order (k8s `generic/matching.go`, Kyverno `pkg/cel/matching`): namespaceSelector,
objectSelector, excludeResourceRules (which win), resourceRules. Everything here is plain Python over
already-decoded data: no CEL, no I/O. Namespace labels are passed in; `None` means they could not be found,
which is an error for a policy that has a namespaceSelector, never "no labels" (that was CVE-2025-46342).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.model import LabelSelector, MatchResources, ResourceRule
from engine.request import AdmissionRequest


class MatchError(Exception):
    """Matching could not be decided (for example the namespace's labels are unknown)."""


@dataclass(frozen=True, slots=True)
class NamespaceLabels:
    """Labels of the request's namespace; `known` is False when no source could provide them."""

    labels: Mapping[str, str]
    known: bool = True


UNKNOWN_NAMESPACE = NamespaceLabels({}, known=False)


def selector_matches(selector: LabelSelector, labels: Mapping[str, Any]) -> bool:
    """metav1.LabelSelector semantics: all of matchLabels and every matchExpression must hold."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for requirement in selector.match_expressions:
        present = requirement.key in labels
        if requirement.operator == "In":
            if not present or labels[requirement.key] not in requirement.values:
                return False
        elif requirement.operator == "NotIn":
            if present and labels[requirement.key] in requirement.values:
                return False
        elif requirement.operator == "Exists":
            if not present:
                return False
        elif requirement.operator == "DoesNotExist" and present:
            return False
    return True


def _labels_of(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not obj:
        return {}
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        labels = metadata.get("labels")
        if isinstance(labels, Mapping):
            return labels
    return {}


def _resource_matches(pattern: str, resource: str, sub_resource: str) -> bool:
    if pattern == "*/*":
        return True
    if "/" in pattern:
        main, _, sub = pattern.partition("/")
        return bool(sub_resource) and (main in ("*", resource)) and (sub in ("*", sub_resource))
    if sub_resource:
        return False
    return pattern in ("*", resource)


def _name_matches(rule: ResourceRule, request: AdmissionRequest) -> bool:
    if not rule.resource_names:
        return True
    if request.name:
        return request.name in rule.resource_names
    metadata = request.subject.get("metadata")
    generate_name = metadata.get("generateName") if isinstance(metadata, Mapping) else None
    return isinstance(generate_name, str) and any(name.startswith(generate_name) for name in rule.resource_names)


def rule_matches(rule: ResourceRule, request: AdmissionRequest) -> bool:
    """A NamedRuleWithOperations against the request's operation, group/version/resource, scope and name."""
    if rule.operations and "*" not in rule.operations and request.operation not in rule.operations:
        return False
    if not rule.operations:
        return False
    group, version = request.resource.group, request.resource.version
    if "*" not in rule.api_groups and group not in rule.api_groups:
        return False
    if "*" not in rule.api_versions and version not in rule.api_versions:
        return False
    if not any(_resource_matches(p, request.resource.resource, request.sub_resource) for p in rule.resources):
        return False
    if rule.scope == "Cluster" and request.namespaced:
        return False
    if rule.scope == "Namespaced" and not request.namespaced:
        return False
    return _name_matches(rule, request)


def matches(constraints: MatchResources | None, request: AdmissionRequest, namespace: NamespaceLabels) -> bool:
    """Whether the request falls under `constraints`. Raises MatchError when it cannot be decided.

    A policy without matchConstraints matches nothing (Kyverno `matchPolicy`).
    """
    if constraints is None:
        return False
    selector = constraints.namespace_selector
    if selector is not None and not selector.empty:
        if request.kind.kind == "Namespace" and request.kind.group == "":
            if not selector_matches(selector, _labels_of(request.subject)):
                return False
        elif request.namespaced and request.namespace:
            if not namespace.known:
                raise MatchError(f"labels of namespace {request.namespace!r} are not available")
            if not selector_matches(selector, namespace.labels):
                return False
    object_selector = constraints.object_selector
    if (
        object_selector is not None
        and not object_selector.empty
        and not (
            selector_matches(object_selector, _labels_of(request.object))
            or (request.old_object is not None and selector_matches(object_selector, _labels_of(request.old_object)))
        )
    ):
        return False
    if any(rule_matches(rule, request) for rule in constraints.exclude_resource_rules):
        return False
    if not constraints.resource_rules:
        return True
    return any(rule_matches(rule, request) for rule in constraints.resource_rules)


@dataclass(frozen=True, slots=True)
class RequestShape:
    """The parts of a request that resource rules look at, except names: what a match decision can be cached by."""

    operation: str
    group: str
    version: str
    resource: str
    sub_resource: str
    namespaced: bool

    @classmethod
    def of(cls, request: AdmissionRequest) -> RequestShape:
        resource = request.resource
        return cls(
            request.operation,
            resource.group,
            resource.version,
            resource.resource,
            request.sub_resource,
            request.namespaced,
        )


def _rule_decision(rule: ResourceRule, shape: RequestShape) -> bool | None:
    """`rule_matches` for every request of this shape: None when the answer depends on the request's name."""
    if not rule.operations or ("*" not in rule.operations and shape.operation not in rule.operations):
        return False
    if "*" not in rule.api_groups and shape.group not in rule.api_groups:
        return False
    if "*" not in rule.api_versions and shape.version not in rule.api_versions:
        return False
    if not any(_resource_matches(p, shape.resource, shape.sub_resource) for p in rule.resources):
        return False
    if (rule.scope == "Cluster" and shape.namespaced) or (rule.scope == "Namespaced" and not shape.namespaced):
        return False
    return None if rule.resource_names else True


def decide_statically(constraints: MatchResources | None, shape: RequestShape) -> bool | None:
    """What `matches` answers for every request of this shape, or None when it depends on more than the shape
    (namespace or object labels, resource names). Lets evaluation index policies by request shape."""
    if constraints is None:
        return False
    for selector in (constraints.namespace_selector, constraints.object_selector):
        if selector is not None and not selector.empty:
            return None
    excluded = [_rule_decision(rule, shape) for rule in constraints.exclude_resource_rules]
    if True in excluded:
        return False
    if None in excluded:
        return None
    if not constraints.resource_rules:
        return True
    included = [_rule_decision(rule, shape) for rule in constraints.resource_rules]
    if True in included:
        return True
    return None if None in included else False


def candidate_resources(constraints: MatchResources | None) -> frozenset[str] | None:
    """The plural resource names a policy can match at all, or None when any resource may match.

    Computed once at compile time so that evaluation can reject most policies with one set lookup, before any
    selector or rule is examined.
    """
    if constraints is None:
        return frozenset()
    if not constraints.resource_rules:
        return None
    names: set[str] = set()
    for rule in constraints.resource_rules:
        for pattern in rule.resources:
            main = pattern.partition("/")[0]
            if main == "*":
                return None
            names.add(main)
    return frozenset(names)
