"""Governance library policies in the cases a kyverno-test.yaml cannot express.

A Kyverno Test sends each resource as CREATE (or as UPDATE with `oldObject` equal to `object`), with the policy's
default parameters, and cannot ask for "this policy does not match". These tests build admission requests
directly: the pods/ephemeralcontainers subresource with a real old object, requests a policy must not match, and
policies instantiated with other parameter literals.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.evaluation import EvaluationContext
from engine.loader import parse_text
from engine.policy_set import build_policy_set, run
from engine.request import CREATE, UPDATE, request_for_resource
from engine.results import RuleResult, Status

GOVERNANCE = Path(__file__).resolve().parents[2] / "policies" / "validating" / "governance"


def policy_text(name: str, **parameters: str) -> str:
    """The library policy `name`, with the given parameters (CEL literals) in place of its defaults."""
    text = (GOVERNANCE / name / "policy.yaml").read_text()
    if not parameters:
        return text
    document = yaml.safe_load(text)
    variables = {variable["name"]: variable for variable in document["spec"]["variables"]}
    for key, literal in parameters.items():
        assert key in variables, f"{name} has no parameter {key}"
        variables[key]["expression"] = literal
    return yaml.safe_dump(document, sort_keys=False)


def rules(
    text: str,
    resource: dict[str, Any],
    *,
    operation: str = CREATE,
    sub_resource: str = "",
    old_object: dict[str, Any] | None = None,
) -> list[RuleResult]:
    """The rule results of the (single) policy in `text` for one request; empty when it does not match."""
    policy_set = build_policy_set(parse_text(text, "<policy>"))
    assert not policy_set.compile_errors, policy_set.compile_errors
    request = request_for_resource(
        resource,
        operation=operation,
        sub_resource=sub_resource,
        parent_resource="pods" if sub_resource else "",
        default_namespace="default",
    )
    if old_object is not None:
        request = dataclasses.replace(request, old_object=old_object)
    evaluation = run(policy_set, EvaluationContext(request=request))
    return [rule for response in evaluation.responses for rule in response.rules]


def status(text: str, resource: dict[str, Any], **options: Any) -> Status:
    results = rules(text, resource, **options)
    assert len(results) == 1, results
    return results[0].status


def pod(name: str = "web", namespace: str = "apps", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "app", "image": "ghcr.io/example/web:1.0"}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": body}


def service(name: str = "web", namespace: str = "apps", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"selector": {"app": name}, "ports": [{"port": 80}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": body}


# --- disallow-ephemeral-containers: the pods/ephemeralcontainers subresource --------------------------------------

DEBUGGER = {"name": "debugger-x7k2p", "image": "busybox:1.36", "targetContainerName": "app"}


def test_kubectl_debug_is_denied_on_the_ephemeralcontainers_subresource() -> None:
    text = policy_text("disallow-ephemeral-containers")
    before = pod()
    after = pod(ephemeralContainers=[DEBUGGER])
    results = rules(text, after, operation=UPDATE, sub_resource="ephemeralcontainers", old_object=before)
    assert [rule.status for rule in results] == [Status.FAIL]
    assert "debugger-x7k2p with image busybox:1.36" in results[0].message
    assert "kubectl debug POD --copy-to" in results[0].message


def test_a_second_debug_container_is_denied_too() -> None:
    text = policy_text("disallow-ephemeral-containers")
    before = pod(ephemeralContainers=[DEBUGGER])
    after = pod(ephemeralContainers=[DEBUGGER, {"name": "debugger-2", "image": "nicolaka/netshoot:v0.13"}])
    results = rules(text, after, operation=UPDATE, sub_resource="ephemeralcontainers", old_object=before)
    assert [rule.status for rule in results] == [Status.FAIL]


def test_an_empty_ephemeralcontainers_update_passes() -> None:
    text = policy_text("disallow-ephemeral-containers")
    assert status(text, pod(), operation=UPDATE, sub_resource="ephemeralcontainers", old_object=pod()) is Status.PASS


@pytest.mark.parametrize(
    ("operation", "sub_resource"),
    [(UPDATE, ""), (UPDATE, "status"), (CREATE, "ephemeralcontainers")],
    ids=["pod-update", "status-update", "subresource-create"],
)
def test_other_pod_requests_are_not_matched(operation: str, sub_resource: str) -> None:
    # A Pod that already has an ephemeral container can still be relabelled; status updates are the kubelet's.
    text = policy_text("disallow-ephemeral-containers")
    debugged = pod(ephemeralContainers=[DEBUGGER])
    assert rules(text, debugged, operation=operation, sub_resource=sub_resource, old_object=debugged) == []


# --- restrict-namespaces: what it must not match --------------------------------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "x"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": "default"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "default"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default"}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"}},
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default"},
        },
        {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.17a1b2c3", "namespace": "default"}},
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "LocalSubjectAccessReview",
            "metadata": {"name": "", "namespace": "default"},
        },
        {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "web.17a1b2c4", "namespace": "default"},
        },
    ],
    ids=lambda resource: f"{resource['kind']}-{resource['metadata']['name']}",
)
def test_restrict_namespaces_skips_cluster_scoped_and_system_objects(resource: dict[str, Any]) -> None:
    assert rules(policy_text("restrict-namespaces"), resource) == []


def test_restrict_namespaces_leaves_updates_and_subresources_alone() -> None:
    text = policy_text("restrict-namespaces")
    existing = pod(namespace="default")
    assert rules(text, existing, operation=UPDATE) == []  # e.g. removing a finalizer
    assert rules(text, existing, sub_resource="binding") == []  # the scheduler binding a Pod
    assert status(text, existing) is Status.FAIL


def test_restrict_namespaces_parameter() -> None:
    text = policy_text("restrict-namespaces", restrictedNamespaces="['default', 'scratch']")
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "scratch"}}
    results = rules(text, configmap)
    assert [rule.status for rule in results] == [Status.FAIL]
    assert results[0].message.startswith("ConfigMap scratch/c: namespace scratch is restricted")
    assert status(text, pod(namespace="apps")) is Status.PASS


# --- parameters other than the defaults -------------------------------------------------------------------------


def test_loadbalancers_restricted_to_listed_namespaces() -> None:
    text = policy_text("disallow-loadbalancer-services", restrictedNamespaces="['public']")
    assert status(text, service(namespace="public", type="LoadBalancer")) is Status.FAIL
    assert status(text, service(namespace="ingress", type="LoadBalancer")) is Status.PASS
    assert status(text, service(namespace="public", type="ClusterIP")) is Status.PASS


def test_external_ips_allowlist_compares_addresses() -> None:
    text = policy_text("restrict-external-ips", allowedIPs="['203.0.113.10', '2001:db8::10']")
    assert status(text, service(externalIPs=["203.0.113.10"])) is Status.PASS
    assert status(text, service(externalIPs=["2001:0db8:0:0::10"])) is Status.PASS  # same address, other spelling
    results = rules(text, service(externalIPs=["203.0.113.10", "198.51.100.7"]))
    assert [rule.status for rule in results] == [Status.FAIL]
    assert "198.51.100.7 that are not allowed (allowed: 203.0.113.10, 2001:db8::10)" in results[0].message
    assert "203.0.113.10 " not in results[0].message.split("allowed:")[0]


def test_allowed_registry_with_port() -> None:
    text = policy_text("allowed-image-registries", allowedRepositories="['localhost:5000/team/']")
    assert status(text, pod(containers=[{"name": "a", "image": "localhost:5000/team/app:1"}])) is Status.PASS
    assert status(text, pod(containers=[{"name": "a", "image": "localhost:5001/team/app:1"}])) is Status.FAIL
    assert status(text, pod(containers=[{"name": "a", "image": "localhost/team/app:1"}])) is Status.FAIL


def test_docker_hub_prefix_covers_implied_registry() -> None:
    text = policy_text("allowed-image-registries", allowedRepositories="['docker.io/bitnami/']")
    assert status(text, pod(containers=[{"name": "a", "image": "bitnami/redis:7.2"}])) is Status.PASS
    assert status(text, pod(containers=[{"name": "a", "image": "redis:7.2"}])) is Status.FAIL


def labelled(labels: dict[str, str]) -> dict[str, Any]:
    resource = pod()
    resource["metadata"]["labels"] = labels
    return resource


def test_required_label_regex_is_unanchored() -> None:
    text = policy_text("require-labels", labels="[{'key': 'env', 'allowedRegex': 'prod'}]")
    assert status(text, labelled({"env": "prod"})) is Status.PASS
    assert status(text, labelled({"env": "preprod"})) is Status.PASS  # as documented: anchor with ^...$
    assert status(text, labelled({"env": "staging"})) is Status.FAIL


def test_required_label_without_regex_accepts_any_value() -> None:
    text = policy_text("require-labels", labels="[{'key': 'team'}]")
    assert status(text, labelled({"team": ""})) is Status.PASS
    assert status(text, labelled({})) is Status.FAIL


def test_optional_label_as_rendered_by_the_library() -> None:
    literal = "[{'key': dyn('team'), 'allowedRegex': '^[a-z]+$', 'optional': true}]"
    text = policy_text("require-labels", labels=literal)
    assert status(text, labelled({})) is Status.PASS
    results = rules(text, labelled({"team": "Platform"}))
    assert [rule.status for rule in results] == [Status.FAIL]
    assert 'team="Platform" does not match ^[a-z]+$' in results[0].message


def test_probe_types_restrict_the_handler() -> None:
    text = policy_text("require-probes", probes="['livenessProbe']", probeTypes="['httpGet']")
    http = {"name": "app", "image": "web:1", "livenessProbe": {"httpGet": {"path": "/", "port": 80}}}
    exec_ = {"name": "app", "image": "web:1", "livenessProbe": {"exec": {"command": ["true"]}}}
    assert status(text, pod(containers=[http])) is Status.PASS
    results = rules(text, pod(containers=[exec_]))
    assert [rule.status for rule in results] == [Status.FAIL]
    assert "container app: livenessProbe has no httpGet handler" in results[0].message


def test_startup_probe_can_be_required() -> None:
    text = policy_text("require-probes", probes="['startupProbe']")
    assert status(text, pod()) is Status.FAIL


def test_empty_limit_parameter_means_no_maximum() -> None:
    text = policy_text("require-container-limits", cpu="''")
    big = {"name": "app", "image": "web:1", "resources": {"limits": {"cpu": "64", "memory": "1Gi"}}}
    assert status(text, pod(containers=[big])) is Status.PASS
    no_cpu = {"name": "app", "image": "web:1", "resources": {"limits": {"memory": "1Gi"}}}
    assert status(text, pod(containers=[no_cpu])) is Status.FAIL  # the limit is still required


def binding(
    kind: str, subjects: list[dict[str, str]], *, namespace: str = "", role: str = "cluster-admin"
) -> dict[str, Any]:
    metadata: dict[str, str] = {"name": "b", **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    }


def test_allowed_service_account_subjects_match_by_namespace() -> None:
    text = policy_text(
        "restrict-role-bindings",
        allowedSubjects="[{'kind': 'ServiceAccount', 'name': 'deployer', 'namespace': 'shop'}, "
        "{'kind': 'Group', 'name': 'admins'}]",
    )
    in_shop = {"kind": "ServiceAccount", "name": "deployer", "namespace": "shop"}
    assert status(text, binding("ClusterRoleBinding", [in_shop])) is Status.PASS
    # A RoleBinding's ServiceAccount without a namespace is in the RoleBinding's namespace.
    implied = {"kind": "ServiceAccount", "name": "deployer"}
    assert status(text, binding("RoleBinding", [implied], namespace="shop")) is Status.PASS
    results = rules(text, binding("RoleBinding", [implied], namespace="blog"))
    assert [rule.status for rule in results] == [Status.FAIL]
    assert "ServiceAccount blog/deployer that may not hold it" in results[0].message
    group = {"kind": "Group", "name": "admins", "apiGroup": "rbac.authorization.k8s.io"}
    assert status(text, binding("ClusterRoleBinding", [group])) is Status.PASS


def test_restricted_role_parameter() -> None:
    text = policy_text(
        "restrict-role-bindings", restrictedRole="{'apiGroup': '', 'kind': 'ClusterRole', 'name': 'admin'}"
    )
    user = {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}
    assert status(text, binding("RoleBinding", [user], namespace="shop", role="admin")) is Status.FAIL
    assert status(text, binding("ClusterRoleBinding", [user], role="cluster-admin")) is Status.PASS
