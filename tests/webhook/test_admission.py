"""The webhook's protocol logic without HTTP: parsing AdmissionReviews and turning evaluations into answers.

The helpers at the top (inline policies, reviews, evaluation) are shared with the server and fuzz tests.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import jsonpatch
import orjson
import pytest

from engine.evaluation import EvaluationContext
from engine.loader import parse_text
from engine.matching import NamespaceLabels
from engine.policy_set import Evaluation, PolicySet, build_policy_set, run
from engine.request import AdmissionRequest
from engine.results import PolicyRef
from webhook.admission import (
    DENIED_CODE,
    ERROR_CODE,
    MAX_ANNOTATION_KEY_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_WARNINGS,
    TRUNCATED,
    AdmissionDecision,
    ReviewError,
    annotation_key,
    decide_mutation,
    decide_validation,
    error_body,
    parse_review,
    resource_path,
    review_response,
)

PODS = """\
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE, UPDATE, DELETE]
      resources: [pods]
"""

# --- shared helpers --------------------------------------------------------------------------------------------


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return orjson.dumps(text).decode()


def validating(
    name: str,
    expression: str,
    message: str = "",
    *,
    actions: str = "",
    failure_policy: str = "",
    rules: str = PODS,
    namespace_selector: str = "",
) -> str:
    """A ValidatingPolicy document with one validation."""
    spec = rules + namespace_selector
    if actions:
        spec += f"  validationActions: [{actions}]\n"
    if failure_policy:
        spec += f"  failurePolicy: {failure_policy}\n"
    spec += f"  validations:\n  - expression: {_quoted(expression)}\n"
    if message:
        spec += f"    message: {_quoted(message)}\n"
    return f"apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}"


def mutating(name: str, patch_expression: str, *, failure_policy: str = "") -> str:
    """A MutatingPolicy document with one JSONPatch mutation."""
    spec = PODS + (f"  failurePolicy: {failure_policy}\n" if failure_policy else "")
    spec += f"  mutations:\n  - patchType: JSONPatch\n    jsonPatch:\n      expression: {patch_expression!r}\n"
    return f"apiVersion: policies.kyverno.io/v1\nkind: MutatingPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}"


def policy_set(*documents: str) -> PolicySet:
    return build_policy_set(parse_text("\n---\n".join(documents), "<test>"))


REQUIRE_APP = validating(
    "require-labels", "has(object.metadata.labels) && 'app' in object.metadata.labels", "label app is required"
)
ADD_TEAM = mutating("add-team", "[JSONPatch{op: 'add', path: '/metadata/labels', value: {'team': 'blue'}}]")
BROKEN = "object.spec.nothing == 1"  # a runtime error: no such key
NOT_CEL = "object.spec.("  # a compile error


def pod(name: str = "web", labels: dict[str, str] | None = None, namespace: str = "default") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]},
    }


def review(
    obj: dict[str, Any] | None = None,
    *,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002",
    dry_run: bool = False,
    namespace: str = "default",
) -> dict[str, Any]:
    """An admission.k8s.io/v1 AdmissionReview for a Pod, as the API server sends it."""
    subject = obj if obj is not None else old if old is not None else pod()
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": subject["metadata"]["name"],
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "alice", "uid": "u-1", "groups": ["dev", "system:authenticated"]},
        "object": None if operation == "DELETE" else (obj if obj is not None else pod()),
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def body(document: Any) -> bytes:
    return orjson.dumps(document)


def evaluate(policies: PolicySet, request: AdmissionRequest, labels: dict[str, str] | None = None) -> Evaluation:
    namespace = NamespaceLabels(labels or {})
    return run(policies, EvaluationContext(request=request, namespace=namespace))


def validate(*documents: str, obj: dict[str, Any] | None = None, **options: Any) -> AdmissionDecision:
    request = parse_review(body(review(obj if obj is not None else pod(), **options)))
    return decide_validation(evaluate(policy_set(*documents), request), request)


def mutate(*documents: str, obj: dict[str, Any] | None = None, **options: Any) -> AdmissionDecision:
    request = parse_review(body(review(obj if obj is not None else pod(), **options)))
    return decide_mutation(evaluate(policy_set(*documents), request), request)


# --- parsing ---------------------------------------------------------------------------------------------------


def _with(path: str, value: Any) -> bytes:
    """A valid review with the value at dotted `path` replaced (or removed when value is ...)."""
    document = review()
    *parents, last = path.split(".")
    target = document
    for part in parents:
        target = target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return body(document)


MALFORMED: list[tuple[str, bytes, str]] = [
    ("not-json", b"{nope", "not valid JSON"),
    ("empty-body", b"", "not valid JSON"),
    ("not-utf8", b'{"a": "\xff"}', "not valid JSON"),
    ("array", b"[]", "must be a JSON object"),
    ("string", b'"AdmissionReview"', "must be a JSON object"),
    ("wrong-api-version", _with("apiVersion", "admission.k8s.io/v1beta1"), "expected apiVersion"),
    ("wrong-kind", _with("kind", "ConversionReview"), "expected apiVersion"),
    ("missing-api-version", _with("apiVersion", ...), "expected apiVersion"),
    ("missing-request", _with("request", ...), "request is required"),
    ("request-not-object", _with("request", [1]), "request must be an object"),
    ("missing-uid", _with("request.uid", ...), "request.uid is required"),
    ("empty-uid", _with("request.uid", ""), "request.uid must not be empty"),
    ("uid-not-string", _with("request.uid", 7), "request.uid must be a string"),
    ("missing-operation", _with("request.operation", ...), "request.operation is required"),
    ("unknown-operation", _with("request.operation", "PATCH"), "request.operation must be one of"),
    ("lowercase-operation", _with("request.operation", "create"), "request.operation must be one of"),
    ("missing-kind", _with("request.kind", ...), "request.kind is required"),
    ("kind-not-object", _with("request.kind", "Pod"), "request.kind must be an object"),
    ("kind-without-kind", _with("request.kind.kind", ...), "request.kind.kind is required"),
    ("missing-resource", _with("request.resource", ...), "request.resource is required"),
    ("resource-group-not-string", _with("request.resource.group", 1), "request.resource.group must be a string"),
    ("object-not-object", _with("request.object", "pod"), "request.object must be an object"),
    ("object-missing-for-create", _with("request.object", None), "request.object is required for CREATE"),
    ("metadata-not-object", _with("request.object.metadata", []), "request.object.metadata must be an object"),
    ("name-not-string", _with("request.object.metadata.name", 3), "metadata.name must be a string"),
    ("labels-not-strings", _with("request.object.metadata.labels", {"a": 1}), "labels must be a map of strings"),
    ("namespace-not-string", _with("request.namespace", ["a"]), "request.namespace must be a string"),
    ("groups-not-list", _with("request.userInfo.groups", "dev"), "groups must be a list of strings"),
    ("extra-not-lists", _with("request.userInfo.extra", {"a": "b"}), "extra must be a map of string lists"),
    ("user-info-not-object", _with("request.userInfo", "alice"), "request.userInfo must be an object"),
    ("dry-run-not-bool", _with("request.dryRun", "yes"), "request.dryRun must be a boolean"),
    ("options-not-object", _with("request.options", 1), "request.options must be an object"),
    (
        "delete-without-old-object",
        body(review(operation="DELETE", old=None) | {}),
        "request.oldObject is required for DELETE",
    ),
    ("update-without-old-object", _with("request.operation", "UPDATE"), "request.oldObject is required for UPDATE"),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_reviews_are_rejected_with_a_readable_reason(raw: bytes, expected: str) -> None:
    with pytest.raises(ReviewError) as caught:
        parse_review(raw)
    assert expected in caught.value.message


def test_parse_takes_everything_from_the_review() -> None:
    document = review()
    document["request"]["subResource"] = "status"
    document["request"]["kind"] = {"group": "", "version": "v1", "kind": "Pod"}
    request = parse_review(body(document))
    assert (request.uid, request.operation, request.namespace, request.name) == (
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        "CREATE",
        "default",
        "web",
    )
    assert (request.kind.kind, request.resource.resource, request.sub_resource) == ("Pod", "pods", "status")
    assert request.user_info.username == "alice" and request.user_info.groups == ("dev", "system:authenticated")
    assert request.options == {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
    assert request.namespaced and not request.dry_run
    assert request.object == pod() and request.old_object is None


PROTECT = validating(
    "deletion-protection",
    "request.operation != 'DELETE' || oldObject.metadata.?labels.?protected.orValue('') != 'true'",
    "pod is protected from deletion",
)


def test_delete_evaluates_the_old_object() -> None:
    request = parse_review(body(review(operation="DELETE", old=pod(labels={"protected": "true"}))))
    assert request.object is None and request.subject == pod(labels={"protected": "true"})
    decision = decide_validation(evaluate(policy_set(PROTECT), request), request)
    assert not decision.allowed and decision.message == "policy deletion-protection: pod is protected from deletion"
    request = parse_review(body(review(operation="DELETE", old=pod())))
    assert decide_validation(evaluate(policy_set(PROTECT), request), request).allowed


def test_scope_comes_from_the_resource_mapping() -> None:
    document = review()
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}
    document["request"] |= {
        "kind": {"group": "", "version": "v1", "kind": "Namespace"},
        "resource": {"group": "", "version": "v1", "resource": "namespaces"},
        "namespace": "team",
        "object": namespace,
    }
    assert not parse_review(body(document)).namespaced
    document["request"] |= {
        "kind": {"group": "example.com", "version": "v1", "kind": "Widget"},
        "resource": {"group": "example.com", "version": "v1", "resource": "widgets"},
        "namespace": "",
    }
    assert not parse_review(body(document)).namespaced
    document["request"]["namespace"] = "team"
    assert parse_review(body(document)).namespaced


# --- validation decisions --------------------------------------------------------------------------------------

WARN_APP = validating(
    "warn-app", "'app' in object.metadata.?labels.orValue({})", "label app is advised", actions="Warn"
)
AUDIT_APP = validating(
    "audit-app", "'app' in object.metadata.?labels.orValue({})", "label app missing", actions="Audit"
)


def test_pass_allows() -> None:
    decision = validate(REQUIRE_APP, obj=pod(labels={"app": "web"}))
    assert decision == AdmissionDecision(True, outcomes=decision.outcomes)
    assert [(o.policy, o.result, o.action) for o in decision.outcomes] == [("require-labels", "pass", "None")]


def test_deny_names_every_failing_policy() -> None:
    other = validating("no-latest", "false", "image tag latest is not allowed")
    decision = validate(REQUIRE_APP, other, WARN_APP)
    assert not decision.allowed and decision.code == DENIED_CODE
    assert decision.message == (
        "policy require-labels: label app is required; policy no-latest: image tag latest is not allowed"
    )
    assert decision.warnings == ("policy warn-app: label app is advised",)
    assert [(e.policy, e.action) for e in decision.audit_events] == [
        ("require-labels", "Deny"),
        ("no-latest", "Deny"),
        ("warn-app", "Warn"),
    ]


def test_warn_allows_with_warnings() -> None:
    decision = validate(WARN_APP)
    assert decision.allowed and decision.warnings == ("policy warn-app: label app is advised",)
    assert decision.audit_events[0].action == "Warn"


def test_audit_allows_with_annotation_and_event() -> None:
    audit = validating("audit-app", "false", "label app missing", actions="Audit")
    decision = validate(audit)
    assert decision.allowed and not decision.warnings
    assert decision.audit_annotations == {"audit-app": "label app missing"}
    [event] = decision.audit_events
    assert (event.policy, event.action, event.message, event.result, event.dry_run) == (
        "audit-app",
        "Audit",
        "label app missing",
        "fail",
        False,
    )


def test_deny_and_audit_together() -> None:
    both = validating("both", "false", "nope", actions="Deny, Audit")
    decision = validate(both)
    assert not decision.allowed and decision.audit_annotations == {"both": "nope"}
    assert [o.action for o in decision.outcomes] == ["Deny", "Audit"]


ERROR_CASES: list[tuple[str, str, bool, int, str]] = [
    # (id, policy, allowed, status code, recorded action)
    ("runtime-error-fail", validating("p", BROKEN, failure_policy="Fail"), False, ERROR_CODE, "Deny"),
    ("runtime-error-default-is-fail", validating("p", BROKEN), False, ERROR_CODE, "Deny"),
    ("runtime-error-ignore", validating("p", BROKEN, failure_policy="Ignore"), True, 200, "Ignore"),
    ("runtime-error-fail-audit-only", validating("p", BROKEN, actions="Audit"), True, 200, "Audit"),
    ("runtime-error-fail-warn-only", validating("p", BROKEN, actions="Warn"), True, 200, "Warn"),
    ("compile-error-fail", validating("p", NOT_CEL, failure_policy="Fail"), False, ERROR_CODE, "Deny"),
    ("compile-error-ignore", validating("p", NOT_CEL, failure_policy="Ignore"), True, 200, ""),
]


@pytest.mark.parametrize(
    ("document", "allowed", "code", "action"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_errors_follow_failure_policy(document: str, allowed: bool, code: int, action: str) -> None:
    decision = validate(document)
    assert (decision.allowed, decision.code) == (allowed, code)
    if not allowed:
        assert decision.message.startswith("policy p: ")
    assert [e.action for e in decision.audit_events] == ([action] if action else [])
    if action:
        assert decision.audit_events[0].result == "error"


def test_compile_error_message_says_so() -> None:
    assert "policy failed to compile" in validate(validating("p", NOT_CEL)).message


def test_failure_wins_over_error_for_the_status_code() -> None:
    decision = validate(validating("broken", BROKEN), REQUIRE_APP)
    assert decision.code == DENIED_CODE
    assert "policy broken: " in decision.message and "policy require-labels: " in decision.message


def test_unknown_namespace_with_namespace_selector_is_an_error() -> None:
    selector = "    namespaceSelector:\n      matchLabels:\n        env: prod\n"
    document = validating("prod-only", "false", "denied in prod", namespace_selector=selector)
    request = parse_review(body(review()))
    unknown = NamespaceLabels({}, known=False)
    evaluation = run(policy_set(document), EvaluationContext(request=request, namespace=unknown))
    decision = decide_validation(evaluation, request)
    assert not decision.allowed and decision.code == ERROR_CODE and "default" in decision.message
    assert decide_validation(evaluate(policy_set(document), request, {"env": "dev"}), request).allowed


def test_policies_that_do_not_match_are_silent() -> None:
    services_only = REQUIRE_APP.replace("resources: [pods]", "resources: [services]")
    decision = validate(services_only)
    assert decision.allowed and decision.outcomes == ()


def test_dry_run_marks_audit_events() -> None:
    decision = validate(REQUIRE_APP, dry_run=True)
    assert not decision.allowed and decision.audit_events[0].dry_run


# --- bounding --------------------------------------------------------------------------------------------------


def test_deny_message_is_bounded_with_a_marker() -> None:
    documents = [validating(f"policy-{i:03}", "false", "x" * 200 + " é") for i in range(60)]
    decision = validate(*documents)
    assert len(decision.message.encode()) <= MAX_MESSAGE_BYTES
    assert decision.message.startswith("policy policy-000: ")
    assert decision.message.endswith(f"{TRUNCATED} (60 policies denied the request)")


def test_warnings_are_bounded_in_number_and_size_and_single_line() -> None:
    documents = [
        validating(f"w-{i:03}", "false", "line one\nline two " + "y" * 1000, actions="Warn") for i in range(60)
    ]
    decision = validate(*documents)
    assert decision.allowed and len(decision.warnings) == MAX_WARNINGS
    assert decision.warnings[-1] == "... and 11 more policy warnings"
    assert all("\n" not in w and len(w) <= 512 for w in decision.warnings)
    assert decision.warnings[0].startswith("policy w-000: line one line two y") and decision.warnings[0].endswith(
        TRUNCATED
    )


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (PolicyRef("ValidatingPolicy", "require-labels"), "require-labels"),
        (PolicyRef("NamespacedValidatingPolicy", "check", namespace="team"), "team_check"),
        (PolicyRef("ValidatingPolicy", "a" * 100), "a" * 54 + "-"),
    ],
    ids=["cluster", "namespaced", "long"],
)
def test_annotation_keys_are_qualified_name_parts(ref: PolicyRef, expected: str) -> None:
    key = annotation_key(ref)
    assert key.startswith(expected) and len(key) <= MAX_ANNOTATION_KEY_CHARS
    assert key[0].isalnum() and key[-1].isalnum() and "/" not in key


# --- mutation --------------------------------------------------------------------------------------------------


def test_mutation_patch_round_trips() -> None:
    original = pod()
    decision = mutate(ADD_TEAM, obj=original)
    assert decision.allowed and decision.patch
    answer = review_response("u", decision)["response"]
    assert answer["patchType"] == "JSONPatch"
    operations = orjson.loads(base64.b64decode(answer["patch"]))
    patched = jsonpatch.apply_patch(copy.deepcopy(original), operations)
    assert patched["metadata"]["labels"] == {"team": "blue"}
    assert {k: v for k, v in patched.items() if k != "metadata"} == {
        k: v for k, v in original.items() if k != "metadata"
    }
    assert [(o.policy, o.result, o.action) for o in decision.outcomes] == [("add-team", "pass", "Mutate")]


def test_mutation_without_change_has_no_patch() -> None:
    already = pod(labels={"team": "blue"})
    decision = mutate(ADD_TEAM.replace("'add'", "'replace'"), obj=already)
    assert decision.allowed and decision.patch == ()
    assert "patch" not in review_response("u", decision)["response"]


BAD_PATCH = "[JSONPatch{op: 'remove', path: '/spec/nothing'}]"


@pytest.mark.parametrize(
    ("failure_policy", "allowed", "action"), [("Fail", False, "Deny"), ("Ignore", True, "Ignore")], ids=str
)
def test_mutation_errors_follow_failure_policy(failure_policy: str, allowed: bool, action: str) -> None:
    decision = mutate(mutating("bad", BAD_PATCH, failure_policy=failure_policy), ADD_TEAM)
    assert decision.allowed is allowed
    assert [(e.policy, e.action) for e in decision.audit_events] == [("bad", action)]
    if allowed:
        assert decision.patch  # the other policy's mutation still applies
    else:
        assert decision.code == ERROR_CODE and decision.message.startswith("policy bad: ")
        assert "patch" not in review_response("u", decision)["response"]


def test_mutating_compile_error_follows_failure_policy() -> None:
    assert not mutate(mutating("bad", NOT_CEL)).allowed
    assert mutate(mutating("bad", NOT_CEL, failure_policy="Ignore")).allowed


@pytest.mark.parametrize("failure_policy", ["Fail", "Ignore"])
def test_mutation_changing_identity_is_never_returned(failure_policy: str) -> None:
    rename = mutating(
        "rename", "[JSONPatch{op: 'replace', path: '/metadata/name', value: 'x'}]", failure_policy=failure_policy
    )
    decision = mutate(rename)
    assert decision.patch == ()
    assert decision.allowed is (failure_policy == "Ignore")
    assert "metadata.name" in decision.audit_events[0].message


def test_delete_is_never_patched() -> None:
    decision = mutate(ADD_TEAM, obj=None, operation="DELETE", old=pod())
    assert decision.allowed and decision.patch == ()


def test_mutate_ignores_validating_results_and_vice_versa() -> None:
    assert mutate(REQUIRE_APP).allowed
    assert validate(mutating("bad", BAD_PATCH)).allowed


# --- encoding --------------------------------------------------------------------------------------------------


def test_review_response_shapes() -> None:
    allowed = review_response("abc", AdmissionDecision(True))
    assert allowed == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "abc", "allowed": True},
    }
    denied = review_response(
        "abc", AdmissionDecision(False, DENIED_CODE, "policy p: no", ("w",), audit_annotations={"p": "m"})
    )["response"]
    assert denied["status"] == {"status": "Failure", "code": 403, "reason": "Forbidden", "message": "policy p: no"}
    assert denied["warnings"] == ["w"] and denied["auditAnnotations"] == {"p": "m"}
    assert review_response("abc", AdmissionDecision(False, ERROR_CODE, "e"))["response"]["status"]["reason"] == (
        "InternalError"
    )


def test_error_body_is_bounded() -> None:
    assert error_body("x" * 10_000)["error"].endswith(TRUNCATED)
    assert len(error_body("x" * 10_000)["error"]) <= MAX_MESSAGE_BYTES


def test_resource_path() -> None:
    request = parse_review(body(review()))
    assert resource_path(request) == "default/Pod/web"
