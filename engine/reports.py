"""Policy reports (`openreports.io/v1alpha1`) built from policy responses.

Reports are how Kyverno publishes results outside admission: the background controller writes one per
resource, and `kyverno apply -p` prints one merged `ClusterReport` for cluster-wide policies plus one
`PolicyReport` per namespaced policy (kyverno-cel-spec.md section 5). celvern builds the same documents from
the same `PolicyResponse` values, so that tools reading Kyverno's reports read ours unchanged. This module is
a pure function of its inputs: the caller passes the clock, the CLI and the (future) report controller share
it."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from engine.results import PolicyRef, PolicyResponse, ResourceKey, RuleResult, Status, report_status

API_VERSION = "openreports.io/v1alpha1"
CLUSTER_REPORT_NAME = "merged"

SOURCES: Mapping[str, str] = {
    "ValidatingPolicy": "KyvernoValidatingPolicy",
    "NamespacedValidatingPolicy": "KyvernoValidatingPolicy",
    "MutatingPolicy": "KyvernoMutatingPolicy",
    "NamespacedMutatingPolicy": "KyvernoMutatingPolicy",
    "GeneratingPolicy": "KyvernoGeneratingPolicy",
    "NamespacedGeneratingPolicy": "KyvernoGeneratingPolicy",
    "ImageValidatingPolicy": "KyvernoImageValidatingPolicy",
    "NamespacedImageValidatingPolicy": "KyvernoImageValidatingPolicy",
}
"""Report `source` per policy kind (Kyverno `pkg/utils/report/source.go`)."""

_MESSAGE_PROPERTIES: Mapping[Status, str] = {
    Status.PASS: "passMessage",
    Status.FAIL: "failMessage",
    Status.WARN: "warnMessage",
    Status.ERROR: "errorMessage",
    Status.SKIP: "skipMessage",
}


def empty_summary() -> dict[str, int]:
    return {status.value: 0 for status in (Status.PASS, Status.FAIL, Status.WARN, Status.ERROR, Status.SKIP)}


def object_reference(key: ResourceKey) -> dict[str, str]:
    """A core/v1 ObjectReference for the resource (empty fields left out, as Kubernetes serialises them)."""
    reference = {
        "apiVersion": key.api_version,
        "kind": key.kind,
        "namespace": key.namespace,
        "name": key.name,
        "uid": key.uid,
    }
    return {field: value for field, value in reference.items() if value}


def result_status(policy: PolicyRef, status: Status, *, audit_warn: bool = False) -> Status:
    """The status a report shows: unscored fails are warns; with `audit_warn` every CEL fail is a warn.

    CEL policies have no validationFailureAction, which Kyverno's `--audit-warn` reads as Audit, so the flag
    turns all of their fails into warns (kyverno-cel-spec.md 4.1).
    """
    status = report_status(policy, status)
    if audit_warn and status is Status.FAIL:
        return Status.WARN
    return status


def report_result(
    response: PolicyResponse, rule: RuleResult, *, timestamp: datetime.datetime, audit_warn: bool = False
) -> dict[str, Any]:
    """One `results[]` entry of a report."""
    policy = response.policy
    status = result_status(policy, rule.status, audit_warn=audit_warn)
    properties = dict(rule.properties)
    message = properties.get(_MESSAGE_PROPERTIES[status]) or properties.get("message") or rule.message
    result: dict[str, Any] = {
        "source": SOURCES.get(policy.kind, f"Kyverno{policy.kind}"),
        "policy": policy.key,
        "rule": rule.rule,
        "message": message,
        "result": status.value,
        "scored": policy.scored,
    }
    if policy.severity:
        result["severity"] = policy.severity
    if policy.category:
        result["category"] = policy.category
    result["timestamp"] = {"seconds": int(timestamp.timestamp()), "nanos": 0}
    reference = object_reference(response.resource)
    if reference:
        result["resources"] = [reference]
    if properties:
        result["properties"] = properties
    return result


def _report(kind: str, metadata: dict[str, str], results: list[dict[str, Any]]) -> dict[str, Any]:
    summary = empty_summary()
    for result in results:
        summary[result["result"]] += 1
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": metadata,
        "results": results,
        "summary": summary,
    }


def build_reports(
    responses: Iterable[PolicyResponse],
    *,
    timestamp: datetime.datetime | None = None,
    audit_warn: bool = False,
) -> list[dict[str, Any]]:
    """The `kyverno apply -p` documents: a merged ClusterReport for cluster-scoped policies, then one report
    per namespaced policy (Kyverno gives those `kind: PolicyReport` under the openreports apiVersion, a quirk
    kept here). Responses without rules (the policy did not apply) contribute nothing; the ClusterReport is
    always present, possibly empty.
    """
    when = timestamp or datetime.datetime.now(datetime.UTC)
    cluster_results: list[dict[str, Any]] = []
    namespaced: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for response in responses:
        for rule in response.rules:
            result = report_result(response, rule, timestamp=when, audit_warn=audit_warn)
            policy = response.policy
            if policy.namespace:
                namespaced.setdefault((policy.namespace, policy.name), []).append(result)
            else:
                cluster_results.append(result)
    reports = [_report("ClusterReport", {"name": CLUSTER_REPORT_NAME}, cluster_results)]
    for (namespace, name), results in namespaced.items():
        reports.append(_report("PolicyReport", {"name": name, "namespace": namespace}, results))
    return reports
