"""ValidatingPolicy evaluation semantics (kyverno-cel-spec.md 3.1 and 7), one behaviour per case."""

from __future__ import annotations

from typing import Any

import pytest

import engine.policy_set
from engine.evaluation import EvaluationContext
from engine.loader import parse_text
from engine.matching import NamespaceLabels
from engine.policy_set import build_policy_set
from engine.policy_set import run as run_policies
from engine.request import request_for_resource
from engine.results import PolicyResponse, RuleResult, Status

PODS = """\
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE, UPDATE, DELETE]
      resources: [pods]
"""


def policy(spec: str, *, name: str = "test-policy", rules: str = PODS, kind: str = "ValidatingPolicy") -> str:
    return (
        f"apiVersion: policies.kyverno.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\n"
        + ("  namespace: team\n" if kind.startswith("Namespaced") else "")
        + "spec:\n"
        + rules
        + spec
    )


def pod(name: str = "web", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "app", "image": "nginx:1.25"}]}
    body.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": body,
    }


def only_rule(responses: list[PolicyResponse]) -> RuleResult:
    rules = [rule for response in responses for rule in response.rules]
    assert len(rules) == 1, rules
    return rules[0]


CASES: list[tuple[str, str, dict[str, Any], Status, str, dict[str, str]]] = [
    (
        "pass",
        '  validations:\n  - expression: "object.spec.containers.size() == 1"\n',
        pod(),
        Status.PASS,
        "success",
        {},
    ),
    (
        "fail-with-message",
        '  validations:\n  - expression: "object.spec.containers.size() == 2"\n    message: need two\n',
        pod(),
        Status.FAIL,
        "need two",
        {"cel.validationIndex": "0"},
    ),
    (
        "fail-default-message",
        '  validations:\n  - expression: "true"\n  - expression: "false"\n',
        pod(),
        Status.FAIL,
        "CEL expression validation failed at index 1",
        {"cel.validationIndex": "1"},
    ),
    (
        "message-expression-wins",
        '  validations:\n  - expression: "false"\n    message: static\n'
        "    messageExpression: \"'pod ' + object.metadata.name + ' is bad'\"\n",
        pod(),
        Status.FAIL,
        "pod web is bad",
        {"cel.validationIndex": "0"},
    ),
    (
        "message-expression-error",
        '  validations:\n  - expression: "false"\n    messageExpression: "object.nope"\n',
        pod(),
        Status.FAIL,
        "failed to evaluate message expression: ",
        {"cel.validationIndex": "0"},
    ),
    (
        "stops-at-first-false",
        '  validations:\n  - expression: "false"\n    message: first\n  - expression: "1/0 == 1"\n',
        pod(),
        Status.FAIL,
        "first",
        {"cel.validationIndex": "0"},
    ),
    (
        "runtime-error",
        '  validations:\n  - expression: "object.spec.nope == 1"\n',
        pod(),
        Status.ERROR,
        "error: ",
        {"cel.validationIndex": "0"},
    ),
    (
        "non-bool-result",
        '  validations:\n  - expression: "object.metadata.name"\n',
        pod(),
        Status.ERROR,
        "error: expression must return bool",
        {"cel.validationIndex": "0"},
    ),
    (
        "match-condition-false-skips",
        "  matchConditions:\n  - name: only-db\n    expression: \"object.metadata.name == 'db'\"\n"
        '  validations:\n  - expression: "false"\n',
        pod(),
        Status.SKIP,
        "skip",
        {},
    ),
    (
        "match-condition-error-fail-policy",
        '  matchConditions:\n  - name: broken\n    expression: "object.spec.nope"\n'
        '  validations:\n  - expression: "false"\n',
        pod(),
        Status.ERROR,
        "failed to load context: ",
        {},
    ),
    (
        "match-condition-error-ignore",
        '  failurePolicy: Ignore\n  matchConditions:\n  - name: broken\n    expression: "object.spec.nope"\n'
        '  validations:\n  - expression: "false"\n',
        pod(),
        Status.SKIP,
        "skip",
        {},
    ),
    (
        "variables-are-lazy",
        '  variables:\n  - name: broken\n    expression: "object.spec.nope"\n  - name: ok\n    expression: "1"\n'
        '  validations:\n  - expression: "variables.ok == 1"\n',
        pod(),
        Status.PASS,
        "success",
        {},
    ),
    (
        "variable-error-surfaces-where-used",
        '  variables:\n  - name: broken\n    expression: "object.spec.nope"\n'
        '  validations:\n  - expression: "variables.broken == 1"\n',
        pod(),
        Status.ERROR,
        'error: Key not found in map : "nope"',
        {"cel.validationIndex": "0"},
    ),
    (
        "variables-chain",
        '  variables:\n  - name: a\n    expression: "object.spec.containers"\n'
        '  - name: b\n    expression: "variables.a.map(c, c.name)"\n'
        "  validations:\n  - expression: \"variables.b == ['app']\"\n",
        pod(),
        Status.PASS,
        "success",
        {},
    ),
    (
        "optional-syntax",
        '  validations:\n  - expression: "object.spec.?hostNetwork.orValue(false) == false"\n',
        pod(),
        Status.PASS,
        "success",
        {},
    ),
    (
        "audit-annotations-become-properties",
        '  validations:\n  - expression: "true"\n  auditAnnotations:\n'
        '  - key: image\n    valueExpression: "object.spec.containers[0].image"\n'
        "  - key: empty\n    valueExpression: \"''\"\n",
        pod(),
        Status.PASS,
        "success",
        {"image": "nginx:1.25"},
    ),
    (
        "iteration-budget-is-an-error",
        '  validations:\n  - expression: "object.spec.items.all(x, object.spec.items.all(y, y >= 0))"\n',
        pod(items=list(range(200))),
        Status.ERROR,
        "budget",
        {"cel.validationIndex": "0"},
    ),
]


