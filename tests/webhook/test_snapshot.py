"""Policy sources: reload on change, atomic swap, last good snapshot kept on a broken file, cluster objects.

The cluster source's watch tests run it against `InMemoryCluster` (with per-resource faults) and once through the
real `kubernetes` client against the fake API server; they wait for conditions with a bounded timeout, never for
a fixed time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import webhook.snapshot
from engine.policy_set import PolicySet, build_policy_set
from engine.resources import ResourceType
from tests.webhook.fake_apiserver import FakeApiServer, custom_resources
from webhook.cluster import ApiError, InMemoryCluster, NotFound, ObjectList, WatchEvent
from webhook.kubernetes_cluster import KubernetesCluster
from webhook.snapshot import CLUSTER_POLICY_RESOURCES, ClusterPolicySource, DirectoryPolicySource


def policy(name: str, expression: str = "true") -> dict[str, Any]:
    return {
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "ValidatingPolicy",
        "metadata": {"name": name},
        "spec": {
            "validationActions": ["Deny"],
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
                ]
            },
            "validations": [{"expression": expression, "message": "no"}],
        },
    }


def write(path: Path, *documents: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(documents))


def names(source: DirectoryPolicySource | ClusterPolicySource) -> list[str]:
    snapshot = source.current()
    assert snapshot is not None
    return sorted(p.source.metadata.name for p in snapshot.policy_set.validating if not p.variant)


def test_directory_loads_and_reloads_only_on_change(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", policy("a"))
    source = DirectoryPolicySource([tmp_path])
    first = source.current()
    assert first is not None and names(source) == ["a"] and first.errors == ()
    assert source.reload() is False and source.current() is first  # unchanged content: nothing rebuilt
    write(tmp_path / "b.yaml", policy("b"))
    assert source.reload() is True
    second = source.current()
    assert second is not None and second is not first and second.version != first.version
    assert names(source) == ["a", "b"]
    (tmp_path / "b.yaml").unlink()
    assert source.reload() is True and names(source) == ["a"]


def test_broken_file_keeps_last_good_snapshot_with_the_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", policy("a"))
    source = DirectoryPolicySource([tmp_path])
    good = source.current()
    assert good is not None
    (tmp_path / "a.yaml").write_text("apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nspec: [unclosed\n")
    assert source.reload() is False
    kept = source.current()
    assert kept is not None and kept.policy_set is good.policy_set and kept.version == good.version
    assert len(kept.errors) == 1 and "a.yaml" in kept.errors[0]
    assert source.reload() is False and source.current() is kept  # the same broken content is not retried
    write(tmp_path / "a.yaml", policy("a2"))
    assert source.reload() is True
    fixed = source.current()
    assert fixed is not None and fixed.errors == () and names(source) == ["a2"]


def test_schema_error_keeps_last_good_snapshot(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", policy("a"))
    source = DirectoryPolicySource([tmp_path])
    bad = policy("b")
    bad["spec"]["validations"] = "not a list"
    write(tmp_path / "b.yaml", bad)
    assert source.reload() is False
    snapshot = source.current()
    assert snapshot is not None and names(source) == ["a"] and snapshot.errors


def test_broken_first_load_is_not_ready_until_fixed(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: [")
    source = DirectoryPolicySource([tmp_path])
    assert source.current() is None and source.errors
    write(tmp_path / "a.yaml", policy("a"))
    assert source.reload() is True and names(source) == ["a"] and source.errors == ()


def test_cel_compile_error_is_served_for_failure_policy(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", policy("a", "object.spec.(("))
    source = DirectoryPolicySource([tmp_path])
    snapshot = source.current()
    assert snapshot is not None and snapshot.errors == () and snapshot.policy_set.compile_errors


def test_swap_is_atomic_for_concurrent_readers(tmp_path: Path) -> None:
    """Readers only ever see complete snapshots: one policy set or the other, never a mix."""
    write(tmp_path / "p.yaml", policy("x1"), policy("y1"))
    source = DirectoryPolicySource([tmp_path])
    seen: set[tuple[str, ...]] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(tuple(names(source)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(2, 12):
            write(tmp_path / "p.yaml", policy(f"x{round_}"), policy(f"y{round_}"))
            assert source.reload() is True
    finally:
        stop.set()
        reader.join(5)
    assert all(len(entry) == 2 and entry[0][1:] == entry[1][1:] for entry in seen)


def test_polling_thread_picks_up_changes(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", policy("a"))
    source = DirectoryPolicySource([tmp_path], poll_interval=0.02)
    source.start()
    try:
        write(tmp_path / "b.yaml", policy("b"))
        deadline = time.monotonic() + 5
        while names(source) != ["a", "b"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert names(source) == ["a", "b"]
    finally:
        source.stop()


def test_cluster_source_reloads_on_resource_version_change() -> None:
    cluster = InMemoryCluster()
    validating = CLUSTER_POLICY_RESOURCES[0]
    cluster.create(validating, policy("a"))
    source = ClusterPolicySource(cluster, poll_interval=1)
    first = source.current()
    assert first is not None and names(source) == ["a"]
    assert source.reload() is False and source.current() is first
    changed = cluster.get(validating, "", "a")
    assert changed is not None
    changed["spec"]["validations"][0]["message"] = "changed"
    cluster.update(validating, changed)
    assert source.reload() is True
    second = source.current()
    assert second is not None and second.version != first.version
    assert second.policy_set.validating[0].source.validations[0].message == "changed"


def test_cluster_source_keeps_last_good_on_api_error() -> None:
    cluster = InMemoryCluster()
    cluster.create(CLUSTER_POLICY_RESOURCES[0], policy("a"))
    source = ClusterPolicySource(cluster, poll_interval=1)
    good = source.current()
    assert good is not None
    cluster.fail_next(1, 500)
    assert source.reload() is False
    kept = source.current()
    assert kept is not None and kept.policy_set is good.policy_set and "cannot list policies" in kept.errors[0]


class PartialCluster(InMemoryCluster):
    """A cluster where some policy CRDs are not installed."""

    def list(self, resource: ResourceType, namespace: str = "", label_selector: str = "") -> ObjectList:
        if resource.namespaced and resource.kind != "PolicyException":
            raise NotFound(f"the server could not find the requested resource ({resource.resource})")
        return super().list(resource, namespace, label_selector)


def test_cluster_source_skips_resources_the_cluster_does_not_serve() -> None:
    cluster = PartialCluster()
    cluster.create(CLUSTER_POLICY_RESOURCES[0], policy("a"))
    source = ClusterPolicySource(cluster)
    assert names(source) == ["a"]


@pytest.mark.parametrize("poll_interval", [0, -1])
def test_poll_interval_must_be_positive(tmp_path: Path, poll_interval: float) -> None:
    with pytest.raises(ValueError):
        DirectoryPolicySource([tmp_path], poll_interval=poll_interval)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"poll_interval": 0}, id="poll-interval-zero"),
        pytest.param({"watch_timeout": 0}, id="watch-timeout-zero"),
        pytest.param({"debounce": -1}, id="negative-debounce"),
        pytest.param({"debounce": 2, "max_debounce": 1}, id="debounce-above-its-bound"),
        pytest.param({"retry_delay": 0}, id="retry-delay-zero"),
        pytest.param({"missing_retry": 0}, id="missing-retry-zero"),
    ],
)
def test_cluster_source_rejects_bad_settings(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ClusterPolicySource(InMemoryCluster(), load=False, **options)


# --- the cluster source's watches ------------------------------------------------------------------------------

VALIDATING = CLUSTER_POLICY_RESOURCES[0]
EXCEPTIONS = next(resource for resource in CLUSTER_POLICY_RESOURCES if resource.kind == "PolicyException")
WATCH_WAIT = 0.05
"""Seconds a `FaultyCluster` watch waits for changes, so that stopped sources end their watches at once."""
TIMEOUT = 10.0
"""Generous bound on every wait for a condition below."""


class FaultyCluster(InMemoryCluster):
    """An `InMemoryCluster` with per-resource faults (by plural name), each switched on and off by the test."""

    def __init__(self, *, missing: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.missing = set(missing)
        """Resources whose CRD is not installed: list and watch answer 404."""
        self.failing_lists: dict[str, int] = {}
        self.failing_watches: dict[str, int] = {}
        self.blind: set[str] = set()
        """Resources whose watches deliver no events (as if they were missed)."""

    def list(self, resource: ResourceType, namespace: str = "", label_selector: str = "") -> ObjectList:
        self._fault(resource, self.failing_lists)
        return super().list(resource, namespace, label_selector)

    def watch(
        self, resource: ResourceType, resource_version: str, *, namespace: str = "", timeout_seconds: int = 60
    ) -> Iterator[WatchEvent]:
        self._fault(resource, self.failing_watches)
        return self._filtered(resource, resource_version, namespace)

    def _filtered(self, resource: ResourceType, resource_version: str, namespace: str) -> Iterator[WatchEvent]:
        wait: Any = WATCH_WAIT
        for event in super().watch(resource, resource_version, namespace=namespace, timeout_seconds=wait):
            if resource.resource not in self.blind:
                yield event

    def _fault(self, resource: ResourceType, failing: dict[str, int]) -> None:
        if resource.resource in self.missing:
            raise NotFound(f"the server could not find the requested resource ({resource.resource})")
        status = failing.get(resource.resource)
        if status:
            raise ApiError(status, f"injected failure on {resource.resource}")


def exception(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "PolicyException",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"policyRefs": [{"name": "a", "kind": "ValidatingPolicy"}]},
    }


def broken(name: str) -> dict[str, Any]:
    document = policy(name)
    document["spec"]["validations"] = "not a list"
    return document


def view(source: ClusterPolicySource) -> list[str] | None:
    """What the served snapshot holds: `name:message` of each policy and `exception ns/name`; None before any."""
    snapshot = source.current()
    if snapshot is None:
        return None
    policy_set = snapshot.policy_set
    policies = [f"{p.source.metadata.name}:{p.source.validations[0].message}" for p in policy_set.validating]
    exceptions = [f"exception {e.namespace}/{e.name}" for e in policy_set.exceptions]
    return sorted({*policies, *exceptions})


def eventually(condition: Callable[[], object], timeout: float = TIMEOUT) -> bool:
    """Whether `condition` became true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def lists_of(cluster: InMemoryCluster, resource: ResourceType) -> int:
    return cluster.calls.count(("list", resource.resource))


