"""The admission webhook's HTTP face: a small Starlette app the API server calls for every matching request.

It exists to keep the request path short and unbreakable: read the body with a hard size limit, parse it
(`webhook.admission`), evaluate the current compiled snapshot inline (evaluation is CPU-bound and takes
milliseconds, so a thread hop would cost more than it saves), answer, count, and log. Anything a client sends
gets a well-formed answer: an AdmissionReview, or a JSON error (400 malformed, 413 too large, 503 not ready);
an unexpected exception becomes a 500 JSON error and a log line, and the process keeps serving.

Metrics: each app counts into its own registry, which `/metrics` serves together with the process, platform and
GC collectors. With several worker processes (`celvern serve --workers N`), the CLI sets `PROMETHEUS_MULTIPROC_DIR`
before the workers start; prometheus_client then backs every metric with a file in that directory, and `/metrics`
serves the sum over all workers' files (`MultiProcessCollector`), whichever worker answers. The process, platform
and GC collectors describe one process and do not work in that mode, so they are left out there.

Serving (uvicorn, TLS, workers) and policy loading belong to the CLI and `webhook.state` implementations; this
module only needs a `PolicySource` and a `NamespaceResolver`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    gc_collector,
    generate_latest,
    multiprocess,
    platform_collector,
    process_collector,
    values,
)
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from engine.cel.services import Services
from engine.evaluation import EvaluationContext
from engine.matching import UNKNOWN_NAMESPACE, NamespaceLabels
from engine.policy_set import PolicySet, run
from engine.request import AdmissionRequest
from engine.resources import DEFAULT_MAPPER, ResourceMapper
from webhook.admission import (
    AdmissionDecision,
    ReviewError,
    decide_mutation,
    decide_validation,
    error_body,
    parse_review,
    resource_path,
    review_response,
)
from webhook.history import Decision
from webhook.state import NamespaceResolver, PolicySource, Snapshot

MAX_BODY = 3 * 1024 * 1024
"""The API server's own request size limit (`MaxRequestSizeBytes`, ecosystem.md 5.3)."""
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (to a directory shared by the worker processes) when prometheus_client runs in multiprocess mode."""
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 25, 30)
"""Kyverno's default boundaries (ecosystem.md 2.1)."""

log = logging.getLogger("celvern.webhook")
audit_log = logging.getLogger("celvern.audit")


class _BodyTooLarge(Exception):
    pass


class DecisionSink(Protocol):
    """Takes decisions for the history (`webhook.history.DecisionRecorder`); must never block."""

    def submit(self, decision: Decision) -> object: ...


class EventSink(Protocol):
    """Turns denials and warnings into Kubernetes Events (`webhook.events.EventRecorder`); must never block."""

    def record_admission(
        self,
        *,
        policy: str,
        result: str,
        action: str,
        kind: str,
        api_version: str,
        namespace: str,
        name: str,
        uid: str,
        message: str,
        policy_kind: str = ...,
    ) -> object: ...


_HISTORY_ACTIONS = {"Deny": "deny", "Warn": "warn", "Audit": "audit"}
"""Admission actions the history records (an error ignored under failurePolicy Ignore is not a decision)."""
_STRENGTH = {"deny": 3, "warn": 2, "audit": 1}


def history_decisions(
    request: AdmissionRequest, decision: AdmissionDecision, when: datetime.datetime
) -> list[Decision]:
    """The history's records of one admission decision: one per policy and message, with the strongest action it
    took (a policy with `validationActions: [Warn, Audit]` is one warning, not two decisions)."""
    strongest: dict[tuple[str, str], Decision] = {}
    kind = request.kind.kind
    user = request.user_info.username
    for event in decision.audit_events:
        action = _HISTORY_ACTIONS.get(event.action)
        if action is None:
            continue
        key = (event.policy, event.message)
        known = strongest.get(key)
        if known is not None and _STRENGTH[known.action] >= _STRENGTH[action]:
            continue
        strongest[key] = Decision(
            time=when,
            source="admission",
            policy=event.policy,
            action=action,
            kind=kind,
            namespace=request.namespace,
            name=request.name,
            message=event.message,
            severity=event.severity,
            category=event.category,
            user=user,
            result=event.result,
            operation=request.operation,
        )
    return list(strongest.values())