@pytest.mark.parametrize(
    ("spec", "resource", "status", "message", "properties"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_validating_semantics(
    run: Any, spec: str, resource: dict[str, Any], status: Status, message: str, properties: dict[str, str]
) -> None:
    rule = only_rule(run(policy(spec), resource))
    assert rule.status is status
    assert (
        rule.message.startswith(message.rstrip())
        if message.endswith(" ")
        else rule.message == message or (message in rule.message and message not in ("success", "skip"))
    )
    assert dict(rule.properties) == properties
    assert rule.rule == ("evaluation" if "failed to load context" in message else "")


def test_no_match_gives_no_rules(run: Any) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}}
    responses = run(policy('  validations:\n  - expression: "false"\n'), service)
    assert responses and all(not response.rules for response in responses)


def test_delete_sees_old_object(run: Any) -> None:
    spec = "  validations:\n  - expression: \"object == null && oldObject.metadata.name == 'web'\"\n"
    assert only_rule(run(policy(spec), pod(), operation="DELETE")).status is Status.PASS


def test_request_variable(run: Any) -> None:
    spec = (
        "  validations:\n  - expression: \"request.operation == 'UPDATE' && request.kind.kind == 'Pod' && "
        "request.namespace == 'default' && request.resource.resource == 'pods'\"\n"
    )
    assert only_rule(run(policy(spec), pod(), operation="UPDATE")).status is Status.PASS


EXCEPTION = """\
apiVersion: policies.kyverno.io/v1
kind: PolicyException
metadata:
  name: {name}
  namespace: team
spec:
  policyRefs:
  - name: test-policy
    kind: {kind}
{extra}"""


def exception(name: str = "allow-web", kind: str = "ValidatingPolicy", extra: str = "") -> str:
    return EXCEPTION.format(name=name, kind=kind, extra=extra)


FAILING = '  validations:\n  - expression: "false"\n    message: denied\n'


