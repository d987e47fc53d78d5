"""The one seam between celvern and a Kubernetes API server.

Every controller talks to the cluster through the small `Cluster` protocol defined here, never through the
`kubernetes` client directly: `webhook.kubernetes_cluster.KubernetesCluster` implements it with the official
client over HTTP, and `InMemoryCluster` implements it in memory for tests and benchmarks (with the behaviours
controllers must survive: resourceVersions, watch streams that expire with 410 Gone, optimistic-concurrency
conflicts, injected API errors).

Objects are plain JSON-like dicts, as the API server sends them. Resources are addressed by `ResourceType`
(group, version, plural resource, namespaced), which `engine.resources.ResourceMapper` provides for kinds.
"""

from __future__ import annotations

import base64
import builtins
import copy
import itertools
import secrets
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from engine.resources import ResourceType

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]


class ApiError(Exception):
    """An API call failed; `status` is the HTTP status (0 when no answer came back)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        """Timeouts, throttling and server errors are worth retrying; client errors are not."""
        return self.status == 0 or self.status == 429 or self.status >= 500


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class Conflict(ApiError):
    """409: the object changed since it was read (or already exists on create)."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)


class Gone(ApiError):
    """410: the resourceVersion a watch resumed from is too old, or a list's continue token expired.

    For an expired continue token the API server's Status carries, in `metadata.continue`, a token that goes on
    from the same place in a fresh (inconsistent) list: `continue_token`, "" when it gave none.
    """

    def __init__(self, message: str = "too old resource version", *, continue_token: str = "") -> None:
        super().__init__(410, message)
        self.continue_token = continue_token


