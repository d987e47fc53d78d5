"""`celvern scan --cluster` through click's CliRunner, with an in-memory cluster injected at `connect_cluster`: its
output and exit codes must be `celvern apply`'s on the same objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import cli.scan_command
from cli.main import celvern
from engine.resources import DEFAULT_MAPPER
from webhook.cluster import ApiError, Cluster, InMemoryCluster
from webhook.snapshot import CLUSTER_POLICY_RESOURCES

PODS = DEFAULT_MAPPER.for_kind("v1", "Pod")
NAMESPACES = DEFAULT_MAPPER.for_kind("v1", "Namespace")
VALIDATING_POLICIES = next(r for r in CLUSTER_POLICY_RESOURCES if r.kind == "ValidatingPolicy")


def policy(name: str, *, scored: bool = True, background: bool = True) -> dict[str, Any]:
    annotations = {"policies.kyverno.io/severity": "medium", "policies.kyverno.io/category": "Best Practices"}
    if not scored:
        annotations["policies.kyverno.io/scored"] = "false"
    return {
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "ValidatingPolicy",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "validationActions": ["Audit"],
            "evaluation": {"background": {"enabled": background}},
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
                ]
            },
            "validations": [
                {
                    "expression": "has(object.metadata.labels) && 'app' in object.metadata.labels",
                    "messageExpression": "'label app is required on ' + object.metadata.name",
                }
            ],
        },
    }


def pod(namespace: str, name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]},
    }


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> InMemoryCluster:
    memory = InMemoryCluster()
    memory.create(NAMESPACES, {"metadata": {"name": "shop"}})

    def connect(kubeconfig: str | None, context: str | None, in_cluster: bool) -> Cluster:
        return memory

    monkeypatch.setattr(cli.scan_command, "connect_cluster", connect)
    return memory


def write(path: Path, *documents: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def without_timestamps(text: str) -> Any:
    document = json.loads(text)
    for result in document.get("results", []):
        result.pop("timestamp", None)
    return document


@pytest.mark.parametrize(
    ("policies", "labels", "extra", "code"),
    [
        pytest.param([policy("needs-app")], [{"app": "x"}, {"app": "y"}], [], 0, id="all pass: 0"),
        pytest.param([policy("needs-app")], [{"app": "x"}, {}], [], 1, id="a fail: 1"),
        pytest.param([policy("needs-app", scored=False)], [{}, {}], [], 0, id="unscored fail is a warn: 0"),
        pytest.param([policy("needs-app", scored=False)], [{}, {}], ["--warn-exit-code", "3"], 3, id="warn exit code"),
        pytest.param([policy("needs-app")], [{}, {}], ["--audit-warn"], 1, id="audit-warn keeps apply's code"),
    ],
)
@pytest.mark.parametrize("output", ["text", "table", "json", "yaml"])
def test_scan_prints_and_exits_as_apply_does(
    cluster: InMemoryCluster,
    tmp_path: Path,
    policies: list[dict[str, Any]],
    labels: list[dict[str, str]],
    extra: list[str],
    code: int,
    output: str,
) -> None:
    for index, pod_labels in enumerate(labels):
        cluster.create(PODS, pod("shop", f"pod-{index}", **pod_labels))
    policy_file = write(tmp_path / "policies.yaml", *policies)
    resource_file = write(tmp_path / "pods.yaml", *cluster.list(PODS).items)
    arguments = [policy_file, "-o", output, "--detailed-results", *extra]
    scanned = CliRunner().invoke(celvern, ["scan", "--cluster", *arguments])
    applied = CliRunner().invoke(celvern, ["apply", *arguments, "-r", resource_file])
    assert (scanned.exit_code, applied.exit_code) == (code, code), scanned.output + applied.output
    if output == "json":
        assert without_timestamps(scanned.stdout) == without_timestamps(applied.stdout)
    elif output == "yaml":
        assert json.dumps(yaml.safe_load(scanned.stdout)).count('"result"') == len(labels)
    else:
        assert scanned.stdout == applied.stdout


def test_policies_come_from_the_cluster_when_none_are_given(cluster: InMemoryCluster) -> None:
    cluster.create(VALIDATING_POLICIES, policy("needs-app"))
    cluster.create(PODS, pod("shop", "bare"))
    result = CliRunner().invoke(celvern, ["scan", "--cluster", "-o", "table"])
    assert result.exit_code == 1, result.output
    assert "needs-app" in result.stdout and "shop/Pod/bare" in result.stdout


def test_background_disabled_policies_are_not_run(cluster: InMemoryCluster, tmp_path: Path) -> None:
    cluster.create(PODS, pod("shop", "bare"))
    policy_file = write(tmp_path / "p.yaml", policy("needs-app", background=False))
    result = CliRunner().invoke(celvern, ["scan", "--cluster", policy_file])
    assert result.exit_code == 0, result.output
    assert "pass: 0, fail: 0" in result.stdout


def test_namespace_option(cluster: InMemoryCluster, tmp_path: Path) -> None:
    cluster.create(PODS, pod("shop", "bare"))
    cluster.create(PODS, pod("bank", "bare"))
    policy_file = write(tmp_path / "p.yaml", policy("needs-app"))
    result = CliRunner().invoke(celvern, ["scan", "--cluster", "--namespace", "bank", policy_file, "-o", "table"])
    assert result.exit_code == 1
    assert "bank/Pod/bare" in result.stdout and "shop/Pod/bare" not in result.stdout


class Unreachable(InMemoryCluster):
    def list(self, *args: Any, **kwargs: Any) -> Any:
        raise ApiError(0, "connection refused")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["scan"], "give --cluster", id="--cluster is required"),
        pytest.param(["scan", "--cluster", "POLICY", "--from-cluster-policies"], "either", id="both policy sources"),
    ],
)
def test_usage_errors(tmp_path: Path, arguments: list[str], message: str) -> None:
    policy_file = write(tmp_path / "p.yaml", policy("x"))
    result = CliRunner().invoke(celvern, [policy_file if a == "POLICY" else a for a in arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_api_errors_exit_2_without_a_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def connect(kubeconfig: str | None, context: str | None, in_cluster: bool) -> Cluster:
        return Unreachable()

    monkeypatch.setattr(cli.scan_command, "connect_cluster", connect)
    policy_file = write(tmp_path / "p.yaml", policy("needs-app"))
    result = CliRunner().invoke(celvern, ["scan", "--cluster", policy_file])
    assert result.exit_code == 2
    assert "connection refused" in result.stderr
    assert "Traceback" not in result.output


def test_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    policy_file = write(tmp_path / "p.yaml", policy("needs-app"))
    result = CliRunner().invoke(celvern, ["scan", "--cluster", policy_file, "--kubeconfig", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "kubeconfig" in result.stderr and "Traceback" not in result.output


def test_history_records_the_findings_and_the_summary(cluster: InMemoryCluster, tmp_path: Path) -> None:
    from webhook.history import ViolationQuery, open_store

    cluster.create(PODS, pod("shop", "bare"))
    cluster.create(PODS, pod("shop", "labelled", app="web"))
    policy_file = write(tmp_path / "p.yaml", policy("needs-app"))
    store_url = str(tmp_path / "history.db")
    for _ in range(2):  # each run is a scan of its own (the controller records a persisting finding only once)
        result = CliRunner().invoke(celvern, ["scan", "--cluster", policy_file, "--history", store_url])
        assert result.exit_code == 1, result.output
    store = open_store(store_url)
    try:
        findings = store.violations(ViolationQuery())
        summary = store.last_scan()
    finally:
        store.close()
    assert [(d.source, d.policy, d.name) for d in findings.items] == [("scan", "needs-app", "bare")] * 2
    assert summary is not None
    assert [(p.policy, p.passed, p.failed) for p in summary.policies] == [("needs-app", 1, 1)]
