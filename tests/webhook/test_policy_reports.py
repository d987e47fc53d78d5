"""Per-resource policy reports (`webhook.policy_reports`): builders, and `ReportWriter` against `InMemoryCluster`."""

from __future__ import annotations

import datetime
import itertools
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry

from engine.resources import DEFAULT_MAPPER, ResourceType
from engine.results import PolicyRef, PolicyResponse, ResourceKey, RuleResult, Status
from tests.webhook.fake_apiserver import FakeApiServer, custom_resources
from tests.webhook.test_scanner import NAMESPACES, namespace, pod, policy, policy_set
from webhook.cluster import ApiError, Conflict, InMemoryCluster
from webhook.policy_reports import (
    CLUSTER_POLICY_REPORTS,
    MAX_REPORT_BYTES,
    OPEN_CLUSTER_REPORTS,
    OPEN_REPORTS,
    POLICY_REPORTS,
    TRUNCATION_MARKER,
    ChildReportRounds,
    IsolatedRound,
    ReportFormat,
    ReportMetrics,
    ReportRounds,
    ReportWriter,
    RoundFailed,
    WriteSummary,
    build_report,
    report_digest,
    scan_and_write,
)
from webhook.scanner import ResourceResult, Scanner

PODS = DEFAULT_MAPPER.for_kind("v1", "Pod")
NODES = DEFAULT_MAPPER.for_kind("v1", "Node")
WHEN = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def ticking() -> Any:
    """A wall clock that moves on a second per call: timestamps always differ between scans."""
    seconds = itertools.count()
    return lambda: WHEN + datetime.timedelta(seconds=next(seconds))


@pytest.fixture
def cluster() -> InMemoryCluster:
    memory = InMemoryCluster()
    memory.create(NAMESPACES, namespace("shop"))
    memory.create(PODS, pod("shop", "good", app="web"))
    memory.create(PODS, pod("shop", "bad"))
    memory.create(NODES, {"metadata": {"name": "node-1"}})
    return memory


POLICIES = policy_set(policy("needs-app"), policy("node-needs-app", resources=("nodes",)))


def run_scan(
    cluster: InMemoryCluster, report_format: ReportFormat = "wgpolicyk8s", registry: CollectorRegistry | None = None
) -> WriteSummary:
    writer = ReportWriter(
        cluster,
        report_format=report_format,
        clock=ticking(),
        metrics=ReportMetrics(registry) if registry is not None else None,
    )
    return writer.write(Scanner(cluster, POLICIES).scan())


def writes(cluster: InMemoryCluster) -> list[tuple[str, str]]:
    return [call for call in cluster.calls if call[0] in ("create", "update", "delete") and "report" in call[1]]


# --- builders ---------------------------------------------------------------------------------------------------


def result_for(resource: ResourceType, key: ResourceKey, *statuses: Status) -> ResourceResult:
    ref = PolicyRef("ValidatingPolicy", "check", severity="high", category="Security")
    rules = tuple(RuleResult(status, f"{status.value} message", properties={"k": "v"}) for status in statuses)
    return ResourceResult(resource, key, (PolicyResponse(ref, key, rules),))


