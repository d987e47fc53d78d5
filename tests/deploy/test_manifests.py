"""The install under deploy/ renders, is made of valid Kubernetes objects, and holds to its own security claims.

Every kustomization (the base and each overlay) is rendered with `kubectl kustomize` (offline) and every rendered
document -- CRDs and webhook configurations included -- is validated strictly against the Kubernetes 1.32 schemas
with `kubernetes-validate` (`kubectl apply --dry-run` would need a live API server). The celvern pods are then run
through celvern's own engine with Kyverno's Pod Security "restricted" policies, which they must pass.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from cli.main import celvern
from engine.model import EXCEPTION_KIND, GENERATING_KINDS, MUTATING_KINDS, VALIDATING_KINDS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
KUSTOMIZATIONS = [BASE, *sorted(p for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").exists())]
RESTRICTED = ROOT.parent / "shared" / "conformance" / "kyverno-policies" / "pod-security-vpol" / "restricted"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not on PATH: cannot render")


def _name(path: Path) -> str:
    return str(path.relative_to(DEPLOY))


@functools.cache
def rendered(kustomization: Path) -> tuple[dict[str, Any], ...]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(kustomization)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def base_documents() -> list[dict[str, Any]]:
    """The base's files as written (for checks that need no rendering)."""
    found = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found.extend(document for document in yaml.safe_load_all(path.read_text()) if document)
    return found


def find(documents: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


# --- rendering and schema validation ----------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=_name)
def test_every_rendered_document_is_valid(kustomization: Path) -> None:
    documents = rendered(kustomization)
    kinds = {d["kind"] for d in documents}
    assert {
        "Namespace",
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    } <= kinds
    errors = []
    for document in documents:
        try:
            kubernetes_validate.validate(document, "1.32", strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{document['kind']}/{document['metadata']['name']}: {error}")
    assert not errors, "\n".join(errors)


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=_name)
def test_webhook_configurations_follow_practice(kustomization: Path) -> None:
    documents = rendered(kustomization)
    service = find(documents, "Service", "celvern-webhook")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(443, "https")]
    for kind, path in (("ValidatingWebhookConfiguration", "/validate"), ("MutatingWebhookConfiguration", "/mutate")):
        for webhook in find(documents, kind, "celvern")["webhooks"]:
            assert webhook["admissionReviewVersions"] == ["v1"]
            assert webhook["sideEffects"] == "None"
            assert webhook["timeoutSeconds"] == 10
            assert webhook["matchPolicy"] == "Equivalent"
            assert webhook["clientConfig"]["service"] == {
                "namespace": "celvern",
                "name": "celvern-webhook",
                "path": path,
                "port": 443,
            }
            assert {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "celvern"],
            } in webhook["namespaceSelector"]["matchExpressions"]


def test_production_fails_closed_and_development_fails_open() -> None:
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize) is not on PATH: cannot render")
    production = rendered(DEPLOY / "overlays" / "production")
    development = rendered(DEPLOY / "overlays" / "development")
    assert find(production, "ValidatingWebhookConfiguration", "celvern")["webhooks"][0]["failurePolicy"] == "Fail"
    assert find(development, "ValidatingWebhookConfiguration", "celvern")["webhooks"][0]["failurePolicy"] == "Ignore"
    assert find(production, "Deployment", "celvern-webhook")["spec"]["replicas"] == 3
    assert find(development, "Deployment", "celvern-webhook")["spec"]["replicas"] == 1
    assert find(production, "PodDisruptionBudget", "celvern-webhook")["spec"]["minAvailable"] == 2
    assert not [d for d in development if d["kind"] == "PodDisruptionBudget"], "a PDB of 2 would block drains"
    affinity = find(production, "Deployment", "celvern-webhook")["spec"]["template"]["spec"]["affinity"]
    assert affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == (
        "kubernetes.io/hostname"
    )


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=_name)
def test_webhook_deployment_shape(kustomization: Path) -> None:
    deployment = find(rendered(kustomization), "Deployment", "celvern-webhook")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:5] == ["serve", "--from-cluster", "--in-cluster", "--tls-dir", "/tls"]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    assert container["ports"] == [{"name": "https", "containerPort": 9443, "protocol": "TCP"}]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


# --- Pod Security "restricted", checked by celvern itself -------------------------------------------------------


def _restricted_policies() -> list[Path]:
    return sorted(RESTRICTED.glob("*/*.yaml"))


