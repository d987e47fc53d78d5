"""`celvern controller` end to end: the real kubernetes client over HTTP against the in-process fake API server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli.main import celvern
from engine.resources import DEFAULT_MAPPER
from tests.webhook.fake_apiserver import FakeApiServer
from webhook.cluster import InMemoryCluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policies" / "default-deny-network-policy.yaml"
NAMESPACES = DEFAULT_MAPPER.for_kind("v1", "Namespace")
NETWORK_POLICIES = DEFAULT_MAPPER.for_kind("networking.k8s.io/v1", "NetworkPolicy")


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["evaluation"]["generateExisting"] = {"enabled": True}  # backfill the namespaces that exist
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_once_backfills_existing_namespaces(tmp_path: Path, policy: Path) -> None:
    cluster = InMemoryCluster()
    for name in ("shop", "payments"):
        cluster.create(NAMESPACES, {"metadata": {"name": name}})
    with FakeApiServer(cluster) as server:
        kubeconfig = server.write_kubeconfig(tmp_path)
        result = CliRunner().invoke(
            celvern, ["controller", "--once", "--kubeconfig", kubeconfig, "--policies", str(policy)]
        )
    assert result.exit_code == 0, result.output
    generated = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in cluster.list(NETWORK_POLICIES).items}
    assert generated == {("shop", "default-deny"), ("payments", "default-deny")}


def test_missing_permission_stops_the_start(tmp_path: Path, policy: Path) -> None:
    cluster = InMemoryCluster()
    cluster.denied.add(("create", "networkpolicies"))
    with FakeApiServer(cluster) as server:
        kubeconfig = server.write_kubeconfig(tmp_path)
        result = CliRunner().invoke(
            celvern, ["controller", "--once", "--kubeconfig", kubeconfig, "--policies", str(policy)]
        )
    assert result.exit_code == 2
    assert "create networkpolicies.networking.k8s.io" in result.stderr
    assert cluster.list(NETWORK_POLICIES).items == []


def test_policies_or_cluster_is_required() -> None:
    result = CliRunner().invoke(celvern, ["controller", "--once"])
    assert result.exit_code == 2
    assert "give either --policies or --from-cluster" in result.output


def test_from_cluster_waits_for_policies_instead_of_failing(tmp_path: Path) -> None:
    cluster = InMemoryCluster()
    with FakeApiServer(cluster) as server:
        kubeconfig = server.write_kubeconfig(tmp_path)
        result = CliRunner().invoke(celvern, ["controller", "--once", "--kubeconfig", kubeconfig, "--from-cluster"])
    assert result.exit_code == 0, result.output
