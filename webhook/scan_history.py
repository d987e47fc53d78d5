"""Background scans in the decision history: new findings as decisions, and each complete scan's counts.

Why it exists: the governance view needs two things from scans. The violations list and the 7-day counts need each
background-scan failure, but a scan repeats every hour over the same objects, so recording every failure of every
scan would count one unchanged violation 168 times a week; a failure is recorded when it is first seen (or its
message changes), and again after the controller restarts. "Safe to enforce" needs, per policy, the result counts
of the latest complete scan (a scan that could not list some types proves nothing about them, so it is not recorded
as a summary).

`ScanHistory` is told when a scan starts (`begin`), fed the scan's results as they stream (`add`, in batches) and
told when the scan ends (`finish`, also when the round failed); it passes decisions and the summary to a sink that
never blocks (`webhook.history.DecisionRecorder`). The findings already recorded (the baseline) can be handed from
one process to the next (`baseline`, and the constructor's `baseline`): the controller runs each scan in a
short-lived child process.

An incomplete scan proves nothing about the types it could not list, so it keeps their old findings in the baseline
(a persisting violation there is not recorded again) and drops the others': the baseline stays the size of one
scan's findings whatever happens.
"""

from __future__ import annotations

import datetime
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from engine.resources import ResourceType
from engine.results import PolicyResponse, Status
from webhook.history import Decision, PolicyScan, ScanSummary
from webhook.scanner import ResourceResult, Scan, Scanner

_COUNTED = {
    Status.PASS: "passed",
    Status.FAIL: "failed",
    Status.WARN: "warned",
    Status.ERROR: "errored",
    Status.SKIP: "skipped",
}
_RECORDED = (Status.FAIL, Status.ERROR)

Fingerprint = tuple[str, str, str, str, str, str]
"""(resource type, policy, rule, resource, result, message) of one finding; the type is `type_key`'s."""


def type_key(resource: ResourceType) -> str:
    """The resource type of a fingerprint: "group/resource" ("core" for the core group)."""
    return f"{resource.group or 'core'}/{resource.resource}"


class ScanSink(Protocol):
    def submit(self, decision: Decision) -> object: ...

    def record_scan(self, summary: ScanSummary) -> object: ...


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _action(response: PolicyResponse) -> str:
    """What admission would do with a failure of this policy: its strongest validationAction."""
    actions = {action.value.lower() for action in response.policy.validation_actions} or {"deny"}
    for action in ("deny", "warn", "audit"):
        if action in actions:
            return action
    return "audit"


class ScanHistory:
    """Records one controller's scans (thread-safe: scans run in a background thread)."""

    def __init__(
        self,
        sink: ScanSink,
        *,
        clock: Callable[[], datetime.datetime] = _utcnow,
        baseline: Iterable[Fingerprint] = (),
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        self._previous: set[Fingerprint] = set(baseline)
        """Findings already recorded: not recorded again while they persist."""
        self._current: set[Fingerprint] = set()
        self._counts: dict[str, Counter[str]] = {}
        self._started: datetime.datetime | None = None

    @property
    def baseline(self) -> frozenset[Fingerprint]:
        """The findings a next scan does not record again (hand it to the next process's `ScanHistory`)."""
        with self._lock:
            return frozenset(self._previous)

    def begin(self) -> None:
        """A scan starts: forget the counts and findings of one that never finished."""
        with self._lock:
            self._counts, self._current, self._started = {}, set(), None

    def scan_started(self, scan: Scan) -> None:
        """The `on_scan_started` hook of `webhook.policy_reports`."""
        self.begin()

    def add(self, results: Iterable[ResourceResult]) -> int:
        """Count a batch of results and record the findings not seen in the previous scan; returns how many."""
        recorded = 0
        with self._lock:
            now = self._clock()
            if self._started is None:
                self._started = now
            for result in results:
                key = result.key
                resource = key.uid or f"{key.api_version}/{key.kind}/{key.namespace}/{key.name}"
                kind = type_key(result.resource)
                for response in result.responses:
                    policy = response.policy
                    counts = self._counts.setdefault(policy.key, Counter())
                    for rule in response.rules:
                        counts[_COUNTED[rule.status]] += 1
                        if rule.status not in _RECORDED:
                            continue
                        fingerprint = (kind, policy.key, rule.rule, resource, rule.status.value, rule.message)
                        self._current.add(fingerprint)
                        if fingerprint in self._previous:
                            continue
                        recorded += 1
                        self._sink.submit(
                            Decision(
                                time=now,
                                source="scan",
                                policy=policy.key,
                                action=_action(response),
                                kind=key.kind,
                                namespace=key.namespace,
                                name=key.name,
                                message=rule.message or rule.status.value,
                                severity=policy.severity,
                                category=policy.category,
                                result=rule.status.value,
                            )
                        )
        return recorded

    def scan_finished(self, scan: Scan, scanner: Scanner) -> ScanSummary | None:
        """The `on_scan_finished` hook of `webhook.policy_reports`: `finish` with the policies the scan ran and the
        types it did not see whole (every type, when the scan was abandoned before its end)."""
        policies = [policy.ref.key for policy in scanner.policy_set.validating if not policy.variant]
        unseen = scan.failed if scan.finished and not scan.aborted else {*scan.types, *scan.failed}
        return self.finish(scan.complete, policies, unseen=[type_key(resource) for resource in unseen])

    def finish(self, complete: bool, policies: Iterable[str] = (), *, unseen: Iterable[str] = ()) -> ScanSummary | None:
        """End the scan: a complete one is recorded as the latest summary (with zero counts for the `policies` that
        matched nothing) and its findings become the baseline; an incomplete one records no summary, and its
        findings plus the old ones of the `unseen` types (`type_key`s of the types it could not list) become the
        baseline."""
        unseen = set(unseen)
        with self._lock:
            started = self._started or self._clock()
            counts, current = self._counts, self._current
            self._counts, self._current, self._started = {}, set(), None
            if not complete:
                self._previous = {finding for finding in self._previous if finding[0] in unseen} | current
                return None
            self._previous = current
            for policy in policies:
                counts.setdefault(policy, Counter())
            summary = ScanSummary(
                time=started,
                policies=tuple(
                    PolicyScan(policy, **{field: count for field, count in tally.items()})
                    for policy, tally in sorted(counts.items())
                ),
            )
        self._sink.record_scan(summary)
        return summary