@dataclass(frozen=True, slots=True)
class ObjectList:
    items: list[dict[str, Any]]
    resource_version: str
    continue_token: str = ""
    """Set when the list was asked for one page (`limit`) and more objects follow: pass it back to get them."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    object: dict[str, Any]


class Cluster(Protocol):
    """What controllers may ask of a cluster. Every method may raise ApiError."""

    def list(
        self,
        resource: ResourceType,
        namespace: str = "",
        label_selector: str = "",
        *,
        limit: int = 0,
        continue_token: str = "",
    ) -> ObjectList:
        """Objects of a resource (in one namespace, or everywhere with ""), with the list's resourceVersion.

        With `limit` 0, every object. With a positive `limit`, one page of at most that many objects, starting where
        `continue_token` (from the previous page's `ObjectList.continue_token`) says; the last page has no token. An
        expired token raises Gone, whose `continue_token` (when the server gave one) goes on from the same place in
        an inconsistent list; without one, list again from the start."""

    def watch(
        self, resource: ResourceType, resource_version: str, *, namespace: str = "", timeout_seconds: int = 60
    ) -> Iterator[WatchEvent]:
        """Changes after `resource_version`, until the timeout; raises Gone when that version is too old."""

    def get(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""

    def create(self, resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create the object; Conflict when it exists."""

    def update(self, resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the object; Conflict when its metadata.resourceVersion is stale, NotFound when it is gone."""

    def delete(self, resource: ResourceType, namespace: str, name: str) -> bool:
        """Delete the object; False when it did not exist."""

    def allowed(self, verb: str, resource: ResourceType, namespace: str = "") -> bool:
        """Whether this client may do `verb` on the resource (a SelfSubjectAccessReview)."""


def _key(resource: ResourceType) -> tuple[str, str, str]:
    return resource.group, resource.version, resource.resource


def _name_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _encode_token(key: tuple[str, str], pages: int = 1) -> str:
    """An opaque continue token: how many pages its list has served, and the (namespace, name) of the page's last
    object, so that pages stay stable when objects before it are created or deleted between calls."""
    return base64.urlsafe_b64encode(f"{pages}:{key[0]}/{key[1]}".encode()).decode()


def _decode_token(token: str) -> tuple[int, tuple[str, str]]:
    try:
        pages, _, rest = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        namespace, _, name = rest.partition("/")
        return int(pages), (namespace, name)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, f"invalid continue token {token!r}") from None


def list_pages(
    cluster: Cluster, resource: ResourceType, namespace: str = "", *, label_selector: str = "", page_size: int = 500
) -> Iterator[builtins.list[dict[str, Any]]]:
    """The objects of a resource, one page (`limit` = `page_size`) per API call, so that a big collection never
    arrives, or sits in memory, as one response.

    Continue tokens expire (410 Gone) when etcd compacts past the list's first page, about 5 minutes after it, and
    a caller that evaluates every object consumes pages slowly. On Gone the list goes on from the continue token the
    API server returns with it (an inconsistent list: objects changed meanwhile may come twice or not at all, as
    with client-go's pagers); without one it starts over from the first page, for as long as each attempt gets
    further than the previous one. Objects may come again either way, so callers that must not see an object twice
    dedupe by uid.
    """
    if page_size <= 0:
        raise ValueError("page_size must be positive")
    token = ""
    reached, best = 0, 0  # pages yielded by this attempt, and by the furthest attempt before it
    while True:
        try:
            page = cluster.list(resource, namespace, label_selector, limit=page_size, continue_token=token)
        except Gone as error:
            if not token:
                raise
            if error.continue_token:
                token = error.continue_token
                continue
            if reached <= best:  # no further than the last attempt: starting over again would loop forever
                raise
            token, reached, best = "", 0, reached
            continue
        yield page.items
        reached += 1
        token = page.continue_token
        if not token:
            return


def list_all_pages(
    cluster: Cluster, resource: ResourceType, namespace: str = "", page_size: int = 500, *, label_selector: str = ""
) -> Iterator[dict[str, Any]]:
    """Every object of a resource, read page by page (see `list_pages`)."""
    for page in list_pages(cluster, resource, namespace, label_selector=label_selector, page_size=page_size):
        yield from page


def parse_label_selector(selector: str) -> list[tuple[str, str | None]]:
    """`a=b,c` -> [("a", "b"), ("c", None)] (equality and existence terms, which is all controllers use)."""
    terms: list[tuple[str, str | None]] = []
    for term in filter(None, (part.strip() for part in selector.split(","))):
        key, _, value = term.partition("=")
        terms.append((key.strip(), value.strip().lstrip("=") if _ else None))
    return terms


def matches_labels(obj: Mapping[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, value in parse_label_selector(selector):
        if key not in labels or (value is not None and labels[key] != value):
            return False
    return True


@dataclass
class _Store:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    history: deque[tuple[int, WatchEvent]] = field(default_factory=lambda: deque(maxlen=1000))
    oldest: int = 0
    """Watches may resume from versions >= this; older ones get 410 Gone."""


class InMemoryCluster:
    """A thread-safe, in-memory `Cluster` with real resourceVersion, watch and conflict semantics.

    Tests drive it directly (create a Namespace, delete a NetworkPolicy, ...) and inject faults with
    `fail_next(n, status)`, expire watch history with `compact()`, or expire continue tokens with
    `continue_lifetime`.
    """

    def __init__(self, *, history: int = 1000) -> None:
        self._lock = threading.Condition()
        self._stores: dict[tuple[str, str, str], _Store] = {}
        self._versions = itertools.count(1)
        self._history = history
        self._failures: deque[int] = deque()
        self.calls: list[tuple[str, str]] = []
        """(verb, resource) of every call, for tests that count API traffic."""
        self.denied: set[tuple[str, str]] = set()
        """(verb, resource) pairs `allowed` answers False for."""
        self.continue_lifetime = 0
        """When positive, a paginated list's continue token expires (410 Gone) once the list has served this many
        pages, as etcd compaction expires real ones some minutes after the list's first page."""
        self.resume_expired = True
        """Whether the 410 of an expired continue token carries a token going on from the same place (a fresh list,
        whose pages count from zero again), as API servers send."""

    # --- test controls -------------------------------------------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """Make the next `count` calls raise ApiError(status)."""
        with self._lock:
            self._failures.extend([status] * count)

    def compact(self) -> None:
        """Forget watch history: watches resuming from an earlier resourceVersion get 410 Gone."""
        with self._lock:
            for store in self._stores.values():
                store.history.clear()
                store.oldest = self._peek_version()

    # --- Cluster protocol ----------------------------------------------------------------------------------

    def list(
        self,
        resource: ResourceType,
        namespace: str = "",
        label_selector: str = "",
        *,
        limit: int = 0,
        continue_token: str = "",
    ) -> ObjectList:
        with self._lock:
            self._enter("list", resource)
            store = self._store(resource)
            served, after = _decode_token(continue_token) if continue_token else (0, None)
            if after is not None and 0 < self.continue_lifetime <= served:
                resume = _encode_token(after, 0) if self.resume_expired else ""
                raise Gone("the provided continue parameter is too old", continue_token=resume)
            items: builtins.list[dict[str, Any]] = []
            more = False
            for key, obj in sorted(store.objects.items()):  # (namespace, name) order: stable across pages
                if after is not None and key <= after:
                    continue
                if (namespace and key[0] != namespace) or not matches_labels(obj, label_selector):
                    continue
                if limit > 0 and len(items) == limit:
                    more = True
                    break
                items.append(copy.deepcopy(obj))
            token = _encode_token(_name_of(items[-1]), served + 1) if more and items else ""
            return ObjectList(items, str(self._peek_version() - 1), token)

    def watch(
        self, resource: ResourceType, resource_version: str, *, namespace: str = "", timeout_seconds: int = 60
    ) -> Iterator[WatchEvent]:
        with self._lock:
            self._enter("watch", resource)
            store = self._store(resource)
            since = int(resource_version or 0)
            if since + 1 < store.oldest:
                raise Gone()
            events = self._events_after(store, since, namespace)
            if not events:  # like the API server, hold the watch open until something happens or it times out
                self._lock.wait(timeout=timeout_seconds)
                events = self._events_after(store, since, namespace)
        yield from (WatchEvent(event.type, copy.deepcopy(event.object)) for event in events)

    @staticmethod
    def _events_after(store: _Store, since: int, namespace: str) -> builtins.list[WatchEvent]:
        return [
            event
            for version, event in store.history
            if version > since and (not namespace or _name_of(event.object)[0] == namespace)
        ]

    def get(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            self._enter("get", resource)
            found = self._store(resource).objects.get((namespace if resource.namespaced else "", name))
            return copy.deepcopy(found) if found is not None else None

    def create(self, resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._enter("create", resource)
            store = self._store(resource)
            stored = self._normalise(resource, obj)
            if not stored["metadata"].get("name") and stored["metadata"].get("generateName"):
                # Like the API server: a random suffix after generateName (events are created this way).
                stored["metadata"]["name"] = f"{stored['metadata']['generateName']}{secrets.token_hex(3)}"
            key = _name_of(stored)
            if not key[1]:
                raise ApiError(422, "metadata.name is required")
            if key in store.objects:
                raise Conflict(f"{resource.resource} {key[1]!r} already exists")
            version = next(self._versions)
            stored["metadata"]["resourceVersion"] = str(version)
            stored["metadata"].setdefault("uid", f"uid-{version}")
            store.objects[key] = stored
            self._record(store, version, "ADDED", stored)
            return copy.deepcopy(stored)

    def update(self, resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._enter("update", resource)
            store = self._store(resource)
            stored = self._normalise(resource, obj)
            key = _name_of(stored)
            current = store.objects.get(key)
            if current is None:
                raise NotFound(f"{resource.resource} {key[1]!r} not found")
            wanted = stored["metadata"].get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise Conflict(f"{resource.resource} {key[1]!r} was modified")
            version = next(self._versions)
            stored["metadata"]["resourceVersion"] = str(version)
            stored["metadata"]["uid"] = current["metadata"].get("uid")
            store.objects[key] = stored
            self._record(store, version, "MODIFIED", stored)
            return copy.deepcopy(stored)

    def delete(self, resource: ResourceType, namespace: str, name: str) -> bool:
        with self._lock:
            self._enter("delete", resource)
            store = self._store(resource)
            removed = store.objects.pop((namespace if resource.namespaced else "", name), None)
            if removed is None:
                return False
            self._record(store, next(self._versions), "DELETED", removed)
            return True

    def allowed(self, verb: str, resource: ResourceType, namespace: str = "") -> bool:
        with self._lock:
            self._enter("allowed", resource)
            return (verb, resource.resource) not in self.denied

    # --- internals ------------------------------------------------------------------------------------------

    def _enter(self, verb: str, resource: ResourceType) -> None:
        self.calls.append((verb, resource.resource))
        if self._failures:
            status = self._failures.popleft()
            raise ApiError(status, f"injected failure on {verb} {resource.resource}")

    def _store(self, resource: ResourceType) -> _Store:
        store = self._stores.get(_key(resource))
        if store is None:
            store = self._stores[_key(resource)] = _Store(history=deque(maxlen=self._history))
        return store

    def _peek_version(self) -> int:
        version = next(self._versions)
        self._versions = itertools.count(version)
        return version

    @staticmethod
    def _normalise(resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(dict(obj))
        metadata = dict(stored.get("metadata") or {})
        if not resource.namespaced:
            metadata.pop("namespace", None)
        stored["metadata"] = metadata
        stored.setdefault("apiVersion", resource.api_version)
        stored.setdefault("kind", resource.kind)
        return stored

    def _record(self, store: _Store, version: int, kind: EventType, obj: dict[str, Any]) -> None:
        event_object = copy.deepcopy(obj)
        if kind == "DELETED":
            event_object["metadata"]["resourceVersion"] = str(version)
        store.history.append((version, WatchEvent(kind, event_object)))
        self._lock.notify_all()