def policy_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("celvern-policy-")]


Start = Callable[..., ClusterPolicySource]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start a fast-reacting cluster source on a cluster; every source is stopped (threads joined) afterwards."""
    sources: list[ClusterPolicySource] = []

    def started(
        cluster: InMemoryCluster, *, poll_interval: float = 3600.0, debounce: float = 0.05
    ) -> ClusterPolicySource:
        source = ClusterPolicySource(
            cluster,
            poll_interval=poll_interval,  # a re-list is due only when a test asks for it: changes come by watch
            load=False,
            watch_timeout=1,
            debounce=debounce,
            max_debounce=max(debounce, 0.5),
            retry_delay=0.01,
            max_retry_delay=0.05,
            missing_retry=0.05,
        )
        sources.append(source)
        source.start()
        return source

    yield started
    for source in sources:
        source.stop(timeout=5)
    assert policy_threads() == []


def create_b(cluster: InMemoryCluster) -> None:
    cluster.create(VALIDATING, policy("b"))


def update_a(cluster: InMemoryCluster) -> None:
    changed = cluster.get(VALIDATING, "", "a")
    assert changed is not None
    changed["spec"]["validations"][0]["message"] = "changed"
    cluster.update(VALIDATING, changed)


def delete_a(cluster: InMemoryCluster) -> None:
    cluster.delete(VALIDATING, "", "a")


def create_exception(cluster: InMemoryCluster) -> None:
    cluster.create(EXCEPTIONS, exception("allow-a"))


def replace_a_with_c(cluster: InMemoryCluster) -> None:
    cluster.delete(VALIDATING, "", "a")
    cluster.create(VALIDATING, policy("c"))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(create_b, ["a:no", "b:no"], id="create"),
        pytest.param(update_a, ["a:changed"], id="update"),
        pytest.param(delete_a, [], id="delete"),
        pytest.param(create_exception, ["a:no", "exception default/allow-a"], id="create-namespaced-exception"),
        pytest.param(replace_a_with_c, ["c:no"], id="delete-then-create"),
    ],
)
def test_watch_reflects_changes_without_listing(
    start: Start, change: Callable[[InMemoryCluster], None], expected: list[str]
) -> None:
    cluster = FaultyCluster()
    cluster.create(VALIDATING, policy("a"))
    source = start(cluster)
    first = source.current()
    assert first is not None and view(source) == ["a:no"]
    lists = len([call for call in cluster.calls if call[0] == "list"])
    change(cluster)
    assert eventually(lambda: view(source) == expected), view(source)
    snapshot = source.current()
    assert snapshot is not None and snapshot.version != first.version and snapshot.errors == ()
    assert len([call for call in cluster.calls if call[0] == "list"]) == lists  # by watch, not by polling


def test_burst_of_creates_compiles_a_few_times(start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> PolicySet:
        builds.append(1)
        return build_policy_set(*args, **kwargs)

    monkeypatch.setattr(webhook.snapshot, "build_policy_set", counting)
    cluster = FaultyCluster()
    source = start(cluster, debounce=0.3)
    assert view(source) == [] and len(builds) == 1
    count = 50
    for index in range(count):
        cluster.create(VALIDATING, policy(f"p{index:02}"))
    assert eventually(lambda: len(view(source) or ()) == count)
    assert len(builds) - 1 <= count // 10, f"{len(builds) - 1} compiles for {count} creates"


def test_expired_watch_recovers_by_listing_again(start: Start) -> None:
    cluster = FaultyCluster()
    cluster.create(VALIDATING, policy("a"))
    source = start(cluster)
    lists = lists_of(cluster, VALIDATING)
    cluster.blind.add(VALIDATING.resource)  # the watch misses the creation of b ...
    cluster.create(VALIDATING, policy("b"))
    cluster.compact()  # ... and can no longer resume from where it was: 410 Gone
    cluster.blind.clear()
    assert eventually(lambda: view(source) == ["a:no", "b:no"]), view(source)
    assert lists_of(cluster, VALIDATING) > lists


def test_resource_installed_later_is_picked_up(start: Start) -> None:
    cluster = FaultyCluster(missing=(VALIDATING.resource,))
    cluster.create(VALIDATING, policy("a"))  # stored, but not served until the CRD is "installed"
    source = start(cluster)
    assert view(source) == [] and source.errors == ()  # a CRD that is not installed is not an error
    cluster.missing.clear()
    assert eventually(lambda: view(source) == ["a:no"]), view(source)


def fail_lists(cluster: FaultyCluster) -> None:
    cluster.failing_lists[VALIDATING.resource] = 500


def repair_lists(cluster: FaultyCluster) -> None:
    cluster.failing_lists.clear()


def fail_watches(cluster: FaultyCluster) -> None:
    cluster.failing_watches[VALIDATING.resource] = 503


def repair_watches(cluster: FaultyCluster) -> None:
    cluster.failing_watches.clear()


def create_broken(cluster: FaultyCluster) -> None:
    cluster.create(VALIDATING, broken("b"))


def delete_broken(cluster: FaultyCluster) -> None:
    cluster.delete(VALIDATING, "", "b")


@pytest.mark.parametrize(
    ("poll_interval", "break_", "repair", "error"),
    [
        pytest.param(0.05, fail_lists, repair_lists, "cannot list policies: validatingpolicies: 500", id="list-error"),
        pytest.param(
            3600, fail_watches, repair_watches, "cannot watch policies: validatingpolicies: 503", id="watch-error"
        ),
        pytest.param(3600, create_broken, delete_broken, "validatingpolicies/b: spec.validations", id="schema-error"),
    ],
)
def test_failure_keeps_last_good_snapshot_and_reports_it(
    start: Start,
    poll_interval: float,
    break_: Callable[[FaultyCluster], None],
    repair: Callable[[FaultyCluster], None],
    error: str,
) -> None:
    cluster = FaultyCluster()
    cluster.create(VALIDATING, policy("a"))
    source = start(cluster, poll_interval=poll_interval)
    good = source.current()
    assert good is not None and good.errors == ()
    break_(cluster)
    assert eventually(lambda: source.errors), "the failure was not reported"
    kept = source.current()
    assert kept is not None and kept.policy_set is good.policy_set and kept.version == good.version
    assert any(error in message for message in kept.errors), kept.errors
    repair(cluster)
    assert eventually(lambda: source.errors == ()), source.errors
    recovered = source.current()
    # The content is the one served before: nothing is compiled again.
    assert recovered is not None and recovered.policy_set is good.policy_set and recovered.errors == ()


def test_first_list_failure_is_not_ready_until_it_succeeds(start: Start) -> None:
    cluster = FaultyCluster()
    cluster.create(VALIDATING, policy("a"))
    fail_lists(cluster)
    source = start(cluster)
    assert source.current() is None and "cannot list policies" in source.errors[0]
    repair_lists(cluster)
    assert eventually(lambda: view(source) == ["a:no"]), source.errors
    assert source.errors == ()


def test_reload_while_watching_lists_and_compiles_synchronously(start: Start) -> None:
    cluster = FaultyCluster()
    cluster.create(VALIDATING, policy("a"))
    source = start(cluster)
    cluster.blind.add(VALIDATING.resource)
    cluster.create(VALIDATING, policy("b"))
    assert source.reload() is True and view(source) == ["a:no", "b:no"]
    cluster.blind.clear()
    cluster.create(VALIDATING, policy("c"))  # the watches resume from the reload's list
    assert eventually(lambda: view(source) == ["a:no", "b:no", "c:no"]), view(source)


def test_stop_joins_every_thread() -> None:
    # A plain InMemoryCluster: watches wait for their whole (one second) timeout unless something changes.
    source = ClusterPolicySource(InMemoryCluster(), watch_timeout=1, debounce=0.01)
    source.start()
    source.start()  # idempotent
    threads = policy_threads()
    assert len(threads) == len(CLUSTER_POLICY_RESOURCES) + 1
    source.stop(timeout=5)
    assert not any(thread.is_alive() for thread in threads)
    source.stop()  # idempotent


def test_watch_through_kubernetes_client(tmp_path: Path) -> None:
    """Over HTTP, with the fake API server serving the policies.kyverno.io CRDs: a created policy arrives by watch."""
    with (
        custom_resources(*CLUSTER_POLICY_RESOURCES),
        FakeApiServer() as server,
        KubernetesCluster.from_kubeconfig(server.write_kubeconfig(tmp_path), timeout=2) as kube,
    ):
        server.cluster.create(VALIDATING, policy("a"))
        source = ClusterPolicySource(kube, poll_interval=3600, load=False, watch_timeout=1, debounce=0.05)
        source.start()
        try:
            assert view(source) == ["a:no"]
            server.cluster.create(VALIDATING, policy("b"))
            assert eventually(lambda: view(source) == ["a:no", "b:no"]), view(source)
            update_a(server.cluster)
            assert eventually(lambda: view(source) == ["a:changed", "b:no"]), view(source)
        finally:
            source.stop(timeout=5)
        assert policy_threads() == []


def test_kubernetes_cluster_without_the_crds_serves_an_empty_snapshot(tmp_path: Path) -> None:
    with (
        FakeApiServer() as server,
        KubernetesCluster.from_kubeconfig(server.write_kubeconfig(tmp_path), timeout=2) as kube,
    ):
        source = ClusterPolicySource(kube)
        assert view(source) == [] and source.errors == ()
