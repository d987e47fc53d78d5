"""The version-dependent Pod Security Standards Baseline policies, at Kubernetes versions other than `latest`.

Five Baseline controls change with the Kubernetes version (ecosystem.md 4.1): host probes (v1.34+), SELinux
(container_engine_t from v1.31), /proc mount (any value with hostUsers false from v1.35), seccomp (annotations
before v1.19, fields from v1.19) and sysctls (the safe set grows in v1.27, v1.29, v1.32 and v1.37). Their policies
take the parameter `kubernetesVersion` (default 'latest'), which each policy's `kyverno-test.yaml` covers at its
default. `celvern test` cannot override a policy variable, so this module rebuilds each policy with the parameter
variable's literal replaced and evaluates it against the same `resources.yaml`: every fixture must give the result
its `kyverno-test.yaml` expects at 'latest', except the fixtures listed here, whose result flips at that version.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.evaluation import EvaluationContext
from engine.loader import Document, parse_text
from engine.policy_set import PolicySet, build_policy_set, evaluate
from engine.request import request_for_resource
from engine.results import RuleResult

ROOT = Path(__file__).resolve().parents[2]
POD_SECURITY = ROOT / "policies" / "validating" / "pod-security"
PARAMETER = "kubernetesVersion"

SYSCTLS_V1_27 = {"good-pod-reserved-ports-since-v1-27"}
SYSCTLS_V1_29 = {"good-pod-keepalive-since-v1-29"}
SYSCTLS_V1_32 = {"good-pod-buffers-since-v1-32"}
SYSCTLS_V1_37 = {"good-pod-slow-start-since-v1-37"}

# policy -> version -> the fixtures whose result differs from the one expected at 'latest'
FLIPS: dict[str, dict[str, set[str]]] = {
    "disallow-host-probes": {
        "v1.0": {
            "bad-pod-liveness-http-host",
            "bad-pod-readiness-tcp-host",
            "bad-pod-startup-http-host",
            "bad-pod-post-start-http-host",
            "bad-pod-pre-stop-tcp-host",
            "bad-pod-sidecar-init-container",
            "bad-pod-ephemeral-container",
            "bad-pod-second-container",
            "bad-deployment",
            "bad-cronjob",
        },
        "v1.33": {
            "bad-pod-liveness-http-host",
            "bad-pod-readiness-tcp-host",
            "bad-pod-startup-http-host",
            "bad-pod-post-start-http-host",
            "bad-pod-pre-stop-tcp-host",
            "bad-pod-sidecar-init-container",
            "bad-pod-ephemeral-container",
            "bad-pod-second-container",
            "bad-deployment",
            "bad-cronjob",
        },
        "v1.34": set(),
        "latest": set(),
    },
    "disallow-selinux": {
        "v1.0": {"good-pod-container-engine-type"},
        "v1.30": {"good-pod-container-engine-type"},
        "v1.31": set(),
        "v1.36": set(),
    },
    "disallow-proc-mount": {
        "v1.0": {"good-pod-unmasked-user-namespace", "good-cronjob", "good-cronjob-without-template-metadata"},
        "v1.34": {"good-pod-unmasked-user-namespace", "good-cronjob", "good-cronjob-without-template-metadata"},
        "v1.35": set(),
    },
    "restrict-seccomp": {
        # before v1.19 only the annotations count: the Unconfined fields pass, the unconfined annotations fail
        "v1.18": {
            "good-pod-unconfined-annotation-ignored-since-v1-19",
            "bad-pod-pod-unconfined",
            "bad-pod-container-unconfined",
            "bad-pod-init-container-unconfined",
            "bad-pod-ephemeral-container-unconfined",
            "bad-pod-container-overrides-pod",
            "bad-pod-pod-unconfined-containers-override",
            "bad-pod-profile-without-type",
            "bad-pod-windows-unconfined",
            "bad-deployment",
            "bad-cronjob",
        },
        "v1.19": set(),
    },
    "restrict-sysctls": {
        "v1.0": SYSCTLS_V1_27 | SYSCTLS_V1_29 | SYSCTLS_V1_32 | SYSCTLS_V1_37,
        "v1.26": SYSCTLS_V1_27 | SYSCTLS_V1_29 | SYSCTLS_V1_32 | SYSCTLS_V1_37,
        "v1.27": SYSCTLS_V1_29 | SYSCTLS_V1_32 | SYSCTLS_V1_37,
        "v1.28": SYSCTLS_V1_29 | SYSCTLS_V1_32 | SYSCTLS_V1_37,
        "v1.29": SYSCTLS_V1_32 | SYSCTLS_V1_37,
        "v1.31": SYSCTLS_V1_32 | SYSCTLS_V1_37,
        "v1.32": SYSCTLS_V1_37,
        "v1.36": SYSCTLS_V1_37,
        "v1.37": set(),
    },
}

CASES = [(policy, version) for policy, versions in FLIPS.items() for version in versions]


def _policy_document(policy: str) -> Document:
    path = POD_SECURITY / policy / "policy.yaml"
    (document,) = parse_text(path.read_text(), str(path))
    return document


def _with_version(policy: str, version: str) -> PolicySet:
    """The policy with its kubernetesVersion parameter set to `version` (a CEL string literal)."""
    document = _policy_document(policy)
    spec = dict(document.data["spec"])
    variables = [dict(variable) for variable in spec["variables"]]
    (parameter,) = [variable for variable in variables if variable["name"] == PARAMETER]
    parameter["expression"] = f"'{version}'"
    spec["variables"] = variables
    return build_policy_set([dataclasses.replace(document, data={**document.data, "spec": spec})])


def _resources(policy: str) -> list[dict[str, Any]]:
    path = POD_SECURITY / policy / "resources.yaml"
    return [dict(document.data) for document in parse_text(path.read_text(), str(path))]


def _expected_at_latest(policy: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> result, from the policy's kyverno-test.yaml."""
    test = yaml.safe_load((POD_SECURITY / policy / "kyverno-test.yaml").read_text())
    return {(row["kind"], name): row["result"] for row in test["results"] for name in row["resources"]}