@dataclasses.dataclass(frozen=True, slots=True)
class _Metrics:
    requests: Counter
    duration: Histogram
    results: Counter
    http: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> _Metrics:
        return cls(
            requests=Counter(
                "celvern_admission_requests_total",
                "Admission reviews answered, by operation, decision and webhook path.",
                ["operation", "allowed", "path"],
                registry=registry,
            ),
            duration=Histogram(
                "celvern_admission_review_duration_seconds",
                "Time to answer one admission review, from the first byte read to the response.",
                ["operation", "allowed", "path"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            results=Counter(
                "celvern_policy_results_total",
                "Rule results of admission evaluations and what admission did with them.",
                ["policy", "result", "kind", "operation", "action"],
                registry=registry,
            ),
            http=Counter(
                "celvern_http_requests_total",
                "HTTP requests to the webhook routes, by path and status code (errors included).",
                ["path", "code"],
                registry=registry,
            ),
        )


def _multiprocess_dir() -> str | None:
    """The shared metrics directory when prometheus_client runs in multiprocess mode, else None.

    prometheus_client chooses file-backed values when it is imported; a directory set later would be read by the
    scrape but never written, so that mistake fails loudly here instead of serving empty metrics.
    """
    directory = os.environ.get(MULTIPROCESS_ENV)
    if not directory:
        return None
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(f"{MULTIPROCESS_ENV} was set after prometheus_client was imported: set it before")
    return directory


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes whether announced by Content-Length or streamed."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            announced = int(length)
        except ValueError:
            raise ReviewError(f"invalid Content-Length {length[:40]!r}") from None
        if announced > limit:
            raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def new_registry() -> CollectorRegistry:
    """A registry for one app, with the process, platform and GC collectors unless in multiprocess mode (where
    they describe one process of many and are left out)."""
    registry = CollectorRegistry()
    if _multiprocess_dir() is None:
        process_collector.ProcessCollector(registry=registry)
        platform_collector.PlatformCollector(registry=registry)
        gc_collector.GCCollector(registry=registry)
    return registry


def create_app(
    policies: PolicySource,
    namespaces: NamespaceResolver,
    *,
    max_body: int = MAX_BODY,
    registry: CollectorRegistry | None = None,
    services: Services | None = None,
    mapper: ResourceMapper = DEFAULT_MAPPER,
    history: DecisionSink | None = None,
    events: EventSink | None = None,
) -> Starlette:
    """The webhook app: `POST /validate`, `POST /mutate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.

    Denials, warnings and audits go to `history` (the decision history) and denials and warnings to `events`
    (Kubernetes Events) when given; both only queue, so neither can slow or fail an answer.

    Without `registry`, the app gets its own registry with the process, platform and GC collectors (so several
    apps in one process, as in tests, do not collide). In multiprocess mode (`PROMETHEUS_MULTIPROC_DIR` set before
    prometheus_client was imported), the metrics are still created in `registry`, but `/metrics` serves the sum
    over all processes' metric files instead, and the per-process collectors are not added.
    """
    multiprocess_dir = _multiprocess_dir()
    if registry is None:
        registry = new_registry()
    metrics = _Metrics.create(registry)
    evaluation_services = services or Services()
    split_cache: dict[str, tuple[Snapshot, PolicySet, PolicySet]] = {}

    def policy_sets(snapshot: Snapshot) -> tuple[PolicySet, PolicySet]:
        """(validating-only, mutating-only) views of the snapshot: each webhook runs only its own family (the
        API server sends /validate the already mutated object). Cached per snapshot."""
        cached = split_cache.get("current")
        if cached is None or cached[0] is not snapshot:
            full = snapshot.policy_set
            cached = (
                snapshot,
                dataclasses.replace(full, mutating=(), generating=()),
                dataclasses.replace(full, validating=(), generating=()),
            )
            split_cache["current"] = cached
        return cached[1], cached[2]

    def namespace_of(request: AdmissionRequest) -> tuple[NamespaceLabels, Mapping[str, Any] | None]:
        if not request.namespace:
            return NamespaceLabels({}), None
        try:
            return namespaces.lookup(request.namespace)
        except Exception:
            log.exception("namespace lookup failed", extra={"namespace": request.namespace})
            return UNKNOWN_NAMESPACE, None

    children: dict[tuple[str, ...], Any] = {}

    def child(metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised: the lookup costs more than the increment on the hot path."""
        key = (metric._name, *labels)
        found = children.get(key)
        if found is None:
            if len(children) > 50_000:  # label sets come from policies and kinds: bounded, but stay safe
                children.clear()
            found = children[key] = metric.labels(*labels)
        return found

    def _publish(request: AdmissionRequest, decision: AdmissionDecision) -> None:
        if request.dry_run:
            # `kubectl diff`, `--dry-run=server` and GitOps tools' previews persist nothing: recording them would
            # inflate the counts with requests that never happened, and the webhooks declare `sideEffects: None`.
            return
        try:
            decisions = history_decisions(request, decision, datetime.datetime.now(datetime.UTC))
            if history is not None:
                for entry in decisions:
                    history.submit(entry)
            if events is not None:
                obj = request.object if request.object is not None else request.old_object
                api_version = obj.get("apiVersion", "") if isinstance(obj, Mapping) else ""
                metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
                uid = metadata.get("uid", "") if isinstance(metadata, Mapping) else ""
                # Events about a cluster-scoped object (a Namespace being created, a ClusterRole) go to the default
                # namespace, not to request.namespace (for a Namespace, its own name: perhaps not created yet).
                cluster_scoped = not request.namespaced
                kinds = {event.policy: event.policy_kind for event in decision.audit_events if event.policy_kind}
                for entry in decisions:
                    if entry.action == "audit":
                        continue
                    events.record_admission(
                        policy=entry.policy,
                        result=entry.result,
                        action=entry.action,
                        kind=entry.kind,
                        api_version=str(api_version or ""),
                        namespace="" if cluster_scoped else entry.namespace,
                        name=entry.name,
                        uid=str(uid or ""),
                        message=entry.message,
                        policy_kind=kinds.get(entry.policy, "ValidatingPolicy"),
                    )
        except Exception:  # bookkeeping never costs an answer
            log.exception("cannot record the decision in the history or as events")

    def record(path: str, request: AdmissionRequest, decision: AdmissionDecision, started: float) -> None:
        operation = request.operation.lower()
        allowed = "true" if decision.allowed else "false"
        child(metrics.requests, operation, allowed, path).inc()
        child(metrics.duration, operation, allowed, path).observe(time.perf_counter() - started)
        kind = request.kind.kind
        for outcome in decision.outcomes:
            child(metrics.results, outcome.policy, outcome.result, kind, operation, outcome.action).inc()
        if decision.audit_events:
            if history is not None or events is not None:
                _publish(request, decision)
            resource = resource_path(request)
            user = request.user_info.username
            for event in decision.audit_events:
                audit_log.info(
                    "%s",
                    event.message,
                    extra={
                        "policy": event.policy,
                        "action": event.action,
                        "result": event.result,
                        "resource": resource,
                        "operation": request.operation,
                        "user": user,
                        "uid": request.uid,
                        "severity": event.severity,
                        "category": event.category,
                        "dry_run": event.dry_run,
                        "webhook": path,
                    },
                )

    async def admit(http_request: Request, path: str, mutate: bool) -> Response:
        started = time.perf_counter()
        try:
            body = await _read_body(http_request, max_body)
            request = parse_review(body, mapper)
            snapshot = policies.current()
            if snapshot is None:
                return _json(error_body("no policy snapshot is loaded yet"), 503)
            validating, mutating = policy_sets(snapshot)
            labels, namespace_object = namespace_of(request)
            context = EvaluationContext(
                request=request,
                namespace=labels,
                namespace_object=namespace_object,
                services=evaluation_services,
                mapper=mapper,
            )
            if mutate:
                decision = decide_mutation(run(mutating, context, unmatched=False), request)
            else:
                decision = decide_validation(run(validating, context, unmatched=False), request)
            record(path, request, decision, started)
            return _json(review_response(request.uid, decision))
        except _BodyTooLarge:
            return _json(error_body(f"request body is larger than {max_body} bytes"), 413)
        except ReviewError as error:
            return _json(error_body(f"malformed AdmissionReview: {error.message}"), 400)
        except ClientDisconnect:
            return _json(error_body("client disconnected"), 400)
        except Exception:
            log.exception("unexpected error while answering an admission review", extra={"path": path})
            return _json(error_body("internal error while evaluating the request"), 500)

    def counted(path: str, mutate: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            response = await admit(request, path, mutate)
            child(metrics.http, path, str(response.status_code)).inc()
            return response

        return endpoint

    async def healthz(_: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(_: Request) -> Response:
        snapshot = policies.current()
        if snapshot is None:
            return _json({"status": "not ready", "reason": "no policy snapshot is loaded yet"}, 503)
        return _json({"status": "ready", "version": snapshot.version})

    async def metrics_endpoint(_: Request) -> Response:
        if multiprocess_dir is None:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        scrape = CollectorRegistry()  # a new one per scrape, as prometheus_client's multiprocess mode requires
        multiprocess.MultiProcessCollector(scrape, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        return Response(generate_latest(scrape), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/validate", counted("/validate", mutate=False), methods=["POST"]),
            Route("/mutate", counted("/mutate", mutate=True), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    )
