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

Both sources poll: the directory by hashing the files' contents (the same bytes that are then compiled, so the
version always describes what is served), the cluster by listing the policy resources and comparing their
resourceVersions, compiling only when something changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence

from engine.errors import CelvernError
from engine.loader import Document, iter_files, parse_text, read_text
from engine.policy_set import PolicySet, build_policy_set, split_documents
from engine.resources import ResourceType
from webhook.cluster import ApiError, Cluster
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


class _PollingSource:
    """Shared machinery: the current snapshot, a reload lock, and the daemon polling thread."""

    _thread_name = "celvern-policy-source"

    def __init__(self, poll_interval: float) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.poll_interval = poll_interval
        self._snapshot: Snapshot | None = None
        self._attempted: str | None = None
        """Version of the last content a reload was attempted on (successful or not), to skip unchanged polls."""
        self._last_error: tuple[str, ...] = ()
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def _apply(self, version: str, build: Callable[[], PolicySet]) -> bool:
        """Compile with `build` and swap the result in, or keep the last good snapshot and record the error."""
        if version == self._attempted:
            return False
        self._attempted = version
        try:
            policy_set = build()
        except CelvernError as error:
            self._fail(f"{error}", version)
            return False
        for compile_error in policy_set.compile_errors:
            log.warning("policy does not compile; it follows its failurePolicy", extra={"error": str(compile_error)})
        self._last_error = ()
        self._snapshot = Snapshot(policy_set, version)
        log.info("policy snapshot loaded", extra={"version": version, "policies": policy_set.policy_count})
        return True

    def _fail(self, message: str, version: str | None) -> None:
        self._last_error = (message,)
        previous = self._snapshot
        if previous is not None:
            self._snapshot = dataclasses.replace(previous, errors=(message,))
        log.error(
            "policy reload failed; keeping the last good snapshot",
            extra={
                "error": message,
                "attempted_version": version,
                "serving_version": previous.version if previous else None,
            },
        )

    # --- background polling ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Load now (if not yet) and poll for changes in a daemon thread."""
        if self._thread is not None:
            return
        self.reload()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name=self._thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling and wait (bounded) for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.reload()
            except Exception:  # the poller must survive anything; the last good snapshot stays served
                log.exception("unexpected error while reloading policies")


class DirectoryPolicySource(_PollingSource):
    """Policies (and PolicyExceptions) from files and directories, reloaded when their content changes."""

    _thread_name = "celvern-policy-directory"

    def __init__(self, paths: Sequence[str | os.PathLike[str]], *, poll_interval: float = 2.0) -> None:
        super().__init__(poll_interval)
        self.paths = tuple(paths)
        self.reload()

    def _reload(self) -> bool:
        try:
            files = self._read()
        except CelvernError as error:
            # Unreadable input has no content hash: retry it on every poll, keep serving meanwhile.
            self._attempted = None
            if self._last_error != (str(error),):
                self._fail(str(error), None)
            return False
        digest = hashlib.sha256()
        for path, text in files:
            digest.update(path.encode() + b"\0" + text.encode() + b"\0")
        version = "sha256:" + digest.hexdigest()[:16]
        return self._apply(version, lambda: _build(files))

    def _read(self) -> list[tuple[str, str]]:
        return [(str(file), read_text(file)) for path in self.paths for file in iter_files(path)]


def _build(files: Iterable[tuple[str, str]]) -> PolicySet:
    documents = [document for path, text in files for document in parse_text(text, path)]
    policies, _ = split_documents(documents)
    return build_policy_set(policies)


def policy_documents_from_cluster(
    cluster: Cluster, resources: Iterable[ResourceType] = CLUSTER_POLICY_RESOURCES
) -> tuple[list[Document], str]:
    """The policy documents stored in the cluster and a version digest of their resourceVersions.

    A resource the cluster does not serve (404: its CRD is not installed) contributes nothing; any other API error
    propagates.
    """
    documents: list[Document] = []
    digest = hashlib.sha256()
    for resource in resources:
        try:
            items = cluster.list(resource).items
        except ApiError as error:
            if error.status == 404:
                continue
            raise
        for index, item in enumerate(items):
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
            metadata = item.get("metadata") or {}
            namespace, name = metadata.get("namespace", ""), metadata.get("name", "")
            source = f"cluster:{resource.resource}/{namespace + '/' if namespace else ''}{name}"
            digest.update(f"{source}@{metadata.get('resourceVersion', '')}\0".encode())
            documents.append(Document(item, source, index, text=""))
    return documents, "rv:" + digest.hexdigest()[:16]


def policies_from_cluster(cluster: Cluster) -> PolicySet:
    """Every policies.kyverno.io policy and PolicyException stored in the cluster, compiled."""
    documents, _ = policy_documents_from_cluster(cluster)
    return build_policy_set(documents)


class ClusterPolicySource(_PollingSource):
    """Policies and PolicyExceptions from the cluster's policies.kyverno.io objects, re-listed every poll."""

    _thread_name = "celvern-policy-cluster"

    def __init__(self, cluster: Cluster, *, poll_interval: float = 5.0, load: bool = True) -> None:
        """`load=False` defers the first list to `start()`/`reload()` (e.g. to start without blocking)."""
        super().__init__(poll_interval)
        self.cluster = cluster
        if load:
            self.reload()

    def _reload(self) -> bool:
        try:
            documents, version = policy_documents_from_cluster(self.cluster)
        except ApiError as error:
            self._attempted = None
            self._fail(f"cannot list policies: {error}", None)
            return False
        return self._apply(version, lambda: build_policy_set(documents))
