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

Reports stay small: etcd refuses objects over 1.5 MiB, so each result message is cut to 1 KiB (with a visible
marker) and a report keeps at most `MAX_RESULTS` results and `MAX_REPORT_BYTES` of them, failures and errors first,
plus one result saying how many were left out. Reports of other tools are never touched: Kyverno also names its
reports by resource UID, and a report without `app.kubernetes.io/managed-by: celvern` is skipped and counted.

Isolation: the CEL runtime (cel-expr-python 0.1.3) keeps a reference to every argument and result of the Python CEL
functions it calls, so a process that evaluates a whole cluster grows by gigabytes per scan. The controller runs
each round in a fresh child process (`ChildReportRounds`, `run_round_in_child`, multiprocessing's "spawn": never
fork a process that has threads), which connects, loads the policies, writes the reports, the history and the
Events itself (`run_isolated_round`) and exits, giving its memory back; it answers with the round's counts and the
new finding baseline of `webhook.scan_history`. A child that dies or overruns its timeout is killed and the round
counted as failed; on a lost Lease or at shutdown the child gets SIGTERM, stops between two writes, and is killed
after a grace period if it does not.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from engine.policy_set import PolicySet
from engine.reports import empty_summary, object_reference, report_result
from engine.resources import ResourceType
from webhook.cluster import ApiError, Cluster, Conflict, list_all_pages
from webhook.scanner import ResourceResult, Scan, Scanner

if TYPE_CHECKING:
    from webhook.events import EventRecorder

log = logging.getLogger("celvern.reports")

ReportFormat = Literal["wgpolicyk8s", "openreports"]
REPORT_FORMATS: tuple[ReportFormat, ...] = ("wgpolicyk8s", "openreports")
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "celvern"
SOURCE = "celvern"
BACKGROUND_PROCESS = "background scan"

MAX_MESSAGE_BYTES = 1024
"""Longest result message (and string property) in a report, in UTF-8 bytes, truncation marker included."""
TRUNCATION_MARKER = " [...truncated]"
MAX_RESULTS = 1000
"""Most results in one report, the note about those left out included."""
MAX_REPORT_BYTES = 1024 * 1024
"""Budget of a report's serialized results: well under etcd's 1.5 MiB object limit."""
LEFT_OUT_RULE = "results-left-out"

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


def bounded(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`text` cut to `limit` UTF-8 bytes, ending with `TRUNCATION_MARKER` when it was cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: max(limit - len(TRUNCATION_MARKER.encode()), 0)].decode("utf-8", "ignore") + TRUNCATION_MARKER


def report_results(
    result: ResourceResult, *, timestamp: datetime.datetime, report_format: ReportFormat = "wgpolicyk8s"
) -> list[dict[str, Any]]:
    """The `results[]` of one resource's report, sorted by policy and rule (a stable order: no churn); messages and
    string properties are cut to `MAX_MESSAGE_BYTES`."""
    entries = []
    for response in result.responses:
        for rule in response.rules:
            entry = report_result(response, rule, timestamp=timestamp)
            entry.pop("resources", None)  # the report's scope names the resource
            entry["source"] = SOURCE
            entry["message"] = bounded(str(entry.get("message") or ""))
            if "properties" in entry:
                entry["properties"] = {
                    key: bounded(value) if isinstance(value, str) else value
                    for key, value in entry["properties"].items()
                }
            if report_format == "openreports":
                entry["properties"] = {**entry.get("properties", {}), "process": BACKGROUND_PROCESS}
            entries.append(entry)
    entries.sort(key=lambda entry: (entry["policy"], entry["rule"], entry["result"], entry["message"]))
    return entries


_KEPT_FIRST = {"fail": 0, "error": 1, "warn": 2, "pass": 3, "skip": 4}
"""Which results a report too big for its budget keeps first."""


