"""Policy sources: reload on change, atomic swap, last good snapshot kept on a broken file, cluster objects."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.resources import ResourceType
from webhook.cluster import InMemoryCluster, NotFound, ObjectList
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