@pytest.mark.parametrize(
    ("exceptions", "status", "message", "rule_name"),
    [
        ((exception(),), Status.SKIP, "rule is skipped due to policy exception: team/allow-web", "exception"),
        (
            (exception(extra="  reportResult: pass\n"),),
            Status.PASS,
            "rule is passed due to policy exception: team/allow-web",
            "exception",
        ),
        (
            (exception(extra="  matchConditions:\n  - name: db\n    expression: \"object.metadata.name == 'db'\"\n"),),
            Status.FAIL,
            "denied",
            "",
        ),
        ((exception(kind="NamespacedValidatingPolicy"),), Status.FAIL, "denied", ""),
        ((exception(extra='  expiresAt: "2001-01-01T00:00:00Z"\n'),), Status.FAIL, "denied", ""),
        (
            (exception(extra='  matchConditions:\n  - name: broken\n    expression: "object.spec.nope"\n'),),
            Status.ERROR,
            "failed to evaluate policy exception team/allow-web",
            "exception",
        ),
    ],
    ids=[
        "full-exemption-skips",
        "report-result-pass",
        "condition-false-does-not-apply",
        "other-kind-ignored",
        "expired-ignored",
        "condition-error",
    ],
)
def test_exceptions(run: Any, exceptions: tuple[str, ...], status: Status, message: str, rule_name: str) -> None:
    rule = only_rule(run(policy(FAILING), pod(), exceptions=exceptions))
    assert rule.status is status
    assert rule.message.startswith(message)
    assert rule.rule == rule_name
    if status is Status.SKIP:
        assert dict(rule.properties) == {"exceptions": "allow-web"}


def test_partial_exception_exposes_allowed_values(run: Any) -> None:
    spec = '  validations:\n  - expression: "object.spec.containers.all(c, c.image in exceptions.allowedValues)"\n'
    allowed = exception(extra="  allowedValues: ['nginx:1.25']\n")
    assert only_rule(run(policy(spec), pod())).status is Status.FAIL
    assert only_rule(run(policy(spec), pod(), exceptions=(allowed,))).status is Status.PASS


@pytest.mark.parametrize(
    ("failure_policy", "status"), [("Fail", Status.ERROR), ("Ignore", Status.SKIP)], ids=["fail", "ignore"]
)
def test_compile_error_follows_failure_policy(run: Any, failure_policy: str, status: Status) -> None:
    spec = f'  failurePolicy: {failure_policy}\n  validations:\n  - expression: "object.spec.("\n'
    rule = only_rule(run(policy(spec), pod()))
    assert rule.status is status
    assert "spec.validations[0].expression" in rule.message


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "api", "namespace": "default"},
    "spec": {
        "template": {
            "metadata": {"labels": {"app": "api"}},
            "spec": {"containers": [{"name": "c", "image": "nginx", "securityContext": {"privileged": True}}]},
        }
    },
}
CRONJOB = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {"name": "nightly", "namespace": "default"},
    "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}},
}
NOT_PRIVILEGED = (
    '  validations:\n  - expression: "object.spec.containers.all(c, '
    '!c.?securityContext.?privileged.orValue(false))"\n    message: privileged\n'
)


@pytest.mark.parametrize(
    ("resource", "status", "variant"),
    [
        (DEPLOYMENT, Status.FAIL, "autogen"),
        (CRONJOB, Status.PASS, "autogen-cronjobs"),
        (pod(), Status.PASS, ""),
    ],
    ids=["deployment", "cronjob", "pod"],
)
def test_autogen_variants(run: Any, resource: dict[str, Any], status: Status, variant: str) -> None:
    responses = [response for response in run(policy(NOT_PRIVILEGED), resource) if response.rules]
    assert [response.autogen for response in responses] == [variant]
    assert responses[0].rules[0].status is status
    assert responses[0].policy.name == "test-policy"


def test_autogen_respects_controllers(run: Any) -> None:
    spec = "  autogen:\n    podControllers:\n      controllers: [cronjobs]\n" + NOT_PRIVILEGED
    assert not any(response.rules for response in run(policy(spec), DEPLOYMENT))


@pytest.mark.parametrize(("namespace", "matched"), [("team", True), ("default", False)], ids=["own", "other"])
def test_namespaced_policy_sees_only_its_namespace(run: Any, namespace: str, matched: bool) -> None:
    resource = pod()
    resource["metadata"]["namespace"] = namespace
    text = policy(FAILING, kind="NamespacedValidatingPolicy")
    assert any(response.rules for response in run(text, resource)) is matched


