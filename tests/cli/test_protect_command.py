"""`celvern protect` / `celvern unprotect` over real HTTP against the in-process fake API server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import celvern
from cli.protect_command import (
    CRDS,
    PROTECTION_LABEL,
    ProtectError,
    Target,
    parse_target,
    resolve_custom,
    resolve_kind,
    set_protection,
)
from engine.resources import DEFAULT_MAPPER, ResourceType
from tests.webhook.fake_apiserver import FakeApiServer
from webhook.cluster import InMemoryCluster
from webhook.kubernetes_cluster import KubernetesCluster

NAMESPACES = DEFAULT_MAPPER.for_kind("v1", "Namespace")
CONFIGMAPS = DEFAULT_MAPPER.for_kind("v1", "ConfigMap")


@pytest.fixture
def cluster() -> InMemoryCluster:
    cluster = InMemoryCluster()
    cluster.create(NAMESPACES, {"metadata": {"name": "payments", "labels": {"team": "money"}}})
    cluster.create(CONFIGMAPS, {"metadata": {"name": "settings", "namespace": "shop"}, "data": {"a": "1"}})
    return cluster


@pytest.fixture
def server(cluster: InMemoryCluster) -> Iterator[FakeApiServer]:
    with FakeApiServer(cluster) as server:
        yield server


def run(server: FakeApiServer, tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(celvern, [*args, "--kubeconfig", server.write_kubeconfig(tmp_path)])


def labels(cluster: InMemoryCluster, resource: ResourceType, namespace: str, name: str) -> dict[str, str]:
    found = cluster.get(resource, namespace, name)
    assert found is not None
    return dict(found["metadata"].get("labels") or {})


def test_protect_then_unprotect_a_namespace(server: FakeApiServer, cluster: InMemoryCluster, tmp_path: Path) -> None:
    result = run(server, tmp_path, "protect", "namespace/payments")
    assert result.exit_code == 0, result.output
    assert "namespaces/payments is protected from deletion" in result.output
    assert labels(cluster, NAMESPACES, "", "payments") == {"team": "money", PROTECTION_LABEL: "enabled"}

    again = run(server, tmp_path, "protect", "ns/payments")
    assert again.exit_code == 0 and "(already)" in again.output

    result = run(server, tmp_path, "unprotect", "Namespace/payments")
    assert result.exit_code == 0, result.output
    assert "no longer protected" in result.output
    assert labels(cluster, NAMESPACES, "", "payments") == {"team": "money"}


def test_protect_then_unprotect_a_configmap(server: FakeApiServer, cluster: InMemoryCluster, tmp_path: Path) -> None:
    result = run(server, tmp_path, "protect", "configmaps/settings", "-n", "shop")
    assert result.exit_code == 0, result.output
    assert "configmaps/settings in namespace shop is protected" in result.output
    stored = cluster.get(CONFIGMAPS, "shop", "settings")
    assert stored is not None and stored["data"] == {"a": "1"}  # nothing but the label changed
    assert labels(cluster, CONFIGMAPS, "shop", "settings") == {PROTECTION_LABEL: "enabled"}

    result = run(server, tmp_path, "unprotect", "cm/settings", "--namespace", "shop")
    assert result.exit_code == 0, result.output
    assert labels(cluster, CONFIGMAPS, "shop", "settings") == {}


def test_missing_object_is_a_clear_error(server: FakeApiServer, tmp_path: Path) -> None:
    result = run(server, tmp_path, "protect", "configmap/settings", "-n", "elsewhere")
    assert result.exit_code == 2
    assert "configmaps/settings in namespace elsewhere not found" in result.stderr
    assert "Traceback" not in result.output


def test_injected_conflict_is_retried(server: FakeApiServer, cluster: InMemoryCluster, tmp_path: Path) -> None:
    cluster.fail_next(1, 409)  # a plain ApiError(409), not a Conflict instance
    result = run(server, tmp_path, "protect", "namespace/payments")
    assert result.exit_code == 0, result.output
    assert labels(cluster, NAMESPACES, "", "payments")[PROTECTION_LABEL] == "enabled"


class _Racing:
    """A cluster wrapper that changes the object behind the client's back right after each of the first reads."""

    def __init__(self, inner: KubernetesCluster, backing: InMemoryCluster, races: int) -> None:
        self.inner, self.backing, self.races = inner, backing, races
        self.updates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.inner.get(resource, namespace, name)
        if self.races:
            self.races -= 1
            current = self.backing.get(resource, namespace, name)
            assert current is not None
            current["metadata"].setdefault("labels", {})[f"edit-{self.races}"] = "x"
            self.backing.update(resource, current)
        return found

    def update(self, resource: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        self.updates += 1
        return self.inner.update(resource, obj)


def test_real_conflicts_are_retried_without_losing_the_other_edit(
    server: FakeApiServer, cluster: InMemoryCluster, tmp_path: Path
) -> None:
    with KubernetesCluster.from_kubeconfig(server.write_kubeconfig(tmp_path)) as client:
        racing = _Racing(client, cluster, races=2)
        changed = set_protection(racing, NAMESPACES, "", "payments", enabled=True, sleep=lambda _: None)  # type: ignore[arg-type]
    assert changed and racing.updates == 3
    assert labels(cluster, NAMESPACES, "", "payments") == {
        "team": "money",
        "edit-1": "x",
        "edit-0": "x",
        PROTECTION_LABEL: "enabled",
    }


def test_endless_conflicts_give_up(server: FakeApiServer, cluster: InMemoryCluster, tmp_path: Path) -> None:
    with KubernetesCluster.from_kubeconfig(server.write_kubeconfig(tmp_path)) as client:
        racing = _Racing(client, cluster, races=100)
        with pytest.raises(ProtectError, match="gave up after 3 conflicting updates"):
            set_protection(racing, NAMESPACES, "", "payments", enabled=True, attempts=3, sleep=lambda _: None)  # type: ignore[arg-type]
    assert racing.updates == 3


def test_other_api_errors_are_reported(server: FakeApiServer, cluster: InMemoryCluster, tmp_path: Path) -> None:
    cluster.fail_next(1, 403)
    result = run(server, tmp_path, "unprotect", "namespace/payments")
    assert result.exit_code == 2
    assert "cannot update namespaces/payments" in result.stderr


def test_unknown_custom_kind_is_looked_up_as_a_crd(server: FakeApiServer, tmp_path: Path) -> None:
    # The fake API server does not serve CustomResourceDefinitions: the lookup fails with a clear message.
    result = run(server, tmp_path, "protect", "Database.postgres.example.com/orders", "-n", "shop")
    assert result.exit_code == 2
    assert "no CustomResourceDefinition databases.postgres.example.com in the cluster" in result.stderr


def test_custom_resource_resolves_from_its_crd() -> None:
    cluster = InMemoryCluster()
    cluster.create(
        CRDS,
        {
            "metadata": {"name": "databases.postgres.example.com"},
            "spec": {
                "group": "postgres.example.com",
                "names": {"kind": "Database", "plural": "databases"},
                "scope": "Namespaced",
                "versions": [{"name": "v1beta1", "served": True}, {"name": "v1", "served": True, "storage": True}],
            },
        },
    )
    resource = resolve_custom(cluster, parse_target("Database.postgres.example.com/orders"))
    assert resource == ResourceType("postgres.example.com", "v1", "Database", "databases", True)
    cluster.create(resource, {"metadata": {"name": "orders", "namespace": "shop"}})
    assert set_protection(cluster, resource, "shop", "orders", enabled=True)
    assert labels(cluster, resource, "shop", "orders") == {PROTECTION_LABEL: "enabled"}


def test_bad_target_is_a_usage_error(server: FakeApiServer, tmp_path: Path) -> None:
    result = run(server, tmp_path, "protect", "payments")
    assert result.exit_code == 2
    assert "expected KIND/NAME" in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("namespace/a", ("", "v1", "namespaces")),
        ("ns/a", ("", "v1", "namespaces")),
        ("Service/a", ("", "v1", "services")),
        ("svc/a", ("", "v1", "services")),
        ("deployments/a", ("apps", "v1", "deployments")),
        ("deployments.apps/a", ("apps", "v1", "deployments")),
        ("Ingress/a", ("networking.k8s.io", "v1", "ingresses")),
        ("hpa.autoscaling/a", ("autoscaling", "v2", "horizontalpodautoscalers")),
        ("widgets.autoscaling/a", None),
        ("HorizontalPodAutoscaler/a", ("autoscaling", "v2", "horizontalpodautoscalers")),
        ("horizontalpodautoscalers.v1.autoscaling/a", ("autoscaling", "v1", "horizontalpodautoscalers")),
        ("events/a", ("", "v1", "events")),
        ("crd/a", ("apiextensions.k8s.io", "v1", "customresourcedefinitions")),
        ("Database.postgres.example.com/a", None),
    ],
)
def test_kinds_resolve_like_kubectl(text: str, expected: tuple[str, str, str] | None) -> None:
    resolved = resolve_kind(parse_target(text))
    assert (None if resolved is None else (resolved.group, resolved.version, resolved.resource)) == expected


def test_parse_target() -> None:
    assert parse_target("Database.postgres.example.com/orders") == Target(
        "Database", "", "postgres.example.com", "orders"
    )
    assert parse_target("deployments.v1.apps/web") == Target("deployments", "v1", "apps", "web")
