"""`KubernetesCluster`: the `webhook.cluster.Cluster` seam over a real API server.

Why this module exists: celvern's controllers (leader election, reports, generation, ...) are written against the
small `Cluster` protocol so that they can be tested against `InMemoryCluster`; this is its one production
implementation, and the only module of the project that imports the official `kubernetes` client. Keeping the client
behind the seam keeps it out of the engine, out of the tests of everything else, and in one place to upgrade.

The client is used for what it does well: configuration (kubeconfig, in-cluster service account, TLS, bearer tokens
and their refresh) and an HTTP connection pool. The API itself is spoken generically -- paths built from
`ResourceType` (`/api/v1/...` for the core group, `/apis/{group}/{version}/...` otherwise), plain JSON dicts in and
out (decoded with orjson), no generated model classes -- so that any resource, built-in or CRD, is reachable and
objects have the same shape as in `InMemoryCluster`. Every failure becomes one of the seam's errors: `NotFound`,
`Conflict`, `Gone`, or `ApiError(status, message)` with the message of the server's `Status` body, and status 0 for
connection errors and timeouts. Every call has a client-side timeout.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import quote

import orjson
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as _kube_config

from engine.resources import ResourceType
from webhook.cluster import ApiError, Conflict, EventType, Gone, NotFound, ObjectList, WatchEvent

DEFAULT_TIMEOUT = 10.0
"""Seconds any single API call may take (connect plus response) before it fails with ApiError(0)."""

WATCH_MARGIN = 5.0
"""Seconds a watch may stay silent beyond its timeoutSeconds before the client gives up on the server."""

DEFAULT_PAGE_SIZE = 500
"""Objects per page when listing (`limit`/`continue`), so that big lists do not arrive as one huge response."""

_EVENT_TYPES: frozenset[str] = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})
_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)
"""What urllib3 raises when no (complete) answer came back: refused connections, timeouts, resets, bad TLS."""

Query = list[tuple[str, str]]

k8s_config: Any = _kube_config
"""The client's configuration loaders (untyped in most client releases)."""


class ClusterConfigError(Exception):
    """No usable cluster configuration: a missing or invalid kubeconfig, or not running inside a pod."""


def resource_path(resource: ResourceType, namespace: str = "", name: str = "") -> str:
    """The REST path of a resource's collection (or of one object when `name` is given).

    Namespaced resources without a namespace address the collection across all namespaces; the namespace of a
    cluster-scoped resource is ignored.
    """
    path = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
    if resource.namespaced and namespace:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{resource.resource}"
    if name:
        path += f"/{quote(name, safe='')}"
    return path


@dataclass(frozen=True, slots=True)
class ClusterConnection:
    """How to reach the cluster, as the command line says it: small and picklable, so that a child process (the
    controller's isolated scan rounds) can open its own connection with `connect()`."""

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    timeout: float = DEFAULT_TIMEOUT

    def connect(self) -> KubernetesCluster:
        """A new client (raises ClusterConfigError); the caller closes it."""
        return KubernetesCluster.connect(
            kubeconfig=self.kubeconfig, context=self.context, in_cluster=self.in_cluster, timeout=self.timeout
        )


