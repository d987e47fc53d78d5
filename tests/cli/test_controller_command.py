"""`celvern controller` end to end: the real kubernetes client over HTTP against the in-process fake API server."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cli.main import celvern
from engine.resources import DEFAULT_MAPPER, ResourceType
from tests.webhook.fake_apiserver import FakeApiServer
from webhook.certificates import MUTATING_WEBHOOKS, SECRETS, VALIDATING_WEBHOOKS
from webhook.cluster import ApiError, InMemoryCluster

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


def test_once_creates_the_tls_secret_and_injects_the_ca(tmp_path: Path) -> None:
    cluster = InMemoryCluster()
    for resource in (VALIDATING_WEBHOOKS, MUTATING_WEBHOOKS):
        cluster.create(resource, {"metadata": {"name": "celvern"}, "webhooks": [{"name": "x.celvern.io"}]})
    arguments = [
        *("controller", "--once", "--from-cluster"),
        *("--tls-secret", "celvern/celvern-webhook-tls", "--webhook-configuration", "celvern"),
        *("--service-name", "celvern-webhook", "--service-namespace", "celvern"),
    ]
    with FakeApiServer(cluster) as server:
        kubeconfig = server.write_kubeconfig(tmp_path)
        result = CliRunner().invoke(celvern, [*arguments, "--kubeconfig", kubeconfig])
        again = CliRunner().invoke(celvern, [*arguments, "--kubeconfig", kubeconfig])
    assert (result.exit_code, again.exit_code) == (0, 0), result.output + again.output
    secret = cluster.get(SECRETS, "celvern", "celvern-webhook-tls")
    assert secret is not None and secret["metadata"]["resourceVersion"]
    assert secret["type"] == "kubernetes.io/tls"
    ca = base64.b64decode(secret["data"]["ca.crt"])
    for resource in (VALIDATING_WEBHOOKS, MUTATING_WEBHOOKS):
        configuration = cluster.get(resource, "", "celvern")
        assert configuration is not None
        assert base64.b64decode(configuration["webhooks"][0]["clientConfig"]["caBundle"]) == ca
    assert '"secret":"unchanged"' in again.stderr  # the second run wrote nothing


class SecretsForbidden(InMemoryCluster):
    def get(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        if resource.resource == "secrets":
            raise ApiError(403, "secrets is forbidden")
        return super().get(resource, namespace, name)


def test_once_fails_when_the_tls_secret_cannot_be_read(tmp_path: Path) -> None:
    with FakeApiServer(SecretsForbidden()) as server:
        kubeconfig = server.write_kubeconfig(tmp_path)
        result = CliRunner().invoke(
            celvern,
            [
                *("controller", "--once", "--kubeconfig", kubeconfig, "--from-cluster"),
                *("--tls-secret", "celvern/celvern-webhook-tls"),
            ],
        )
    assert result.exit_code == 2
    assert "cannot reconcile the webhook certificates" in result.stderr
    assert "secrets is forbidden" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["--tls-secret", "no-namespace"], "expected NAMESPACE/NAME", id="secret without namespace"),
        pytest.param(["--webhook-configuration", "celvern"], "needs --tls-secret", id="configuration without secret"),
    ],
)
def test_certificate_options_are_checked(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(celvern, ["controller", "--once", "--from-cluster", *arguments])
    assert result.exit_code == 2
    assert message in result.output


PODS = DEFAULT_MAPPER.for_kind("v1", "Pod")
REQUIRE_LABELS = EXAMPLE.parent / "require-labels.yaml"


def test_once_scans_and_writes_policy_reports_without_churn(tmp_path: Path) -> None:
    from tests.webhook.fake_apiserver import custom_resources
    from webhook.policy_reports import CLUSTER_POLICY_REPORTS, OPEN_CLUSTER_REPORTS, OPEN_REPORTS, POLICY_REPORTS

    REPORTS = (POLICY_REPORTS, CLUSTER_POLICY_REPORTS, OPEN_REPORTS, OPEN_CLUSTER_REPORTS)
    cluster = InMemoryCluster()
    cluster.create(NAMESPACES, {"metadata": {"name": "shop"}})
    for name, labels in (("labelled", {"app.kubernetes.io/name": "web"}), ("bare", {})):
        cluster.create(PODS, {"metadata": {"namespace": "shop", "name": name, "labels": labels}, "spec": {}})
    arguments = ["controller", "--once", "--policies", str(REQUIRE_LABELS)]
    with custom_resources(PODS, *REPORTS), FakeApiServer(cluster) as server:
        kubeconfig = server.write_kubeconfig(tmp_path)
        first = CliRunner().invoke(celvern, [*arguments, "--kubeconfig", kubeconfig])
        writes = len([r for r in server.requests if r[0] in ("POST", "PUT")])
        again = CliRunner().invoke(celvern, [*arguments, "--kubeconfig", kubeconfig])
        rewrites = len([r for r in server.requests if r[0] in ("POST", "PUT")]) - writes
        opened = CliRunner().invoke(celvern, [*arguments, "--kubeconfig", kubeconfig, "--report-format", "openreports"])
    assert (first.exit_code, again.exit_code, opened.exit_code) == (0, 0, 0), first.output + again.output
    reports = {r["scope"]["name"]: r["summary"] for r in cluster.list(POLICY_REPORTS, "shop").items}
    assert reports["bare"]["fail"] == 1 and reports["labelled"]["pass"] == 1
    assert rewrites == 0  # nothing changed: nothing written
    assert len(cluster.list(OPEN_REPORTS, "shop").items) == 2


def test_nothing_to_run_is_an_error(tmp_path: Path) -> None:
    arguments = ["controller", "--once", "--policies", str(REQUIRE_LABELS), "--scan-interval", "0"]
    with FakeApiServer(InMemoryCluster()) as server:
        result = CliRunner().invoke(celvern, [*arguments, "--kubeconfig", server.write_kubeconfig(tmp_path)])
    assert result.exit_code == 2
    assert "nothing to run" in result.stderr


def test_once_scans_in_a_child_process_that_writes_the_history(tmp_path: Path) -> None:
    from tests.webhook.fake_apiserver import custom_resources
    from webhook.history import ViolationQuery, open_store
    from webhook.policy_reports import CLUSTER_POLICY_REPORTS, POLICY_REPORTS

    cluster = InMemoryCluster()
    cluster.create(NAMESPACES, {"metadata": {"name": "shop"}})
    cluster.create(PODS, {"metadata": {"namespace": "shop", "name": "bare", "labels": {}}, "spec": {}})
    history = str(tmp_path / "history.db")
    arguments = ["controller", "--once", "--policies", str(REQUIRE_LABELS), "--history", history]
    with custom_resources(PODS, POLICY_REPORTS, CLUSTER_POLICY_REPORTS), FakeApiServer(cluster) as server:
        kubeconfig = server.write_kubeconfig(tmp_path)
        result = CliRunner().invoke(celvern, [*arguments, "--scan-timeout", "300", "--kubeconfig", kubeconfig])
    assert result.exit_code == 0, result.output
    assert [r["summary"]["fail"] for r in cluster.list(POLICY_REPORTS, "shop").items] == [1]
    store = open_store(history)
    try:
        last = store.last_scan()
        violations = store.violations(ViolationQuery())
    finally:
        store.close()
    assert last is not None and sum(scan.failed for scan in last.policies) == 1
    assert [row.name for row in violations.items] == ["bare"]
