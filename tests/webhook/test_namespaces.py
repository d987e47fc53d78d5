"""The namespace label cache: hits, live GET on miss, unknown (never "no labels") on failure, watch and relist."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from engine.matching import UNKNOWN_NAMESPACE
from engine.resources import ResourceType
from webhook.cluster import InMemoryCluster, WatchEvent
from webhook.namespaces import NAMESPACES, NamespaceCache


def namespace_object(name: str, **labels: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def cluster() -> InMemoryCluster:
    cluster = InMemoryCluster()
    cluster.create(NAMESPACES, namespace_object("team-a", team="a"))
    return cluster


@pytest.fixture
def cache(cluster: InMemoryCluster) -> Iterator[NamespaceCache]:
    cache = NamespaceCache(cluster, watch_timeout=1, retry_delay=0.01)
    cache.start()
    assert cache.wait_synced(5)
    yield cache
    cache.stop()


def gets(cluster: InMemoryCluster) -> int:
    return cluster.calls.count(("get", "namespaces"))


def test_cache_hit_needs_no_api_call(cluster: InMemoryCluster, cache: NamespaceCache) -> None:
    labels, obj = cache.lookup("team-a")
    assert labels.known and dict(labels.labels) == {"team": "a"}
    assert obj is not None and obj["metadata"]["name"] == "team-a"
    assert gets(cluster) == 0


def test_miss_does_a_live_get_and_caches_it(cluster: InMemoryCluster) -> None:
    cache = NamespaceCache(cluster)  # not started: every name is a miss
    labels, _ = cache.lookup("team-a")
    assert labels.known and dict(labels.labels) == {"team": "a"} and gets(cluster) == 1
    cache.lookup("team-a")
    assert gets(cluster) == 1  # served from the cache within the ttl


def test_get_failure_is_unknown_never_empty_labels(cluster: InMemoryCluster) -> None:
    cache = NamespaceCache(cluster)
    cluster.fail_next(1, 503)
    labels, obj = cache.lookup("team-a")
    assert labels is UNKNOWN_NAMESPACE and not labels.known and obj is None


def test_missing_namespace_and_empty_name_are_unknown(cluster: InMemoryCluster, cache: NamespaceCache) -> None:
    assert cache.lookup("nope")[0] is UNKNOWN_NAMESPACE
    assert cache.lookup("")[0] is UNKNOWN_NAMESPACE


def test_unsynced_entries_expire_after_ttl(cluster: InMemoryCluster) -> None:
    now = [0.0]
    cache = NamespaceCache(cluster, ttl=10, clock=lambda: now[0])
    assert cache.lookup("team-a")[0].known
    now[0] = 11
    cluster.fail_next(1, 500)
    assert cache.lookup("team-a")[0] is UNKNOWN_NAMESPACE  # too old to trust, and the API cannot confirm it


def test_watch_updates_labels(cluster: InMemoryCluster, cache: NamespaceCache) -> None:
    current = cluster.get(NAMESPACES, "", "team-a")
    assert current is not None
    current["metadata"]["labels"] = {"team": "b"}
    cluster.update(NAMESPACES, current)
    cluster.create(NAMESPACES, namespace_object("team-c", team="c"))
    assert eventually(lambda: dict(cache.lookup("team-a")[0].labels) == {"team": "b"})
    assert eventually(lambda: dict(cache.lookup("team-c")[0].labels) == {"team": "c"})
    cluster.delete(NAMESPACES, "", "team-c")
    calls = gets(cluster)
    assert eventually(lambda: cache.lookup("team-c")[0] is UNKNOWN_NAMESPACE)
    assert gets(cluster) > calls  # once gone from the cache, the answer came from a live GET
    assert gets(cluster) - calls <= 500


class ExpiringCluster(InMemoryCluster):
    """The first namespace watch finds its resourceVersion compacted away (410 Gone)."""

    def __init__(self) -> None:
        super().__init__()
        self.expired = False

    def watch(
        self, resource: ResourceType, resource_version: str, *, namespace: str = "", timeout_seconds: int = 60
    ) -> Iterator[WatchEvent]:
        if not self.expired:
            self.expired = True
            # A namespace created while the watch was not looking: only a relist can find it.
            self.create(NAMESPACES, namespace_object("team-b", team="b"))
            self.compact()
        return super().watch(resource, resource_version, namespace=namespace, timeout_seconds=timeout_seconds)


def test_gone_watch_relists() -> None:
    cluster = ExpiringCluster()
    cache = NamespaceCache(cluster, watch_timeout=1, retry_delay=0.01)
    cache.start()
    try:
        assert eventually(lambda: cluster.calls.count(("list", "namespaces")) >= 2)
        assert eventually(lambda: cluster.calls.count(("watch", "namespaces")) >= 2)  # watching again after the relist
        before = gets(cluster)
        assert dict(cache.lookup("team-b")[0].labels) == {"team": "b"}
        assert gets(cluster) == before  # found by the relist, not by a live GET
    finally:
        cache.stop()


def test_list_failure_retries_and_syncs(cluster: InMemoryCluster) -> None:
    cluster.fail_next(2, 500)
    cache = NamespaceCache(cluster, watch_timeout=1, retry_delay=0.01)
    cache.start()
    try:
        assert cache.wait_synced(5)
        assert cache.lookup("team-a")[0].known
    finally:
        cache.stop()
    assert not cache.synced
