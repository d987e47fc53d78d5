"""Policy sources for the admission server: a watched directory or the cluster's policies.kyverno.io objects.

Why this module exists: the server evaluates every request against one immutable compiled `Snapshot` and must never
compile on the request path, never serve a half-built policy set, and never lose its policies because someone saved
a broken file. Both sources here compile in the background, swap the new snapshot in with one attribute assignment
(atomic for readers: a request sees the old set or the new one, never a mix), and on a load or schema error keep
serving the last good snapshot, with the error recorded in `Snapshot.errors` and logged.

What counts as "broken": a file that cannot be read or parsed, or a document that does not fit the policy schema
(`engine.errors.CelvernError` from loading/building). A policy whose CEL fails to compile is *not* broken in that
sense: it is part of the new snapshot and, as in Kyverno, follows its own failurePolicy when it matches a request
(`PolicySet.compile_errors`; logged as a warning).

How each source notices changes:

- `DirectoryPolicySource` polls: it hashes the files' contents every `poll_interval` seconds (the same bytes that
  are then compiled, so the version always describes what is served).
- `ClusterPolicySource` watches: it keeps an in-memory store of the policy objects, filled by one list per
  policies.kyverno.io resource and kept current by one watch per resource (a daemon thread each; relisting on
  410 Gone, backing off on API errors, retrying now and then a resource whose CRD is not installed). Changes are
  coalesced (`debounce`) and compiled by one compiler thread, off the watch threads, so that applying fifty policies
  at once compiles once or twice. A full re-list every `poll_interval` seconds is only a safety net.

In both, the snapshot version is a digest of what it was built from (file contents, or objects' resourceVersions),
and content whose digest is the one being served is never compiled again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from engine.errors import CelvernError
from engine.loader import Document, iter_files, parse_text, read_text
from engine.policy_set import PolicySet, build_policy_set, split_documents
from engine.resources import ResourceType
from webhook.cluster import ApiError, Cluster, Gone, WatchEvent
from webhook.state import Snapshot

log = logging.getLogger("celvern.snapshot")

POLICY_GROUP = "policies.kyverno.io"
CLUSTER_POLICY_RESOURCES: tuple[ResourceType, ...] = tuple(
    ResourceType(POLICY_GROUP, "v1", kind, plural, namespaced)
    for kind, plural, namespaced in (
        ("ValidatingPolicy", "validatingpolicies", False),
        ("NamespacedValidatingPolicy", "namespacedvalidatingpolicies", True),
        ("MutatingPolicy", "mutatingpolicies", False),
        ("NamespacedMutatingPolicy", "namespacedmutatingpolicies", True),
        ("GeneratingPolicy", "generatingpolicies", False),
        ("NamespacedGeneratingPolicy", "namespacedgeneratingpolicies", True),
        ("PolicyException", "policyexceptions", True),
    )
)
"""The policies.kyverno.io resources the cluster source reads (a resource the cluster does not serve is skipped)."""


class _SnapshotSource:
    """Shared machinery: the current snapshot, the errors of the latest attempt, and a reload lock."""

    def __init__(self, poll_interval: float) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.poll_interval = poll_interval
        self._snapshot: Snapshot | None = None
        self._attempted: str | None = None
        """Version of the last content a build was attempted on (successful or not), to skip unchanged content."""
        self._build_error: str | None = None
        """Why the build of `_attempted` failed (None when it succeeded)."""
        self._last_error: tuple[str, ...] = ()
        self._reload_lock = threading.Lock()
        """Held by every reload and compile: they never run concurrently."""

    def current(self) -> Snapshot | None:
        """The snapshot to evaluate with (None until the first successful load: not ready)."""
        return self._snapshot

    @property
    def errors(self) -> tuple[str, ...]:
        """Errors of the latest reload attempt (also available before any snapshot could be built)."""
        return self._last_error

    def reload(self) -> bool:
        """Rebuild the snapshot if the source changed; True when a new snapshot was swapped in."""
        with self._reload_lock:
            return self._reload()

    def _reload(self) -> bool:
        raise NotImplementedError

    def _apply(self, version: str, build: Callable[[], PolicySet], problems: tuple[str, ...] = ()) -> bool:
        """Compile with `build` and swap the result in, or keep the last good snapshot and record the error.

        `problems` are errors that do not prevent this build (e.g. a resource whose last known objects are used
        because it cannot be read right now); they are reported with the snapshot. Content whose version is the one
        served, or whose build already failed, is not compiled again.
        """
        served = self._snapshot
        if served is not None and version == served.version:
            self._attempted, self._build_error = version, None
            self._report(problems, version)
            return False
        if version == self._attempted:
            self._report(problems + ((self._build_error,) if self._build_error else ()), version)
            return False
        self._attempted = version
        try:
            policy_set = build()
        except CelvernError as error:
            self._build_error = str(error)
            self._report((*problems, self._build_error), version)
            return False
        self._build_error = None
        for compile_error in policy_set.compile_errors:
            log.warning("policy does not compile; it follows its failurePolicy", extra={"error": str(compile_error)})
        self._last_error = problems
        self._snapshot = Snapshot(policy_set, version, errors=problems)
        log.info("policy snapshot loaded", extra={"version": version, "policies": policy_set.policy_count})
        return True

    def _fail(self, message: str, version: str | None) -> None:
        self._report((message,), version)

    def _report(self, errors: tuple[str, ...], version: str | None) -> None:
        """Record `errors` as the outcome of the latest attempt (on the served snapshot too); log when they change."""
        if errors == self._last_error:
            return
        self._last_error = errors
        previous = self._snapshot
        if previous is not None:
            self._snapshot = dataclasses.replace(previous, errors=errors)
        serving = previous.version if previous else None
        if errors:
            log.error(
                "policy reload failed; keeping the last good snapshot",
                extra={"error": "; ".join(errors), "attempted_version": version, "serving_version": serving},
            )
        else:
            log.info("policy source recovered", extra={"serving_version": serving})


class DirectoryPolicySource(_SnapshotSource):
    """Policies (and PolicyExceptions) from files and directories, reloaded when their content changes.

    `poll_interval`: seconds between two reads of the files (a daemon thread polls once `start()` is called).
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], *, poll_interval: float = 2.0) -> None:
        super().__init__(poll_interval)
        self.paths = tuple(paths)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reload()

    def _reload(self) -> bool:
        try:
            files = self._read()
        except CelvernError as error:
            # Unreadable input has no content hash: retry it on every poll, keep serving meanwhile.
            self._attempted = None
            self._fail(str(error), None)
            return False
        digest = hashlib.sha256()
        for path, text in files:
            digest.update(path.encode() + b"\0" + text.encode() + b"\0")
        version = "sha256:" + digest.hexdigest()[:16]
        return self._apply(version, lambda: _build(files))

    def _read(self) -> list[tuple[str, str]]:
        return [(str(file), read_text(file)) for path in self.paths for file in iter_files(path)]

    # --- background polling ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Load now and poll for changes in a daemon thread."""
        if self._thread is not None:
            return
        self.reload()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._poll, args=(self._stop,), name="celvern-policy-directory", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling and wait (bounded) for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _poll(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll_interval):
            try:
                self.reload()
            except Exception:  # the poller must survive anything; the last good snapshot stays served
                log.exception("unexpected error while reloading policies")


