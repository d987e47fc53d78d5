"""Kubernetes Events (`events.k8s.io/v1`) for policy decisions, recorded without ever slowing the caller down.

Why this module exists: a denied request leaves no object behind, so its report never appears; `kubectl describe`
and `kubectl get events` are where users look instead, as with Kyverno (ecosystem.md 2.2): reason `PolicyViolation`
for a fail (or warn) and `PolicyError` for an error, action `Resource Blocked` or `Resource Passed`, `regarding` the
resource and `related` the policy, `reportingController` `celvern-admission` or `celvern-scan` and
`reportingInstance` `<controller>-<hostname>`, and a note
`"<Kind> <ns>/<name>: [<policy>] <result> (blocked|warned); <message>"` bounded to 1,024 characters (the API's limit).

The admission webhook calls `record_admission` on its hot path, so recording must never block and never raise:
events go into a bounded queue (dropped, and counted, when it is full) and one background thread creates them
through the `Cluster` seam, at most `rate` per second with bursts of `burst` (a token bucket: a storm of denials
must not become a storm of API writes), skipping identical events seen within `dedup_window` seconds. A failed
create is counted and forgotten: events are best effort.
"""

from __future__ import annotations

import datetime
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from engine.resources import ResourceType
from engine.results import PolicyResponse, ResourceKey, Status, report_status
from webhook.cluster import ApiError, Cluster

log = logging.getLogger("celvern.events")

EVENTS = ResourceType("events.k8s.io", "v1", "Event", "events", True)
ADMISSION_CONTROLLER = "celvern-admission"
SCAN_CONTROLLER = "celvern-scan"
POLICY_VIOLATION = "PolicyViolation"
POLICY_ERROR = "PolicyError"
RESOURCE_BLOCKED = "Resource Blocked"
RESOURCE_PASSED = "Resource Passed"
MAX_NOTE = 1024
"""events.k8s.io/v1 rejects notes longer than 1 kB."""
DEFAULT_NAMESPACE = "default"
"""Where events about cluster-scoped resources go (as kubectl and Kyverno do)."""
POLICY_API_VERSION = "policies.kyverno.io/v1"
_MAX_DEDUP_ENTRIES = 10_000
_IDLE_WAIT = 0.5
"""Seconds the sender waits for an event before checking whether it should stop."""

_OUTCOMES: Mapping[str, str] = {
    "deny": "blocked",
    "blocked": "blocked",
    "warn": "warned",
    "warned": "warned",
    "audit": "",
    "audited": "",
    "": "",
}
"""Admission action (a validationAction or what was done) -> the word in the note ("" for audit: nothing)."""


