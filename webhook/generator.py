"""The background generator: keeps the downstream objects of GeneratingPolicies in sync with their triggers.

Admission only sees a trigger once, when it is created; everything that happens later — the downstream object
is deleted or edited, the policy changes or goes away, the trigger is deleted or stops matching, the controller
restarts — is this controller's job. It is a classic level-triggered controller over the `webhook.cluster.Cluster`
seam: list each trigger resource, watch from the list's resourceVersion (relisting on 410 Gone), put the keys of
changed triggers in a de-duplicating work queue, and `reconcile(key)` each one: evaluate the policies on the
trigger (a CREATE request, `engine.policy_set.run`), then make the cluster hold exactly what they asked for.

The class is synchronous and deterministic: no threads inside. A caller drives it with `sync_once()` (poll the
watches, then process the work that is due), tests step it with a fake clock and a zero watch timeout, and the
CLI loops it with `run_forever(stop)`.

Ownership is label based (no ownerReferences: a downstream object often lives in another namespace than its
trigger, or is cluster-scoped). The engine labels every generated object with `generate.celvern.io/policy-name`
(and `policy-namespace` for namespaced policies), `trigger-kind`, `trigger-namespace`, `trigger-name` and
`trigger-uid` (`engine.generating`). The objects a (policy, trigger) pair owns are found with a label selector on
policy name + trigger kind/namespace/name, filtered on policy-namespace. We select by trigger *name* rather than
uid because a deleted trigger's uid is not known after a restart, and because a trigger deleted and recreated
under the same name (a new uid) should take over its predecessor's objects; the uid label tells incarnations apart
(the "handled" record below is per uid). Deleting or editing a downstream object of a synchronized policy is seen
on the watch of its kind (every kind the policies have generated so far is watched) and re-queues its trigger,
found through those labels.

Writes use create and update, not server-side apply: the in-memory cluster has no SSA, an update carries the
resourceVersion it was computed from so a concurrent change fails with Conflict (and the trigger is re-queued)
instead of being overwritten, and a create that finds the object already there is not a duplicate.

Drift is judged field by field: a value the policy sets that differs, or is missing, on the live object is drift
(the object is replaced by the desired one); fields only the live object has (server defaults, status, metadata
the server sets: resourceVersion, uid, creationTimestamp, managedFields, generation) are not, so that a defaulted
field can never make the controller update forever.

The synchronize matrix (ecosystem.md 6, data source), as implemented:

| Action                             | synchronize: true                               | synchronize: false |
|------------------------------------|-------------------------------------------------|--------------------|
| Delete downstream                  | recreated                                       | stays gone         |
| Delete policy (`remove_policy`)    | deleted, unless orphanDownstreamOnPolicyDelete  | retained           |
| Delete trigger                     | downstream deleted                              | none               |
| Modify downstream                  | reverted                                        | kept               |
| Modify policy (`replace_policies`) | downstream updated                              | unmodified         |
| Trigger no longer matching         | downstream deleted                              | none               |

Without synchronize a policy creates the missing objects once per trigger (per trigger uid): the controller
records which triggers it handled and never recreates what a user deleted.

Clone sources: the engine reads other objects (`resource.Get`/`resource.List`) through `ClusterResourceLookup`,
which serves them from the cluster and records which resource types each trigger's evaluation read. Those types
are watched too, and a change to any object of a type re-queues the triggers that read that type (modify source
with synchronize: downstream synced; without: the trigger is handled, so unmodified). This is coarse (any
ConfigMap change re-queues every trigger that read a ConfigMap) but exact enough and cheap; an optional periodic
resync (`resync_period`) re-queues every trigger as a backstop. Deleting a source makes the policy's expression
see `null`; what happens then is up to the policy (usually an evaluation error, which leaves the downstream alone).

generateExisting: the first list of a trigger resource backfills every existing trigger for policies with
generateExisting on. For policies without it, existing triggers are "seen": they are only acted on once they
change, except that a trigger that already owns downstream objects (made by an earlier run of the controller) is
adopted and kept in sync — so a restarted controller neither duplicates nor forgets earlier work.

Faults: an ApiError that is retryable (or a Conflict) re-queues the item with exponential backoff
(`backoff_base * 2**attempt`, capped at `backoff_cap`, scaled by a jitter factor in [0.5, 1]); a non-retryable
error, or `max_attempts` failures, drops the item with a structured log line and `celvern_generate_errors_total`.
A trigger that disappears mid-work is handled as a deletion, not an error. Nothing raises out of `sync_once`.

Known limits: downstream kinds are learned from what the policies generate, so after a restart a downstream kind
is only watched once some trigger's evaluation produced it (objects of a kind nothing has produced since the
restart are not cleaned up when their trigger or policy is deleted); the "handled" record lives in memory, so a
restarted controller with generateExisting on recreates downstream objects users deleted under a policy without
synchronize; watches are polled one after another, so `watch_timeout` should stay small.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engine.cel.services import Services
from engine.compiler import CompiledGeneratingPolicy
from engine.evaluation import EvaluationContext
from engine.generating import (
    POLICY_NAME,
    POLICY_NAMESPACE,
    TRIGGER_KIND,
    TRIGGER_NAME,
    TRIGGER_NAMESPACE,
    label_value,
)
from engine.matching import UNKNOWN_NAMESPACE, NamespaceLabels
from engine.policy_set import PolicySet, run
from engine.request import CREATE, UPDATE, AdmissionRequest, request_for_resource
from engine.resources import DEFAULT_MAPPER, ResourceMapper, ResourceType
from engine.results import PolicyResponse, Status
from webhook.cluster import ApiError, Cluster, Conflict, Gone, NotFound, WatchEvent

log = logging.getLogger("celvern.generator")

NAMESPACES = ResourceType("", "v1", "Namespace", "namespaces", False)
SERVER_FIELDS = frozenset({"resourceVersion", "uid", "creationTimestamp", "managedFields", "generation", "selfLink"})
"""Metadata the API server sets; never drift."""

PolicyId = tuple[str, str]
"""(namespace or "", name) of a policy."""


# --- keys ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TriggerKey:
    """A trigger object, by resource type, namespace ("" when cluster-scoped) and name."""

    resource: ResourceType
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.resource.resource}/{where}{self.name}"


@dataclass(frozen=True, slots=True)
class PolicyCleanupKey:
    """Deleting the downstream objects of a removed synchronized policy (a queue item like a trigger)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"policy/{self.namespace + '/' if self.namespace else ''}{self.name}"