def _build(files: Iterable[tuple[str, str]]) -> PolicySet:
    documents = [document for path, text in files for document in parse_text(text, path)]
    policies, _ = split_documents(documents)
    return build_policy_set(policies)


# --- the cluster ------------------------------------------------------------------------------------------------

ObjectKey = tuple[str, str]
"""(namespace, name) of an object ("" namespace for cluster-scoped ones)."""


def _object_key(obj: Mapping[str, Any]) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _typed(resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object with apiVersion and kind (lists of custom resources may leave them out of their items)."""
    return {"apiVersion": resource.api_version, "kind": resource.kind, **obj}


def _versions(objects: Mapping[ObjectKey, Mapping[str, Any]]) -> dict[ObjectKey, object]:
    return {key: (obj.get("metadata") or {}).get("resourceVersion") for key, obj in objects.items()}


def _documents(
    stores: Iterable[tuple[ResourceType, Mapping[ObjectKey, Mapping[str, Any]]]],
) -> tuple[list[Document], str]:
    """The policy documents of the stored objects and the digest of their (source, resourceVersion) pairs."""
    documents: list[Document] = []
    digest = hashlib.sha256()
    for resource, objects in stores:
        for index, ((namespace, name), item) in enumerate(sorted(objects.items())):
            source = f"cluster:{resource.resource}/{namespace + '/' if namespace else ''}{name}"
            resource_version = (item.get("metadata") or {}).get("resourceVersion", "")
            digest.update(f"{source}@{resource_version}\0".encode())
            documents.append(Document(item, source, index, text=""))
    return documents, "rv:" + digest.hexdigest()[:16]


def policy_documents_from_cluster(
    cluster: Cluster, resources: Iterable[ResourceType] = CLUSTER_POLICY_RESOURCES
) -> tuple[list[Document], str]:
    """The policy documents stored in the cluster and a version digest of their resourceVersions.

    A resource the cluster does not serve (404: its CRD is not installed) contributes nothing; any other API error
    propagates.
    """
    stores: list[tuple[ResourceType, dict[ObjectKey, dict[str, Any]]]] = []
    for resource in resources:
        try:
            items = cluster.list(resource).items
        except ApiError as error:
            if error.status == 404:
                continue
            raise
        stores.append((resource, {_object_key(item): _typed(resource, item) for item in items}))
    return _documents(stores)


def policies_from_cluster(cluster: Cluster) -> PolicySet:
    """Every policies.kyverno.io policy and PolicyException stored in the cluster, compiled."""
    documents, _ = policy_documents_from_cluster(cluster)
    return build_policy_set(documents)


@dataclasses.dataclass(eq=False)
class _Watched:
    """What the cluster source knows of one policy resource (every field guarded by the source's `_lock`)."""

    resource: ResourceType
    objects: dict[ObjectKey, dict[str, Any]] = dataclasses.field(default_factory=dict)
    resource_version: str | None = None
    """Where the watch resumes; None: list before watching."""
    generation: int = 0
    """Bumped by every list: a watch started before it drops its events and resumes from the list instead."""
    known: bool = False
    """Whether `objects` is the content of a successful list (or the cluster said it does not serve the resource)."""
    served: bool = True
    """False after a 404: the resource's CRD is not installed."""
    error: str | None = None
    """The API error met by the latest list or watch, until one succeeds."""
    listed_at: float = -float("inf")
    """Monotonic time of the latest successful list (or 404), for the periodic re-list."""


class ClusterPolicySource(_SnapshotSource):
    """Policies and PolicyExceptions from the cluster's policies.kyverno.io objects, kept current by watches.

    `reload()` lists every resource and compiles, synchronously. `start()` (which lists first if that has not been
    done) runs one watch thread per resource, which updates the store and wakes the compiler thread; the compiler
    waits until no change came for `debounce` seconds (at most `max_debounce` after the first change) and compiles
    the store once. `stop()` ends every thread.

    Parameters: `poll_interval` is the period of the safety full re-list of each resource (a watch is trusted to
    deliver every change; the re-list repairs a store that went wrong anyway, and only compiles when something
    differs). `watch_timeout` is the length in seconds of each watch request, which bounds how long `stop()` waits.
    API errors are retried after `retry_delay` seconds, doubling (with jitter) up to `max_retry_delay`; a resource
    the cluster does not serve (404: its CRD is not installed) is retried every `missing_retry` seconds.

    `load=False` defers the first list to `start()`/`reload()` (e.g. to construct without blocking).
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        poll_interval: float = 300.0,
        load: bool = True,
        watch_timeout: int = 5,
        debounce: float = 0.25,
        max_debounce: float = 2.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
        missing_retry: float = 30.0,
    ) -> None:
        super().__init__(poll_interval)
        if watch_timeout < 1 or debounce < 0 or max_debounce < debounce:
            raise ValueError("watch_timeout must be at least 1, debounce not negative and at most max_debounce")
        if retry_delay <= 0 or max_retry_delay < retry_delay or missing_retry <= 0:
            raise ValueError("retry delays must be positive and max_retry_delay at least retry_delay")
        self.cluster = cluster
        self.watch_timeout = watch_timeout
        self.debounce = debounce
        self.max_debounce = max_debounce
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.missing_retry = missing_retry
        self._lock = threading.Lock()
        """Guards the store (`_watched`); never held while calling the cluster or compiling."""
        self._watched = [_Watched(resource) for resource in CLUSTER_POLICY_RESOURCES]
        self._changed = threading.Event()
        """Set when the store changed (or the source is stopping): the compiler thread has work."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if load:
            self.reload()

    # --- reload and compile -----------------------------------------------------------------------------------

    def _reload(self) -> bool:
        for watched in self._watched:
            try:
                self._list(watched)
            except ApiError as error:
                self._list_failed(watched, error)
        return self._compile()

    def _compile(self) -> bool:
        """Build the store's content (under `_reload_lock`); True when a new snapshot was swapped in."""
        with self._lock:
            unknown = [watched.resource.resource for watched in self._watched if not watched.known]
            problems = tuple(watched.error for watched in self._watched if watched.error)
            documents, version = _documents((watched.resource, watched.objects) for watched in self._watched)
        if unknown:
            # A snapshot without the objects of a resource that could never be listed would be a half-built
            # policy set (missing exceptions, missing policies): keep serving the last good one.
            self._report(problems or (f"cannot list policies: {', '.join(unknown)} not listed yet",), None)
            return False
        return self._apply(version, lambda: build_policy_set(documents), problems)

    # --- store updates (each takes `_lock` briefly) -------------------------------------------------------------

    def _list(self, watched: _Watched) -> None:
        listed = self.cluster.list(watched.resource)
        objects = {_object_key(item): _typed(watched.resource, item) for item in listed.items}
        with self._lock:
            changed = not watched.known or watched.error is not None or _versions(watched.objects) != _versions(objects)
            watched.objects, watched.resource_version = objects, listed.resource_version
            watched.generation += 1
            watched.known, watched.served, watched.error = True, True, None
            watched.listed_at = time.monotonic()
        if changed:  # a re-list that finds what the watch delivered leaves the compiler alone
            self._changed.set()

    def _list_failed(self, watched: _Watched, error: ApiError) -> None:
        if error.status == 404:
            self._missing(watched)
        else:
            self._failed(watched, f"cannot list policies: {watched.resource.resource}: {error}")

    def _missing(self, watched: _Watched) -> None:
        """The cluster does not serve the resource (its CRD is not installed, or was removed): it holds nothing."""
        with self._lock:
            changed = watched.served or not watched.known or bool(watched.objects) or watched.error is not None
            watched.objects, watched.resource_version = {}, None
            watched.generation += 1
            watched.known, watched.served, watched.error = True, False, None
            watched.listed_at = time.monotonic()
        if changed:
            log.info("policy resource not served by the cluster", extra={"resource": watched.resource.resource})
            self._changed.set()

    def _failed(self, watched: _Watched, message: str) -> None:
        """Keep the resource's last known objects (if any) and report the error until a list or watch succeeds."""
        with self._lock:
            changed, watched.error = watched.error != message, message
        if changed:
            self._changed.set()

    def _handle(self, watched: _Watched, generation: int, event: WatchEvent) -> bool:
        """Apply a watch event to the store; False when a list replaced the store since the watch started."""
        version = str((event.object.get("metadata") or {}).get("resourceVersion") or "")
        changed = False
        with self._lock:
            if watched.generation != generation:
                return False
            if version:
                watched.resource_version = version
            if watched.error is not None:
                watched.error, changed = None, True
            if event.type == "DELETED":
                changed = watched.objects.pop(_object_key(event.object), None) is not None or changed
            elif event.type in ("ADDED", "MODIFIED"):
                watched.objects[_object_key(event.object)] = _typed(watched.resource, event.object)
                changed = True
        if changed:
            self._changed.set()
        return True

    # --- threads ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """List (unless done) and compile, then watch every resource and compile changes in daemon threads."""
        if self._threads:
            return
        with self._lock:
            listed = all(watched.known for watched in self._watched)
        if not listed or self._snapshot is None:
            self.reload()
        self._stop = stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._compile_loop, args=(stop,), name="celvern-policy-compiler", daemon=True),
            *(
                threading.Thread(
                    target=self._watch_loop,
                    args=(watched, stop),
                    name=f"celvern-policy-watch-{watched.resource.resource}",
                    daemon=True,
                )
                for watched in self._watched
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching and compiling; waits at most `timeout` seconds in all (a watch request ends within
        `watch_timeout` seconds)."""
        self._stop.set()
        self._changed.set()  # wake the compiler
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def _compile_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._changed.wait()
            first = time.monotonic()
            while True:  # coalesce: wait for a quiet `debounce` period, bounded by `max_debounce`
                self._changed.clear()
                if stop.wait(self.debounce):
                    return
                if not self._changed.is_set() or time.monotonic() - first >= self.max_debounce:
                    break
            self._changed.clear()  # changes from here on are read by this compile or wake the next one
            try:
                with self._reload_lock:
                    self._compile()
            except Exception:  # the compiler must survive anything; the last good snapshot stays served
                log.exception("unexpected error while compiling policies")

    def _watch_loop(self, watched: _Watched, stop: threading.Event) -> None:
        """List, then watch from the list's resourceVersion, for as long as the source runs."""
        resource = watched.resource.resource
        delay = self.retry_delay
        while not stop.is_set():
            with self._lock:
                version, generation = watched.resource_version, watched.generation
                resync_at = watched.listed_at + self.poll_interval
            listing = version is None or time.monotonic() >= resync_at
            try:
                if version is None or listing:
                    self._list(watched)
                else:
                    self._watch(watched, version, generation, resync_at, stop)
                delay = self.retry_delay
                continue
            except Gone:
                if not listing:  # the watch expired: list again (a list answering 410 is an error like any other)
                    log.info("policy watch expired; listing again", extra={"resource": resource})
                    with self._lock:
                        if watched.generation == generation:
                            watched.resource_version = None
                    continue
                wait, delay = self._backoff(delay)
                self._failed(watched, f"cannot list policies: {resource}: 410: expired")
            except ApiError as error:
                if error.status == 404:
                    self._missing(watched)
                    wait = self.missing_retry
                else:
                    verb = "list" if listing else "watch"
                    log.warning(
                        "policy %s failed; retrying",
                        verb,
                        extra={"resource": resource, "error": str(error), "delay": delay},
                    )
                    self._failed(watched, f"cannot {verb} policies: {resource}: {error}")
                    wait, delay = self._backoff(delay)
            except Exception:  # the watcher must survive anything; the store keeps its last known objects
                log.exception("unexpected error while watching policies", extra={"resource": resource})
                with self._lock:  # whatever went wrong, start again from a fresh list
                    if watched.generation == generation:
                        watched.resource_version = None
                wait, delay = self._backoff(delay)
            if stop.wait(wait):
                return

    def _backoff(self, delay: float) -> tuple[float, float]:
        """(how long to wait now, the next delay): jittered exponential backoff."""
        return delay * random.uniform(0.5, 1.0), min(delay * 2, self.max_retry_delay)

    def _watch(self, watched: _Watched, version: str, generation: int, resync_at: float, stop: threading.Event) -> None:
        """One watch request: apply its events until it ends, a list replaced the store, the re-list is due
        (`resync_at`, monotonic), or the source stops."""
        stream: Iterator[WatchEvent] = self.cluster.watch(watched.resource, version, timeout_seconds=self.watch_timeout)
        try:
            for event in stream:
                if not self._handle(watched, generation, event) or stop.is_set():
                    return
                if time.monotonic() >= resync_at:
                    return
        finally:
            close = getattr(stream, "close", None)  # end the request now rather than when collected
            if callable(close):
                close()
        with self._lock:
            cleared = watched.generation == generation and watched.error is not None
            if cleared:
                watched.error = None
        if cleared:
            self._changed.set()