@pytest.mark.parametrize(
    ("report_format", "resource", "namespace_", "kind", "api_version"),
    [
        pytest.param("wgpolicyk8s", PODS, "shop", "PolicyReport", "wgpolicyk8s.io/v1alpha2", id="wg namespaced"),
        pytest.param("wgpolicyk8s", NODES, "", "ClusterPolicyReport", "wgpolicyk8s.io/v1alpha2", id="wg cluster"),
        pytest.param("openreports", PODS, "shop", "Report", "openreports.io/v1alpha1", id="openreports namespaced"),
        pytest.param("openreports", NODES, "", "ClusterReport", "openreports.io/v1alpha1", id="openreports cluster"),
    ],
)
def test_build_report(
    report_format: ReportFormat, resource: ResourceType, namespace_: str, kind: str, api_version: str
) -> None:
    key = ResourceKey(resource.api_version, resource.kind, namespace_, "thing", "uid-1")
    report = build_report(
        result_for(resource, key, Status.FAIL, Status.PASS), timestamp=WHEN, report_format=report_format
    )
    assert (report["apiVersion"], report["kind"]) == (api_version, kind)
    assert report["metadata"]["name"] == "uid-1"
    assert report["metadata"].get("namespace", "") == namespace_
    assert report["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "celvern"}
    assert report["metadata"]["ownerReferences"] == [
        {"apiVersion": resource.api_version, "kind": resource.kind, "name": "thing", "uid": "uid-1"}
    ]
    assert "controller" not in report["metadata"]["ownerReferences"][0]
    assert report["scope"]["uid"] == "uid-1" and report["scope"]["name"] == "thing"
    assert report["summary"] == {"pass": 1, "fail": 1, "warn": 0, "error": 0, "skip": 0}
    first = report["results"][0]
    assert {k: first[k] for k in ("policy", "source", "severity", "category", "scored")} == {
        "policy": "check",
        "source": "celvern",
        "severity": "high",
        "category": "Security",
        "scored": True,
    }
    assert first["timestamp"] == {"seconds": int(WHEN.timestamp()), "nanos": 0}
    assert "resources" not in first
    assert first["properties"]["k"] == "v"
    assert ("process" in first["properties"]) == (report_format == "openreports")


def test_digest_ignores_timestamps_only() -> None:
    key = ResourceKey("v1", "Pod", "shop", "p", "uid-1")
    one = build_report(result_for(PODS, key, Status.FAIL), timestamp=WHEN)
    later = build_report(result_for(PODS, key, Status.FAIL), timestamp=WHEN + datetime.timedelta(hours=1))
    changed = build_report(result_for(PODS, key, Status.PASS), timestamp=WHEN)
    assert report_digest(one) == report_digest(later) != report_digest(changed)


# --- writing ----------------------------------------------------------------------------------------------------


def test_reports_are_created_with_owner_and_summary(cluster: InMemoryCluster) -> None:
    registry = CollectorRegistry()
    summary = run_scan(cluster, registry=registry)
    assert (summary.created, summary.updated, summary.deleted) == (3, 0, 0)
    bad = cluster.get(PODS, "shop", "bad")
    assert bad is not None
    report = cluster.get(POLICY_REPORTS, "shop", bad["metadata"]["uid"])
    assert report is not None
    assert report["metadata"]["ownerReferences"][0]["uid"] == bad["metadata"]["uid"]
    assert report["summary"]["fail"] == 1 and report["results"][0]["message"] == "needs-app failed"
    (node_report,) = cluster.list(CLUSTER_POLICY_REPORTS).items
    assert node_report["scope"]["kind"] == "Node" and node_report["summary"]["fail"] == 1
    assert registry.get_sample_value("celvern_reports_written_total", {"operation": "created"}) == 3


def test_a_second_scan_without_changes_writes_nothing(cluster: InMemoryCluster) -> None:
    run_scan(cluster)
    cluster.calls.clear()
    summary = run_scan(cluster)
    assert (summary.unchanged, summary.writes) == (3, 0)
    assert writes(cluster) == []


def test_a_changed_resource_updates_only_its_report(cluster: InMemoryCluster) -> None:
    run_scan(cluster)
    bad = cluster.get(PODS, "shop", "bad")
    assert bad is not None
    bad["metadata"]["labels"] = {"app": "fixed"}
    cluster.update(PODS, bad)
    cluster.calls.clear()
    summary = run_scan(cluster)
    assert (summary.updated, summary.unchanged, summary.created, summary.deleted) == (1, 2, 0, 0)
    assert writes(cluster) == [("update", "policyreports")]
    report = cluster.get(POLICY_REPORTS, "shop", bad["metadata"]["uid"])
    assert report is not None and report["summary"]["pass"] == 1 and report["summary"]["fail"] == 0


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("delete", id="deleted resource"),
        pytest.param("unmatch", id="resource no longer matched"),
    ],
)
def test_stale_reports_are_deleted(cluster: InMemoryCluster, change: str) -> None:
    run_scan(cluster)
    node = cluster.get(NODES, "", "node-1")
    assert node is not None
    if change == "delete":
        cluster.delete(NODES, "", "node-1")
        policies = POLICIES
    else:
        policies = policy_set(policy("needs-app"))  # the node policy is gone
    cluster.calls.clear()
    summary = ReportWriter(cluster, clock=ticking()).write(Scanner(cluster, policies).scan())
    assert (summary.deleted, summary.unchanged) == (1, 2)
    assert writes(cluster) == [("delete", "clusterpolicyreports")]
    assert cluster.get(CLUSTER_POLICY_REPORTS, "", node["metadata"]["uid"]) is None