def _result(policy_set: PolicySet, resource: dict[str, Any]) -> RuleResult:
    responses = evaluate(policy_set, EvaluationContext(request=request_for_resource(resource)))
    matched = [response for response in responses if response.matched]
    assert len(matched) == 1, f"{resource['kind']}/{resource['metadata']['name']}: {matched}"
    (rule,) = matched[0].rules
    return rule


@pytest.mark.parametrize(("policy", "version"), CASES, ids=[f"pod-security/{p}@{v}" for p, v in CASES])
def test_results_at_version(policy: str, version: str) -> None:
    policy_set = _with_version(policy, version)
    expected = _expected_at_latest(policy)
    flips = FLIPS[policy][version]
    names = {name for _, name in expected}
    assert flips <= names, f"unknown fixtures {sorted(flips - names)}"
    resources = _resources(policy)
    assert {(r["kind"], r["metadata"]["name"]) for r in resources} == set(expected)
    wrong = []
    for resource in resources:
        key = (resource["kind"], resource["metadata"]["name"])
        want = expected[key]
        if key[1] in flips:
            want = "pass" if want == "fail" else "fail"
        rule = _result(policy_set, resource)
        if rule.status != want:
            wrong.append(f"{key[0]}/{key[1]}: want {want}, got {rule.status} ({rule.message})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("policy", sorted(FLIPS), ids=[f"pod-security/{p}" for p in sorted(FLIPS)])
def test_parameter_is_declared_with_default_latest(policy: str) -> None:
    data = _policy_document(policy).data
    declared = yaml.safe_load(data["metadata"]["annotations"]["celvern.io/parameters"])
    assert [(p["name"], p["type"]) for p in declared] == [(PARAMETER, "string")]
    assert data["spec"]["variables"][0] == {"name": PARAMETER, "expression": "'latest'"}


@pytest.mark.parametrize("version", ["1.30", "v1.x", "v2.0", "v1.30.2", "", "Latest"])
@pytest.mark.parametrize("policy", sorted(FLIPS), ids=[f"pod-security/{p}" for p in sorted(FLIPS)])
def test_malformed_version_fails_with_a_clear_message(policy: str, version: str) -> None:
    policy_set = _with_version(policy, version)
    rule = _result(policy_set, _resources(policy)[0])
    assert rule.status == "fail"
    assert rule.message == f"the parameter kubernetesVersion must be 'latest' or 'v1.N', not '{version}'"


MESSAGES = [
    ("disallow-selinux", "v1.30", "good-pod-container-engine-type", "container_kvm_t, and seLinuxOptions.user"),
    ("disallow-proc-mount", "v1.34", "good-pod-unmasked-user-namespace", 'to ["Unmasked"]; only Default is allowed ('),
    ("restrict-seccomp", "v1.18", "good-pod-unconfined-annotation-ignored-since-v1-19", "/pod=unconfined"),
    ("restrict-sysctls", "v1.26", "good-pod-reserved-ports-since-v1-27", "net.ipv4.ping_group_range are allowed"),
]


@pytest.mark.parametrize(
    ("policy", "version", "fixture", "fragment"), MESSAGES, ids=[f"pod-security/{m[0]}@{m[1]}" for m in MESSAGES]
)
def test_messages_follow_the_version(policy: str, version: str, fixture: str, fragment: str) -> None:
    (resource,) = [r for r in _resources(policy) if r["kind"] == "Pod" and r["metadata"]["name"] == fixture]
    rule = _result(_with_version(policy, version), resource)
    assert rule.status == "fail"
    assert fragment in rule.message
    assert rule.message.endswith(f"(Pod Security Standards, baseline, {version})")
