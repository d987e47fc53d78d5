"""openreports.io reports built from responses: scoping, statuses, messages and summaries."""

from __future__ import annotations

import datetime
from types import MappingProxyType

import pytest

from engine.reports import build_reports, report_result, result_status
from engine.results import PolicyRef, PolicyResponse, ResourceKey, RuleResult, Status

NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
POD = ResourceKey("v1", "Pod", "shop", "web", uid="123")
CLUSTER = PolicyRef("ValidatingPolicy", "require-labels", severity="high", category="Best Practices")
NAMESPACED = PolicyRef("NamespacedValidatingPolicy", "local", namespace="shop")
UNSCORED = PolicyRef("ValidatingPolicy", "advice", scored=False)


def response(policy: PolicyRef, *rules: RuleResult) -> PolicyResponse:
    return PolicyResponse(policy, POD, rules)


def test_result_fields() -> None:
    rule = RuleResult(Status.FAIL, "no labels", properties=MappingProxyType({"cel.validationIndex": "0"}))
    assert report_result(response(CLUSTER, rule), rule, timestamp=NOW) == {
        "source": "KyvernoValidatingPolicy",
        "policy": "require-labels",
        "rule": "",
        "message": "no labels",
        "result": "fail",
        "scored": True,
        "severity": "high",
        "category": "Best Practices",
        "timestamp": {"seconds": 1735787045, "nanos": 0},
        "resources": [{"apiVersion": "v1", "kind": "Pod", "namespace": "shop", "name": "web", "uid": "123"}],
        "properties": {"cel.validationIndex": "0"},
    }


@pytest.mark.parametrize(
    ("policy", "status", "audit_warn", "expected"),
    [
        (CLUSTER, Status.FAIL, False, Status.FAIL),
        (CLUSTER, Status.FAIL, True, Status.WARN),
        (UNSCORED, Status.FAIL, False, Status.WARN),
        (UNSCORED, Status.PASS, True, Status.PASS),
        (CLUSTER, Status.ERROR, True, Status.ERROR),
    ],
    ids=["fail", "audit-warn", "unscored", "pass-unchanged", "error-unchanged"],
)
def test_result_status(policy: PolicyRef, status: Status, audit_warn: bool, expected: Status) -> None:
    assert result_status(policy, status, audit_warn=audit_warn) is expected


def test_message_properties_override_the_message() -> None:
    rule = RuleResult(Status.PASS, "success", properties=MappingProxyType({"passMessage": "all good"}))
    assert report_result(response(CLUSTER, rule), rule, timestamp=NOW)["message"] == "all good"


def test_cluster_and_namespaced_reports() -> None:
    reports = build_reports(
        [
            response(CLUSTER, RuleResult(Status.PASS, "success")),
            response(CLUSTER),  # did not match: contributes nothing
            response(NAMESPACED, RuleResult(Status.SKIP, "skip")),
            response(UNSCORED, RuleResult(Status.FAIL, "consider labels")),
        ],
        timestamp=NOW,
    )
    cluster, local = reports
    assert (cluster["apiVersion"], cluster["kind"], cluster["metadata"]) == (
        "openreports.io/v1alpha1", "ClusterReport", {"name": "merged"},
    )  # fmt: skip
    assert cluster["summary"] == {"pass": 1, "fail": 0, "warn": 1, "error": 0, "skip": 0}
    assert (local["kind"], local["metadata"]) == ("PolicyReport", {"name": "local", "namespace": "shop"})
    assert [result["policy"] for result in local["results"]] == ["shop/local"]
    assert local["summary"]["skip"] == 1


def test_empty_input_still_gives_a_cluster_report() -> None:
    (report,) = build_reports([], timestamp=NOW)
    assert report["results"] == []
    assert sum(report["summary"].values()) == 0