class KubernetesCluster:
    """A `Cluster` backed by a Kubernetes API server, through a `kubernetes.client.ApiClient`.

    The cluster owns the client: `close()` (or leaving a `with` block) closes its connection pool.
    """

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        watch_margin: float = WATCH_MARGIN,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        """`api_client` is a `kubernetes.client.ApiClient`; `timeout` bounds every call except watches, which may
        last their `timeout_seconds` plus `watch_margin`."""
        if timeout <= 0 or watch_margin < 0 or page_size <= 0:
            raise ValueError("timeout and page_size must be positive, watch_margin not negative")
        self._api: Any = api_client  # typed loosely: older client releases ship no type information
        self._timeout = timeout
        self._watch_margin = watch_margin
        self._page_size = page_size

    @classmethod
    def from_kubeconfig(
        cls, path: str | None = None, context: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> KubernetesCluster:
        """From a kubeconfig file (`$KUBECONFIG` or `~/.kube/config` when `path` is None) and context."""
        try:
            api_client = k8s_config.new_client_from_config(config_file=path, context=context)
        except (k8s_config.ConfigException, OSError, ValueError) as error:
            raise ClusterConfigError(f"cannot load kubeconfig: {error}") from error
        return cls(api_client, timeout=timeout)

    @classmethod
    def in_cluster(cls, *, timeout: float = DEFAULT_TIMEOUT) -> KubernetesCluster:
        """From the pod's service account (token, CA and the KUBERNETES_SERVICE_* environment)."""
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except (k8s_config.ConfigException, OSError) as error:
            raise ClusterConfigError(f"not running in a cluster: {error}") from error
        return cls(k8s_client.ApiClient(configuration), timeout=timeout)

    @classmethod
    def connect(
        cls,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        in_cluster: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> KubernetesCluster:
        """The command-line choice: the pod's service account with `in_cluster`, else a kubeconfig."""
        if in_cluster:
            return cls.in_cluster(timeout=timeout)
        return cls.from_kubeconfig(kubeconfig, context, timeout=timeout)

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

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
        """Every object (read in pages of `page_size`), or with `limit` one page starting at `continue_token`."""
        path = resource_path(resource, namespace)
        selector: Query = [("labelSelector", label_selector)] if label_selector else []
        if limit > 0:
            query = [*selector, ("limit", str(limit))] + ([("continue", continue_token)] if continue_token else [])
            page = self._json("GET", path, query)
            metadata = _mapping(page.get("metadata"))
            return ObjectList(
                [_with_type(resource, item) for item in _items(page)],
                str(metadata.get("resourceVersion") or ""),
                str(metadata.get("continue") or ""),
            )
        items: list[dict[str, Any]] = []
        version, token = "", ""
        while True:
            query = [*selector, ("limit", str(self._page_size))] + ([("continue", token)] if token else [])
            try:
                page = self._json("GET", path, query)
            except Gone:
                if not token:
                    raise
                # The continue token expired between pages: fall back to one unpaginated list, as client-go does.
                page, items, version = self._json("GET", path, selector), [], ""
            items.extend(_with_type(resource, item) for item in _items(page))
            metadata = _mapping(page.get("metadata"))
            version = version or str(metadata.get("resourceVersion") or "")
            token = str(metadata.get("continue") or "")
            if not token:
                return ObjectList(items, version)

    def watch(
        self, resource: ResourceType, resource_version: str, *, namespace: str = "", timeout_seconds: int = 60
    ) -> Generator[WatchEvent, None, None]:
        """Stream the changes after `resource_version`; close the generator to end the watch (and its connection)."""
        query: Query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_seconds))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        path = resource_path(resource, namespace)
        response = self._send("GET", path, query, timeout=(self._timeout, timeout_seconds + self._watch_margin))
        deadline = time.monotonic() + timeout_seconds + self._watch_margin
        try:
            if response.status != 200:
                raise _error(response.status, response.data, response.reason or "")
            for line in _lines(response):
                event = _decode(line)
                kind, obj = event.get("type"), event.get("object")
                if kind == "ERROR":
                    status = _mapping(obj)
                    raise _error(_int(status.get("code")) or 500, line, str(status.get("reason") or "watch error"))
                if kind in _EVENT_TYPES and isinstance(obj, dict):
                    yield WatchEvent(cast(EventType, kind), obj)
                if time.monotonic() > deadline:  # the server ignores timeoutSeconds: stop anyway
                    return
        except _TRANSPORT_ERRORS as error:
            raise ApiError(0, f"watch {path}: {error}") from error
        finally:
            # An unfinished stream cannot go back to the pool: close its connection (the pool reconnects).
            response.close()
            response.release_conn()

    def get(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._json("GET", _object_path(resource, namespace, name))
        except NotFound:
            return None

    def create(self, resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        namespace = str(_mapping(obj.get("metadata")).get("namespace") or "")
        if resource.namespaced and not namespace:
            raise ApiError(422, f"{resource.resource}: metadata.namespace is required")
        return self._json("POST", resource_path(resource, namespace), body=_with_type(resource, obj))

    def update(self, resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        metadata = _mapping(obj.get("metadata"))
        path = _object_path(resource, str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        return self._json("PUT", path, body=_with_type(resource, obj))

    def delete(self, resource: ResourceType, namespace: str, name: str) -> bool:
        try:
            self._json("DELETE", _object_path(resource, namespace, name))
        except NotFound:
            return False
        return True

    def allowed(self, verb: str, resource: ResourceType, namespace: str = "") -> bool:
        attributes = {"verb": verb, "group": resource.group, "version": resource.version, "resource": resource.resource}
        if resource.namespaced and namespace:
            attributes["namespace"] = namespace
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        answer = self._json("POST", _ACCESS_REVIEWS, body=review)
        return _mapping(answer.get("status")).get("allowed") is True

    # --- HTTP ------------------------------------------------------------------------------------------------

    def _json(
        self, method: str, path: str, query: Query | None = None, *, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One request with a JSON answer: the decoded object, or the mapped ApiError."""
        response = self._send(method, path, query or [], body=body, timeout=self._timeout)
        try:
            data = response.data
        except _TRANSPORT_ERRORS as error:
            raise ApiError(0, f"{method} {path}: {error}") from error
        finally:
            response.release_conn()
        if not 200 <= response.status < 300:
            raise _error(response.status, data, response.reason or "")
        return _decode(data)

    def _send(
        self,
        method: str,
        path: str,
        query: Query,
        *,
        body: Mapping[str, Any] | None = None,
        timeout: float | tuple[float, float],
    ) -> urllib3.BaseHTTPResponse:
        """Send a request through the client (authentication, TLS, pool) and return the unread response."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            request = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query,
                header_params=headers,
                body=dict(body) if body is not None else None,
                auth_settings=["BearerToken"],
            )
            answer = self._api.call_api(*request, _request_timeout=timeout)
        except _TRANSPORT_ERRORS as error:
            raise ApiError(0, f"{method} {path}: {error}") from error
        except k8s_client.ApiException as error:  # the client's REST layer wraps TLS failures
            raise ApiError(error.status or 0, f"{method} {path}: {error.reason}") from error
        return cast(urllib3.BaseHTTPResponse, answer.response)


def _object_path(resource: ResourceType, namespace: str, name: str) -> str:
    if not name:
        raise ApiError(422, f"{resource.resource}: a name is required")
    if resource.namespaced and not namespace:
        raise ApiError(422, f"{resource.resource} {name!r}: a namespace is required")
    return resource_path(resource, namespace, name)


def _error(status: int, body: bytes, reason: str) -> ApiError:
    """The seam's error for an HTTP error answer, with the message of its `Status` body when it has one."""
    message = reason or f"HTTP {status}"
    continue_token = ""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        message = text[:300] if text else message
    else:
        if isinstance(decoded, dict) and decoded.get("message"):
            message = str(decoded["message"])
        if isinstance(decoded, dict):
            # An expired continue token: the Status says where an (inconsistent) list may go on from.
            continue_token = str(_mapping(decoded.get("metadata")).get("continue") or "")
    if status == 404:
        return NotFound(message)
    if status == 409:
        return Conflict(message)
    if status == 410:
        return Gone(message, continue_token=continue_token)
    return ApiError(status, message)


def _decode(data: bytes) -> dict[str, Any]:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise ApiError(0, f"malformed JSON from the API server: {error}") from error
    if not isinstance(decoded, dict):
        raise ApiError(0, f"expected a JSON object from the API server, got {type(decoded).__name__}")
    return decoded


def _lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The non-empty lines of a streamed (chunked) body, each as soon as it has arrived."""
    pending = b""
    for chunk in response.stream(amt=None):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


def _mapping(value: object) -> Mapping[str, Any]:
    return cast(Mapping[str, Any], value) if isinstance(value, Mapping) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _items(page: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    items = page.get("items")
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _with_type(resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object with apiVersion and kind, which API servers leave out of the items of built-in lists."""
    typed = dict(obj)
    typed.setdefault("apiVersion", resource.api_version)
    typed.setdefault("kind", resource.kind)
    return typed
