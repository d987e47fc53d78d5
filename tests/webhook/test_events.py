"""`webhook.events.EventRecorder`: bounded, rate-limited, never blocking Kubernetes Events (clock injected, no
sleeps), at the seam and once through the real client."""

from __future__ import annotations

import datetime
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from engine.results import PolicyRef, PolicyResponse, ResourceKey, RuleResult, Status
from tests.webhook.fake_apiserver import FakeApiServer, custom_resources
from webhook.cluster import ApiError, InMemoryCluster
from webhook.events import (
    EVENTS,
    MAX_NOTE,
    SCAN_CONTROLLER,
    EventRecorder,
    TokenBucket,
    bounded_note,
    name_prefix,
    policy_event,
)
from webhook.kubernetes_cluster import KubernetesCluster

WHEN = datetime.datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recorder(cluster: Any, clock: FakeClock | None = None, **options: Any) -> EventRecorder:
    return EventRecorder(
        cluster, instance="celvern-admission-test", clock=clock or FakeClock(), wall_clock=lambda: WHEN, **options
    )


def deny(recorder_: EventRecorder, name: str = "web", message: str = "image tag latest", **fields: Any) -> bool:
    arguments: dict[str, Any] = {
        "policy": "disallow-latest",
        "result": "fail",
        "action": "Deny",
        "kind": "Pod",
        "namespace": "shop",
        "name": name,
        "uid": f"uid-{name}",
        "api_version": "v1",
        "message": message,
    }
    arguments.update(fields)
    return recorder_.record_admission(**arguments)


@pytest.mark.parametrize(
    ("fields", "reason", "action", "note"),
    [
        pytest.param(
            {"result": "fail", "action": "Deny"},
            "PolicyViolation",
            "Resource Blocked",
            "Pod shop/web: [p] fail (blocked); bad",
            id="deny",
        ),
        pytest.param(
            {"result": "fail", "action": "Warn"},
            "PolicyViolation",
            "Resource Passed",
            "Pod shop/web: [p] fail (warned); bad",
            id="warn",
        ),
        pytest.param(
            {"result": "error", "action": "Deny"},
            "PolicyError",
            "Resource Blocked",
            "Pod shop/web: [p] error (blocked); bad",
            id="error",
        ),
        pytest.param(
            {"result": "fail", "action": "Audit"},
            "PolicyViolation",
            "Resource Passed",
            "Pod shop/web: [p] fail; bad",
            id="audit",
        ),
    ],
)
def test_policy_event_fields(fields: dict[str, str], reason: str, action: str, note: str) -> None:
    event = policy_event(policy="p", kind="Pod", namespace="shop", name="web", uid="u", message="bad", **fields)
    assert event is not None
    assert (event.reason, event.action, event.note) == (reason, action, note)
    assert event.regarding == {"kind": "Pod", "namespace": "shop", "name": "web", "uid": "u"}
    assert event.related == {"apiVersion": "policies.kyverno.io/v1", "kind": "ValidatingPolicy", "name": "p"}


@pytest.mark.parametrize("result", ["pass", "skip"])
def test_passes_and_skips_make_no_event(result: str) -> None:
    assert policy_event(policy="p", result=result, action="Deny", kind="Pod", namespace="a", name="b") is None


def test_cluster_scoped_resources_and_namespaced_policies() -> None:
    event = policy_event(
        policy="team/p", result="fail", action="Deny", kind="Namespace", namespace="", name="shop", uid="u"
    )
    assert event is not None
    assert event.namespace == "default" and event.note.startswith("Namespace shop: [team/p] fail")
    assert event.related == {
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "NamespacedValidatingPolicy",
        "namespace": "team",
        "name": "p",
    }


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("x" * 5000, id="long ascii"),
        pytest.param("é" * 1000, id="multi-byte characters"),
        pytest.param("short", id="short"),
    ],
)
def test_notes_are_bounded_to_1024(message: str) -> None:
    event = policy_event(policy="p", result="fail", action="Deny", kind="Pod", namespace="a", name="b", message=message)
    assert event is not None
    assert len(event.note) <= MAX_NOTE and len(event.note.encode()) <= MAX_NOTE
    assert event.note.endswith("..." if len(message) > 100 else "short")
    assert bounded_note("abc", 1024) == "abc"


