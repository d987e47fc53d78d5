"""Background scans in the decision history (`webhook.scan_history`): new findings once, summaries of complete
scans only, and the whole path from a scan of an in-memory cluster to the dashboard's "safe to enforce"."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from engine.resources import DEFAULT_MAPPER, ResourceType
from engine.results import Action, PolicyRef, PolicyResponse, ResourceKey, RuleResult, Status
from tests.webhook.test_scanner import NAMESPACES, namespace, pod, policy, policy_set
from webhook.cluster import InMemoryCluster
from webhook.history import Decision, DecisionRecorder, ScanSummary, open_store
from webhook.overview import overview, policy_infos
from webhook.policy_reports import ReportWriter, scan_and_write
from webhook.scan_history import ScanHistory
from webhook.scanner import ResourceResult, Scanner

PODS = DEFAULT_MAPPER.for_kind("v1", "Pod")
WHEN = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)


class Sink:
    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.summaries: list[ScanSummary] = []

    def submit(self, decision: Decision) -> None:
        self.decisions.append(decision)

    def record_scan(self, summary: ScanSummary) -> None:
        self.summaries.append(summary)


def result(
    name: str, *rules: tuple[Status, str], actions: tuple[Action, ...] = (Action.AUDIT,), policy_name: str = "check"
) -> ResourceResult:
    key = ResourceKey("v1", "Pod", "shop", name, uid=f"uid-{name}")
    ref = PolicyRef("ValidatingPolicy", policy_name, severity="high", category="Security", validation_actions=actions)
    return ResourceResult(PODS, key, (PolicyResponse(ref, key, tuple(RuleResult(s, m) for s, m in rules)),))


BAD = result("a", (Status.FAIL, "bad"))


@pytest.mark.parametrize(
    ("scans", "recorded"),
    [
        pytest.param([[BAD], [BAD]], [["bad"], []], id="unchanged"),
        pytest.param([[BAD], [result("a", (Status.FAIL, "worse"))]], [["bad"], ["worse"]], id="new-message"),
        pytest.param([[BAD], [BAD, result("b", (Status.ERROR, "boom"))]], [["bad"], ["boom"]], id="new-resource"),
        pytest.param(
            [[BAD], [result("a", (Status.PASS, ""))], [BAD]], [["bad"], [], ["bad"]], id="fixed-then-broken-again"
        ),
    ],
)
def test_findings_are_recorded_when_new(scans: list[list[ResourceResult]], recorded: list[list[str]]) -> None:
    sink = Sink()
    history = ScanHistory(sink, clock=lambda: WHEN)
    for results, expected in zip(scans, recorded, strict=True):
        sink.decisions.clear()
        history.add(results)
        history.finish(complete=True)
        assert [d.message for d in sink.decisions] == expected


def test_decisions_carry_the_finding() -> None:
    sink = Sink()
    history = ScanHistory(sink, clock=lambda: WHEN)
    history.add(
        [result("a", (Status.FAIL, "bad"), (Status.PASS, ""), (Status.SKIP, ""), actions=(Action.AUDIT, Action.DENY))]
    )
    [decision] = sink.decisions
    assert decision == Decision(
        time=WHEN,
        source="scan",
        policy="check",
        action="deny",  # the strongest of its actions: what admission would do
        kind="Pod",
        namespace="shop",
        name="a",
        message="bad",
        severity="high",
        category="Security",
        result="fail",
    )


def test_complete_scans_record_summaries_and_incomplete_ones_do_not() -> None:
    sink = Sink()
    history = ScanHistory(sink, clock=lambda: WHEN)
    history.add([result("a", (Status.FAIL, "bad"), (Status.PASS, "")), result("b", (Status.PASS, ""))])
    assert history.finish(complete=False) is None
    assert sink.summaries == []
    history.add([result("a", (Status.FAIL, "bad"))])
    assert len(sink.decisions) == 1  # an incomplete scan's findings still count as seen
    summary = history.finish(complete=True, policies=["check", "matched-nothing"])
    assert summary is not None and sink.summaries == [summary]
    counts = {scan.policy: (scan.passed, scan.failed) for scan in summary.policies}
    assert counts == {"check": (0, 1), "matched-nothing": (0, 0)}


def test_a_scan_of_the_cluster_reaches_safe_to_enforce(tmp_path: Path) -> None:
    cluster = InMemoryCluster()
    cluster.create(NAMESPACES, namespace("shop"))
    cluster.create(PODS, pod("shop", "good", app="web"))
    cluster.create(PODS, pod("shop", "bad"))
    policies = policy_set(policy("needs-app"), policy("always-true", expression="true"))
    store_url = str(tmp_path / "history.db")
    recorder = DecisionRecorder(lambda: open_store(store_url))
    history = ScanHistory(recorder, clock=lambda: WHEN)
    recorder.start()
    try:
        for _ in range(2):  # the second scan finds the same violation: recorded once
            scan_and_write(
                Scanner(cluster, policies),
                ReportWriter(cluster),
                on_scan_results=history.add,
                on_scan_finished=history.scan_finished,
            )
        assert recorder.flush(timeout=10)
    finally:
        recorder.stop(timeout=10)
    store = open_store(store_url)
    try:
        data = overview(store, policy_infos(policies), {}, WHEN + datetime.timedelta(hours=1))
    finally:
        store.close()
    assert [(row["policy"], row["name"], row["source"]) for row in data["recent"]] == [("needs-app", "bad", "scan")]
    assert data["lastScan"] is not None and data["lastScan"]["fail"] == 1
    assert [row["policy"] for row in data["safeToEnforce"]] == ["always-true"]


CONFIGMAPS = DEFAULT_MAPPER.for_kind("v1", "ConfigMap")


def result_of(resource: ResourceType, name: str, message: str) -> ResourceResult:
    key = ResourceKey(resource.api_version, resource.kind, "shop", name, uid=f"uid-{resource.resource}-{name}")
    ref = PolicyRef("ValidatingPolicy", "check")
    return ResourceResult(resource, key, (PolicyResponse(ref, key, (RuleResult(Status.FAIL, message),)),))


@pytest.mark.parametrize(
    ("unseen", "baseline_after_20_scans"),
    [
        pytest.param((), 100, id="every type listed: one scan's findings"),
        pytest.param(("core/configmaps",), 101, id="configmaps not listed: their old finding kept"),
    ],
)
def test_incomplete_scans_keep_a_bounded_baseline(unseen: tuple[str, ...], baseline_after_20_scans: int) -> None:
    """Pods are replaced between scans (new names, new uids) and some type always fails: no scan is complete."""
    history = ScanHistory(Sink(), clock=lambda: WHEN)
    history.add([result_of(CONFIGMAPS, "settings", "bad")])
    history.finish(complete=False)
    for scan in range(20):
        history.add([result_of(PODS, f"r{scan}-p{index}", "bad") for index in range(100)])
        history.finish(complete=False, unseen=unseen)
    assert len(history.baseline) == baseline_after_20_scans


def test_the_old_findings_of_a_type_that_could_not_be_listed_are_not_recorded_again() -> None:
    sink = Sink()
    history = ScanHistory(sink, clock=lambda: WHEN)
    history.add([result_of(CONFIGMAPS, "settings", "bad"), result_of(PODS, "web", "bad")])
    history.finish(complete=True)
    history.add([result_of(PODS, "web", "bad")])  # configmaps failed to list this time
    history.finish(complete=False, unseen=["core/configmaps"])
    sink.decisions.clear()
    history.add([result_of(CONFIGMAPS, "settings", "bad"), result_of(PODS, "web", "bad")])
    assert sink.decisions == []  # both persisted: neither is new


def test_the_baseline_goes_from_one_history_to_the_next() -> None:
    first = ScanHistory(Sink(), clock=lambda: WHEN)
    first.add([BAD])
    first.finish(complete=True)
    sink = Sink()
    second = ScanHistory(sink, clock=lambda: WHEN, baseline=first.baseline)
    second.add([BAD])
    assert sink.decisions == []


def test_a_scan_start_forgets_what_an_unfinished_scan_counted() -> None:
    sink = Sink()
    history = ScanHistory(sink, clock=lambda: WHEN)
    history.add([BAD, result("b", (Status.FAIL, "bad"))])  # a round that died before finish()
    history.begin()
    history.add([BAD])
    summary = history.finish(complete=True, policies=["check"])
    assert summary is not None
    assert [(scan.policy, scan.failed) for scan in summary.policies] == [("check", 1)]
