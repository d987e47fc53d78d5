"""Autogen: eligibility and the textual rewrite of expressions for pod controllers (kyverno-cel-spec.md 3.2)."""

from __future__ import annotations

import pytest

from engine import autogen
from engine.model import LabelSelector, MatchResources, ResourceRule

POD_RULE = ResourceRule(("",), ("v1",), ("pods",), ("CREATE", "UPDATE"))


@pytest.mark.parametrize(
    ("text", "replacements", "expected"),
    [
        ("object.spec.containers", autogen.DEFAULTS, "object.spec.template.spec.containers"),
        ("oldObject.spec.volumes", autogen.DEFAULTS, "oldObject.spec.template.spec.volumes"),
        ("object.metadata.labels", autogen.DEFAULTS, "object.spec.template.metadata.labels"),
        ("object.metadata.name", autogen.DEFAULTS, "object.metadata.name"),
        ("object.metadata.namespace == 'x'", autogen.DEFAULTS, "object.metadata.namespace == 'x'"),
        ("object.metadata.nameSuffix", autogen.DEFAULTS, "object.spec.template.metadata.nameSuffix"),
        ("object.spec.containers", autogen.CRONJOBS, "object.spec.jobTemplate.spec.template.spec.containers"),
        (
            "object.metadata.?annotations",
            autogen.CRONJOBS,
            "object.spec.jobTemplate.spec.template.metadata.?annotations",
        ),
        ("object.kind == 'Pod'", autogen.DEFAULTS, "object.kind == 'Pod'"),
    ],
    ids=[
        "spec",
        "old-object-spec",
        "metadata-labels",
        "metadata-name-protected",
        "metadata-namespace-protected",
        "protection-needs-whole-segment",
        "cronjob-spec",
        "cronjob-optional-metadata",
        "kind-untouched",
    ],
)
def test_rewrite_text(text: str, replacements: str, expected: str) -> None:
    assert autogen.rewrite_text(text, replacements) == expected


@pytest.mark.parametrize(
    ("constraints", "expected"),
    [
        (MatchResources(resource_rules=(POD_RULE,)), True),
        (MatchResources(resource_rules=(POD_RULE,), namespace_selector=LabelSelector({"a": "b"})), True),
        (MatchResources(resource_rules=(POD_RULE,), object_selector=LabelSelector({"a": "b"})), False),
        (MatchResources(resource_rules=(POD_RULE, POD_RULE)), False),
        (
            MatchResources(resource_rules=(ResourceRule(("",), ("v1",), ("pods",), ("CREATE",), ("web",)),)),
            False,
        ),
        (
            MatchResources(resource_rules=(ResourceRule(("apps",), ("v1",), ("deployments",), ("CREATE",)),)),
            False,
        ),
        (MatchResources(resource_rules=(POD_RULE,), exclude_resource_rules=(POD_RULE,)), False),
        (None, False),
    ],
    ids=[
        "plain-pod-rule",
        "namespace-selector-kept",
        "object-selector",
        "two-rules",
        "resource-names",
        "not-pods",
        "exclusions",
        "no-constraints",
    ],
)
def test_eligible(constraints: MatchResources | None, expected: bool) -> None:
    assert autogen.eligible(constraints) is expected