def test_reports_of_a_type_that_could_not_be_listed_are_kept(cluster: InMemoryCluster) -> None:
    run_scan(cluster)

    scan = Scanner(cluster, POLICIES, list_workers=1).scan()
    original = cluster.list

    def failing(resource: ResourceType, *args: Any, **kwargs: Any) -> Any:
        if resource.resource == "nodes":
            raise ApiError(403, "nodes is forbidden")
        return original(resource, *args, **kwargs)

    cluster.list = failing  # type: ignore[method-assign]
    summary = ReportWriter(cluster, clock=ticking()).write(scan)
    assert summary.deleted == 0 and len(cluster.list(CLUSTER_POLICY_REPORTS).items) == 1
    assert scan.failed and not scan.complete


def test_openreports_format_behind_the_flag(cluster: InMemoryCluster) -> None:
    summary = run_scan(cluster, "openreports")
    assert summary.created == 3
    assert len(cluster.list(OPEN_REPORTS).items) == 2 and len(cluster.list(OPEN_CLUSTER_REPORTS).items) == 1
    assert cluster.list(POLICY_REPORTS).items == []
    (report,) = [r for r in cluster.list(OPEN_REPORTS).items if r["summary"]["fail"]]
    assert report["results"][0]["properties"]["process"] == "background scan"


class ConflictOnce(InMemoryCluster):
    conflicts = 1

    def update(self, resource: ResourceType, obj: Any) -> dict[str, Any]:
        if "report" in resource.resource and self.conflicts:
            self.conflicts -= 1
            raise Conflict("the object has been modified")
        return super().update(resource, obj)


def test_a_conflict_is_re_read_and_retried_once() -> None:
    memory = ConflictOnce()
    memory.create(NAMESPACES, namespace("shop"))
    memory.create(PODS, pod("shop", "bad"))
    run_scan(memory)
    bad = memory.get(PODS, "shop", "bad")
    assert bad is not None
    bad["metadata"]["labels"] = {"app": "fixed"}
    memory.update(PODS, bad)
    memory.calls.clear()
    summary = run_scan(memory)
    assert summary.updated == 1 and not summary.errors
    assert ("get", "policyreports") in memory.calls


def test_api_errors_are_counted_and_the_scan_goes_on(cluster: InMemoryCluster) -> None:
    registry = CollectorRegistry()
    scan = Scanner(cluster, POLICIES).scan()
    writer = ReportWriter(cluster, metrics=ReportMetrics(registry), clock=ticking())
    original = cluster.create
    failures = iter([True])

    def create_failing_once(resource: ResourceType, obj: Any) -> dict[str, Any]:
        if "report" in resource.resource and next(failures, False):
            raise ApiError(500, "etcd is unhappy")
        return original(resource, obj)

    cluster.create = create_failing_once  # type: ignore[method-assign]
    summary = writer.write(scan)
    assert summary.created == 2 and len(summary.errors) == 1 and "etcd is unhappy" in summary.errors[0]
    assert registry.get_sample_value("celvern_reports_errors_total", {"operation": "write"}) == 1


def test_existing_reports_are_listed_once_in_pages(cluster: InMemoryCluster) -> None:
    for index in range(5):
        cluster.create(PODS, pod("shop", f"extra-{index}"))
    run_scan(cluster)
    cluster.calls.clear()
    scan = Scanner(cluster, POLICIES).scan()
    ReportWriter(cluster, page_size=2, clock=ticking()).write(scan)
    assert cluster.calls.count(("list", "policyreports")) == 4  # 7 reports in pages of 2
    assert not [call for call in cluster.calls if call[0] == "get"]