WorkKey = TriggerKey | PolicyCleanupKey


def policy_id(policy: CompiledGeneratingPolicy) -> PolicyId:
    return (policy.namespace or "", policy.name)


def should_generate(request: AdmissionRequest) -> bool:
    """Whether an admission request may generate downstream objects: CREATE or UPDATE, and not a dry run."""
    return not request.dry_run and request.operation in (CREATE, UPDATE)


# --- metrics ---------------------------------------------------------------------------------------------------


class GeneratorMetrics:
    """The controller's Prometheus metrics, registered in `registry` (tests pass their own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.created = Counter(
            "celvern_generate_objects_created",
            "Downstream objects created by the generator.",
            ["policy", "kind"],
            registry=registry,
        )
        self.updated = Counter(
            "celvern_generate_objects_updated",
            "Downstream objects updated (drift reverted or policy changed) by the generator.",
            ["policy", "kind"],
            registry=registry,
        )
        self.deleted = Counter(
            "celvern_generate_objects_deleted",
            "Downstream objects deleted by the generator.",
            ["policy", "kind"],
            registry=registry,
        )
        self.errors = Counter(
            "celvern_generate_errors",
            "Generator errors, by reason: retry (re-queued), dropped, evaluation, list, watch.",
            ["reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "celvern_generate_queue_depth", "Work items waiting in the generator's queue.", registry=registry
        )
        self.reconcile_duration = Histogram(
            "celvern_generate_reconcile_duration_seconds",
            "Time to process one work item.",
            registry=registry,
        )


# --- cluster lookups for resource.Get / resource.List ------------------------------------------------------------


class ClusterResourceLookup:
    """Serves `engine.cel.services.ResourceLookup` (what `resource.Get`/`resource.List` call) from a `Cluster`.

    Records the resource types read (`reads`) so the generator can watch clone sources, and the API errors met
    (`errors`), because the engine turns a failed lookup into an evaluation error that would otherwise hide a
    retryable failure.
    """

    def __init__(self, cluster: Cluster, mapper: ResourceMapper = DEFAULT_MAPPER) -> None:
        self._cluster = cluster
        self._mapper = mapper
        self.reads: set[ResourceType] = set()
        self.errors: list[ApiError] = []

    def type_of(self, api_version: str, resource: str) -> ResourceType:
        known = self._mapper.for_resource(api_version, resource)
        if known is not None:
            return known
        group, _, version = api_version.rpartition("/")
        kind = self._mapper.kind_for(api_version, resource) or ""
        return ResourceType(group, version, kind, resource, True)

    def get(self, api_version: str, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        resource_type = self.type_of(api_version, resource)
        self.reads.add(resource_type)
        try:
            return self._cluster.get(resource_type, namespace if resource_type.namespaced else "", name)
        except ApiError as error:
            self.errors.append(error)
            raise

    def list(
        self, api_version: str, resource: str, namespace: str, labels: Mapping[str, str] | None
    ) -> list[dict[str, Any]]:
        resource_type = self.type_of(api_version, resource)
        self.reads.add(resource_type)
        selector = ",".join(f"{key}={value}" for key, value in (labels or {}).items())
        try:
            return self._cluster.list(resource_type, namespace, selector).items
        except ApiError as error:
            self.errors.append(error)
            raise

    def kind_for(self, api_version: str, resource: str) -> str | None:
        return self._mapper.kind_for(api_version, resource)

    def resource_for(self, api_version: str, kind: str) -> str:
        return self._mapper.plural(api_version, kind)


# --- internal state --------------------------------------------------------------------------------------------

TRIGGER, DOWNSTREAM, SOURCE = "trigger", "downstream", "source"


@dataclass
class _Watch:
    resource: ResourceType
    roles: set[str] = field(default_factory=set)
    resource_version: str | None = None
    """None: (re)list before watching."""
    listed: bool = False
    """Listed at least once (a later list is a relist: something may have been missed)."""
    initial: bool = False
    """The next list is the first one as a trigger resource: its objects existed before we looked."""


@dataclass(frozen=True, slots=True)
class _Observed:
    uid: str
    resource_version: str
    kind: str
    labels: tuple[str, str, str]
    """(trigger-kind, trigger-namespace, trigger-name) label values of this trigger."""


def _type_key(resource: ResourceType) -> tuple[str, str, str]:
    return resource.group, resource.version, resource.resource


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = _metadata(obj).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def _meta_str(obj: Mapping[str, Any], key: str) -> str:
    value = _metadata(obj).get(key)
    return value if isinstance(value, str) else ""


def _covers(desired: Any, live: Any) -> bool:
    """Whether every value in `desired` is present and equal in `live` (extra fields in `live` are fine)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(k in live and _covers(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(_covers(d, item) for d, item in zip(desired, live, strict=True))
        )
    return bool(desired == live)


def drifted(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """Whether `live` no longer holds what `desired` asks for (server-set metadata ignored)."""
    wanted = dict(desired)
    wanted["metadata"] = {k: v for k, v in _metadata(desired).items() if k not in SERVER_FIELDS}
    return not _covers(wanted, live)


class _Outcome:
    GENERATE, NONE, ERROR = "generate", "none", "error"


# --- the controller --------------------------------------------------------------------------------------------


class Generator:
    """Keeps downstream objects of the GeneratingPolicies in `policy_set` in sync with their triggers.

    Drive it with `sync_once()` (or `poll()` then `process()`); `run_forever(stop)` loops it for the CLI.
    """

    def __init__(
        self,
        cluster: Cluster,
        policy_set: PolicySet,
        *,
        mapper: ResourceMapper = DEFAULT_MAPPER,
        metrics: GeneratorMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_cap: float = 30.0,
        resync_period: float | None = None,
    ) -> None:
        self.cluster = cluster
        self.mapper = mapper
        self.metrics = metrics
        self._clock = clock
        self._jitter = jitter
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.resync_period = resync_period
        self._lookup = ClusterResourceLookup(cluster, mapper)
        self._policy_set = PolicySet(generating=(), exceptions=())
        self._policies: dict[PolicyId, CompiledGeneratingPolicy] = {}
        self._watches: dict[tuple[str, str, str], _Watch] = {}
        self._queue: dict[WorkKey, float] = {}
        """Work key -> the clock time it is due; insertion ordered (processed in order)."""
        self._attempts: dict[WorkKey, int] = {}
        self._observed: dict[TriggerKey, _Observed] = {}
        self._by_labels: dict[tuple[str, str, str], TriggerKey] = {}
        self._handled: dict[tuple[PolicyId, TriggerKey], str] = {}
        """(policy, trigger) -> the trigger uid the policy generated for."""
        self._seen: set[tuple[PolicyId, TriggerKey]] = set()
        """Triggers that existed before a policy without generateExisting looked; ignored until they change."""
        self._initial: set[tuple[PolicyId, TriggerKey]] = set()
        """Triggers found by the first list, not yet reconciled for that policy."""
        self._source_readers: dict[tuple[str, str, str], set[TriggerKey]] = {}
        self._own_writes: set[tuple[tuple[str, str, str], str, str, str]] = set()
        """(type, namespace, name, resourceVersion) of our own writes; their watch events are ours, not drift."""
        self._own_deletes: set[tuple[tuple[str, str, str], str, str]] = set()
        self._started = False
        self._last_resync = 0.0
        self._lock = threading.RLock()
        """Serialises the public entry points, so `replace_policies` may be called from another thread."""
        self._install(policy_set)

    # --- public API ----------------------------------------------------------------------------------------

    @property
    def policy_set(self) -> PolicySet:
        return self._policy_set

    @property
    def pending(self) -> list[WorkKey]:
        """Queued work keys, in processing order."""
        return list(self._queue)

    @property
    def trigger_resources(self) -> list[ResourceType]:
        return [w.resource for w in self._watches.values() if TRIGGER in w.roles]

    @property
    def downstream_resources(self) -> list[ResourceType]:
        return [w.resource for w in self._watches.values() if DOWNSTREAM in w.roles]

    def start(self) -> None:
        """List every trigger resource (backfilling for generateExisting) without processing the queue yet."""
        self._started = True
        self._last_resync = self._clock()
        self.poll(0)

    def sync_once(self, timeout_seconds: int = 0) -> int:
        """One step: poll every watch (waiting up to `timeout_seconds` each), then process the due work items.

        Returns the number of work items processed. Never raises.
        """
        try:
            with self._lock:
                if not self._started:
                    self.start()
                else:
                    self.poll(timeout_seconds)
                return self.process()
        except Exception:  # the loop must survive anything; log it and carry on
            log.exception("generator step failed", extra={"event": "step-failed"})
            return 0

    def run_forever(self, stop: threading.Event, *, timeout_seconds: int = 1, idle: float = 0.5) -> None:
        """Loop `sync_once` until `stop` is set (for the CLI, on a thread of the caller's)."""
        while not stop.is_set():
            if not self.sync_once(timeout_seconds):
                due_in = self._next_due_in()
                stop.wait(idle if due_in is None else min(idle, due_in))

    def poll(self, timeout_seconds: int = 0) -> None:
        """List what needs listing, read every watch, and queue the triggers that changed."""
        with self._lock:
            self._poll(timeout_seconds)

    def _poll(self, timeout_seconds: int) -> None:
        for watch in list(self._watches.values()):
            self._poll_one(watch, timeout_seconds)
        if self.resync_period is not None and self._clock() - self._last_resync >= self.resync_period:
            self._last_resync = self._clock()
            for key in list(self._observed):
                self.enqueue(key)

    def process(self) -> int:
        """Process every queued item that is due now (items re-queued with a backoff wait for later calls)."""
        with self._lock:
            return self._process()

    def _process(self) -> int:
        now = self._clock()
        due = [key for key, when in self._queue.items() if when <= now]
        for key in due:
            self._queue.pop(key, None)
            self._set_depth()
            started = self._clock()
            try:
                if isinstance(key, TriggerKey):
                    self.reconcile(key)
                else:
                    self._cleanup_policy(key)
                self._attempts.pop(key, None)
            except ApiError as error:
                self._failed(key, error)
            except Exception as error:
                log.exception(
                    "dropping work item after an unexpected error",
                    extra={"event": "dropped", "key": str(key), "reason": repr(error)},
                )
                self._attempts.pop(key, None)
                self._count_error("dropped")
            finally:
                if self.metrics is not None:
                    self.metrics.reconcile_duration.observe(max(0.0, self._clock() - started))
        return len(due)

    def enqueue(self, key: WorkKey) -> None:
        """Queue a key to be processed now (an already-queued key keeps its place)."""
        with self._lock:
            now = self._clock()
            current = self._queue.get(key)
            self._queue[key] = now if current is None else min(current, now)
            self._set_depth()

    def replace_policies(self, policy_set: PolicySet) -> None:
        """Switch to a new policy set: removed policies are cleaned up, changed and added ones re-applied."""
        with self._lock:
            self._replace_policies(policy_set)

    def _replace_policies(self, policy_set: PolicySet) -> None:
        old = dict(self._policies)
        observed = list(self._observed)
        self._install(policy_set)
        for pid, policy in old.items():
            if pid not in self._policies:
                self._forget_policy(pid)
                if policy.source.synchronize and not policy.source.orphan_downstream_on_policy_delete:
                    self.enqueue(PolicyCleanupKey(*pid))
        for pid, policy in self._policies.items():
            previous = old.get(pid)
            if previous is None:
                self._policy_added(policy)
            elif previous.source.document.data != policy.source.document.data:
                for key in observed:
                    self.enqueue(key)

    def remove_policy(self, name: str, namespace: str = "") -> None:
        """Forget one policy (as if it were deleted from the cluster)."""
        with self._lock:
            kept = tuple(p for p in self._policies.values() if policy_id(p) != (namespace, name))
            self._replace_policies(PolicySet(generating=kept, exceptions=self._policy_set.exceptions))

    def reconcile(self, key: TriggerKey) -> None:
        """Make the cluster hold what the policies want for one trigger. Raises ApiError to be retried."""
        trigger = self.cluster.get(key.resource, key.namespace, key.name)
        if trigger is None or _metadata(trigger).get("deletionTimestamp"):
            self._trigger_gone(key)
            return
        uid = _meta_str(trigger, "uid")
        self._observe(key, trigger)
        responses = self._evaluate(key, trigger)
        for policy, response in responses:
            pid = policy_id(policy)
            state = (pid, key)
            if state in self._seen:
                continue
            outcome, desired, message = self._outcome(policy, response)
            if outcome == _Outcome.ERROR:
                log.warning(
                    "policy evaluation failed; downstream objects left as they are",
                    extra={"event": "evaluation-error", "policy": policy.name, "trigger": str(key), "reason": message},
                )
                self._count_error("evaluation")
                continue
            initial = state in self._initial
            if initial and not policy.source.generate_existing:
                kinds = {self._type_of(obj) for obj in desired}
                if not self._existing(policy, key, kinds):
                    self._initial.discard(state)
                    self._seen.add(state)
                    continue
                self._handled[state] = uid  # adopt what an earlier run made
            self._initial.discard(state)
            if policy.source.synchronize:
                if outcome == _Outcome.NONE and state not in self._handled and not initial:
                    continue  # never generated for this trigger: nothing to delete, spare the lists
                self._converge(policy, key, desired)
                if outcome == _Outcome.GENERATE:
                    self._handled[state] = uid
                else:
                    self._handled.pop(state, None)
            elif outcome == _Outcome.GENERATE and self._handled.get(state) != uid:
                self._create_missing(policy, desired)
                self._handled[state] = uid

    # --- polling -------------------------------------------------------------------------------------------

    def _poll_one(self, watch: _Watch, timeout_seconds: int) -> None:
        try:
            if watch.resource_version is None:
                self._list(watch)
            self._read_watch(watch, timeout_seconds)
        except Gone:
            log.info("watch expired; relisting", extra={"event": "relist", "resource": watch.resource.resource})
            watch.resource_version = None
            try:
                self._list(watch)
            except ApiError as error:
                self._watch_error(watch, "list", error)
        except ApiError as error:
            self._watch_error(watch, "watch" if watch.resource_version is not None else "list", error)

    def _watch_error(self, watch: _Watch, reason: str, error: ApiError) -> None:
        log.warning(
            f"{reason} failed; will retry",
            extra={"event": f"{reason}-error", "resource": watch.resource.resource, "reason": str(error)},
        )
        self._count_error(reason)

    def _list(self, watch: _Watch) -> None:
        selector = POLICY_NAME if TRIGGER not in watch.roles and SOURCE not in watch.roles else ""
        listed = self.cluster.list(watch.resource, "", selector)
        relist, watch.listed = watch.listed, True
        initial, watch.initial = watch.initial, False
        watch.resource_version = listed.resource_version
        if relist:  # the events of our writes to this resource may never come now
            type_key = _type_key(watch.resource)
            self._own_writes = {w for w in self._own_writes if w[0] != type_key}
            self._own_deletes = {d for d in self._own_deletes if d[0] != type_key}
        if TRIGGER in watch.roles:
            self._listed_triggers(watch.resource, listed.items, initial)
        if DOWNSTREAM in watch.roles:
            for obj in listed.items:
                self._downstream_changed(obj, orphans_only=not relist)
            if relist:  # something may have been deleted while we were not watching
                self._requeue_synchronized()
        if SOURCE in watch.roles and relist:
            for key in list(self._source_readers.get(_type_key(watch.resource), ())):
                self.enqueue(key)

    def _listed_triggers(self, resource: ResourceType, items: list[dict[str, Any]], initial: bool) -> None:
        current: dict[TriggerKey, dict[str, Any]] = {}
        for obj in items:
            current[self._key_of(resource, obj)] = obj
        for key, obj in current.items():
            before = self._observed.get(key)
            if initial:
                for policy in self._policies.values():
                    if self._may_match(policy, key):
                        self._initial.add((policy_id(policy), key))
                self._observe(key, obj)
                self.enqueue(key)
            elif before is None or before.resource_version != _meta_str(obj, "resourceVersion"):
                self._changed(key)
                self._observe(key, obj)
                self.enqueue(key)
        for key in [k for k in self._observed if _type_key(k.resource) == _type_key(resource)]:
            if key not in current:
                self.enqueue(key)

    def _read_watch(self, watch: _Watch, timeout_seconds: int) -> None:
        assert watch.resource_version is not None
        for event in self.cluster.watch(watch.resource, watch.resource_version, timeout_seconds=timeout_seconds):
            self._dispatch(watch, event)
            version = _meta_str(event.object, "resourceVersion")
            if version:
                watch.resource_version = version

    def _dispatch(self, watch: _Watch, event: WatchEvent) -> None:
        if event.type == "BOOKMARK":
            return
        obj = event.object
        type_key = _type_key(watch.resource)
        namespace, name = _meta_str(obj, "namespace"), _meta_str(obj, "name")
        if event.type == "DELETED":
            own = (type_key, namespace, name) in self._own_deletes
            self._own_deletes.discard((type_key, namespace, name))
        else:
            own = (type_key, namespace, name, _meta_str(obj, "resourceVersion")) in self._own_writes
            self._own_writes.discard((type_key, namespace, name, _meta_str(obj, "resourceVersion")))
        if TRIGGER in watch.roles:
            key = self._key_of(watch.resource, obj)
            if event.type != "DELETED":
                self._changed(key)
                self._observe(key, obj)
            self.enqueue(key)
        if own:
            return
        if DOWNSTREAM in watch.roles:
            self._downstream_changed(obj, orphans_only=False)
        if SOURCE in watch.roles:
            for key in list(self._source_readers.get(type_key, ())):
                self.enqueue(key)

    def _downstream_changed(self, obj: Mapping[str, Any], *, orphans_only: bool) -> None:
        labels = _labels(obj)
        policy = self._policy_of_labels(labels)
        if policy is None or not policy.source.synchronize:
            return
        key = self._trigger_of_labels(labels)
        if key is None or (orphans_only and key in self._observed):
            return
        self.enqueue(key)

    def _requeue_synchronized(self) -> None:
        for pid, key in list(self._handled):
            policy = self._policies.get(pid)
            if policy is not None and policy.source.synchronize:
                self.enqueue(key)

    # --- reconciling -----------------------------------------------------------------------------------------

    def _evaluate(
        self, key: TriggerKey, trigger: Mapping[str, Any]
    ) -> list[tuple[CompiledGeneratingPolicy, PolicyResponse]]:
        policies = [
            p for p in self._policy_set.generating if self._may_match(p, key) or (policy_id(p), key) in self._handled
        ]
        if not policies:
            return []
        request = request_for_resource(trigger, operation=CREATE, mapper=self.mapper)
        namespace, namespace_object = NamespaceLabels({}), None
        if request.namespaced and request.namespace:
            namespace_object = self.cluster.get(NAMESPACES, "", request.namespace)
            namespace = (
                NamespaceLabels({str(k): str(v) for k, v in _labels(namespace_object).items()})
                if namespace_object is not None
                else UNKNOWN_NAMESPACE
            )
        self._lookup.reads.clear()
        self._lookup.errors.clear()
        context = EvaluationContext(
            request=request,
            namespace=namespace,
            namespace_object=namespace_object,
            services=Services(resources=self._lookup),
            mapper=self.mapper,
        )
        evaluation = run(PolicySet(generating=tuple(policies), exceptions=self._policy_set.exceptions), context)
        for error in self._lookup.errors:
            if error.retryable:
                raise error
        for resource in self._lookup.reads:
            self._watch_resource(resource, SOURCE)
            self._source_readers.setdefault(_type_key(resource), set()).add(key)
        # one response per generating policy, in order (engine.policy_set.run)
        return list(zip(policies, evaluation.responses, strict=True))

    @staticmethod
    def _outcome(
        policy: CompiledGeneratingPolicy, response: PolicyResponse | None
    ) -> tuple[str, list[Mapping[str, Any]], str]:
        rules = response.rules if response is not None else ()
        for rule in rules:
            if rule.status in (Status.ERROR, Status.FAIL):
                return _Outcome.ERROR, [], rule.message
        if response is not None and any(r.status == Status.PASS and r.rule == policy.name for r in rules):
            return _Outcome.GENERATE, list(response.generated), ""
        return _Outcome.NONE, [], ""

    def _selector(self, policy_name: str, key: TriggerKey | None) -> str:
        terms = [f"{POLICY_NAME}={label_value(policy_name)}"]
        if key is not None:
            kind, namespace, name = self._trigger_labels(key)
            terms += [f"{TRIGGER_KIND}={kind}", f"{TRIGGER_NAMESPACE}={namespace}", f"{TRIGGER_NAME}={name}"]
        return ",".join(terms)

    def _owned(
        self, policy_namespace: str, policy_name: str, key: TriggerKey | None, kinds: Iterable[ResourceType]
    ) -> dict[tuple[tuple[str, str, str], str, str], tuple[ResourceType, dict[str, Any]]]:
        """Objects labelled with this policy (and trigger), by (type, namespace, name), over `kinds` and every
        downstream kind known so far."""
        types = {_type_key(t): t for t in kinds}
        for watch in self._watches.values():
            if DOWNSTREAM in watch.roles:
                types.setdefault(_type_key(watch.resource), watch.resource)
        selector = self._selector(policy_name, key)
        wanted_namespace = label_value(policy_namespace) if policy_namespace else ""
        found: dict[tuple[tuple[str, str, str], str, str], tuple[ResourceType, dict[str, Any]]] = {}
        for type_key, resource in types.items():
            self._watch_resource(resource, DOWNSTREAM)
            for obj in self.cluster.list(resource, "", selector).items:
                if str(_labels(obj).get(POLICY_NAMESPACE) or "") != wanted_namespace:
                    continue
                found[(type_key, _meta_str(obj, "namespace"), _meta_str(obj, "name"))] = (resource, obj)
        return found

    def _existing(
        self, policy: CompiledGeneratingPolicy, key: TriggerKey, kinds: Iterable[ResourceType]
    ) -> dict[tuple[tuple[str, str, str], str, str], tuple[ResourceType, dict[str, Any]]]:
        return self._owned(policy.namespace or "", policy.name, key, kinds)

    def _converge(self, policy: CompiledGeneratingPolicy, key: TriggerKey, desired: list[Mapping[str, Any]]) -> None:
        wanted = {self._identity(obj): obj for obj in desired}
        existing = self._existing(policy, key, {self._type_of(obj) for obj in desired})
        for identity, obj in wanted.items():
            resource = self._type_of(obj)
            found = existing.get(identity)
            if found is None:
                self._create(policy, resource, obj, take_over=True)
            elif drifted(obj, found[1]):
                self._update(policy, resource, obj, found[1])
        for identity, (resource, obj) in existing.items():
            if identity not in wanted:
                self._delete(policy.name, resource, obj)

    def _create_missing(self, policy: CompiledGeneratingPolicy, desired: list[Mapping[str, Any]]) -> None:
        for obj in desired:
            resource = self._type_of(obj)
            self._watch_resource(resource, DOWNSTREAM)
            self._create(policy, resource, obj, take_over=False)

    def _create(
        self, policy: CompiledGeneratingPolicy, resource: ResourceType, obj: Mapping[str, Any], *, take_over: bool
    ) -> None:
        try:
            created = self.cluster.create(resource, obj)
        except Conflict:
            live = self.cluster.get(resource, _meta_str(obj, "namespace"), _meta_str(obj, "name"))
            if live is None:
                raise  # deleted in between: retry
            if not take_over:
                return  # without synchronize an existing object is left as it is
            if str(_labels(live).get(POLICY_NAME) or "") != label_value(policy.name):
                log.warning(
                    "a downstream object exists and is not managed by this policy; leaving it alone",
                    extra={"event": "not-owned", "policy": policy.name, "object": self._describe(resource, obj)},
                )
                self._count_error("not-owned")
                return
            if drifted(obj, live):
                self._update(policy, resource, obj, live)
            return
        self._record_write(resource, created)
        self._count("created", policy.name, resource)
        log.info(
            "created downstream object",
            extra={"event": "created", "policy": policy.name, "object": self._describe(resource, obj)},
        )

    def _update(
        self, policy: CompiledGeneratingPolicy, resource: ResourceType, obj: Mapping[str, Any], live: Mapping[str, Any]
    ) -> None:
        replacement = dict(obj)
        replacement["metadata"] = {**_metadata(obj), "resourceVersion": _meta_str(live, "resourceVersion")}
        try:
            updated = self.cluster.update(resource, replacement)
        except NotFound:
            self._create(policy, resource, obj, take_over=True)
            return
        self._record_write(resource, updated)
        self._count("updated", policy.name, resource)
        log.info(
            "updated downstream object",
            extra={"event": "updated", "policy": policy.name, "object": self._describe(resource, obj)},
        )

    def _delete(self, policy_name: str, resource: ResourceType, obj: Mapping[str, Any]) -> None:
        namespace, name = _meta_str(obj, "namespace"), _meta_str(obj, "name")
        self._own_deletes.add((_type_key(resource), namespace, name))
        if self.cluster.delete(resource, namespace, name):
            self._count("deleted", policy_name, resource)
            log.info(
                "deleted downstream object",
                extra={"event": "deleted", "policy": policy_name, "object": self._describe(resource, obj)},
            )
        else:
            self._own_deletes.discard((_type_key(resource), namespace, name))

    def _trigger_gone(self, key: TriggerKey) -> None:
        for pid, policy in self._policies.items():
            if policy.source.synchronize and (self._may_match(policy, key) or (pid, key) in self._handled):
                for resource, obj in self._existing(policy, key, ()).values():
                    self._delete(policy.name, resource, obj)
        for state in [s for s in self._handled if s[1] == key]:
            del self._handled[state]
        self._seen = {s for s in self._seen if s[1] != key}
        self._initial = {s for s in self._initial if s[1] != key}
        for readers in self._source_readers.values():
            readers.discard(key)
        observed = self._observed.pop(key, None)
        if observed is not None and self._by_labels.get(observed.labels) == key:
            del self._by_labels[observed.labels]

    def _cleanup_policy(self, key: PolicyCleanupKey) -> None:
        if (key.namespace, key.name) in self._policies:
            return  # re-added since: its own reconciles decide
        for resource, obj in self._owned(key.namespace, key.name, None, ()).values():
            self._delete(key.name, resource, obj)
            trigger = self._trigger_of_labels(_labels(obj))
            if trigger is not None:  # another policy may want an object by the same name
                self.enqueue(trigger)

    # --- policies --------------------------------------------------------------------------------------------

    def _install(self, policy_set: PolicySet) -> None:
        self._policy_set = PolicySet(generating=policy_set.generating, exceptions=policy_set.exceptions)
        self._policies = {policy_id(p): p for p in policy_set.generating}
        for policy in policy_set.generating:
            if policy.error is not None:
                log.warning(
                    "generating policy failed to compile; it will report errors",
                    extra={"event": "compile-error", "policy": policy.name, "reason": str(policy.error)},
                )
        wanted = {_type_key(t): t for t in self._trigger_types()}
        for type_key, watch in list(self._watches.items()):
            if TRIGGER in watch.roles and type_key not in wanted:
                watch.roles.discard(TRIGGER)
                for key in [k for k in self._observed if _type_key(k.resource) == type_key]:
                    self._observed.pop(key, None)
                if not watch.roles:
                    del self._watches[type_key]
        for resource in wanted.values():
            self._watch_resource(resource, TRIGGER)

    def _trigger_types(self) -> list[ResourceType]:
        types: dict[tuple[str, str, str], ResourceType] = {}
        for policy in self._policies.values():
            constraints = policy.match_constraints
            if constraints is None:
                continue
            for rule in constraints.resource_rules:
                for group in rule.api_groups:
                    for version in rule.api_versions:
                        for pattern in rule.resources:
                            resource = pattern.partition("/")[0]
                            if "*" in (group, version, resource):
                                log.warning(
                                    "wildcard in a generating policy's resourceRules; not watched",
                                    extra={"event": "wildcard-trigger", "policy": policy.name, "rule": pattern},
                                )
                                continue
                            resource_type = self._lookup.type_of(f"{group}/{version}" if group else version, resource)
                            types.setdefault(_type_key(resource_type), resource_type)
        return list(types.values())

    def _policy_added(self, policy: CompiledGeneratingPolicy) -> None:
        pid = policy_id(policy)
        for key in list(self._observed):
            if self._may_match(policy, key):
                self._initial.add((pid, key))
                self.enqueue(key)

    def _forget_policy(self, pid: PolicyId) -> None:
        self._handled = {s: uid for s, uid in self._handled.items() if s[0] != pid}
        self._seen = {s for s in self._seen if s[0] != pid}
        self._initial = {s for s in self._initial if s[0] != pid}

    @staticmethod
    def _may_match(policy: CompiledGeneratingPolicy, key: TriggerKey) -> bool:
        return policy.resources is None or key.resource.resource in policy.resources

    def _policy_of_labels(self, labels: Mapping[str, Any]) -> CompiledGeneratingPolicy | None:
        name, namespace = labels.get(POLICY_NAME), str(labels.get(POLICY_NAMESPACE) or "")
        if not name:
            return None
        for (policy_namespace, policy_name), policy in self._policies.items():
            if label_value(policy_name) == name and label_value(policy_namespace) == namespace:
                return policy
        return None

    # --- triggers --------------------------------------------------------------------------------------------

    def _watch_resource(self, resource: ResourceType, role: str) -> None:
        watch = self._watches.get(_type_key(resource))
        if watch is None:
            watch = self._watches[_type_key(resource)] = _Watch(resource)
        if role in watch.roles:
            return
        watch.roles.add(role)
        if role == TRIGGER:
            watch.resource_version, watch.initial = None, True
        elif watch.resource_version is None and self._started:
            # list now, so that the watch starts before the writes this reconcile is about to make
            self._list(watch)

    def _key_of(self, resource: ResourceType, obj: Mapping[str, Any]) -> TriggerKey:
        return TriggerKey(resource, _meta_str(obj, "namespace") if resource.namespaced else "", _meta_str(obj, "name"))

    def _trigger_labels(self, key: TriggerKey) -> tuple[str, str, str]:
        observed = self._observed.get(key)
        if observed is not None:
            return observed.labels
        return label_value(key.resource.kind), label_value(key.namespace), label_value(key.name)

    def _observe(self, key: TriggerKey, obj: Mapping[str, Any]) -> None:
        kind = obj.get("kind") if isinstance(obj.get("kind"), str) else key.resource.kind
        labels = (label_value(str(kind)), label_value(key.namespace), label_value(key.name))
        self._observed[key] = _Observed(_meta_str(obj, "uid"), _meta_str(obj, "resourceVersion"), str(kind), labels)
        self._by_labels[labels] = key

    def _changed(self, key: TriggerKey) -> None:
        """The trigger changed after we first saw it: every policy may act on it now."""
        self._seen = {s for s in self._seen if s[1] != key}
        self._initial = {s for s in self._initial if s[1] != key}

    def _trigger_of_labels(self, labels: Mapping[str, Any]) -> TriggerKey | None:
        triple = (
            str(labels.get(TRIGGER_KIND) or ""),
            str(labels.get(TRIGGER_NAMESPACE) or ""),
            str(labels.get(TRIGGER_NAME) or ""),
        )
        known = self._by_labels.get(triple)
        if known is not None:
            return known
        candidates = [r for r in self.trigger_resources if label_value(r.kind) == triple[0]]
        if len(candidates) != 1 or not triple[2]:
            return None
        resource = candidates[0]
        return TriggerKey(resource, triple[1] if resource.namespaced else "", triple[2])

    # --- helpers ---------------------------------------------------------------------------------------------

    def _type_of(self, obj: Mapping[str, Any]) -> ResourceType:
        return self.mapper.for_kind(str(obj.get("apiVersion") or ""), str(obj.get("kind") or ""))

    def _identity(self, obj: Mapping[str, Any]) -> tuple[tuple[str, str, str], str, str]:
        return _type_key(self._type_of(obj)), _meta_str(obj, "namespace"), _meta_str(obj, "name")

    @staticmethod
    def _describe(resource: ResourceType, obj: Mapping[str, Any]) -> str:
        namespace = _meta_str(obj, "namespace")
        return f"{resource.kind}/{namespace + '/' if namespace else ''}{_meta_str(obj, 'name')}"

    def _record_write(self, resource: ResourceType, obj: Mapping[str, Any]) -> None:
        self._own_writes.add(
            (
                _type_key(resource),
                _meta_str(obj, "namespace"),
                _meta_str(obj, "name"),
                _meta_str(obj, "resourceVersion"),
            )
        )

    def _count(self, what: str, policy: str, resource: ResourceType) -> None:
        if self.metrics is not None:
            counter = {
                "created": self.metrics.created,
                "updated": self.metrics.updated,
                "deleted": self.metrics.deleted,
            }
            counter[what].labels(policy=policy, kind=resource.kind).inc()

    def _count_error(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(reason=reason).inc()

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based): base * 2**(attempt-1), capped, jittered."""
        delay = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1))
        return delay * (0.5 + 0.5 * self._jitter())

    def _failed(self, key: WorkKey, error: ApiError) -> None:
        attempts = self._attempts.get(key, 0) + 1
        retryable = error.retryable or isinstance(error, Conflict)
        if not retryable or attempts >= self.max_attempts:
            self._attempts.pop(key, None)
            log.warning(
                "dropping work item",
                extra={
                    "event": "dropped",
                    "key": str(key),
                    "attempts": attempts,
                    "status": error.status,
                    "reason": str(error),
                    "retryable": retryable,
                },
            )
            self._count_error("dropped")
            return
        self._attempts[key] = attempts
        delay = self.backoff(attempts)
        self._queue[key] = self._clock() + delay
        self._set_depth()
        self._count_error("retry")
        log.info(
            "work item failed; retrying",
            extra={"event": "retry", "key": str(key), "attempts": attempts, "delay": delay, "reason": str(error)},
        )

    def _next_due_in(self) -> float | None:
        if not self._queue:
            return None
        return max(0.0, min(self._queue.values()) - self._clock())