def _within_budget(
    entries: list[dict[str, Any]],
    *,
    timestamp: datetime.datetime,
    report_format: ReportFormat,
    max_results: int = MAX_RESULTS,
    max_bytes: int = MAX_REPORT_BYTES,
) -> list[dict[str, Any]]:
    """`entries` when they fit `max_results` and `max_bytes`; else the failures and errors first (then warnings,
    passes, skips) up to the budget, in their usual order, and one `warn` result saying how many were left out."""
    sizes = [len(orjson.dumps(entry)) + 1 for entry in entries]
    if len(entries) <= max_results and sum(sizes) <= max_bytes:
        return entries
    note_size = 1024  # the note is small: keep room for it
    order = sorted(range(len(entries)), key=lambda index: (_KEPT_FIRST.get(entries[index]["result"], 5), index))
    kept: list[int] = []
    used = 0
    for index in order:
        if len(kept) >= max_results - 1 or used + sizes[index] > max_bytes - note_size:
            break
        kept.append(index)
        used += sizes[index]
    left_out = len(entries) - len(kept)
    note: dict[str, Any] = {
        "source": SOURCE,
        "policy": MANAGER,
        "rule": LEFT_OUT_RULE,
        "message": (
            f"{left_out} of {len(entries)} results left out to keep this report under {max_results} results and "
            f"{max_bytes // 1024} KiB (failures and errors kept first; the summary counts them all); "
            "`celvern scan --cluster` shows every result"
        ),
        "result": "warn",
        "scored": False,
        "timestamp": {"seconds": int(timestamp.timestamp()), "nanos": 0},
        "properties": {"leftOut": str(left_out)},
    }
    if report_format == "openreports":
        note["properties"]["process"] = BACKGROUND_PROCESS
    return [entries[index] for index in sorted(kept)] + [note]


