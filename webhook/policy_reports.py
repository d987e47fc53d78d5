"""Policy reports in the cluster: one report per scanned resource, written only when its results change.

Why this module exists: the background scan (`webhook.scanner`) answers "which existing objects break which policy",
and the answer must be readable by the tools that already read Kyverno's: one `wgpolicyk8s.io/v1alpha2` PolicyReport
(namespaced resources) or ClusterPolicyReport (cluster-scoped ones) per resource, named by the resource's UID, owned
by it (so that the garbage collector deletes the report with the resource), labelled
`app.kubernetes.io/managed-by: celvern`; or, behind a flag, the `openreports.io/v1alpha1` Report / ClusterReport that
is replacing them (ecosystem.md 2.4). The builders are pure; `ReportWriter` applies them through the `Cluster` seam.

No churn: a periodic scan of an unchanged cluster must write nothing. Existing reports are listed once per scan
(paginated, by label) and remembered as a digest of what matters -- scope, owner, summary and results without their
timestamps -- so a report is created, updated or deleted only when that digest differs. Reports of resources that are
gone, or that no policy matches any more, are deleted; those of types the scan could not list are kept.
`ReportRounds` runs scan-and-write for the leader in a background thread, like `webhook.certificates.CertificateRounds`,
so that a long scan never holds up the Lease renewal.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from engine.policy_set import PolicySet
from engine.reports import empty_summary, object_reference, report_result
from engine.resources import ResourceType
from webhook.cluster import ApiError, Cluster, Conflict, list_all_pages
from webhook.scanner import ResourceResult, Scan, Scanner

log = logging.getLogger("celvern.reports")

ReportFormat = Literal["wgpolicyk8s", "openreports"]
REPORT_FORMATS: tuple[ReportFormat, ...] = ("wgpolicyk8s", "openreports")
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "celvern"
SOURCE = "celvern"
BACKGROUND_PROCESS = "background scan"

POLICY_REPORTS = ResourceType("wgpolicyk8s.io", "v1alpha2", "PolicyReport", "policyreports", True)
CLUSTER_POLICY_REPORTS = ResourceType(
    "wgpolicyk8s.io", "v1alpha2", "ClusterPolicyReport", "clusterpolicyreports", False
)
OPEN_REPORTS = ResourceType("openreports.io", "v1alpha1", "Report", "reports", True)
OPEN_CLUSTER_REPORTS = ResourceType("openreports.io", "v1alpha1", "ClusterReport", "clusterreports", False)

REPORT_TYPES: Mapping[ReportFormat, tuple[ResourceType, ResourceType]] = {
    "wgpolicyk8s": (POLICY_REPORTS, CLUSTER_POLICY_REPORTS),
    "openreports": (OPEN_REPORTS, OPEN_CLUSTER_REPORTS),
}
"""Per format: (namespaced report type, cluster-scoped report type)."""


def report_type(result: ResourceResult, report_format: ReportFormat = "wgpolicyk8s") -> ResourceType:
    namespaced, cluster = REPORT_TYPES[report_format]
    return namespaced if result.resource.namespaced and result.key.namespace else cluster


def report_results(
    result: ResourceResult, *, timestamp: datetime.datetime, report_format: ReportFormat = "wgpolicyk8s"
) -> list[dict[str, Any]]:
    """The `results[]` of one resource's report, sorted by policy and rule (a stable order: no churn)."""
    entries = []
    for response in result.responses:
        for rule in response.rules:
            entry = report_result(response, rule, timestamp=timestamp)
            entry.pop("resources", None)  # the report's scope names the resource
            entry["source"] = SOURCE
            if report_format == "openreports":
                entry["properties"] = {**entry.get("properties", {}), "process": BACKGROUND_PROCESS}
            entries.append(entry)
    entries.sort(key=lambda entry: (entry["policy"], entry["rule"], entry["result"], entry["message"]))
    return entries


def build_report(
    result: ResourceResult, *, timestamp: datetime.datetime, report_format: ReportFormat = "wgpolicyk8s"
) -> dict[str, Any]:
    """The report of one resource (it must have a uid): PolicyReport/ClusterPolicyReport, or Report/ClusterReport."""
    if not result.key.uid:
        raise ValueError(f"{result.key.path()} has no uid: its report cannot be named or owned")
    kind = report_type(result, report_format)
    results = report_results(result, timestamp=timestamp, report_format=report_format)
    summary = empty_summary()
    for entry in results:
        summary[entry["result"]] += 1
    metadata: dict[str, Any] = {"name": result.key.uid}
    if kind.namespaced:
        metadata["namespace"] = result.key.namespace
    metadata["labels"] = {MANAGED_BY: MANAGER}
    metadata["ownerReferences"] = [
        {
            "apiVersion": result.key.api_version,
            "kind": result.key.kind,
            "name": result.key.name,
            "uid": result.key.uid,
        }
    ]
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": metadata,
        "scope": object_reference(result.key),
        "summary": summary,
        "results": results,
    }