@needs_kubectl
@pytest.mark.skipif(
    not _restricted_policies(), reason=f"the Kyverno restricted pod-security policies are missing ({RESTRICTED})"
)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=_name)
def test_celvern_pods_pass_pod_security_restricted(kustomization: Path, tmp_path: Path) -> None:
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": d["metadata"]["name"], "namespace": d["metadata"]["namespace"]},
            "spec": d["spec"]["template"]["spec"],
        }
        for d in rendered(kustomization)
        if d["kind"] == "Deployment"
    ]
    assert len(pods) == 2
    resources = tmp_path / "pods.yaml"
    resources.write_text(yaml.safe_dump_all(pods))
    policies = _restricted_policies()
    result = CliRunner().invoke(celvern, ["apply", *map(str, policies), "-r", str(resources), "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    outcomes = {(r["policy"], r["resources"][0]["name"]): (r["result"], r["message"]) for r in report["results"]}
    assert len(outcomes) == len(policies) * len(pods), outcomes
    failing = {key: value for key, value in outcomes.items() if value[0] != "pass"}
    assert not failing, failing


# --- content checks on the base ---------------------------------------------------------------------------------


def test_crds_cover_every_kind_the_engine_loads() -> None:
    kinds = {
        d["spec"]["names"]["kind"]
        for d in base_documents()
        if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == "policies.kyverno.io"
    }
    assert kinds == {*VALIDATING_KINDS, *MUTATING_KINDS, *GENERATING_KINDS, EXCEPTION_KIND}


def test_crds_file_is_what_the_renderer_writes() -> None:
    spec = importlib.util.spec_from_file_location("render_crds", DEPLOY / "render_crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered_crds = [module.crd(*kind) for kind in module.KINDS]
    committed = [d for d in yaml.safe_load_all((BASE / "crds.yaml").read_text()) if d]
    assert committed == rendered_crds, "deploy/base/crds.yaml is stale: run python deploy/render_crds.py"


def test_every_base_file_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_controller_may_hold_its_lease() -> None:
    roles = [d for d in base_documents() if d["kind"] == "Role"]
    assert any(
        "leases" in rule["resources"] and {"get", "create", "update"} <= set(rule["verbs"])
        for role in roles
        for rule in role["rules"]
    )


def test_webhook_rbac_is_read_only() -> None:
    roles = [
        d
        for d in base_documents()
        if d["kind"] == "ClusterRole" and d["metadata"].get("labels", {}).get("rbac.celvern.io/aggregate-to-webhook")
    ]
    assert roles
    verbs = {verb for role in roles for rule in role["rules"] for verb in rule["verbs"]}
    assert verbs <= {"get", "list", "watch"}
    assert not any("secrets" in rule["resources"] for role in roles for rule in role["rules"])


def _rules(kind: str, name: str) -> list[dict[str, Any]]:
    (role,) = [d for d in base_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def _allows(rules: list[dict[str, Any]], group: str, resource: str, verbs: set[str]) -> bool:
    return any(
        (group in rule["apiGroups"] or "*" in rule["apiGroups"])
        and (resource in rule["resources"] or "*" in rule["resources"])
        and verbs <= set(rule["verbs"])
        and not rule.get("resourceNames")
        for rule in rules
    )


@pytest.mark.parametrize(
    ("kind", "plural", "group"),
    [
        pytest.param("PolicyReport", "policyreports", "wgpolicyk8s.io", id="PolicyReport"),
        pytest.param("ClusterPolicyReport", "clusterpolicyreports", "wgpolicyk8s.io", id="ClusterPolicyReport"),
        pytest.param("Report", "reports", "openreports.io", id="Report"),
        pytest.param("ClusterReport", "clusterreports", "openreports.io", id="ClusterReport"),
    ],
)
def test_report_crds_and_the_controller_may_write_them(kind: str, plural: str, group: str) -> None:
    documents = [d for d in yaml.safe_load_all((BASE / "report-crds.yaml").read_text()) if d]
    (crd,) = [d for d in documents if d["spec"]["names"]["kind"] == kind]
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["plural"] == plural
    (version,) = crd["spec"]["versions"]
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == ["Kind", "Name", "Pass", "Fail", "Warn", "Error", "Skip", "Age"]
    assert {"scope", "summary", "results"} <= set(version["schema"]["openAPIV3Schema"]["properties"])
    rules = _rules("ClusterRole", "celvern-controller")
    assert _allows(rules, group, plural, {"list", "create", "update", "delete"})


def test_the_controller_may_list_what_it_scans_and_record_events() -> None:
    rules = _rules("ClusterRole", "celvern-controller")
    assert _allows(rules, "apps", "deployments", {"get", "list", "watch"})
    assert _allows(rules, "events.k8s.io", "events", {"create", "patch"})


def test_the_webhook_may_record_events_and_nothing_else() -> None:
    rules = _rules("ClusterRole", "celvern-webhook-events")
    assert rules == [{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}]
    binding = [
        d
        for d in base_documents()
        if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "celvern-webhook-events"
    ]
    assert binding and binding[0]["subjects"][0]["name"] == "celvern-webhook"


def test_the_controller_runs_background_scans() -> None:
    (deployment,) = [
        d for d in base_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "celvern-controller"
    ]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--scan-interval") + 1] == "3600"
    assert args[args.index("--report-format") + 1] == "wgpolicyk8s"
