"""What the webhook app hands to the decision history and to Kubernetes Events, and that neither can cost an answer."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette

from tests.webhook.test_admission import BROKEN, mutating, pod, policy_set, review, validating
from tests.webhook.test_server import NAMESPACES, answer, post_review
from webhook.history import Decision
from webhook.server import create_app
from webhook.state import Snapshot, StaticPolicySource

DENY = validating("deny-all", "false", "denied by policy", actions="Deny")
WARN_AUDIT = validating("warn-audit", "false", "advised", actions="Warn, Audit")
AUDIT = validating("audit-only", "false", "audited", actions="Audit")
PASSES = validating("passes", "true", "never shown", actions="Deny")
IGNORED_ERROR = validating("ignored", BROKEN, actions="Deny", failure_policy="Ignore")


class Sinks:
    """Records what the app submits; `broken` makes both sinks raise."""

    def __init__(self, broken: bool = False) -> None:
        self.decisions: list[Decision] = []
        self.events: list[dict[str, Any]] = []
        self.broken = broken

    def submit(self, decision: Decision) -> None:
        if self.broken:
            raise RuntimeError("history is down")
        self.decisions.append(decision)

    def record_admission(self, **fields: Any) -> None:
        if self.broken:
            raise RuntimeError("events are down")
        self.events.append(fields)


def make_app(sinks: Sinks, *documents: str) -> Starlette:
    snapshot = Snapshot(policy_set(*documents), version="test")
    return create_app(StaticPolicySource(snapshot), NAMESPACES, history=sinks, events=sinks)


@pytest.mark.parametrize(
    ("documents", "recorded", "evented"),
    [
        pytest.param([DENY], [("deny-all", "deny", "fail")], [("deny-all", "deny")], id="deny"),
        pytest.param(
            [WARN_AUDIT], [("warn-audit", "warn", "fail")], [("warn-audit", "warn")], id="warn-and-audit-once"
        ),
        pytest.param([AUDIT], [("audit-only", "audit", "fail")], [], id="audit-not-an-event"),
        pytest.param([PASSES], [], [], id="pass-not-recorded"),
        pytest.param([IGNORED_ERROR], [], [], id="ignored-error-not-recorded"),
        pytest.param(
            [DENY, AUDIT],
            [("deny-all", "deny", "fail"), ("audit-only", "audit", "fail")],
            [("deny-all", "deny")],
            id="two-policies",
        ),
    ],
)
def test_decisions_recorded(
    documents: list[str], recorded: list[tuple[str, str, str]], evented: list[tuple[str, str]]
) -> None:
    sinks = Sinks()
    post_review(make_app(sinks, *documents), review(pod(name="web-1"), uid="u-1"))
    assert sorted((d.policy, d.action, d.result) for d in sinks.decisions) == sorted(recorded)
    assert sorted((e["policy"], e["action"]) for e in sinks.events) == sorted(evented)
    for decision in sinks.decisions:
        assert (decision.source, decision.kind, decision.namespace, decision.name) == (
            "admission",
            "Pod",
            "default",
            "web-1",
        )
        assert decision.operation == "CREATE" and decision.time.tzinfo is not None
    for event in sinks.events:
        assert (event["kind"], event["api_version"], event["namespace"], event["name"]) == (
            "Pod",
            "v1",
            "default",
            "web-1",
        )


def test_delete_is_recorded_with_the_old_object() -> None:
    sinks = Sinks()
    post_review(make_app(sinks, DENY), review(operation="DELETE", old=pod()))
    assert [(d.operation, d.name) for d in sinks.decisions] == [("DELETE", "web")]
    assert [e["api_version"] for e in sinks.events] == ["v1"]


def test_broken_sinks_never_cost_an_answer() -> None:
    response = answer(post_review(make_app(Sinks(broken=True), DENY), review(uid="u-2")))
    assert response["allowed"] is False and response["uid"] == "u-2"


def test_dry_runs_are_not_recorded() -> None:
    sinks = Sinks()
    response = answer(post_review(make_app(sinks, DENY), review(uid="u-3", dry_run=True)))
    assert response["allowed"] is False  # still evaluated and answered
    assert sinks.decisions == [] and sinks.events == []


def test_events_about_cluster_scoped_objects_go_to_the_default_namespace() -> None:
    deny_namespaces = DENY.replace("resources: [pods]", "resources: [namespaces]")
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "new-team"}}
    document = review(namespace, namespace="new-team")
    document["request"]["kind"] = {"group": "", "version": "v1", "kind": "Namespace"}
    document["request"]["resource"] = {"group": "", "version": "v1", "resource": "namespaces"}
    document["request"]["name"] = "new-team"
    sinks = Sinks()
    post_review(make_app(sinks, deny_namespaces), document)
    assert [(e["kind"], e["name"], e["namespace"]) for e in sinks.events] == [("Namespace", "new-team", "")]


@pytest.mark.parametrize(
    ("document", "path", "kind"),
    [
        pytest.param(DENY, "/validate", "ValidatingPolicy", id="validating"),
        pytest.param(
            mutating("broken-patch", "[JSONPatch{op: 'add', path: '/metadata/labels', value: object.spec.nothing}]"),
            "/mutate",
            "MutatingPolicy",
            id="mutating-error",
        ),
    ],
)
def test_events_name_the_policy_kind(document: str, path: str, kind: str) -> None:
    sinks = Sinks()
    post_review(make_app(sinks, document), review(uid="u-4"), path=path)
    assert [e["policy_kind"] for e in sinks.events] == [kind]
