"""KubernetesCluster through the real `kubernetes` client, against the fake API server over loopback HTTP."""

from __future__ import annotations

import gc
import itertools
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import orjson
import pytest

from engine.resources import ResourceType
from tests.webhook.fake_apiserver import FakeApiServer
from webhook.cluster import ApiError, Conflict, Gone, NotFound, ObjectList, WatchEvent
from webhook.kubernetes_cluster import ClusterConfigError, ClusterConnection, KubernetesCluster, resource_path

NAMESPACES = ResourceType("", "v1", "Namespace", "namespaces", False)
CONFIGMAPS = ResourceType("", "v1", "ConfigMap", "configmaps", True)
NETWORK_POLICIES = ResourceType("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True)
LEASES = ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True)
CLUSTER_ROLES = ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False)
MAX_EVENTS = 20
"""Bound on every watch loop below."""


def configmap(namespace: str, name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "labels": labels}, "data": {"key": name}}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test ends with no extra threads, and unclosed sockets surface here as ResourceWarning errors."""
    before = set(threading.enumerate())
    yield
    gc.collect()
    assert set(threading.enumerate()) <= before


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as fake:
        memory = fake.cluster
        for name, team in (("alpha", "red"), ("beta", "blue")):
            memory.create(NAMESPACES, {"metadata": {"name": name, "labels": {"team": team}}})
        memory.create(CONFIGMAPS, configmap("alpha", "one", app="web"))
        memory.create(CONFIGMAPS, configmap("alpha", "two", app="db"))
        memory.create(CONFIGMAPS, configmap("beta", "three", app="web", tier="front"))
        memory.create(NETWORK_POLICIES, {"metadata": {"namespace": "beta", "name": "deny-all"}, "spec": {}})
        yield fake


@pytest.fixture
def cluster(server: FakeApiServer, tmp_path: Path) -> Iterator[KubernetesCluster]:
    with KubernetesCluster.from_kubeconfig(server.write_kubeconfig(tmp_path), timeout=2) as kube:
        yield kube


def names(objects: list[dict[str, Any]]) -> list[str]:
    return [obj["metadata"]["name"] for obj in objects]


def events_until_bookmark(stream: Iterator[WatchEvent]) -> list[tuple[str, str]]:
    """(type, name) of the events up to the first BOOKMARK (whose resourceVersion stands in for its name)."""
    seen: list[tuple[str, str]] = []
    for event in itertools.islice(stream, MAX_EVENTS):
        metadata = event.object["metadata"]
        seen.append((event.type, metadata.get("name") or metadata["resourceVersion"]))
        if event.type == "BOOKMARK":
            break
    return seen


# --- paths -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "namespace", "name", "path"),
    [
        (NAMESPACES, "", "", "/api/v1/namespaces"),
        (NAMESPACES, "ignored", "alpha", "/api/v1/namespaces/alpha"),
        (CONFIGMAPS, "", "", "/api/v1/configmaps"),
        (CONFIGMAPS, "alpha", "", "/api/v1/namespaces/alpha/configmaps"),
        (CONFIGMAPS, "alpha", "one", "/api/v1/namespaces/alpha/configmaps/one"),
        (NETWORK_POLICIES, "beta", "a b/c", "/apis/networking.k8s.io/v1/namespaces/beta/networkpolicies/a%20b%2Fc"),
        (CLUSTER_ROLES, "", "admin", "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin"),
    ],
)
def test_resource_path(resource: ResourceType, namespace: str, name: str, path: str) -> None:
    assert resource_path(resource, namespace, name) == path


# --- list and get ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "namespace", "selector", "expected"),
    [
        (NAMESPACES, "", "", ["alpha", "beta"]),
        (NAMESPACES, "", "team=blue", ["beta"]),
        (CONFIGMAPS, "", "", ["one", "two", "three"]),
        (CONFIGMAPS, "alpha", "", ["one", "two"]),
        (CONFIGMAPS, "", "app=web", ["one", "three"]),
        (CONFIGMAPS, "", "app=web,tier", ["three"]),
        (CONFIGMAPS, "gamma", "", []),
        (NETWORK_POLICIES, "beta", "", ["deny-all"]),
        (CLUSTER_ROLES, "", "", []),
    ],
)
def test_list(
    cluster: KubernetesCluster, resource: ResourceType, namespace: str, selector: str, expected: list[str]
) -> None:
    listed = cluster.list(resource, namespace, selector)
    assert names(listed.items) == expected
    assert all(item["kind"] == resource.kind and item["apiVersion"] == resource.api_version for item in listed.items)


def test_list_resource_version_is_the_servers(cluster: KubernetesCluster, server: FakeApiServer) -> None:
    assert cluster.list(CONFIGMAPS).resource_version == server.cluster.list(CONFIGMAPS).resource_version


def test_list_follows_continue_tokens(server: FakeApiServer, tmp_path: Path) -> None:
    for index in range(4):
        server.cluster.create(CONFIGMAPS, configmap("gamma", f"cm-{index}"))
    kube = KubernetesCluster(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=server.url)), page_size=2)
    with kube:
        assert names(kube.list(CONFIGMAPS, "gamma").items) == ["cm-0", "cm-1", "cm-2", "cm-3"]
    assert [path for method, path, _ in server.requests] == ["/api/v1/namespaces/gamma/configmaps"] * 2


def test_list_starts_over_when_a_continue_token_expires(server: FakeApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(3):
        server.cluster.create(CONFIGMAPS, configmap("gamma", f"cm-{index}"))
    pages = itertools.count()
    real_list = server.cluster.list

    def list_expiring_the_second_page(*args: Any) -> ObjectList:
        if next(pages) == 1:
            raise Gone("the provided continue parameter is too old")
        return real_list(*args)

    monkeypatch.setattr(server.cluster, "list", list_expiring_the_second_page)
    kube = KubernetesCluster(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=server.url)), page_size=2)
    with kube:
        assert names(kube.list(CONFIGMAPS, "gamma").items) == ["cm-0", "cm-1", "cm-2"]
    assert next(pages) == 3  # first page, expired second page, one full list


@pytest.mark.parametrize(
    ("resource", "namespace", "name", "found"),
    [
        (CONFIGMAPS, "alpha", "one", True),
        (CONFIGMAPS, "beta", "one", False),
        (CONFIGMAPS, "alpha", "missing", False),
        (NAMESPACES, "", "beta", True),
        (NAMESPACES, "", "gamma", False),
        (NETWORK_POLICIES, "beta", "deny-all", True),
    ],
)
def test_get(cluster: KubernetesCluster, resource: ResourceType, namespace: str, name: str, found: bool) -> None:
    obj = cluster.get(resource, namespace, name)
    assert (obj is not None) is found
    if obj is not None:
        assert obj["metadata"]["name"] == name
        assert obj["kind"] == resource.kind


def test_requests_carry_the_kubeconfig_token(cluster: KubernetesCluster, server: FakeApiServer) -> None:
    cluster.get(CONFIGMAPS, "alpha", "one")
    assert server.requests == [("GET", "/api/v1/namespaces/alpha/configmaps/one", "Bearer test-token")]


# --- writes ---------------------------------------------------------------------------------------------------


def test_create_then_duplicate_conflicts(cluster: KubernetesCluster, server: FakeApiServer) -> None:
    created = cluster.create(CONFIGMAPS, configmap("beta", "four"))
    assert created["kind"] == "ConfigMap" and created["metadata"]["resourceVersion"]
    assert server.cluster.get(CONFIGMAPS, "beta", "four") == created
    with pytest.raises(Conflict, match="already exists"):
        cluster.create(CONFIGMAPS, configmap("beta", "four"))


def test_create_cluster_scoped(cluster: KubernetesCluster) -> None:
    created = cluster.create(NAMESPACES, {"metadata": {"name": "gamma"}})
    assert cluster.get(NAMESPACES, "", "gamma") == created


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda kube: kube.create(CONFIGMAPS, {"metadata": {"name": "x"}}), "namespace is required"),
        (lambda kube: kube.get(CONFIGMAPS, "", "x"), "namespace is required"),
        (lambda kube: kube.update(CONFIGMAPS, {"metadata": {"namespace": "alpha"}}), "name is required"),
        (lambda kube: kube.delete(NAMESPACES, "", ""), "name is required"),
    ],
)
def test_incomplete_addresses_fail_without_a_request(
    cluster: KubernetesCluster, server: FakeApiServer, call: Any, message: str
) -> None:
    with pytest.raises(ApiError, match=message) as raised:
        call(cluster)
    assert raised.value.status == 422 and not raised.value.retryable
    assert server.requests == []


def test_update_and_stale_update_conflicts(cluster: KubernetesCluster) -> None:
    current = cluster.get(CONFIGMAPS, "alpha", "one")
    assert current is not None
    updated = cluster.update(CONFIGMAPS, {**current, "data": {"key": "changed"}})
    assert updated["data"] == {"key": "changed"}
    assert int(updated["metadata"]["resourceVersion"]) > int(current["metadata"]["resourceVersion"])
    with pytest.raises(Conflict, match="modified"):
        cluster.update(CONFIGMAPS, {**current, "data": {"key": "stale"}})
    assert cluster.get(CONFIGMAPS, "alpha", "one") == updated


def test_update_of_a_missing_object_is_not_found(cluster: KubernetesCluster) -> None:
    with pytest.raises(NotFound):
        cluster.update(CONFIGMAPS, configmap("alpha", "missing"))


@pytest.mark.parametrize(
    ("resource", "namespace", "name", "deleted"),
    [
        (CONFIGMAPS, "alpha", "two", True),
        (CONFIGMAPS, "alpha", "three", False),
        (NAMESPACES, "", "alpha", True),
        (NETWORK_POLICIES, "beta", "missing", False),
    ],
)
def test_delete(
    cluster: KubernetesCluster, server: FakeApiServer, resource: ResourceType, namespace: str, name: str, deleted: bool
) -> None:
    assert cluster.delete(resource, namespace, name) is deleted
    assert server.cluster.get(resource, namespace, name) is None


def test_lease_round_trip(cluster: KubernetesCluster) -> None:
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"namespace": "celvern", "name": "generator"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }
    assert cluster.get(LEASES, "celvern", "generator") is None
    created = cluster.create(LEASES, lease)
    fetched = cluster.get(LEASES, "celvern", "generator")
    assert fetched == created and fetched["spec"]["holderIdentity"] == "a"
    renewed = cluster.update(LEASES, {**fetched, "spec": {**fetched["spec"], "holderIdentity": "b"}})
    assert cluster.get(LEASES, "celvern", "generator") == renewed
    with pytest.raises(Conflict):  # a second replica racing with the first replica's resourceVersion
        cluster.update(LEASES, {**fetched, "spec": {**fetched["spec"], "holderIdentity": "c"}})


# --- watch ----------------------------------------------------------------------------------------------------


def test_watch_streams_events_after_a_version_then_a_bookmark(cluster: KubernetesCluster) -> None:
    since = cluster.list(CONFIGMAPS).resource_version
    cluster.create(CONFIGMAPS, configmap("alpha", "four"))
    one = cluster.get(CONFIGMAPS, "alpha", "one")
    assert one is not None
    cluster.update(CONFIGMAPS, {**one, "data": {}})
    cluster.delete(CONFIGMAPS, "beta", "three")
    latest = cluster.list(CONFIGMAPS).resource_version
    stream = cluster.watch(CONFIGMAPS, since, timeout_seconds=5)
    assert events_until_bookmark(stream) == [
        ("ADDED", "four"),
        ("MODIFIED", "one"),
        ("DELETED", "three"),
        ("BOOKMARK", latest),
    ]


def test_watch_in_one_namespace(cluster: KubernetesCluster) -> None:
    since = cluster.list(CONFIGMAPS).resource_version
    cluster.create(CONFIGMAPS, configmap("alpha", "four"))
    cluster.create(CONFIGMAPS, configmap("beta", "five"))
    stream = cluster.watch(CONFIGMAPS, since, namespace="beta", timeout_seconds=5)
    assert [kind for kind, _ in events_until_bookmark(stream)] == ["ADDED", "BOOKMARK"]


def test_watch_delivers_changes_made_while_it_is_open(cluster: KubernetesCluster, server: FakeApiServer) -> None:
    since = cluster.list(NAMESPACES).resource_version
    stream = cluster.watch(NAMESPACES, since, timeout_seconds=5)
    bookmark = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"resourceVersion": since}}
    assert next(stream) == WatchEvent("BOOKMARK", bookmark)
    server.cluster.create(NAMESPACES, {"metadata": {"name": "gamma"}})
    event = next(stream)
    assert (event.type, event.object["metadata"]["name"]) == ("ADDED", "gamma")
    stream.close()  # a watch abandoned early must not leak its connection


def test_watch_ends_when_the_server_ends_it(cluster: KubernetesCluster, server: FakeApiServer) -> None:
    server.bookmark_interval, server.watch_limit = 10.0, 0.1
    since = cluster.list(LEASES).resource_version
    started = time.monotonic()
    events = list(itertools.islice(cluster.watch(LEASES, since, timeout_seconds=5), MAX_EVENTS))
    assert [event.type for event in events] == ["BOOKMARK"]
    assert 0.1 <= time.monotonic() - started < 0.5
    assert cluster.get(NAMESPACES, "", "alpha") is not None  # the connection is usable again


def test_watch_from_a_compacted_version_is_gone(cluster: KubernetesCluster, server: FakeApiServer) -> None:
    since = cluster.list(CONFIGMAPS).resource_version
    cluster.create(CONFIGMAPS, configmap("alpha", "four"))
    server.cluster.compact()
    with pytest.raises(Gone) as raised:
        list(itertools.islice(cluster.watch(CONFIGMAPS, since, timeout_seconds=5), MAX_EVENTS))
    assert raised.value.status == 410 and not raised.value.retryable


def test_watch_with_an_injected_failure(cluster: KubernetesCluster, server: FakeApiServer) -> None:
    server.cluster.fail_next(1, 500)
    with pytest.raises(ApiError) as raised:
        next(cluster.watch(CONFIGMAPS, "1", timeout_seconds=5))
    assert raised.value.status == 500 and raised.value.retryable


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (500, ApiError, True),
        (503, ApiError, True),
        (429, ApiError, True),
        (403, ApiError, False),
        (422, ApiError, False),
        (404, NotFound, False),
        (409, Conflict, False),
        (410, Gone, False),
    ],
)
def test_http_errors_map_to_api_errors(
    cluster: KubernetesCluster, server: FakeApiServer, status: int, error: type[ApiError], retryable: bool
) -> None:
    server.cluster.fail_next(1, status)
    with pytest.raises(error) as raised:
        cluster.list(CONFIGMAPS)
    assert type(raised.value) is error
    assert raised.value.status == status and raised.value.retryable is retryable
    assert raised.value.message == "injected failure on list configmaps"  # from the Status body
    assert cluster.list(CONFIGMAPS).items  # the next call goes through


def test_unknown_resources_are_not_found(cluster: KubernetesCluster) -> None:
    widgets = ResourceType("example.com", "v1", "Widget", "widgets", True)
    assert cluster.get(widgets, "alpha", "w") is None
    with pytest.raises(NotFound, match="could not find the requested resource"):
        cluster.list(widgets)


def test_connection_refused_is_a_retryable_api_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}", retries=False)
    with KubernetesCluster(kubernetes.client.ApiClient(configuration), timeout=1) as kube:
        with pytest.raises(ApiError) as raised:
            kube.get(CONFIGMAPS, "alpha", "one")
        assert raised.value.status == 0 and raised.value.retryable
        with pytest.raises(ApiError) as raised:
            next(kube.watch(CONFIGMAPS, "1", timeout_seconds=1))
        assert raised.value.status == 0


def test_a_slow_server_times_out(server: FakeApiServer) -> None:
    # No urllib3 retries, so that one timeout is one ApiError (the default retries idempotent reads).
    configuration = kubernetes.client.Configuration(host=server.url, retries=False)
    with KubernetesCluster(kubernetes.client.ApiClient(configuration), timeout=0.1) as kube, server.stalled():
        started = time.monotonic()
        with pytest.raises(ApiError) as raised:
            kube.get(CONFIGMAPS, "alpha", "one")
        assert time.monotonic() - started < 0.5
    assert raised.value.status == 0 and raised.value.retryable
    assert "timed out" in raised.value.message


def test_a_missing_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="kubeconfig"):
        KubernetesCluster.from_kubeconfig(str(tmp_path / "missing"))


# --- access reviews -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "allowed"),
    [
        ("get", CONFIGMAPS, "alpha", True),
        ("create", CONFIGMAPS, "alpha", False),
        ("list", NAMESPACES, "", True),
        ("delete", NAMESPACES, "", False),
        ("update", LEASES, "celvern", True),
    ],
)
def test_allowed(
    cluster: KubernetesCluster, server: FakeApiServer, verb: str, resource: ResourceType, namespace: str, allowed: bool
) -> None:
    server.cluster.denied |= {("create", "configmaps"), ("delete", "namespaces")}
    assert cluster.allowed(verb, resource, namespace) is allowed
    assert server.requests[-1][:2] == ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
    assert server.cluster.calls[-1] == ("allowed", resource.resource)


# --- expired continue tokens, connections for child processes ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "token"),
    [
        pytest.param(
            {"kind": "Status", "code": 410, "message": "too old", "metadata": {"continue": "next-page"}},
            "next-page",
            id="status with a continue token",
        ),
        pytest.param({"kind": "Status", "code": 410, "message": "too old", "metadata": {}}, "", id="status without"),
        pytest.param(None, "", id="not json"),
    ],
)
def test_gone_carries_the_continue_token_of_the_status(body: dict[str, Any] | None, token: str) -> None:
    from webhook.kubernetes_cluster import _error

    error = _error(410, orjson.dumps(body) if body is not None else b"gateway says no", "Gone")
    assert isinstance(error, Gone)
    assert error.continue_token == token


def test_a_cluster_connection_is_picklable_and_connects(server: FakeApiServer, tmp_path: Path) -> None:
    connection = ClusterConnection(kubeconfig=server.write_kubeconfig(tmp_path), timeout=2)
    copy = pickle.loads(pickle.dumps(connection))
    assert copy == connection
    with copy.connect() as kube:
        assert names(kube.list(NAMESPACES).items) == ["alpha", "beta"]
