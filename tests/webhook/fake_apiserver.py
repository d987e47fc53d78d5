"""An in-process fake of the Kubernetes REST API, to test `KubernetesCluster` over real HTTP.

`FakeApiServer` serves the generic resource endpoints (list with labelSelector and limit/continue, chunked watch
streams with BOOKMARK events and a 410 `ERROR` event, get, create, update, delete) and SelfSubjectAccessReviews on
127.0.0.1 with an ephemeral port, backed by an `InMemoryCluster` that tests drive directly (create objects,
`fail_next`, `compact`, `denied`). Errors are answered with Kubernetes `Status` bodies. It is a context manager:

    with FakeApiServer() as server:
        ... KubernetesCluster.from_kubeconfig(server.write_kubeconfig(tmp_path)) ...
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from engine.resources import ResourceType
from webhook.cluster import ApiError, Conflict, Gone, InMemoryCluster, WatchEvent

KNOWN: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", False),
    ResourceType("", "v1", "ConfigMap", "configmaps", True),
    ResourceType("", "v1", "Secret", "secrets", True),
    ResourceType("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
    ResourceType(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        False,
    ),
    ResourceType(
        "admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", False
    ),
)
_BY_PATH = {(r.group, r.version, r.resource): r for r in KNOWN}
_ROUTE = re.compile(
    r"^(?:/api/(?P<core>[^/]+)|/apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?$"
)
_REASONS = {403: "Forbidden", 404: "NotFound", 409: "Conflict", 410: "Expired", 422: "Invalid", 429: "TooManyRequests"}
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
WATCH_POLL = 0.02
"""Seconds a watch waits for changes between checks of whether the server is stopping."""


def status_body(code: int, message: str, reason: str = "") -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, "InternalError"),
        "code": code,
    }


class FakeApiServer:
    """The fake; `cluster` holds its state, `requests` records (method, path, Authorization header)."""

    def __init__(self, cluster: InMemoryCluster | None = None, *, bookmark_interval: float = 0.2) -> None:
        self.cluster = cluster if cluster is not None else InMemoryCluster()
        self.bookmark_interval = bookmark_interval
        """Seconds between BOOKMARK events on an idle watch (one follows every batch of events, too)."""
        self.watch_limit: float | None = None
        """When set, watches end after this many seconds whatever their timeoutSeconds (API servers may end them)."""
        self.requests: list[tuple[str, str, str]] = []
        self.stopping = threading.Event()
        self.gate = threading.Event()
        """Requests wait for this before being answered (see `stalled`)."""
        self.gate.set()
        self._http = _Server(self)
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.01,), name="fake-apiserver")

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stopping.set()
        self.gate.set()
        self._http.shutdown()
        self._http.disconnect_all()
        self._http.server_close()  # joins the request threads
        self._thread.join(timeout=5)

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        """Hold every request unanswered inside the block (to provoke client-side timeouts)."""
        self.gate.clear()
        try:
            yield
        finally:
            self.gate.set()

    def write_kubeconfig(self, directory: Path, token: str = "test-token") -> str:
        path = directory / "kubeconfig.json"  # JSON is YAML
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
            "current-context": "fake",
        }
        path.write_bytes(orjson.dumps(config))
        return str(path)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins them: no thread outlives the fake

    def __init__(self, fake: FakeApiServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def disconnect_all(self) -> None:
        """End idle keep-alive connections, whose handler threads would otherwise wait for another request."""
        with self._open_lock:
            for request in self._open:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: don't wait for delayed ACKs
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # --- routing --------------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body: dict[str, Any] = orjson.loads(self.rfile.read(length)) if length else {}
        fake.requests.append((method, url.path, self.headers.get("Authorization") or ""))
        fake.gate.wait(timeout=5)
        try:
            self._answer(method, url.path, query, body)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (a closed watch, a timeout)
            self.close_connection = True

    def _answer(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> None:
        try:
            if method == "POST" and path == ACCESS_REVIEWS:
                return self._send(201, self._review(body))
            route = _ROUTE.match(path)
            resource = route and _BY_PATH.get(
                (route["group"] or "", route["core"] or route["version"], unquote(route["resource"]))
            )
            if route is None or resource is None:
                return self._send(404, status_body(404, "the server could not find the requested resource"))
            namespace = unquote(route["namespace"] or "") if resource.namespaced else ""
            name = unquote(route["name"] or "")
            self._serve(method, resource, namespace, name, query, body)
        except Gone as error:
            self._send(410, status_body(410, error.message))
        except Conflict as error:
            self._send(409, status_body(409, error.message, "AlreadyExists" if method == "POST" else "Conflict"))
        except ApiError as error:
            self._send(error.status, status_body(error.status, error.message))

    def _serve(
        self, method: str, resource: ResourceType, namespace: str, name: str, query: dict[str, str], body: Any
    ) -> None:
        cluster = self.server.fake.cluster
        if method == "GET" and not name and query.get("watch") in ("true", "1"):
            return self._watch(resource, namespace, query)
        if method == "GET" and not name:
            return self._list(resource, namespace, query)
        if method == "GET":
            found = cluster.get(resource, namespace, name)
            if found is None:
                return self._send(404, status_body(404, f'{resource.resource} "{name}" not found'))
            return self._send(200, found)
        if method == "POST" and not name:
            if resource.namespaced:
                body.setdefault("metadata", {})["namespace"] = namespace
            return self._send(201, cluster.create(resource, body))
        if method == "PUT" and name:
            return self._send(200, cluster.update(resource, body))
        if method == "DELETE" and name:
            found = cluster.get(resource, namespace, name)
            if found is None or not cluster.delete(resource, namespace, name):
                return self._send(404, status_body(404, f'{resource.resource} "{name}" not found'))
            return self._send(200, found)
        return self._send(405, status_body(405, f"{method} is not supported here", "MethodNotAllowed"))

    def _list(self, resource: ResourceType, namespace: str, query: dict[str, str]) -> None:
        listed = self.server.fake.cluster.list(resource, namespace, query.get("labelSelector", ""))
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(listed.items)
        page = listed.items[start : start + limit]
        metadata = {"resourceVersion": listed.resource_version}
        if start + limit < len(listed.items):
            metadata["continue"] = str(start + limit)
        # Like the real API server, items of built-in lists carry no apiVersion and kind.
        items = [{k: v for k, v in item.items() if k not in ("apiVersion", "kind")} for item in page]
        kind = f"{resource.kind}List"
        self._send(200, {"apiVersion": resource.api_version, "kind": kind, "metadata": metadata, "items": items})

    def _watch(self, resource: ResourceType, namespace: str, query: dict[str, str]) -> None:
        """Stream events until timeoutSeconds, polling the cluster so that a stopping server ends the stream."""
        fake = self.server.fake
        since = query.get("resourceVersion") or "0"
        duration = float(query.get("timeoutSeconds") or 60)
        deadline = time.monotonic() + min(duration, fake.watch_limit or duration)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        failure: ApiError | None = None
        try:
            events = list(fake.cluster.watch(resource, since, namespace=namespace, timeout_seconds=0))
        except Gone as error:  # like the API server: a 200 whose stream holds one ERROR event
            events, failure = [], error
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        last_bookmark = 0.0
        while failure is None:
            for event in events:
                self._chunk({"type": event.type, "object": event.object})
                since = event.object["metadata"]["resourceVersion"]
            if bookmarks and (events or time.monotonic() - last_bookmark >= fake.bookmark_interval):
                mark = {
                    "apiVersion": resource.api_version,
                    "kind": resource.kind,
                    "metadata": {"resourceVersion": since},
                }
                self._chunk({"type": "BOOKMARK", "object": mark})
                last_bookmark = time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or fake.stopping.is_set():
                break
            try:
                events = list(_poll(fake.cluster, resource, since, namespace, min(remaining, WATCH_POLL)))
            except ApiError as error:  # Gone after compact(), or an injected failure
                failure = error
        if failure is not None:
            self._chunk({"type": "ERROR", "object": status_body(failure.status, failure.message)})
        self.wfile.write(b"0\r\n\r\n")

    def _review(self, review: dict[str, Any]) -> dict[str, Any]:
        attributes = (review.get("spec") or {}).get("resourceAttributes") or {}
        group, version, plural = attributes.get("group", ""), attributes.get("version", ""), attributes["resource"]
        namespace = attributes.get("namespace", "")
        resource = _BY_PATH.get((group, version, plural)) or ResourceType(group, version, "", plural, bool(namespace))
        allowed = self.server.fake.cluster.allowed(attributes["verb"], resource, namespace)
        return {**review, "status": {"allowed": allowed}}

    # --- writing --------------------------------------------------------------------------------------------

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, event: dict[str, Any]) -> None:
        data = orjson.dumps(event) + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def _poll(
    cluster: InMemoryCluster, resource: ResourceType, since: str, namespace: str, wait: float
) -> Iterator[WatchEvent]:
    # InMemoryCluster.watch waits up to its timeout for a change; short waits keep a stopping server responsive.
    return cluster.watch(resource, since, namespace=namespace, timeout_seconds=wait)  # type: ignore[arg-type]


@contextlib.contextmanager
def custom_resources(*resources: ResourceType) -> Iterator[None]:
    """Serve `resources` (e.g. CRDs such as policies.kyverno.io) in every `FakeApiServer` inside the block.

    Outside it, like an API server without those CRDs installed, their paths answer 404.
    """
    added = {(r.group, r.version, r.resource): r for r in resources if (r.group, r.version, r.resource) not in _BY_PATH}
    _BY_PATH.update(added)
    try:
        yield
    finally:
        for key in added:
            del _BY_PATH[key]
