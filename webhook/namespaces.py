"""`NamespaceCache`: namespace labels for namespaceSelector, from a watched cache with a live GET on miss.

Why this module exists: a policy with a namespaceSelector needs the labels of the request's namespace, on every
request, within milliseconds. Asking the API server each time is too slow and too much load, so a background thread
lists and watches Namespaces (relisting when the watch expires with 410 Gone) and lookups read that cache.

The security rule (Kyverno's CVE-2025-46342 was the opposite): when no source can tell the labels, the answer is
`UNKNOWN_NAMESPACE` -- the engine then reports an error and the policy's failurePolicy decides -- never "no labels",
which would let a request slip past a selector such as `NotIn [exempt]`. So a name missing from the cache (a
namespace created a moment ago, or a cache that is not synced) gets a live GET; if the GET fails or the namespace
does not exist, the labels are unknown. While the watch is down, entries older than `ttl` are re-checked with a GET
rather than trusted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.matching import UNKNOWN_NAMESPACE, NamespaceLabels
from engine.resources import ResourceType
from webhook.cluster import ApiError, Cluster, Gone, WatchEvent

log = logging.getLogger("celvern.namespaces")

NAMESPACES = ResourceType("", "v1", "Namespace", "namespaces", False)


@dataclass(frozen=True, slots=True)
class _Entry:
    labels: NamespaceLabels
    obj: Mapping[str, Any]
    fetched: float
    """Monotonic time the entry was last confirmed (list, watch event or GET)."""


def _entry(obj: Mapping[str, Any], now: float) -> _Entry:
    raw = (obj.get("metadata") or {}).get("labels") or {}
    labels = {str(key): str(value) for key, value in raw.items()} if isinstance(raw, Mapping) else {}
    return _Entry(NamespaceLabels(labels, known=True), obj, now)


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


class NamespaceCache:
    """A `NamespaceResolver` over a list+watch cache of Namespaces, with a live GET on miss."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        ttl: float = 30.0,
        watch_timeout: int = 60,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`ttl`: how long an entry is trusted while the watch is not synced; `watch_timeout`: seconds per watch
        call (also bounds how long `stop()` may wait for the thread); retries back off from `retry_delay` to
        `max_retry_delay` seconds."""
        self.cluster = cluster
        self.ttl = ttl
        self.watch_timeout = watch_timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def synced(self) -> bool:
        """Whether the cache reflects a successful list followed by a live watch."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    # --- NamespaceResolver ------------------------------------------------------------------------------------

    def lookup(self, name: str) -> tuple[NamespaceLabels, Mapping[str, Any] | None]:
        if not name:
            return UNKNOWN_NAMESPACE, None
        with self._lock:
            entry = self._entries.get(name)
        if entry is not None and (self.synced or self._clock() - entry.fetched <= self.ttl):
            return entry.labels, entry.obj
        try:
            obj = self.cluster.get(NAMESPACES, "", name)
        except ApiError as error:
            log.warning("namespace lookup failed; labels unknown", extra={"namespace": name, "error": str(error)})
            return UNKNOWN_NAMESPACE, None
        if obj is None:
            return UNKNOWN_NAMESPACE, None
        fetched = _entry(obj, self._clock())
        with self._lock:
            current = self._entries.get(name)
            if current is None or current is entry:  # a watch event that arrived meanwhile is newer: keep it
                self._entries[name] = fetched
            else:
                fetched = current
        return fetched.labels, fetched.obj

    # --- list + watch -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the list+watch thread (lookups work before it syncs, through live GETs)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="celvern-namespace-cache", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; waits at most `timeout` (default: one watch call plus a margin)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.watch_timeout + 5 if timeout is None else timeout)
            self._thread = None
        self._synced.clear()

    def sync_once(self) -> str:
        """List every Namespace and replace the cache; returns the list's resourceVersion."""
        listed = self.cluster.list(NAMESPACES)
        now = self._clock()
        entries = {_name(obj): _entry(obj, now) for obj in listed.items}
        with self._lock:
            self._entries = entries
        self._synced.set()
        return listed.resource_version

    def _run(self) -> None:
        delay = self.retry_delay
        while not self._stop.is_set():
            try:
                version = self.sync_once()
                delay = self.retry_delay
                while not self._stop.is_set():
                    for event in self.cluster.watch(NAMESPACES, version, timeout_seconds=self.watch_timeout):
                        version = self._handle(event) or version
                        if self._stop.is_set():
                            return
            except Gone:
                log.info("namespace watch expired; listing again")
            except ApiError as error:
                self._synced.clear()
                log.warning("namespace list/watch failed; retrying", extra={"error": str(error), "delay": delay})
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.max_retry_delay)
            except Exception:  # keep the cache thread alive; lookups fall back to live GETs meanwhile
                self._synced.clear()
                log.exception("unexpected error in the namespace cache")
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.max_retry_delay)

    def _handle(self, event: WatchEvent) -> str:
        version = str((event.object.get("metadata") or {}).get("resourceVersion") or "")
        if event.type == "BOOKMARK":
            return version
        name = _name(event.object)
        if not name:
            return version
        with self._lock:
            if event.type == "DELETED":
                self._entries.pop(name, None)
            else:
                self._entries[name] = _entry(event.object, self._clock())
        return version