# --- rounds -----------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rounds_are_due_at_a_new_term_by_interval_and_after_policy_changes(cluster: InMemoryCluster) -> None:
    clock = FakeClock()
    rounds = ReportRounds(cluster, ReportWriter(cluster), POLICIES, interval=60, debounce=5, clock=clock)
    assert rounds.due()  # never ran
    rounds.run_once()
    rounds._next = clock.now + 60  # what a background round sets when it ends
    assert not rounds.due() and rounds.due(new_term=True)
    rounds.update_policies(policy_set(policy("needs-app")))
    clock.now += 4
    assert not rounds.due()
    clock.now += 1
    assert rounds.due()
    rounds.run_once()
    assert not rounds.due()
    clock.now += 60
    assert rounds.due()


def test_scan_and_write_feeds_the_results_hook_and_metrics(cluster: InMemoryCluster) -> None:
    registry = CollectorRegistry()
    batches: list[int] = []
    result = scan_and_write(
        Scanner(cluster, POLICIES),
        ReportWriter(cluster),
        metrics=ReportMetrics(registry),
        on_scan_results=lambda batch: batches.append(len(batch)),
    )
    assert sum(batches) == result.scanned == 3
    assert registry.get_sample_value("celvern_scan_resources_total") == 3
    assert registry.get_sample_value("celvern_scan_duration_seconds_count") == 1


# --- reports of other tools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param({"app.kubernetes.io/managed-by": "kyverno"}, id="kyverno's report"),
        pytest.param({}, id="report without a manager"),
    ],
)
def test_a_report_of_another_tool_with_the_same_name_is_left_alone(labels: dict[str, str]) -> None:
    memory = InMemoryCluster()
    memory.create(NAMESPACES, namespace("shop"))
    uid = memory.create(PODS, pod("shop", "bad"))["metadata"]["uid"]
    theirs = {"metadata": {"name": uid, "namespace": "shop", "labels": labels}, "results": [{"policy": "theirs"}]}
    memory.create(POLICY_REPORTS, theirs)
    registry = CollectorRegistry()
    writer = ReportWriter(memory, metrics=ReportMetrics(registry), clock=ticking())
    for _ in range(2):  # the second scan neither takes it over nor deletes it
        summary = writer.write(Scanner(memory, POLICIES).scan())
        assert (summary.foreign, summary.writes, summary.errors) == (1, 0, [])
    live = memory.get(POLICY_REPORTS, "shop", uid)
    assert live is not None
    assert live["metadata"]["labels"] == labels and live["results"] == [{"policy": "theirs"}]
    assert registry.get_sample_value("celvern_reports_foreign_total") == 2


