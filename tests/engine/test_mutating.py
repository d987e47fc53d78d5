"""MutatingPolicy evaluation: ApplyConfiguration and JSONPatch mutations, chaining, autogen and the final patch."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from engine.evaluation import EvaluationContext
from engine.loader import parse_text
from engine.policy_set import Evaluation, build_policy_set, run
from engine.request import request_for_resource
from engine.results import PolicyResponse, Status

PODS = """\
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [pods]
"""


def mutating(body: str, *, name: str = "mutate", rules: str = PODS) -> str:
    return f"apiVersion: policies.kyverno.io/v1\nkind: MutatingPolicy\nmetadata:\n  name: {name}\nspec:\n{rules}{body}"


def apply_configuration(expression: str) -> str:
    return (
        f"  mutations:\n  - patchType: ApplyConfiguration\n    applyConfiguration:\n      expression: {expression!r}\n"
    )


def json_patch(expression: str) -> str:
    return f"  mutations:\n  - patchType: JSONPatch\n    jsonPatch:\n      expression: {expression!r}\n"


ALWAYS_PULL = apply_configuration(
    "Object{spec: Object.spec{containers: object.spec.containers.map(c, "
    'Object.spec.containers{name: c.name, imagePullPolicy: "Always"})}}'
)
RUN_AS_NON_ROOT = apply_configuration(
    "Object{spec: Object.spec{securityContext: Object.spec.securityContext{"
    "runAsNonRoot: object.spec.?securityContext.?runAsNonRoot.orValue(true)}}}"
)


def pod(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "containers": [
            {"name": "app", "image": "nginx:1.25", "ports": [{"containerPort": 80}]},
            {"name": "sidecar", "image": "envoy:1", "imagePullPolicy": "IfNotPresent"},
        ]
    }
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}, "spec": body}


def evaluate(resource: dict[str, Any], *texts: str, operation: str = "CREATE") -> Evaluation:
    documents = [d for text in texts for d in parse_text(text, "<test>")]
    return run(
        build_policy_set(documents), EvaluationContext(request=request_for_resource(resource, operation=operation))
    )


def rules_of(evaluation: Evaluation, name: str) -> list[Any]:
    return [rule for r in evaluation.responses if r.policy.name == name for rule in r.rules]


def test_apply_configuration_merges_list_map_by_name() -> None:
    result = evaluate(pod(), mutating(ALWAYS_PULL))
    assert [rule.status for rule in rules_of(result, "mutate")] == [Status.PASS]
    assert result.patched is not None
    containers = result.patched["spec"]["containers"]
    assert containers == [
        {"name": "app", "image": "nginx:1.25", "ports": [{"containerPort": 80}], "imagePullPolicy": "Always"},
        {"name": "sidecar", "image": "envoy:1", "imagePullPolicy": "Always"},
    ]


@pytest.mark.parametrize(
    ("security_context", "expected"),
    [(None, True), ({"runAsNonRoot": False}, False), ({"runAsUser": 1000}, True)],
    ids=["absent-parent-defaults", "explicit-false-kept", "sibling-field-kept"],
)
def test_run_as_non_root_default_never_overrides(security_context: dict[str, Any] | None, expected: bool) -> None:
    resource = pod() if security_context is None else pod(securityContext=security_context)
    result = evaluate(resource, mutating(RUN_AS_NON_ROOT))
    final = result.patched or resource
    assert final["spec"]["securityContext"]["runAsNonRoot"] is expected
    if security_context and "runAsUser" in security_context:
        assert final["spec"]["securityContext"]["runAsUser"] == 1000


JSON_CASES = [
    (
        "add-label",
        "[JSONPatch{op: 'add', path: '/metadata/labels', value: {'managed': 'true'}}]",
        Status.PASS,
        {"managed": "true"},
    ),
    (
        "escaped-key",
        "[JSONPatch{op: 'add', path: '/metadata/labels', value: {}}, "
        "JSONPatch{op: 'add', path: '/metadata/labels/' + jsonpatch.escapeKey('example.com/a~b'), value: 'x'}]",
        Status.PASS,
        {"example.com/a~b": "x"},
    ),
    (
        "failing-test-op-is-a-no-op",
        "[JSONPatch{op: 'test', path: '/metadata/name', value: 'other'}, "
        "JSONPatch{op: 'add', path: '/metadata/labels', value: {'a': 'b'}}]",
        Status.PASS,
        None,
    ),
    ("bad-path-is-an-error", "[JSONPatch{op: 'remove', path: '/spec/nothing'}]", Status.ERROR, None),
    ("missing-parent-is-an-error", "[JSONPatch{op: 'add', path: '/a/b/c', value: 1}]", Status.ERROR, None),
    ("wrong-type-is-an-error", "'not a patch'", Status.ERROR, None),
]


@pytest.mark.parametrize(
    ("expression", "status", "labels"), [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES]
)
def test_json_patch(expression: str, status: Status, labels: dict[str, str] | None) -> None:
    result = evaluate(pod(), mutating(json_patch(expression)))
    [rule] = rules_of(result, "mutate")
    assert rule.status is status, rule.message
    if status is Status.ERROR:
        assert "failed to apply mutation 0 (JSONPatch)" in rule.message
        assert result.patched is None
    if labels is None:
        assert result.patched is None or "labels" not in result.patched["metadata"]
    else:
        assert result.patched is not None and result.patched["metadata"]["labels"] == labels


def test_apply_configuration_must_return_an_object() -> None:
    result = evaluate(pod(), mutating(apply_configuration("[1, 2]")))
    [rule] = rules_of(result, "mutate")
    assert rule.status is Status.ERROR
    assert "must return an Object{...} value, got list" in rule.message


@pytest.mark.parametrize(
    ("condition", "status", "rule_name"),
    [("object.metadata.name == 'db'", Status.SKIP, ""), ("object.metadata.nope == 1", Status.ERROR, "evaluation")],
    ids=["false-skips", "error"],
)
def test_match_conditions(condition: str, status: Status, rule_name: str) -> None:
    body = f"  matchConditions:\n  - name: c\n    expression: {condition!r}\n" + ALWAYS_PULL
    [rule] = rules_of(evaluate(pod(), mutating(body)), "mutate")
    assert (rule.status, rule.rule) == (status, rule_name)


def test_variables_are_bound_before_match_conditions() -> None:
    body = (
        "  variables:\n  - name: isWeb\n    expression: \"object.metadata.name == 'web'\"\n"
        "  matchConditions:\n  - name: web-only\n    expression: variables.isWeb\n" + ALWAYS_PULL
    )
    [rule] = rules_of(evaluate(pod(), mutating(body)), "mutate")
    assert rule.status is Status.PASS


def test_mutations_run_in_order_and_see_each_other() -> None:
    body = (
        "  mutations:\n"
        "  - patchType: JSONPatch\n    jsonPatch:\n"
        "      expression: \"[JSONPatch{op: 'add', path: '/metadata/labels', value: {'step': 'one'}}]\"\n"
        "  - patchType: ApplyConfiguration\n    applyConfiguration:\n"
        "      expression: \"Object{metadata: Object.metadata{labels: {'seen': object.metadata.labels.step}}}\"\n"
    )
    result = evaluate(pod(), mutating(body))
    assert result.patched is not None
    assert result.patched["metadata"]["labels"] == {"step": "one", "seen": "one"}


def test_policies_chain_and_validation_sees_the_mutated_object() -> None:
    second = mutating(
        apply_configuration(
            "Object{metadata: Object.metadata{labels: {'pull': object.spec.containers[1].imagePullPolicy}}}"
        ),
        name="second",
    )
    validating = (
        "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata:\n  name: check\nspec:\n"
        + PODS
        + "  validations:\n  - expression: \"object.spec.containers.all(c, c.imagePullPolicy == 'Always')\"\n"
    )
    result = evaluate(pod(), mutating(ALWAYS_PULL, name="first"), second, validating)
    assert [r.policy.name for r in result.responses if r.rules] == ["first", "second", "check"]
    assert result.patched is not None and result.patched["metadata"]["labels"] == {"pull": "Always"}
    assert [rule.status for rule in rules_of(result, "check")] == [Status.PASS]


def test_final_patch_transforms_original_into_patched() -> None:
    original = pod()
    result = evaluate(original, mutating(ALWAYS_PULL), mutating(RUN_AS_NON_ROOT, name="second"))
    patch = result.patch()
    assert patch, "a mutation happened, so the patch is not empty"
    assert jsonpatch.apply_patch(original, patch) == result.patched
    assert original == pod(), "the input object is never modified"


def test_no_change_gives_no_patch() -> None:
    resource = pod()
    for container in resource["spec"]["containers"]:
        container["imagePullPolicy"] = "Always"
    result = evaluate(resource, mutating(ALWAYS_PULL))
    assert result.patched is None and result.patch() == []


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "api", "namespace": "default"},
    "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
}


def test_autogen_rewrites_apply_configuration_for_controllers() -> None:
    result = evaluate(DEPLOYMENT, mutating(ALWAYS_PULL))
    responses: list[PolicyResponse] = [r for r in result.responses if r.rules]
    assert [r.autogen for r in responses] == ["autogen"]
    assert result.patched is not None
    assert result.patched["spec"]["template"]["spec"]["containers"] == [
        {"name": "c", "image": "nginx", "imagePullPolicy": "Always"}
    ]


def test_exception_skips_mutation() -> None:
    exception = (
        "apiVersion: policies.kyverno.io/v1\nkind: PolicyException\nmetadata: {name: ex, namespace: default}\n"
        "spec:\n  policyRefs: [{name: mutate, kind: MutatingPolicy}]\n"
    )
    result = evaluate(pod(), mutating(ALWAYS_PULL), exception)
    [rule] = rules_of(result, "mutate")
    assert (rule.status, rule.rule) == (Status.SKIP, "exception")
    assert result.patched is None


def test_big_object_is_handled() -> None:
    resource = pod()
    resource["metadata"]["annotations"] = {"blob": "x" * (3 * 1024 * 1024)}
    result = evaluate(resource, mutating(ALWAYS_PULL))
    assert [rule.status for rule in rules_of(result, "mutate")] == [Status.PASS]


WIDGETS = """\
  matchConstraints:
    resourceRules:
    - apiGroups: [example.com]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [widgets]
"""


def test_unknown_kind_replaces_lists_with_a_note() -> None:
    widget = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "default"},
        "spec": {"parts": [{"name": "a", "size": 1}], "colour": "red"},
    }
    policy = mutating(apply_configuration("Object{spec: Object.spec{parts: [{'name': 'b'}]}}"), rules=WIDGETS)
    result = evaluate(widget, policy)
    [rule] = rules_of(result, "mutate")
    assert rule.status is Status.PASS
    assert result.patched is not None
    assert result.patched["spec"] == {"parts": [{"name": "b"}], "colour": "red"}
    assert "list replaced" in rule.properties["mutation.notes"]