def report_digest(report: Mapping[str, Any]) -> str:
    """What decides whether a report must be written: owner, scope, summary and results, timestamps left out."""
    metadata = report.get("metadata") or {}
    results = [
        {key: value for key, value in entry.items() if key != "timestamp"}
        for entry in report.get("results") or ()
        if isinstance(entry, Mapping)
    ]
    content = {
        "labels": (metadata.get("labels") or {}).get(MANAGED_BY),
        "owners": metadata.get("ownerReferences") or [],
        "scope": report.get("scope") or {},
        "summary": report.get("summary") or {},
        "results": results,
    }
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


# --- metrics ----------------------------------------------------------------------------------------------------


class ReportMetrics:
    """The scan and report metrics, registered in `registry` (tests pass their own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "celvern_reports_written",
            "Policy reports created or updated because their results changed.",
            ["operation"],
            registry=registry,
        )
        self.unchanged = Counter(
            "celvern_reports_unchanged", "Policy reports left alone: their results did not change.", registry=registry
        )
        self.deleted = Counter(
            "celvern_reports_deleted",
            "Policy reports deleted (resource gone or no longer matched).",
            registry=registry,
        )
        self.errors = Counter(
            "celvern_reports_errors", "Report API calls that failed, by operation.", ["operation"], registry=registry
        )
        self.scan_duration = Histogram(
            "celvern_scan_duration_seconds",
            "Time of one background scan, reports included.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )
        self.resources = Counter(
            "celvern_scan_resources", "Resources evaluated by background scans.", registry=registry
        )
        self.scan_errors = Counter(
            "celvern_scan_errors", "Background scan failures (lists and evaluations).", registry=registry
        )


# --- writing ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Existing:
    resource: ResourceType
    namespace: str
    name: str
    resource_version: str
    digest: str
    scope: tuple[str, str]
    """(apiVersion, kind) of the resource the report is about."""


@dataclass(slots=True)
class WriteSummary:
    """What one `ReportWriter.write` did."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return self.created + self.updated + self.deleted


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ReportWriter:
    """Keeps one report per scanned resource in the cluster, writing only what changed.

    `on_written(result)` is called for every resource whose report was created or updated (the controller records
    Events for them); it must not raise.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        report_format: ReportFormat = "wgpolicyk8s",
        metrics: ReportMetrics | None = None,
        clock: Callable[[], datetime.datetime] = _utc_now,
        page_size: int = 500,
        on_written: Callable[[ResourceResult], None] | None = None,
    ) -> None:
        if report_format not in REPORT_TYPES:
            raise ValueError(f"unknown report format {report_format!r}")
        self.cluster = cluster
        self.report_format: ReportFormat = report_format
        self.metrics = metrics
        self.clock = clock
        self.page_size = page_size
        self.on_written = on_written

    def write(self, scan: Scan, results: Iterable[ResourceResult] | None = None) -> WriteSummary:
        """Iterate `scan` (or `results` drawn from it) and bring the reports in line with its results."""
        summary = WriteSummary()
        existing = self._existing(scan.namespace, summary)
        if existing is None:
            scan.close()
            return summary
        timestamp = self.clock()
        kept: set[str] = set()
        for result in scan if results is None else results:
            if not result.matched or not result.key.uid:
                continue
            kept.add(result.key.uid)
            report = build_report(result, timestamp=timestamp, report_format=self.report_format)
            if self._write(report, existing.get(result.key.uid), summary):
                self._notify(result)
        if scan.finished:
            self._delete_stale(scan, existing, kept, summary)
        return summary

    def _existing(self, namespace: str, summary: WriteSummary) -> dict[str, _Existing] | None:
        """The managed reports, by the uid they are named after; None when they cannot be listed."""
        found: dict[str, _Existing] = {}
        selector = f"{MANAGED_BY}={MANAGER}"
        for resource in REPORT_TYPES[self.report_format]:
            if namespace and not resource.namespaced:
                continue  # a one-namespace scan says nothing about cluster-scoped resources
            try:
                for report in list_all_pages(
                    self.cluster, resource, namespace, self.page_size, label_selector=selector
                ):
                    metadata = report.get("metadata") or {}
                    scope = report.get("scope") or {}
                    name = str(metadata.get("name") or "")
                    found[name] = _Existing(
                        resource,
                        str(metadata.get("namespace") or ""),
                        name,
                        str(metadata.get("resourceVersion") or ""),
                        report_digest(report),
                        (str(scope.get("apiVersion") or ""), str(scope.get("kind") or "")),
                    )
            except ApiError as error:
                self._failed("list", f"cannot list {resource.resource}.{resource.group}: {error}", summary)
                return None
        return found

    def _write(self, report: dict[str, Any], current: _Existing | None, summary: WriteSummary) -> bool:
        """Create or update when the digest differs; True when the report was written."""
        resource = REPORT_TYPES[self.report_format][0 if "namespace" in report["metadata"] else 1]
        if current is not None and current.digest == report_digest(report):
            summary.unchanged += 1
            if self.metrics is not None:
                self.metrics.unchanged.inc()
            return False
        try:
            if current is None:
                try:
                    self.cluster.create(resource, report)
                    summary.created += 1
                    operation = "created"
                except Conflict:  # it appeared since the list: update it instead
                    self._update_fresh(resource, report)
                    summary.updated += 1
                    operation = "updated"
            else:
                try:
                    self.cluster.update(resource, _with_version(report, current.resource_version))
                except Conflict:  # changed since the list: re-read and retry once
                    self._update_fresh(resource, report)
                summary.updated += 1
                operation = "updated"
        except ApiError as error:
            name = report["metadata"]["name"]
            self._failed("write", f"cannot write {resource.kind} {name}: {error}", summary)
            return False
        if self.metrics is not None:
            self.metrics.written.labels(operation).inc()
        return True

    def _update_fresh(self, resource: ResourceType, report: dict[str, Any]) -> None:
        metadata = report["metadata"]
        live = self.cluster.get(resource, str(metadata.get("namespace") or ""), metadata["name"])
        if live is None:
            self.cluster.create(resource, report)
            return
        version = str((live.get("metadata") or {}).get("resourceVersion") or "")
        self.cluster.update(resource, _with_version(report, version))

    def _delete_stale(
        self, scan: Scan, existing: Mapping[str, _Existing], kept: set[str], summary: WriteSummary
    ) -> None:
        unseen = {(t.api_version, t.kind) for t in scan.failed}
        for uid, report in existing.items():
            if uid in kept or report.scope in unseen:
                continue
            try:
                self.cluster.delete(report.resource, report.namespace, report.name)
            except ApiError as error:
                self._failed("delete", f"cannot delete {report.resource.kind} {report.name}: {error}", summary)
                continue
            summary.deleted += 1
            if self.metrics is not None:
                self.metrics.deleted.inc()

    def _failed(self, operation: str, message: str, summary: WriteSummary) -> None:
        summary.errors.append(message)
        log.warning(message)
        if self.metrics is not None:
            self.metrics.errors.labels(operation).inc()

    def _notify(self, result: ResourceResult) -> None:
        if self.on_written is None:
            return
        try:
            self.on_written(result)
        except Exception:  # a hook must not stop the reports
            log.exception("on_written hook failed")


def _with_version(report: Mapping[str, Any], version: str) -> dict[str, Any]:
    return {**report, "metadata": {**report["metadata"], "resourceVersion": version}}


# --- scheduled rounds -------------------------------------------------------------------------------------------

ScanResultsHook = Callable[[Sequence[ResourceResult]], object]
"""`on_scan_results(batch)`: called with the results of a scan in batches (e.g. to record failures elsewhere)."""
ScanFinishedHook = Callable[[Scan, Scanner], object]
"""`on_scan_finished(scan, scanner)`: called once the scan's results have all been seen (`scan.complete` says
whether every type was listed; `scanner.policy_set` holds the policies it ran)."""
_HOOK_BATCH = 100


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one scan-and-write round did."""

    scanned: int
    scan_errors: tuple[str, ...]
    notes: tuple[str, ...]
    writes: WriteSummary
    duration: float