def test_admission_leaves_out_policies_that_cannot_match() -> None:
    """`run(unmatched=False)` answers only for policies that can match; the rule results are the same."""
    deny = '  validations:\n  - expression: "false"\n'
    services = PODS.replace("pods", "services")
    texts = [policy(deny, name="pods-only"), policy(deny, name="services-only", rules=services)]
    policy_set = build_policy_set([d for text in texts for d in parse_text(text, "<test>")])
    context = EvaluationContext(request=request_for_resource(pod()))
    every = run_policies(policy_set, context).responses
    admission = run_policies(policy_set, context, unmatched=False).responses
    assert [r.policy.name for r in every] == ["pods-only", "services-only"]
    assert [r.policy.name for r in admission] == ["pods-only"]
    assert admission[0] == every[0] and every[0].rules[0].status is Status.FAIL
    assert not every[1].rules


# --- fused validations ---------------------------------------------------------------------------------------------

HOST_NETWORK = (
    '  validations:\n  - expression: "!object.spec.?hostNetwork.orValue(false)"\n    message: no host network\n'
)
PRIVILEGED = (
    "  variables:\n  - name: containers\n    expression: object.spec.containers\n"
    '  validations:\n  - expression: "variables.containers.all(c, !c.?securityContext.?privileged.orValue(false))"\n'
    "    message: no privileged containers\n"
    "  - expression: \"object.metadata.name != 'forbidden'\"\n"
)
AUDITED = '  validations:\n  - expression: "true"\n  auditAnnotations:\n  - key: seen\n    valueExpression: "\'yes\'"\n'
MANY = '  validations:\n  - expression: "object.spec.items.all(i, i >= 0)"\n'

FUSION = [
    ("all pass", [HOST_NETWORK, PRIVILEGED, AUDITED], pod(), 1),
    ("one fails", [HOST_NETWORK, PRIVILEGED, AUDITED], pod(hostNetwork=True), 2),
    ("second validation fails", [HOST_NETWORK, PRIVILEGED], pod("forbidden"), 1),
    ("error in one", [HOST_NETWORK, '  validations:\n  - expression: "object.spec.nosuch == 1"\n'], pod(), 2),
    ("iteration budget of the batch", [MANY, MANY], pod(items=list(range(6000))), 2),
]


@pytest.mark.parametrize(("specs", "resource", "one_by_one"), [c[1:] for c in FUSION], ids=[c[0] for c in FUSION])
def test_fused_validations_agree_with_one_by_one(
    monkeypatch: pytest.MonkeyPatch, specs: list[str], resource: dict[str, Any], one_by_one: int
) -> None:
    """The fused program decides the passes; a policy whose element is false, or every policy when the batch
    errs, runs one by one. Either way the responses are the ones of evaluating each policy on its own."""
    texts = [policy(spec, name=f"policy-{i}") for i, spec in enumerate(specs)]
    documents = [d for text in texts for d in parse_text(text, "<test>")]
    context = EvaluationContext(request=request_for_resource(resource))
    calls: list[str] = []
    evaluate_one = engine.policy_set.evaluate_validating

    def counted(policy: Any, *args: Any, **kwargs: Any) -> PolicyResponse:
        calls.append(policy.name)
        return evaluate_one(policy, *args, **kwargs)

    monkeypatch.setattr(engine.policy_set, "evaluate_validating", counted)
    fused = run_policies(build_policy_set(documents), context, unmatched=False).responses
    assert len(calls) == one_by_one  # the audited policy is never fused; a false sends that policy one by one
    monkeypatch.setattr(engine.policy_set, "fuse", lambda policies: None)
    alone = run_policies(build_policy_set(documents), context, unmatched=False).responses
    assert fused == alone
    assert len(calls) == one_by_one + len(specs)


def test_admission_leaves_out_policies_whose_selector_does_not_match() -> None:
    """A policy decided by namespace labels gives no response to admission when they do not match, and the same
    rule result as the full run when they do."""
    deny = '  validations:\n  - expression: "false"\n'
    selected = PODS + "    namespaceSelector:\n      matchLabels:\n        team: shop\n"
    policy_set = build_policy_set(parse_text(policy(deny, name="shop-only", rules=selected), "<test>"))
    for labels, expected in (({"team": "shop"}, ["shop-only"]), ({"team": "other"}, [])):
        context = EvaluationContext(request=request_for_resource(pod()), namespace=NamespaceLabels(labels))
        admission = run_policies(policy_set, context, unmatched=False).responses
        every = run_policies(policy_set, context).responses
        assert [r.policy.name for r in admission] == expected
        assert [r for r in every if r.rules] == list(admission)
