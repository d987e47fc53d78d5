"""GeneratingPolicy evaluation: generator.Apply and templates, namespaces, Lists, tracing labels, restrictions."""

from __future__ import annotations

from typing import Any

import pytest

from engine.evaluation import EvaluationContext
from engine.generating import POLICY_NAME, TRIGGER_KIND, TRIGGER_NAME, TRIGGER_UID, label_value
from engine.loader import parse_text
from engine.policy_set import Evaluation, build_policy_set, run
from engine.request import request_for_resource
from engine.results import Status

NAMESPACES = """\
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [namespaces]
"""

DENY_ALL = (
    "[{'apiVersion': dyn('networking.k8s.io/v1'), 'kind': dyn('NetworkPolicy'),"
    " 'metadata': dyn({'name': 'default-deny'}),"
    " 'spec': dyn({'podSelector': {}, 'policyTypes': ['Ingress', 'Egress']})}]"
)


def generating(body: str, *, kind: str = "GeneratingPolicy", rules: str = NAMESPACES) -> str:
    namespace = "  namespace: team\n" if kind.startswith("Namespaced") else ""
    return f"apiVersion: policies.kyverno.io/v1\nkind: {kind}\nmetadata:\n  name: gen\n{namespace}spec:\n{rules}{body}"


def expression(text: str) -> str:
    return f"  generate:\n  - expression: {text!r}\n"


NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "uid": "1234"}}


def evaluate(trigger: dict[str, Any], *texts: str) -> Evaluation:
    documents = [d for text in texts for d in parse_text(text, "<test>")]
    return run(build_policy_set(documents), EvaluationContext(request=request_for_resource(trigger)))


def only_rule(evaluation: Evaluation) -> Any:
    rules = [rule for response in evaluation.responses for rule in response.rules]
    assert len(rules) == 1, rules
    return rules[0]


def test_default_deny_network_policy_per_namespace() -> None:
    result = evaluate(NAMESPACE, generating(expression(f"generator.Apply(object.metadata.name, {DENY_ALL})")))
    rule = only_rule(result)
    assert (rule.status, rule.rule, rule.message) == (Status.PASS, "gen", "policy evaluated successfully")
    [policy] = result.generated
    assert policy["kind"] == "NetworkPolicy"
    assert policy["metadata"]["namespace"] == "shop"
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    labels = policy["metadata"]["labels"]
    assert labels[POLICY_NAME] == "gen"
    assert (labels[TRIGGER_KIND], labels[TRIGGER_NAME], labels[TRIGGER_UID]) == ("Namespace", "shop", "1234")


CASES = [
    (
        "list-kind-expands",
        "generator.apply('shop', [{'apiVersion': 'v1', 'kind': 'ConfigMapList', 'items': ["
        "{'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'a'}},"
        "{'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'b'}}]}])",
        Status.PASS,
        [("ConfigMap", "a", "shop"), ("ConfigMap", "b", "shop")],
    ),
    (
        "cluster-scoped-kind-has-no-namespace",
        "generator.apply('shop', [{'apiVersion': 'rbac.authorization.k8s.io/v1', 'kind': 'ClusterRole',"
        " 'metadata': {'name': 'reader', 'namespace': 'shop'}}])",
        Status.PASS,
        [("ClusterRole", "reader", None)],
    ),
    (
        "server-fields-dropped",
        "generator.apply('shop', [{'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'c', "
        "'uid': 'x', 'resourceVersion': '7', 'creationTimestamp': '2020-01-01T00:00:00Z'}}])",
        Status.PASS,
        [("ConfigMap", "c", "shop")],
    ),
    ("must-return-true", "1 == 1 ? false : true", Status.ERROR, []),
    ("object-without-name", "generator.apply('shop', [{'apiVersion': 'v1', 'kind': 'ConfigMap'}])", Status.ERROR, []),
    ("not-a-map", "generator.apply('shop', ['text'])", Status.ERROR, []),
]


@pytest.mark.parametrize(("text", "status", "objects"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_generate_expressions(text: str, status: Status, objects: list[tuple[str, str, str | None]]) -> None:
    result = evaluate(NAMESPACE, generating(expression(text)))
    assert only_rule(result).status is status
    found = [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in result.generated]
    assert found == objects
    for obj in result.generated:
        assert not {"uid", "resourceVersion", "creationTimestamp"} & set(obj["metadata"])


def test_template_with_interpolation() -> None:
    body = (
        "  generate:\n  - template:\n      interpolate: cel\n      value: |\n"
        "        apiVersion: v1\n        kind: ConfigMap\n        metadata:\n"
        "          name: (( object.metadata.name ))-settings\n          namespace: (( object.metadata.name ))\n"
        "        data:\n          owner: team-(( object.metadata.name ))\n          labels: plain\n"
    )
    [obj] = evaluate(NAMESPACE, generating(body)).generated
    assert obj["metadata"]["name"] == "shop-settings"
    assert obj["metadata"]["namespace"] == "shop"
    assert obj["data"] == {"owner": "team-shop", "labels": "plain"}


def test_false_match_condition_gives_no_result() -> None:
    body = "  matchConditions:\n  - name: never\n    expression: 'false'\n" + expression(
        f"generator.Apply(object.metadata.name, {DENY_ALL})"
    )
    result = evaluate(NAMESPACE, generating(body))
    assert [r.rules for r in result.responses] == [()]
    assert result.generated == []


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "team"}, "spec": {}}
PODS = """\
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [pods]
"""


@pytest.mark.parametrize(
    ("text", "status", "message"),
    [
        (
            "generator.apply('team', [{'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'ok'}}])",
            Status.PASS,
            "policy evaluated successfully",
        ),
        (
            "generator.apply('other', [{'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'x'}}])",
            Status.ERROR,
            "may not generate ConfigMap x in namespace 'other'",
        ),
        (
            "generator.apply('team', [{'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': 'x'}}])",
            Status.ERROR,
            "may not generate cluster-scoped Namespace x",
        ),
    ],
    ids=["own-namespace", "other-namespace-denied", "cluster-scoped-denied"],
)
def test_namespaced_policy_stays_in_its_namespace(text: str, status: Status, message: str) -> None:
    result = evaluate(POD, generating(expression(text), kind="NamespacedGeneratingPolicy", rules=PODS))
    rule = only_rule(result)
    assert rule.status is status
    assert message in rule.message
    assert bool(result.generated) is (status is Status.PASS)


def test_exception_skips_generation() -> None:
    exception = (
        "apiVersion: policies.kyverno.io/v1\nkind: PolicyException\nmetadata: {name: ex, namespace: default}\n"
        "spec:\n  policyRefs: [{name: gen, kind: GeneratingPolicy}]\n"
    )
    result = evaluate(NAMESPACE, generating(expression(f"generator.Apply('shop', {DENY_ALL})")), exception)
    rule = only_rule(result)
    assert (rule.status, rule.rule) == (Status.SKIP, "exception")
    assert result.generated == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [("shop", "shop"), ("a/b:c", "a-b-c"), ("x" * 80, "x" * 52 + "-"), ("-edge-", "edge")],
    ids=["plain", "invalid-characters", "too-long", "edges"],
)
def test_label_values(value: str, expected: str) -> None:
    result = label_value(value)
    assert result.startswith(expected)
    assert len(result) <= 63