def build_report(
    result: ResourceResult,
    *,
    timestamp: datetime.datetime,
    report_format: ReportFormat = "wgpolicyk8s",
    max_results: int = MAX_RESULTS,
    max_bytes: int = MAX_REPORT_BYTES,
) -> dict[str, Any]:
    """The report of one resource (it must have a uid): PolicyReport/ClusterPolicyReport, or Report/ClusterReport.

    Its results are bounded (`max_results`, `max_bytes` of results; see `_within_budget`); its summary counts every
    result, those left out included."""
    if not result.key.uid:
        raise ValueError(f"{result.key.path()} has no uid: its report cannot be named or owned")
    kind = report_type(result, report_format)
    every = report_results(result, timestamp=timestamp, report_format=report_format)
    summary = empty_summary()
    for entry in every:
        summary[entry["result"]] += 1
    results = _within_budget(
        every, timestamp=timestamp, report_format=report_format, max_results=max_results, max_bytes=max_bytes
    )
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
        self.foreign = Counter(
            "celvern_reports_foreign",
            "Reports skipped because another tool manages a report of the same name.",
            registry=registry,
        )
        self.failed_rounds = Counter(
            "celvern_scan_rounds_failed",
            "Background scan rounds that failed as a whole (the scan process died, overran or raised).",
            registry=registry,
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
    failed_operations: dict[str, int] = field(default_factory=dict)
    """Failed API calls by operation (list, write, delete), as `errors` lists them."""
    foreign: int = 0
    """Reports left alone because another tool manages a report of that name."""
    stopped: bool = False
    """The write stopped early (its stop flag was set): nothing was deleted."""

    @property
    def writes(self) -> int:
        return self.created + self.updated + self.deleted


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class _Foreign(Exception):
    """The live report of that name is managed by another tool."""


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

    def write(
        self, scan: Scan, results: Iterable[ResourceResult] | None = None, *, stop: threading.Event | None = None
    ) -> WriteSummary:
        """Iterate `scan` (or `results` drawn from it) and bring the reports in line with its results.

        `stop` is checked before every write: once set, the scan is abandoned and nothing is deleted."""
        summary = WriteSummary()
        existing = self._existing(scan.namespace, summary)
        if existing is None:
            scan.close()
            return summary
        timestamp = self.clock()
        kept: set[str] = set()
        iterator: Iterator[ResourceResult] = iter(scan if results is None else results)
        try:
            for result in iterator:
                if stop is not None and stop.is_set():
                    summary.stopped = True
                    break
                if not result.matched or not result.key.uid:
                    continue
                kept.add(result.key.uid)
                report = build_report(result, timestamp=timestamp, report_format=self.report_format)
                if self._write(report, existing.get(result.key.uid), summary):
                    self._notify(result)
        finally:
            if not scan.finished:  # stopped or failed: end the listing threads now
                scan.close()
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        if scan.finished and not summary.stopped:
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
                    if not _managed(report):  # a server that ignored the selector: never ours to touch
                        continue
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
        except _Foreign as foreign:
            summary.foreign += 1
            log.warning("%s", foreign)
            if self.metrics is not None:
                self.metrics.foreign.inc()
            return False
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
        if not _managed(live):
            manager = ((live.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY) or "no manager label"
            raise _Foreign(f"{resource.kind} {metadata['name']} is managed by {manager!r}, not {MANAGER}: left alone")
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
        summary.failed_operations[operation] = summary.failed_operations.get(operation, 0) + 1
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


def _managed(report: Mapping[str, Any]) -> bool:
    """Whether celvern manages this report (its `app.kubernetes.io/managed-by` label)."""
    labels = (report.get("metadata") or {}).get("labels") or {}
    return isinstance(labels, Mapping) and labels.get(MANAGED_BY) == MANAGER


def _with_version(report: Mapping[str, Any], version: str) -> dict[str, Any]:
    return {**report, "metadata": {**report["metadata"], "resourceVersion": version}}


# --- scheduled rounds -------------------------------------------------------------------------------------------

ScanStartedHook = Callable[[Scan], object]
"""`on_scan_started(scan)`: called before the scan's first result (e.g. to forget what a failed round left)."""
ScanResultsHook = Callable[[Sequence[ResourceResult]], object]
"""`on_scan_results(batch)`: called with the results of a scan in batches (e.g. to record failures elsewhere)."""
ScanFinishedHook = Callable[[Scan, Scanner], object]
"""`on_scan_finished(scan, scanner)`: called once the scan's results have all been seen, or the round failed or was
stopped (`scan.complete` says whether every type was listed and the round went through; `scanner.policy_set` holds
the policies it ran)."""
_HOOK_BATCH = 100


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one scan-and-write round did."""

    scanned: int
    scan_errors: tuple[str, ...]
    notes: tuple[str, ...]
    writes: WriteSummary
    duration: float
    complete: bool = False
    """Every type was listed and every object evaluated and written."""
    stopped: bool = False
    """The round was asked to stop (leadership lost, shutdown) before its end."""


def scan_and_write(
    scanner: Scanner,
    writer: ReportWriter,
    *,
    namespace: str = "",
    metrics: ReportMetrics | None = None,
    on_scan_started: ScanStartedHook | None = None,
    on_scan_results: ScanResultsHook | None = None,
    on_scan_finished: ScanFinishedHook | None = None,
    clock: Callable[[], float] = time.monotonic,
    stop: threading.Event | None = None,
) -> RoundResult:
    """One background scan whose results go to `writer` (and, in batches, to `on_scan_results`; then
    `on_scan_finished`, also when the writer raises: the scan then counts as incomplete).

    `stop`, when set, ends the round before its next write (`RoundResult.stopped`)."""
    started = clock()
    scan = scanner.scan(namespace)
    if on_scan_started is not None:
        try:
            on_scan_started(scan)
        except Exception:  # a hook must not stop the round
            log.exception("on_scan_started hook failed")
    scanned = iter(scan)
    results: Iterable[ResourceResult] = scanned if on_scan_results is None else _batched(scanned, on_scan_results)
    try:
        writes = writer.write(scan, results, stop=stop)
    except BaseException as error:
        scan.abort(f"{type(error).__name__}: {error}")
        raise
    finally:
        scan.close()
        close = getattr(scanned, "close", None)
        if close is not None:
            close()  # the listing threads end now, not when the generator is collected
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
    return RoundResult(
        scan.scanned,
        tuple(error.message for error in scan.errors),
        tuple(scan.notes),
        writes,
        duration,
        complete=scan.complete and not writes.stopped,
        stopped=writes.stopped,
    )


def _batched(results: Iterable[ResourceResult], hook: ScanResultsHook) -> Iterator[ResourceResult]:
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


class RoundFailed(Exception):
    """A round that failed as a whole (its process died, overran its timeout, or raised)."""


class ScanRounds:
    """When to scan, for the leader: at the start of each term, every `interval` seconds, and `debounce` seconds
    after the policies last changed (`update_policies`). Subclasses say how a round runs (`_execute`).

    Each round runs in a short-lived daemon thread, one at a time, so that a long scan delays the next round instead
    of the caller's loop (which must keep renewing its Lease). `tick` is cheap: call it on every pass; `stop_round`
    ends the running round early (a lost Lease, shutdown).
    """

    def __init__(
        self,
        policy_set: PolicySet,
        *,
        interval: float,
        debounce: float = 10.0,
        metrics: ReportMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0 or debounce < 0:
            raise ValueError("interval must be positive and debounce not negative")
        self.interval = interval
        self.debounce = debounce
        self.metrics = metrics
        self.last: RoundResult | None = None
        self._policy_set = policy_set
        self._clock = clock
        self._next: float | None = None
        self._changed_at: float | None = None
        self._thread: threading.Thread | None = None
        self._round_stop = threading.Event()
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
        if self.running:
            return False
        if not self.due(new_term=new_term):
            return False
        stop = self._round_stop = threading.Event()
        self._thread = threading.Thread(target=self._round, args=(stop,), name="celvern-scan", daemon=True)
        self._thread.start()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop_round(self) -> None:
        """Ask the running round (if any) to stop now; the next one runs as scheduled."""
        self._round_stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running round (at shutdown, before the Lease is released)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self, stop: threading.Event | None = None) -> RoundResult:
        """One round, synchronously (`celvern controller --once`); raises RoundFailed (or the round's error)."""
        with self._lock:
            policy_set, self._changed_at = self._policy_set, None
        result = self._execute(policy_set, stop if stop is not None else threading.Event())
        self.last = result
        return result

    def _execute(self, policy_set: PolicySet, stop: threading.Event) -> RoundResult:
        raise NotImplementedError

    def _round(self, stop: threading.Event) -> None:
        try:
            result = self.run_once(stop)
        except Exception:  # a bug must not end the controller: the reports stay as they are
            log.exception("background scan failed")
        else:
            log_round(result)
        self._next = self._clock() + self.interval


def log_round(result: RoundResult) -> None:
    """The log line of a finished (or stopped) round, with its notes."""
    for note in result.notes:
        log.info("background scan note", extra={"note": note})
    log.info(
        "background scan stopped" if result.stopped else "background scan finished",
        extra={
            "scanned": result.scanned,
            "complete": result.complete,
            "reports_created": result.writes.created,
            "reports_updated": result.writes.updated,
            "reports_unchanged": result.writes.unchanged,
            "reports_deleted": result.writes.deleted,
            "reports_foreign": result.writes.foreign,
            "errors": len(result.scan_errors) + len(result.writes.errors),
            "seconds": round(result.duration, 3),
        },
    )


class ReportRounds(ScanRounds):
    """Rounds in this process, over `cluster` (tests and benchmarks over `InMemoryCluster`; the controller uses
    `ChildReportRounds`, since evaluation leaks memory in the CEL runtime)."""

    def __init__(
        self,
        cluster: Cluster,
        writer: ReportWriter,
        policy_set: PolicySet,
        *,
        interval: float,
        debounce: float = 10.0,
        metrics: ReportMetrics | None = None,
        on_scan_started: ScanStartedHook | None = None,
        on_scan_results: ScanResultsHook | None = None,
        on_scan_finished: ScanFinishedHook | None = None,
        page_size: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(policy_set, interval=interval, debounce=debounce, metrics=metrics, clock=clock)
        self.cluster = cluster
        self.writer = writer
        self.on_scan_started = on_scan_started
        self.on_scan_results = on_scan_results
        self.on_scan_finished = on_scan_finished
        self.page_size = page_size

    def _execute(self, policy_set: PolicySet, stop: threading.Event) -> RoundResult:
        scanner = Scanner(self.cluster, policy_set, page_size=self.page_size)
        return scan_and_write(
            scanner,
            self.writer,
            metrics=self.metrics,
            on_scan_started=self.on_scan_started,
            on_scan_results=self.on_scan_results,
            on_scan_finished=self.on_scan_finished,
            clock=self._clock,
            stop=stop,
        )


# --- rounds in a child process ----------------------------------------------------------------------------------


class ClusterConnector(Protocol):
    """How a child process reaches the cluster (picklable): `webhook.kubernetes_cluster.ClusterConnection`."""

    def connect(self) -> Cluster: ...


Baseline = frozenset[tuple[str, str, str, str, str, str]]
"""The findings `webhook.scan_history.ScanHistory` does not record again (its `Fingerprint`s)."""


@dataclass(frozen=True, slots=True)
class IsolatedRound:
    """Everything a child process needs for one round; picklable (plain data)."""

    connection: ClusterConnector
    policy_paths: tuple[str, ...] = ()
    """Policy files and directories; empty: the policies.kyverno.io resources of the cluster."""
    report_format: ReportFormat = "wgpolicyk8s"
    page_size: int = 500
    namespace: str = ""
    """Scan only this namespace ("" for all)."""
    history_url: str | None = None
    """Decision history for new findings and the scan's summary (None: none)."""
    history_retention: float = 7 * 86400.0
    events: bool = False
    """Record `celvern-scan` Events for the reports that change."""
    baseline: Baseline = frozenset()
    """The previous round's findings (`RoundOutcome.baseline`)."""
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What a round in a child process answers: its result (None when it failed) and the new finding baseline."""

    result: RoundResult | None
    baseline: Baseline
    error: str = ""


def _policies(spec: IsolatedRound, cluster: Cluster) -> PolicySet:
    if not spec.policy_paths:
        from webhook.snapshot import policies_from_cluster

        return policies_from_cluster(cluster)
    from webhook.snapshot import DirectoryPolicySource

    snapshot = DirectoryPolicySource(spec.policy_paths).current()
    if snapshot is None:
        raise RoundFailed(f"cannot load the policies from {', '.join(spec.policy_paths)}")
    return snapshot.policy_set


_EVENTS_DRAIN = 30.0
"""Seconds a round waits, at its end, for its queued Events to be sent (the rate limit spreads them out)."""


def _drain(events: EventRecorder, stop: threading.Event) -> None:
    deadline = time.monotonic() + _EVENTS_DRAIN
    while events.pending and time.monotonic() < deadline and not stop.wait(0.05):
        pass


def run_isolated_round(spec: IsolatedRound, stop: threading.Event | None = None) -> RoundOutcome:
    """One round as the child process runs it: connect, load the policies, scan, write reports, history and Events,
    then stop the history and Event recorders. Never raises: a failure is the outcome's `error`."""
    stop = stop if stop is not None else threading.Event()
    started = time.monotonic()
    baseline = spec.baseline
    try:
        cluster = spec.connection.connect()
    except Exception as failure:
        return RoundOutcome(None, baseline, f"cannot connect to the cluster: {failure}")
    try:
        from webhook.scan_history import ScanHistory

        recorder = None
        history: ScanHistory | None = None
        events: EventRecorder | None = None
        if spec.history_url:
            from webhook.history import DecisionRecorder, open_store

            url = spec.history_url
            retention = datetime.timedelta(seconds=spec.history_retention)
            recorder = DecisionRecorder(lambda: open_store(url), retention=retention)
            history = ScanHistory(recorder, baseline=baseline)
            recorder.start()
        if spec.events:
            from webhook.events import SCAN_CONTROLLER, EventRecorder

            events = EventRecorder(cluster, controller=SCAN_CONTROLLER)
            events.start()
        try:
            policy_set = _policies(spec, cluster)
            recorded = events

            def on_written(result: ResourceResult) -> None:
                if recorded is not None:
                    recorded.record_responses(result.key, result.responses)

            writer = ReportWriter(
                cluster,
                report_format=spec.report_format,
                page_size=spec.page_size,
                on_written=on_written if events is not None else None,
            )
            result = scan_and_write(
                Scanner(cluster, policy_set, page_size=spec.page_size),
                writer,
                namespace=spec.namespace,
                on_scan_started=history.scan_started if history is not None else None,
                on_scan_results=history.add if history is not None else None,
                on_scan_finished=history.scan_finished if history is not None else None,
                stop=stop,
            )
            result = dataclasses.replace(result, duration=time.monotonic() - started)
            problem = ""
        except Exception as failure:
            log.exception("background scan failed")
            result, problem = None, f"{type(failure).__name__}: {failure}"
        finally:
            if events is not None:
                _drain(events, stop)
                events.stop()
            if recorder is not None and not recorder.stop(timeout=30.0):
                log.warning("some scan findings could not be written to the decision history")
        if history is not None:
            baseline = history.baseline
        return RoundOutcome(result, baseline, problem)
    finally:
        close = getattr(cluster, "close", None)
        if close is not None:
            close()


def _child_main(spec: IsolatedRound, answer: multiprocessing.connection.Connection) -> None:
    """The child process: one round, its outcome sent back through `answer`. SIGTERM (or SIGINT) stops the round
    before its next write."""
    stop = threading.Event()

    def request_stop(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    from webhook import logs

    logs.configure(spec.log_level)
    try:
        outcome = run_isolated_round(spec, stop)
    except BaseException as error:  # run_isolated_round does not raise; this is a last resort
        outcome = RoundOutcome(None, spec.baseline, f"{type(error).__name__}: {error}")
    try:
        answer.send(outcome)
    finally:
        answer.close()


_WAIT = 0.2
"""Seconds between checks of the stop flag while a child runs."""


def run_round_in_child(
    spec: IsolatedRound, *, timeout: float, stop: threading.Event | None = None, grace: float = 10.0
) -> RoundOutcome:
    """Run `spec` in a fresh "spawn" child process and wait for its outcome.

    When `stop` is set, the child gets SIGTERM (it stops before its next write and answers); after `timeout`
    seconds it gets SIGTERM too, and the round fails. A child still running `grace` seconds after SIGTERM is killed;
    one that dies without answering fails the round. The outcome's `baseline` is `spec.baseline` when none came
    back."""
    context = multiprocessing.get_context("spawn")  # never fork: the controller has threads
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(spec, sender), name="celvern-scan-round", daemon=True)
    process.start()
    sender.close()  # the child holds the only writing end: its death is EOF here
    deadline = time.monotonic() + timeout
    outcome: RoundOutcome | None = None
    failure = ""
    try:
        while True:
            if stop is not None and stop.is_set():
                process.terminate()
                outcome = _receive(receiver, grace)
                if outcome is None:
                    failure = "stopped, and the scan process did not answer"
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                process.terminate()
                partial = _receive(receiver, grace)
                outcome = RoundOutcome(None, partial.baseline if partial is not None else spec.baseline, "")
                failure = f"the scan process overran its {timeout:g} s timeout and was stopped"
                break
            ready = multiprocessing.connection.wait([receiver, process.sentinel], timeout=min(remaining, _WAIT))
            if receiver in ready or process.sentinel in ready:
                outcome = _receive(receiver, grace)
                if outcome is None:
                    process.join(grace)
                    failure = f"the scan process exited without an answer (exit code {process.exitcode})"
                break
    finally:
        process.join(grace)
        if process.is_alive():
            log.warning("the scan process did not exit: killing it", extra={"pid": process.pid})
            process.kill()
            process.join()
        receiver.close()
        process.close()
    if failure:
        return RoundOutcome(None, outcome.baseline if outcome is not None else spec.baseline, failure)
    assert outcome is not None
    return outcome


def _receive(receiver: multiprocessing.connection.Connection, wait: float) -> RoundOutcome | None:
    """The child's answer, waiting at most `wait` seconds; None when it closed (died) or did not answer."""
    try:
        if not receiver.poll(wait):
            return None
        answer = receiver.recv()
    except (EOFError, OSError):
        return None
    return answer if isinstance(answer, RoundOutcome) else None


class ChildReportRounds(ScanRounds):
    """Rounds, each in a fresh child process (`run_round_in_child`): what the controller runs.

    The parent keeps the metrics (updated from each round's counts) and the finding baseline between rounds; the
    child reads the policies itself (`round.policy_paths`, or the cluster), so `update_policies` only schedules the
    debounced round. `timeout` defaults to max(2 x interval, 1 h)."""

    def __init__(
        self,
        round: IsolatedRound,
        policy_set: PolicySet,
        *,
        interval: float,
        debounce: float = 10.0,
        timeout: float | None = None,
        grace: float = 10.0,
        metrics: ReportMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(policy_set, interval=interval, debounce=debounce, metrics=metrics, clock=clock)
        self.round = round
        self.timeout = timeout if timeout is not None else max(2 * interval, 3600.0)
        self.grace = grace
        self.baseline: Baseline = round.baseline

    def _execute(self, policy_set: PolicySet, stop: threading.Event) -> RoundResult:
        spec = dataclasses.replace(self.round, baseline=self.baseline)
        outcome = run_round_in_child(spec, timeout=self.timeout, stop=stop, grace=self.grace)
        self.baseline = outcome.baseline
        if outcome.result is None:
            if self.metrics is not None:
                self.metrics.failed_rounds.inc()
            raise RoundFailed(outcome.error or "the scan round failed")
        self._observe(outcome.result)
        return outcome.result

    def _observe(self, result: RoundResult) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        metrics.scan_duration.observe(result.duration)
        metrics.resources.inc(result.scanned)
        metrics.scan_errors.inc(len(result.scan_errors))
        writes = result.writes
        for operation, count in (("created", writes.created), ("updated", writes.updated)):
            if count:
                metrics.written.labels(operation).inc(count)
        metrics.unchanged.inc(writes.unchanged)
        metrics.deleted.inc(writes.deleted)
        metrics.foreign.inc(writes.foreign)
        for operation, count in writes.failed_operations.items():
            metrics.errors.labels(operation).inc(count)