def bounded_note(text: str, limit: int = MAX_NOTE) -> str:
    """`text` cut to at most `limit` characters and UTF-8 bytes (the API counts bytes), ending in "..." if cut."""
    if len(text) <= limit and len(text.encode()) <= limit:
        return text
    cut = text.encode()[: limit - 3].decode(errors="ignore")
    return cut[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    """One event to create; `regarding` is the resource, `related` the policy (ObjectReferences)."""

    reason: str
    action: str
    note: str
    namespace: str
    regarding: Mapping[str, str]
    related: Mapping[str, str]
    type: str = "Warning"

    def dedup_key(self) -> tuple[str, ...]:
        regarding = self.regarding.get("uid") or f"{self.regarding.get('namespace')}/{self.regarding.get('name')}"
        return (self.reason, self.action, regarding, self.related.get("name", ""), self.note)


def policy_event(
    *,
    policy: str,
    result: str,
    action: str,
    kind: str,
    namespace: str,
    name: str,
    uid: str = "",
    api_version: str = "",
    message: str = "",
    policy_kind: str = "ValidatingPolicy",
) -> PolicyEvent | None:
    """The event for one decision, or None for results that make none (pass, skip).

    `policy` is the policy's key (`name`, or `namespace/name` for a namespaced policy); `result` is fail, warn or
    error; `action` is what admission did (Deny/blocked, Warn/warned, Audit/audited).
    """
    result = result.lower()
    if result not in (Status.FAIL, Status.WARN, Status.ERROR):
        return None
    outcome = _OUTCOMES.get(action.lower(), "")
    resource = f"{namespace}/{name}" if namespace else name
    suffix = f" ({outcome})" if outcome else ""
    note = (
        f"{kind} {resource}: [{policy}] {result}{suffix}; {message}"
        if message
        else f"{kind} {resource}: [{policy}] {result}{suffix}"
    )
    regarding = {"apiVersion": api_version, "kind": kind, "namespace": namespace, "name": name, "uid": uid}
    policy_namespace, _, policy_name = policy.rpartition("/")
    if policy_namespace and not policy_kind.startswith("Namespaced"):
        policy_kind = f"Namespaced{policy_kind}"
    related = {
        "apiVersion": POLICY_API_VERSION,
        "kind": policy_kind,
        "namespace": policy_namespace,
        "name": policy_name,
    }
    return PolicyEvent(
        reason=POLICY_ERROR if result == Status.ERROR else POLICY_VIOLATION,
        action=RESOURCE_BLOCKED if outcome == "blocked" else RESOURCE_PASSED,
        note=bounded_note(note),
        namespace=namespace or DEFAULT_NAMESPACE,
        regarding={key: value for key, value in regarding.items() if value},
        related={key: value for key, value in related.items() if value},
    )


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_MAX_PREFIX = 200
"""Longest name prefix: with the "." and the API server's random suffix, the name stays within 253 characters."""


def name_prefix(name: str) -> str:
    """The start of an Event's generated name for a resource named `name`: the name itself when it is a valid
    DNS-1123 subdomain of at most 200 characters; else a sanitised form (lower-cased, anything but letters, digits,
    '-' and '.' replaced by '-', each dot-separated part trimmed of '-', cut to 200 characters), or "celvern" if
    nothing is left. The API server rejects an Event whose name is invalid (a ClusterRole `system:controller:x`)."""
    if len(name) <= _MAX_PREFIX and _DNS_SUBDOMAIN.fullmatch(name):
        return name
    cleaned = re.sub(r"[^a-z0-9.-]", "-", name.lower())
    labels = [label.strip("-") for label in cleaned.split(".")]
    prefix = ".".join(label for label in labels if label)[:_MAX_PREFIX].rstrip("-.")
    return prefix if _DNS_SUBDOMAIN.fullmatch(prefix) else "celvern"


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take` never waits."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until a token is available."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self.rate)


class EventMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter("celvern_events_sent", "Kubernetes Events created.", ["reason"], registry=registry)
        self.dropped = Counter(
            "celvern_events_dropped",
            "Events not created: queue_full, duplicate (seen within the dedup window) or api_error.",
            ["cause"],
            registry=registry,
        )


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class EventRecorder:
    """Creates Events in the background; `record*` never blocks and never raises.

    `start()` runs the sender thread; `stop()` ends it (events still queued are dropped). Tests may instead call
    `process()` to send what the rate limit allows right now, in the calling thread (the clock is injectable).
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        controller: str = ADMISSION_CONTROLLER,
        instance: str | None = None,
        queue_size: int = 1000,
        rate: float = 10.0,
        burst: int = 25,
        dedup_window: float = 30.0,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        if queue_size < 1 or dedup_window < 0:
            raise ValueError("queue_size must be positive and dedup_window not negative")
        self.cluster = cluster
        self.controller = controller
        self.instance = instance or f"{controller}-{socket.gethostname()}"
        self.dedup_window = dedup_window
        self.metrics = EventMetrics(registry if registry is not None else CollectorRegistry())
        self.sent = 0
        self.dropped = 0
        """Dropped because the queue was full."""
        self.duplicates = 0
        self.failed = 0
        """Creates the API refused (or that could not reach it)."""
        self._queue: queue.Queue[PolicyEvent] = queue.Queue(maxsize=queue_size)
        self._bucket = TokenBucket(rate, burst, clock)
        self._clock = clock
        self._wall_clock = wall_clock
        self._recent: dict[tuple[str, ...], float] = {}
        self._recent_lock = threading.Lock()
        self._held: PolicyEvent | None = None
        """An event taken from the queue that waits for a token."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._exiting = False
        """The sender thread has seen `_stop` and is ending."""

    @property
    def pending(self) -> int:
        return self._queue.qsize() + (self._held is not None)

    # --- recording (any thread, never blocks) ---------------------------------------------------------------

    def record(self, event: PolicyEvent) -> bool:
        """Queue the event; False when it was dropped (queue full) or skipped (a recent duplicate). Only a queued
        event enters the dedup window: the repeat of a dropped one is queued if there is room then."""
        try:
            if self.dedup_window and self._duplicate(event):
                self.duplicates += 1
                self.metrics.dropped.labels("duplicate").inc()
                return False
            self._queue.put_nowait(event)
            if self.dedup_window:
                self._remember(event)
            return True
        except queue.Full:
            self.dropped += 1
            self.metrics.dropped.labels("queue_full").inc()
            return False
        except Exception:  # never into the caller's hot path
            log.exception("cannot queue an event")
            return False

    def record_admission(
        self,
        *,
        policy: str,
        result: str,
        action: str,
        kind: str,
        namespace: str,
        name: str,
        uid: str = "",
        api_version: str = "",
        message: str = "",
        policy_kind: str = "ValidatingPolicy",
    ) -> bool:
        """Record one admission decision (fail/warn -> PolicyViolation, error -> PolicyError; others: nothing).

        `action` is what admission did with it: Deny (blocked), Warn (warned) or Audit."""
        try:
            event = policy_event(
                policy=policy,
                result=result,
                action=action,
                kind=kind,
                namespace=namespace,
                name=name,
                uid=uid,
                api_version=api_version,
                message=message,
                policy_kind=policy_kind,
            )
        except Exception:
            log.exception("cannot build an event")
            return False
        return event is not None and self.record(event)

    def record_responses(self, resource: ResourceKey, responses: Iterable[PolicyResponse], *, action: str = "") -> int:
        """Record the fail/warn/error results of policy responses about one resource (a background scan's findings,
        with action "" = audited); returns how many events were queued."""
        queued = 0
        for response in responses:
            for rule in response.rules:
                status = report_status(response.policy, rule.status)
                queued += self.record_admission(
                    policy=response.policy.key,
                    result=status.value,
                    action=action,
                    kind=resource.kind,
                    namespace=resource.namespace,
                    name=resource.name,
                    uid=resource.uid,
                    api_version=resource.api_version,
                    message=rule.message,
                    policy_kind=response.policy.kind,
                )
        return queued

    def _duplicate(self, event: PolicyEvent) -> bool:
        """Whether an identical event was queued within the dedup window."""
        key = event.dedup_key()
        now = self._clock()
        with self._recent_lock:
            seen = self._recent.get(key)
            return seen is not None and now - seen < self.dedup_window

    def _remember(self, event: PolicyEvent) -> None:
        """Put a queued event in the dedup window. `_recent` is in the order entries were made (a key seen again
        moves to the end), so the oldest are at the front: expired ones, and beyond `_MAX_DEDUP_ENTRIES` the oldest
        live ones, are dropped from there, a few at a time."""
        key = event.dedup_key()
        now = self._clock()
        with self._recent_lock:
            recent = self._recent
            recent.pop(key, None)
            while recent:
                oldest = next(iter(recent))
                if now - recent[oldest] < self.dedup_window and len(recent) < _MAX_DEDUP_ENTRIES:
                    break
                del recent[oldest]
            recent[key] = now

    # --- sending (one thread) ---------------------------------------------------------------------------------

    def process(self, limit: int | None = None) -> int:
        """Create queued events while the rate limit allows (never waits); returns how many were attempted."""
        done = 0
        while limit is None or done < limit:
            event = self._held
            if event is None:
                try:
                    event = self._queue.get_nowait()
                except queue.Empty:
                    break
            if not self._bucket.take():
                self._held = event
                break
            self._held = None
            self._send(event)
            done += 1
        return done

    def _send(self, event: PolicyEvent) -> None:
        body = self.to_object(event)
        try:
            self.cluster.create(EVENTS, body)
        except ApiError as error:
            self.failed += 1
            self.metrics.dropped.labels("api_error").inc()
            log.debug("cannot create event: %s", error)
            return
        except Exception:
            self.failed += 1
            self.metrics.dropped.labels("api_error").inc()
            log.exception("cannot create event")
            return
        self.sent += 1
        self.metrics.sent.labels(event.reason).inc()

    def to_object(self, event: PolicyEvent) -> dict[str, Any]:
        """The events.k8s.io/v1 Event object."""
        when = self._wall_clock().astimezone(datetime.UTC)
        return {
            "apiVersion": EVENTS.api_version,
            "kind": EVENTS.kind,
            "metadata": {
                "generateName": f"{name_prefix(event.regarding.get('name', ''))}.",
                "namespace": event.namespace,
            },
            "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": self.controller,
            "reportingInstance": self.instance[:128],
            "action": event.action,
            "reason": event.reason,
            "type": event.type,
            "note": event.note,
            "regarding": dict(event.regarding),
            "related": dict(event.related),
        }

    def start(self) -> None:
        """Start the sender thread. While one runs (even one that `stop` asked to end but that has not yet, stuck
        in a create), it is told to carry on instead: there is never more than one sender."""
        with self._lifecycle:
            self._stop.clear()
            thread = self._thread
            if thread is not None and thread.is_alive() and not self._exiting:
                return
            self._exiting = False
            self._thread = threading.Thread(target=self._run, name="celvern-events", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the sender to end and wait up to `timeout` for it; a sender still busy after that is kept track of
        (it ends after its current create, or carries on if `start` is called)."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        with self._lifecycle:
            if self._thread is thread and not thread.is_alive():
                self._thread = None

    def _run(self) -> None:
        while True:
            with self._lifecycle:
                # Decided under the lock, so that `start` either sees this thread exiting or keeps it running.
                if self._stop.is_set():
                    self._exiting = True
                    return
            try:
                self.process()
                if self._held is not None:
                    self._stop.wait(max(self._bucket.wait_time(), 0.001))
                    continue
                try:
                    self._held = self._queue.get(timeout=_IDLE_WAIT)
                except queue.Empty:
                    continue
            except Exception:  # the sender must outlive any bug
                log.exception("event sender failed")
                self._stop.wait(_IDLE_WAIT)