def test_the_event_object() -> None:
    memory = InMemoryCluster()
    events = recorder(memory)
    assert deny(events)
    assert events.process() == 1
    (created,) = memory.list(EVENTS).items
    assert created["metadata"]["namespace"] == "shop"
    assert created["metadata"]["name"].startswith("web.")
    assert created["eventTime"] == "2025-05-06T07:08:09.123456Z"
    assert created["reportingController"] == "celvern-admission"
    assert created["reportingInstance"] == "celvern-admission-test"
    assert (created["reason"], created["action"], created["type"]) == ("PolicyViolation", "Resource Blocked", "Warning")
    assert created["note"] == "Pod shop/web: [disallow-latest] fail (blocked); image tag latest"
    assert created["regarding"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "shop",
        "name": "web",
        "uid": "uid-web",
    }
    assert created["related"]["name"] == "disallow-latest"


def test_default_instance_is_controller_and_hostname() -> None:
    events = EventRecorder(InMemoryCluster(), controller=SCAN_CONTROLLER)
    assert events.instance.startswith("celvern-scan-")


def test_rate_limit_sends_the_burst_and_queues_the_rest() -> None:
    memory, clock = InMemoryCluster(), FakeClock()
    events = recorder(memory, clock, rate=2.0, burst=3, dedup_window=0)
    for index in range(6):
        assert deny(events, name=f"p{index}")
    assert events.process() == 3  # the burst
    assert events.pending == 3 and events.process() == 0
    clock.now += 1.0  # two tokens a second
    assert events.process() == 2
    clock.now += 10.0
    assert events.process() == 1 and events.pending == 0
    assert len(memory.list(EVENTS).items) == 6 and events.dropped == 0


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    registry = CollectorRegistry()
    events = recorder(InMemoryCluster(), queue_size=2, dedup_window=0, registry=registry)
    accepted = [deny(events, name=f"p{index}") for index in range(5)]
    assert accepted == [True, True, False, False, False]
    assert events.dropped == 3
    assert registry.get_sample_value("celvern_events_dropped_total", {"cause": "queue_full"}) == 3


def test_identical_events_within_the_window_are_deduplicated() -> None:
    clock = FakeClock()
    events = recorder(InMemoryCluster(), clock, dedup_window=30)
    assert deny(events) and not deny(events)
    assert deny(events, name="other")
    clock.now += 31
    assert deny(events)
    assert events.duplicates == 1


class Refusing(InMemoryCluster):
    def create(self, resource: Any, obj: Any) -> dict[str, Any]:
        raise ApiError(403, "events is forbidden")