def scan_and_write(
    scanner: Scanner,
    writer: ReportWriter,
    *,
    namespace: str = "",
    metrics: ReportMetrics | None = None,
    on_scan_results: ScanResultsHook | None = None,
    on_scan_finished: ScanFinishedHook | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RoundResult:
    """One background scan whose results go to `writer` (and, in batches, to `on_scan_results`; then
    `on_scan_finished`)."""
    started = clock()
    scan = scanner.scan(namespace)
    results: Iterable[ResourceResult] = scan if on_scan_results is None else _batched(scan, on_scan_results)
    writes = writer.write(scan, results)
    if on_scan_finished is not None:
        try:
            on_scan_finished(scan, scanner)
        except Exception:  # a hook must not stop the round
            log.exception("on_scan_finished hook failed")
    duration = clock() - started
    if metrics is not None:
        metrics.scan_duration.observe(duration)
        metrics.resources.inc(scan.scanned)
        metrics.scan_errors.inc(len(scan.errors))
    return RoundResult(scan.scanned, tuple(error.message for error in scan.errors), tuple(scan.notes), writes, duration)


def _batched(results: Iterable[ResourceResult], hook: ScanResultsHook) -> Iterable[ResourceResult]:
    batch: list[ResourceResult] = []

    def flush() -> None:
        try:
            hook(list(batch))
        except Exception:  # a hook must not stop the scan
            log.exception("on_scan_results hook failed")
        batch.clear()

    for result in results:
        batch.append(result)
        if len(batch) >= _HOOK_BATCH:
            flush()
        yield result
    if batch:
        flush()


class ReportRounds:
    """Runs `scan_and_write` for the leader: at the start of each term, every `interval` seconds, and `debounce`
    seconds after the policies last changed (`update_policies`).

    Each round runs in a short-lived daemon thread, one at a time, so that a long scan delays the next round instead
    of the caller's loop (which must keep renewing its Lease). `tick` is cheap: call it on every pass.
    """

    def __init__(
        self,
        cluster: Cluster,
        writer: ReportWriter,
        policy_set: PolicySet,
        *,
        interval: float,
        debounce: float = 10.0,
        metrics: ReportMetrics | None = None,
        on_scan_results: ScanResultsHook | None = None,
        on_scan_finished: ScanFinishedHook | None = None,
        page_size: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0 or debounce < 0:
            raise ValueError("interval must be positive and debounce not negative")
        self.cluster = cluster
        self.writer = writer
        self.interval = interval
        self.debounce = debounce
        self.metrics = metrics
        self.on_scan_results = on_scan_results
        self.on_scan_finished = on_scan_finished
        self.page_size = page_size
        self.last: RoundResult | None = None
        self._policy_set = policy_set
        self._clock = clock
        self._next: float | None = None
        self._changed_at: float | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def update_policies(self, policy_set: PolicySet) -> None:
        """New policies: scan `debounce` seconds after the last of a burst of changes."""
        with self._lock:
            self._policy_set = policy_set
            self._changed_at = self._clock()

    def due(self, *, new_term: bool = False) -> bool:
        now = self._clock()
        if new_term or self._next is None or now >= self._next:
            return True
        return self._changed_at is not None and now >= self._changed_at + self.debounce

    def tick(self, *, new_term: bool = False) -> bool:
        """Start a round when one is due (always at a new term) and none is running; True when one started."""
        if self._thread is not None and self._thread.is_alive():
            return False
        if not self.due(new_term=new_term):
            return False
        self._thread = threading.Thread(target=self._round, name="celvern-scan", daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running round (at shutdown, before the Lease is released)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> RoundResult:
        """One round, synchronously (`celvern controller --once`)."""
        with self._lock:
            policy_set, self._changed_at = self._policy_set, None
        scanner = Scanner(self.cluster, policy_set, page_size=self.page_size)
        result = scan_and_write(
            scanner,
            self.writer,
            metrics=self.metrics,
            on_scan_results=self.on_scan_results,
            on_scan_finished=self.on_scan_finished,
            clock=self._clock,
        )
        self.last = result
        return result

    def _round(self) -> None:
        try:
            result = self.run_once()
        except Exception:  # a bug must not end the controller: the reports stay as they are
            log.exception("background scan failed")
        else:
            log.info(
                "background scan finished",
                extra={
                    "scanned": result.scanned,
                    "reports_created": result.writes.created,
                    "reports_updated": result.writes.updated,
                    "reports_unchanged": result.writes.unchanged,
                    "reports_deleted": result.writes.deleted,
                    "errors": len(result.scan_errors) + len(result.writes.errors),
                    "seconds": round(result.duration, 3),
                },
            )
        self._next = self._clock() + self.interval