class RelabelledBeforeUpdate(InMemoryCluster):
    """Between celvern's list and its update, another tool takes the report over (and conflicts the update)."""

    def update(self, resource: ResourceType, obj: Any) -> dict[str, Any]:
        if "report" in resource.resource and obj["metadata"]["labels"].get("app.kubernetes.io/managed-by") == "celvern":
            live = super().get(resource, obj["metadata"]["namespace"], obj["metadata"]["name"])
            assert live is not None
            live["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "kyverno"}
            super().update(resource, live)
            raise Conflict("the object has been modified")
        return super().update(resource, obj)


def test_a_report_taken_over_between_list_and_update_is_left_alone() -> None:
    memory = RelabelledBeforeUpdate()
    memory.create(NAMESPACES, namespace("shop"))
    memory.create(PODS, pod("shop", "bad"))
    run_scan(memory)
    bad = memory.get(PODS, "shop", "bad")
    assert bad is not None
    bad["metadata"]["labels"] = {"app": "fixed"}
    memory.update(PODS, bad)
    summary = run_scan(memory)
    assert (summary.foreign, summary.updated) == (1, 0)
    live = memory.get(POLICY_REPORTS, "shop", bad["metadata"]["uid"])
    assert live is not None and live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kyverno"


# --- report size --------------------------------------------------------------------------------------------------


def many_results(*rules: tuple[Status, str]) -> ResourceResult:
    key = ResourceKey("v1", "ConfigMap", "shop", "cm", "uid-cm")
    ref = PolicyRef("ValidatingPolicy", "check")
    results = tuple(
        RuleResult(status, message, rule=f"rule-{index:04d}") for index, (status, message) in enumerate(rules)
    )
    return ResourceResult(DEFAULT_MAPPER.for_kind("v1", "ConfigMap"), key, (PolicyResponse(ref, key, results),))


@pytest.mark.parametrize(
    ("rules", "kept", "left_out"),
    [
        pytest.param([(Status.FAIL, "short")] * 3, 3, 0, id="small report untouched"),
        pytest.param([(Status.FAIL, "x" * 6000)] * 300, 300, 0, id="long messages cut, all results kept"),
        pytest.param(
            [(Status.PASS, "ok")] * 1500 + [(Status.FAIL, "bad")] * 10, 999, 511, id="too many results: fails first"
        ),
        pytest.param([(Status.FAIL, "é" * 2000)] * 1200, None, None, id="too many long results: within the budget"),
    ],
)
def test_reports_stay_under_the_etcd_limit(
    rules: list[tuple[Status, str]], kept: int | None, left_out: int | None
) -> None:
    report = build_report(many_results(*rules), timestamp=WHEN)
    assert len(orjson.dumps(report)) < 1024 * 1024 + 64 * 1024
    results = report["results"]
    messages = [entry["message"] for entry in results]
    assert all(len(message.encode()) <= 1024 for message in messages)
    if any(len(message.encode()) > 1024 for _, message in rules):
        assert all(message.endswith(TRUNCATION_MARKER) for message in messages if message.startswith(("x", "é")))
    assert sum(report["summary"].values()) == len(rules)  # the summary counts every result
    if left_out == 0:
        assert len(results) == kept
        return
    *shown, note = results
    assert note["rule"] == "results-left-out" and note["result"] == "warn"
    assert len(orjson.dumps(shown)) <= MAX_REPORT_BYTES
    if kept is not None:
        assert len(shown) == kept
    left_out = left_out if left_out is not None else len(rules) - len(shown)
    assert note["message"].startswith(f"{left_out} of {len(rules)} results left out")
    fails = sum(1 for _, message in rules if message == "bad")
    assert sum(1 for entry in shown if entry["result"] == "fail") >= min(fails, len(shown))


# --- failed and stopped rounds ------------------------------------------------------------------------------------


class FailingWrites(InMemoryCluster):
    """Report creates fail with a non-API error (a reset connection) after `allowed` of them."""

    allowed = 3

    def create(self, resource: ResourceType, obj: Any) -> dict[str, Any]:
        if resource.resource == "policyreports":
            if self.allowed <= 0:
                raise ConnectionResetError("reset by peer")
            self.allowed -= 1
        return super().create(resource, obj)


def test_a_failed_round_still_finishes_the_scan_as_incomplete() -> None:
    from tests.webhook.test_scan_history import Sink
    from webhook.scan_history import ScanHistory

    memory = FailingWrites()
    memory.create(NAMESPACES, namespace("shop"))
    for index in range(250):
        memory.create(PODS, pod("shop", f"p{index:03d}"))
    sink = Sink()
    history = ScanHistory(sink)
    finished: list[bool] = []

    def finish(scan: Any, scanner: Any) -> None:
        finished.append(scan.complete)
        history.scan_finished(scan, scanner)

    rounds = ReportRounds(
        memory,
        ReportWriter(memory),
        policy_set(policy("needs-app")),
        interval=3600,
        on_scan_started=history.scan_started,
        on_scan_results=history.add,
        on_scan_finished=finish,
    )
    with pytest.raises(ConnectionResetError):
        rounds.run_once()
    assert finished == [False] and sink.summaries == []
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("celvern-scan-list")]
    memory.allowed = 10_000
    rounds.run_once()
    assert finished == [False, True]
    assert [(scan.policy, scan.failed) for scan in sink.summaries[-1].policies] == [("needs-app", 250)]