class Exploding(InMemoryCluster):
    def create(self, resource: Any, obj: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")


@pytest.mark.parametrize("cluster", [Refusing(), Exploding()], ids=["api error", "unexpected error"])
def test_failed_creates_are_counted_never_raised(cluster: InMemoryCluster) -> None:
    registry = CollectorRegistry()
    events = recorder(cluster, registry=registry)
    assert deny(events)
    assert events.process() == 1
    assert (events.failed, events.sent) == (1, 0)
    assert registry.get_sample_value("celvern_events_dropped_total", {"cause": "api_error"}) == 1


def test_record_never_raises_into_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    events = recorder(InMemoryCluster())

    def broken(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(events, "_duplicate", broken)
    assert deny(events) is False


def test_record_responses_records_findings_only() -> None:
    events = recorder(InMemoryCluster(), dedup_window=0)
    key = ResourceKey("v1", "Pod", "shop", "web", "u")
    ref = PolicyRef("ValidatingPolicy", "p")
    responses = [
        PolicyResponse(ref, key, (RuleResult(Status.FAIL, "bad"),)),
        PolicyResponse(ref, key, (RuleResult(Status.PASS, "ok"),)),
        PolicyResponse(PolicyRef("ValidatingPolicy", "q"), key, (RuleResult(Status.ERROR, "boom"),)),
    ]
    assert events.record_responses(key, responses) == 2


@pytest.mark.parametrize(
    ("advance", "available"),
    [pytest.param(0.0, False, id="empty"), pytest.param(0.5, True, id="refilled"), pytest.param(99, True, id="capped")],
)
def test_token_bucket(advance: float, available: bool) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=1, clock=clock)
    assert bucket.take()
    clock.now += advance
    assert bucket.take() is available
    assert not bucket.take()


# --- the sender thread and the real client ----------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with custom_resources(EVENTS), FakeApiServer() as fake:
        yield fake


def test_events_reach_the_api_server_through_the_sender_thread(server: FakeApiServer, tmp_path: Path) -> None:
    created = threading.Event()
    real_create = server.cluster.create

    def create(resource: Any, obj: Any) -> dict[str, Any]:
        answer = real_create(resource, obj)
        created.set()
        return answer

    server.cluster.create = create  # type: ignore[method-assign]
    with KubernetesCluster.from_kubeconfig(server.write_kubeconfig(tmp_path), timeout=5) as kube:
        events = EventRecorder(kube, instance="test")
        events.start()
        try:
            assert deny(events)
            assert created.wait(timeout=10)
        finally:
            events.stop()
    (event,) = server.cluster.list(EVENTS, "shop").items
    assert event["reason"] == "PolicyViolation" and event["metadata"]["name"].startswith("web.")
    assert ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events") in {(m, p) for m, p, _ in server.requests}


def test_an_event_dropped_on_a_full_queue_is_not_taken_for_sent() -> None:
    memory = InMemoryCluster()
    events = recorder(memory, queue_size=1, dedup_window=30)
    assert deny(events, name="first")
    assert not deny(events, name="second")  # the queue is full: dropped
    assert events.process() == 1
    assert deny(events, name="second")  # its repeat is no duplicate: the first one was never queued
    assert not deny(events, name="second")  # but this one is
    assert events.process() == 1
    assert [event["regarding"]["name"] for event in memory.list(EVENTS).items] == ["first", "second"]
    assert (events.dropped, events.duplicates) == (1, 1)


def test_the_dedup_window_forgets_the_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("webhook.events._MAX_DEDUP_ENTRIES", 3)
    clock = FakeClock()
    events = recorder(InMemoryCluster(), clock, queue_size=100, dedup_window=30)
    for name in ("a", "b", "c", "d"):  # "d" pushes "a" out
        assert deny(events, name=name)
        clock.now += 1
    assert deny(events, name="a")
    assert not deny(events, name="c") and not deny(events, name="d")
    clock.now += 30  # everything expired
    assert deny(events, name="c")
    assert len(events._recent) == 1


class Blocking(InMemoryCluster):
    """Creates block until `release`; `second` is set once two events exist."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.second = threading.Event()

    def create(self, resource: Any, obj: Any) -> dict[str, Any]:
        self.entered.set()
        self.release.wait(10)
        created = super().create(resource, obj)
        if len(self.list(EVENTS).items) >= 2:
            self.second.set()
        return created


def test_start_after_a_stop_that_timed_out_keeps_one_sender() -> None:
    cluster = Blocking()
    events = recorder(cluster, dedup_window=0)
    events.start()
    try:
        assert deny(events, name="first")
        assert cluster.entered.wait(5)  # the sender is stuck in a create
        sender = events._thread
        events.stop(timeout=0.01)
        assert sender is not None and sender.is_alive()
        assert events._thread is sender  # still known
        events.start()  # must not start a second sender
        assert events._thread is sender
        assert [t for t in threading.enumerate() if t.name == "celvern-events" and t is not sender] == []
        assert deny(events, name="second")
        cluster.release.set()
        assert cluster.second.wait(5)  # the same sender carries on with the queue
        assert sender.is_alive()
        assert [event["regarding"]["name"] for event in cluster.list(EVENTS).items] == ["first", "second"]
    finally:
        cluster.release.set()
        events.stop()
    assert events._thread is None


DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        pytest.param("web", "web", id="plain"),
        pytest.param("web-1.example", "web-1.example", id="dotted"),
        pytest.param("system:controller:job-controller", "system-controller-job-controller", id="colons"),
        pytest.param("system:node:worker-1", "system-node-worker-1", id="node"),
        pytest.param("Admin_Role", "admin-role", id="upper-case-and-underscore"),
        pytest.param("-lead..trail-", "lead.trail", id="bad-edges-and-empty-label"),
        pytest.param("a" * 199 + "-b", "a" * 199, id="cut-ending-in-dash"),
        pytest.param("a" * 199 + ".b", "a" * 199, id="cut-ending-in-dot"),
        pytest.param("a" * 300, "a" * 200, id="long"),
        pytest.param("café", "caf", id="non-ascii"),
        pytest.param(":::", "celvern", id="nothing-left"),
        pytest.param("", "celvern", id="empty"),
    ],
)
def test_event_names_are_valid_dns_subdomains(name: str, prefix: str) -> None:
    assert name_prefix(name) == prefix
    memory = InMemoryCluster()
    events = recorder(memory)
    assert deny(events, name=name)
    assert events.process() == 1
    (created,) = memory.list(EVENTS).items
    generate = created["metadata"]["generateName"]
    assert generate == f"{prefix}."
    generated = f"{generate}x7k2q"  # what the API server makes of it
    assert DNS_SUBDOMAIN.fullmatch(generated) and len(generated) <= 253
    assert created["regarding"].get("name", "") == name  # the real name stays where users read it
    assert f"Pod shop/{name}:" in created["note"]