def test_a_stopped_round_ends_before_its_next_write_and_deletes_nothing(cluster: InMemoryCluster) -> None:
    run_scan(cluster)
    cluster.delete(NODES, "", "node-1")  # its report is stale, but a stopped round must not delete it
    for index in range(5):
        cluster.create(PODS, pod("shop", f"new-{index}"))
    stop = threading.Event()
    writer = ReportWriter(cluster, on_written=lambda _result: stop.set())
    result = scan_and_write(Scanner(cluster, POLICIES), writer, stop=stop)
    assert result.stopped and not result.complete
    assert (result.writes.created, result.writes.deleted) == (1, 0)
    assert len(cluster.list(CLUSTER_POLICY_REPORTS).items) == 1


# --- rounds in a child process ------------------------------------------------------------------------------------


class DyingConnection:
    """A connection whose child process dies at once (as an OOM kill would end it)."""

    def connect(self) -> Any:
        os._exit(3)


class HangingConnection:
    def connect(self) -> Any:
        time.sleep(600)


def write_policy(tmp_path: Path) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy("needs-app")))
    return str(path)


@pytest.fixture
def served() -> Iterator[FakeApiServer]:
    reports = (POLICY_REPORTS, CLUSTER_POLICY_REPORTS)
    with custom_resources(PODS, *reports), FakeApiServer() as fake:
        fake.cluster.create(NAMESPACES, namespace("shop"))
        fake.cluster.create(PODS, pod("shop", "good", app="web"))
        fake.cluster.create(PODS, pod("shop", "bad"))
        yield fake


def test_a_round_runs_in_a_spawned_child_and_answers(served: FakeApiServer, tmp_path: Path) -> None:
    from webhook.history import open_store
    from webhook.kubernetes_cluster import ClusterConnection

    spec = IsolatedRound(
        ClusterConnection(kubeconfig=served.write_kubeconfig(tmp_path), timeout=10),
        policy_paths=(write_policy(tmp_path),),
        history_url=str(tmp_path / "history.db"),
    )
    registry = CollectorRegistry()
    rounds = ChildReportRounds(spec, policy_set(), interval=3600, timeout=300, metrics=ReportMetrics(registry))
    first = rounds.run_once()
    assert (first.scanned, first.writes.created, first.complete) == (2, 2, True)
    reports = {r["scope"]["name"]: r["summary"]["fail"] for r in served.cluster.list(POLICY_REPORTS, "shop").items}
    assert reports == {"good": 0, "bad": 1}
    assert len(rounds.baseline) == 1  # the one finding, for the next round's child
    assert registry.get_sample_value("celvern_reports_written_total", {"operation": "created"}) == 2
    assert registry.get_sample_value("celvern_scan_resources_total") == 2
    second = rounds.run_once()
    assert (second.writes.unchanged, second.writes.writes) == (2, 0)
    store = open_store(str(tmp_path / "history.db"))
    try:
        last = store.last_scan()
    finally:
        store.close()
    assert last is not None and [(scan.policy, scan.failed) for scan in last.policies] == [("needs-app", 1)]


@pytest.mark.parametrize(
    ("connection", "stop", "error"),
    [
        pytest.param(DyingConnection(), False, "exited without an answer (exit code 3)", id="child dies"),
        pytest.param(HangingConnection(), False, "overran its 1 s timeout", id="child overruns its timeout"),
        pytest.param(HangingConnection(), True, "stopped", id="leadership lost"),
    ],
)
def test_a_child_that_dies_overruns_or_is_stopped_fails_the_round(connection: Any, stop: bool, error: str) -> None:
    registry = CollectorRegistry()
    spec = IsolatedRound(connection, baseline=frozenset({("core/pods", "p", "r", "uid", "fail", "m")}))
    rounds = ChildReportRounds(spec, policy_set(), interval=3600, timeout=1, grace=1, metrics=ReportMetrics(registry))
    signal = threading.Event()
    if stop:
        signal.set()
    with pytest.raises(RoundFailed, match=re.escape(error)):
        rounds.run_once(signal)
    assert registry.get_sample_value("celvern_scan_rounds_failed_total") == 1
    assert rounds.baseline == spec.baseline  # kept for the next round
    assert not multiprocessing.active_children()
