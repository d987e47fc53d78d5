"""AdmissionReview in, admission decision out: the webhook's protocol logic, with no web framework in it.

The API server speaks `admission.k8s.io/v1` AdmissionReview; the engine speaks `AdmissionRequest` and
`PolicyResponse`. This module is the translation between the two, kept pure so that every rule of it — what is a
malformed review, when a request is denied, how messages are bounded, what a patch looks like — is tested as a
table of plain values, and the HTTP server (`webhook.server`) only moves bytes.

Decisions (kyverno-cel-spec.md 3.1, ecosystem.md 5.3):

* A validating policy's `fail` does what its `validationActions` say: Deny -> `allowed: false`, Warn ->
  `warnings`, Audit -> an audit annotation and an audit event.
* An `error` result first goes through the policy's `failurePolicy`, as ValidatingAdmissionPolicy does: Ignore ->
  allowed, with an audit event (action `Ignore`) and a metric; Fail -> it counts as a failure and the policy's
  `validationActions` apply to it (so an Audit-only policy in roll-out never blocks, even on errors). A policy that
  failed to compile reaches us as `error` under Fail and as `skip` under Ignore (the engine applies that part).
* A deny caused by at least one policy failure has `status.code` 403 (Forbidden, reason `Forbidden`); a deny
  caused only by evaluation errors has 500 (reason `InternalError`), so that a client can tell "your object
  violates a policy" from "the policy engine could not decide". Both are HTTP 200 AdmissionReviews (the API
  server reads the code from the body).
* Mutating policies have no validationActions: an `error` under Fail denies (500), under Ignore the mutation is
  skipped (the engine chain continues with the unchanged object) and recorded. The patch is the RFC 6902 diff
  from the received object to the final one; a patch that would change the object's identity (apiVersion, kind,
  name, namespace, uid) is never returned, since the API server rejects it.
* `dryRun` requests are evaluated the same way; only the audit events say so (nothing here has side effects).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from engine.model import MUTATING_KINDS, VALIDATING_KINDS
from engine.policy_set import Evaluation
from engine.request import (
    CONNECT,
    CREATE,
    DELETE,
    UPDATE,
    AdmissionRequest,
    GroupVersionKind,
    GroupVersionResource,
    UserInfo,
)
from engine.resources import DEFAULT_MAPPER, ResourceMapper
from engine.results import Action, PolicyRef, PolicyResponse, ResourceKey, RuleResult, Status

API_VERSION = "admission.k8s.io/v1"
REVIEW_KIND = "AdmissionReview"
OPERATIONS = frozenset({CREATE, UPDATE, DELETE, CONNECT})

MAX_MESSAGE_BYTES = 4 * 1024
"""Bound of `status.message` (the API server and kubectl show it whole; Kubernetes truncates long ones)."""
MAX_WARNINGS = 50
MAX_WARNING_CHARS = 512
MAX_ANNOTATION_VALUE_CHARS = 1024
MAX_ANNOTATIONS = 50
MAX_ANNOTATION_KEY_CHARS = 63
"""The API server stores an annotation under `<webhook name>/<key>`: the key must be a qualified-name name part."""
TRUNCATED = "... (truncated)"

DENIED_CODE = 403
ERROR_CODE = 500

IGNORE = "Ignore"
MUTATE = "Mutate"
NONE = "None"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_KEY_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
_IDENTITY = (("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace"), ("metadata", "uid"))


class ReviewError(ValueError):
    """The request body is not a well-formed admission.k8s.io/v1 AdmissionReview request (HTTP 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- parsing ---------------------------------------------------------------------------------------------------


def _string(raw: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = raw.get(key)
    if value is None:
        if required:
            raise ReviewError(f"{where}.{key} is required")
        return ""
    if not isinstance(value, str):
        raise ReviewError(f"{where}.{key} must be a string, got {type(value).__name__}")
    if required and not value:
        raise ReviewError(f"{where}.{key} must not be empty")
    return value


def _map(raw: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> dict[str, Any] | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise ReviewError(f"{where}.{key} is required")
        return None
    if not isinstance(value, dict):
        raise ReviewError(f"{where}.{key} must be an object, got {type(value).__name__}")
    return value


def _string_map(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ReviewError(f"{where} must be a map of strings")


def _kubernetes_object(raw: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """`object`/`oldObject`: null or a map whose metadata (if any) has the shape every Kubernetes object has."""
    obj = _map(raw, key, "request")
    if obj is None:
        return None
    where = f"request.{key}"
    for field_name in ("apiVersion", "kind"):
        _string(obj, field_name, where)
    metadata = _map(obj, "metadata", where)
    if metadata is not None:
        for field_name in ("name", "generateName", "namespace", "uid"):
            _string(metadata, field_name, f"{where}.metadata")
        _string_map(metadata.get("labels"), f"{where}.metadata.labels")
        _string_map(metadata.get("annotations"), f"{where}.metadata.annotations")
    return obj


def _user_info(raw: Mapping[str, Any]) -> UserInfo:
    info = _map(raw, "userInfo", "request")
    if info is None:
        return UserInfo()
    _string(info, "username", "request.userInfo")
    _string(info, "uid", "request.userInfo")
    groups = info.get("groups")
    if groups is not None and (not isinstance(groups, list) or not all(isinstance(g, str) for g in groups)):
        raise ReviewError("request.userInfo.groups must be a list of strings")
    extra = info.get("extra")
    if extra is not None and (
        not isinstance(extra, dict)
        or not all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in extra.values())
    ):
        raise ReviewError("request.userInfo.extra must be a map of string lists")
    return UserInfo.from_raw(info)


def parse_review(body: bytes, mapper: ResourceMapper = DEFAULT_MAPPER) -> AdmissionRequest:
    """The AdmissionRequest of an AdmissionReview body. Raises ReviewError for anything malformed.

    The kind and resource come from the review (what the webhook rule matched, after `matchPolicy: Equivalent`
    conversion), never guessed from the object. `namespaced` comes from the resource mapping when the resource
    is known, else from whether the request carries a namespace. DELETE evaluates `oldObject`.
    """
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ReviewError(f"request body is not valid JSON: {error}") from None
    if not isinstance(review, dict):
        raise ReviewError(f"AdmissionReview must be a JSON object, got {type(review).__name__}")
    api_version, kind = review.get("apiVersion"), review.get("kind")
    if api_version != API_VERSION or kind != REVIEW_KIND:
        raise ReviewError(f"expected apiVersion {API_VERSION} kind {REVIEW_KIND}, got {api_version!r} {kind!r}")
    raw = _map(review, "request", "AdmissionReview", required=True)
    assert raw is not None
    uid = _string(raw, "uid", "request", required=True)
    operation = _string(raw, "operation", "request", required=True)
    if operation not in OPERATIONS:
        raise ReviewError(f"request.operation must be one of {', '.join(sorted(OPERATIONS))}, got {operation!r}")
    gvk_raw = _map(raw, "kind", "request", required=True)
    gvr_raw = _map(raw, "resource", "request", required=True)
    assert gvk_raw is not None and gvr_raw is not None
    gvk = GroupVersionKind(
        _string(gvk_raw, "group", "request.kind"),
        _string(gvk_raw, "version", "request.kind", required=True),
        _string(gvk_raw, "kind", "request.kind", required=True),
    )
    gvr = GroupVersionResource(
        _string(gvr_raw, "group", "request.resource"),
        _string(gvr_raw, "version", "request.resource", required=True),
        _string(gvr_raw, "resource", "request.resource", required=True),
    )
    for optional in ("requestKind", "requestResource"):
        _map(raw, optional, "request")
    sub_resource = _string(raw, "subResource", "request")
    namespace = _string(raw, "namespace", "request")
    name = _string(raw, "name", "request")
    new = _kubernetes_object(raw, "object")
    old = _kubernetes_object(raw, "oldObject")
    if operation in (CREATE, UPDATE) and new is None:
        raise ReviewError(f"request.object is required for {operation}")
    if operation in (UPDATE, DELETE) and old is None:
        raise ReviewError(f"request.oldObject is required for {operation}")
    if operation == DELETE:
        new = None
    dry_run = raw.get("dryRun", False)
    if dry_run is None:
        dry_run = False
    if not isinstance(dry_run, bool):
        raise ReviewError(f"request.dryRun must be a boolean, got {type(dry_run).__name__}")
    options = _map(raw, "options", "request")
    api = f"{gvr.group}/{gvr.version}" if gvr.group else gvr.version
    known = mapper.for_resource(api, gvr.resource)
    namespaced = known.namespaced if known is not None else bool(namespace)
    return AdmissionRequest(
        operation=operation,
        kind=gvk,
        resource=gvr,
        namespace=namespace,
        name=name,
        object=new,
        old_object=old,
        namespaced=namespaced,
        sub_resource=sub_resource,
        uid=uid,
        user_info=_user_info(raw),
        dry_run=dry_run,
        options=options,
    )


# --- decisions -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One policy outcome worth a log line: a deny, a warning, an audit, or an ignored error."""

    policy: str
    action: str
    """Deny, Warn, Audit, or Ignore (an error under failurePolicy Ignore)."""
    message: str
    severity: str = ""
    category: str = ""
    result: str = "fail"
    dry_run: bool = False
    policy_kind: str = ""
    """ValidatingPolicy, MutatingPolicy, ... ("" when several policies are concerned)."""


@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    """What admission did with one rule result (one increment of `celvern_policy_results_total`)."""

    policy: str
    result: str
    action: str
    """Deny, Warn, Audit, Ignore, Mutate, or None (pass and skip of validating policies)."""


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    allowed: bool
    code: int = 200
    message: str = ""
    warnings: tuple[str, ...] = ()
    patch: tuple[Mapping[str, Any], ...] = ()
    """RFC 6902 operations (empty: no patch)."""
    audit_annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    audit_events: tuple[AuditEvent, ...] = ()
    outcomes: tuple[PolicyOutcome, ...] = ()


def _one_line(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()


def _bounded(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a visible marker when cut."""
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def _bounded_bytes(text: str, limit: int, marker: str) -> str:
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    keep = encoded[: limit - len(marker.encode())].decode(errors="ignore")
    return keep + marker


def annotation_key(policy: PolicyRef) -> str:
    """A qualified-name name part for the policy (`ns_name` for namespaced ones; long names hashed to 63)."""
    raw = f"{policy.namespace}_{policy.name}" if policy.namespace else policy.name
    key = _KEY_INVALID.sub("-", raw).strip("-_.") or "policy"
    if len(key) > MAX_ANNOTATION_KEY_CHARS or key != raw:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        key = f"{key[: MAX_ANNOTATION_KEY_CHARS - 9].rstrip('-_.')}-{digest}"
    return key


def _matched(evaluation: Evaluation, kinds: frozenset[str]) -> list[tuple[PolicyResponse, RuleResult]]:
    return [(r, rule) for r in evaluation.responses if r.policy.kind in kinds for rule in r.rules]


def _deny_message(parts: Sequence[str]) -> str:
    unique = list(dict.fromkeys(parts))
    marker = f"{TRUNCATED} ({len(unique)} policies denied the request)"
    return _bounded_bytes("; ".join(unique), MAX_MESSAGE_BYTES, marker)


def decide_validation(evaluation: Evaluation, request: AdmissionRequest) -> AdmissionDecision:
    """What the validating webhook answers for the validating policies' results of `evaluation`."""
    denies: list[str] = []
    failed = False
    warnings: list[str] = []
    annotations: dict[str, str] = {}
    events: list[AuditEvent] = []
    outcomes: list[PolicyOutcome] = []
    dry_run = request.dry_run
    for response in evaluation.responses:
        ref = response.policy
        if not response.rules or ref.kind not in VALIDATING_KINDS:
            continue
        key = ref.key
        for rule in response.rules:
            status = rule.status
            result = status.value
            if status is Status.PASS or status is Status.SKIP:
                outcomes.append(PolicyOutcome(key, result, NONE))
                continue
            message = rule.message or result
            if status is Status.ERROR and ref.failure_policy == IGNORE:
                events.append(AuditEvent(key, IGNORE, message, ref.severity, ref.category, result, dry_run, ref.kind))
                outcomes.append(PolicyOutcome(key, result, IGNORE))
                continue
            if status is not Status.FAIL and status is not Status.ERROR:
                outcomes.append(PolicyOutcome(key, result, NONE))
                continue
            for action in ref.validation_actions or (Action.DENY,):
                outcomes.append(PolicyOutcome(key, result, action.value))
                events.append(
                    AuditEvent(key, action.value, message, ref.severity, ref.category, result, dry_run, ref.kind)
                )
                if action is Action.DENY:
                    denies.append(f"policy {key}: {message}")
                    failed = failed or status is Status.FAIL
                elif action is Action.WARN:
                    warnings.append(_bounded(_one_line(f"policy {key}: {message}"), MAX_WARNING_CHARS))
                elif action is Action.AUDIT:
                    annotation = annotation_key(ref)
                    value = _bounded(message, MAX_ANNOTATION_VALUE_CHARS)
                    if annotation in annotations:
                        annotations[annotation] = _bounded(
                            f"{annotations[annotation]}; {value}", MAX_ANNOTATION_VALUE_CHARS
                        )
                    elif len(annotations) < MAX_ANNOTATIONS:
                        annotations[annotation] = value
    bounded_warnings = tuple(dict.fromkeys(warnings))
    if len(bounded_warnings) > MAX_WARNINGS:
        more = len(bounded_warnings) - (MAX_WARNINGS - 1)
        bounded_warnings = (*bounded_warnings[: MAX_WARNINGS - 1], f"... and {more} more policy warnings")
    common: dict[str, Any] = {
        "warnings": bounded_warnings,
        "audit_annotations": MappingProxyType(annotations),
        "audit_events": tuple(events),
        "outcomes": tuple(outcomes),
    }
    if denies:
        return AdmissionDecision(False, DENIED_CODE if failed else ERROR_CODE, _deny_message(denies), **common)
    return AdmissionDecision(True, **common)


def _identity_change(original: Mapping[str, Any], patched: Mapping[str, Any]) -> str | None:
    for path in _IDENTITY:
        before: Any = original
        after: Any = patched
        for part in path:
            before = before.get(part) if isinstance(before, Mapping) else None
            after = after.get(part) if isinstance(after, Mapping) else None
        if before != after:
            return ".".join(path)
    return None


def decide_mutation(evaluation: Evaluation, request: AdmissionRequest) -> AdmissionDecision:
    """What the mutating webhook answers: the patch of every mutation, unless a Fail policy errored."""
    denies: list[str] = []
    events: list[AuditEvent] = []
    outcomes: list[PolicyOutcome] = []
    matched = _matched(evaluation, MUTATING_KINDS)
    for response, rule in matched:
        ref = response.policy
        result = rule.status.value
        if rule.status is not Status.ERROR:
            outcomes.append(PolicyOutcome(ref.key, result, MUTATE if rule.status is Status.PASS else NONE))
            continue
        action = IGNORE if ref.failure_policy == IGNORE else Action.DENY.value
        outcomes.append(PolicyOutcome(ref.key, result, action))
        events.append(
            AuditEvent(ref.key, action, rule.message, ref.severity, ref.category, result, request.dry_run, ref.kind)
        )
        if action != IGNORE:
            denies.append(f"policy {ref.key}: {rule.message}")
    common: dict[str, Any] = {"audit_events": tuple(events), "outcomes": tuple(outcomes)}
    if denies:
        return AdmissionDecision(False, ERROR_CODE, _deny_message(denies), **common)
    patch = evaluation.patch()
    if patch and evaluation.original is not None and evaluation.patched is not None:
        changed = _identity_change(evaluation.original, evaluation.patched)
        if changed is not None:
            mutators = [r.policy for r, rule in matched if rule.status is Status.PASS]
            message = f"mutation would change the object's {changed}, which the API server rejects"
            ignore = all(ref.failure_policy == IGNORE for ref in mutators)
            action = IGNORE if ignore else Action.DENY.value
            names = ", ".join(dict.fromkeys(ref.key for ref in mutators)) or "mutating policies"
            event = AuditEvent(names, action, message, result=Status.ERROR.value, dry_run=request.dry_run)
            common["audit_events"] = (*events, event)
            if not ignore:
                return AdmissionDecision(False, ERROR_CODE, _deny_message([f"policy {names}: {message}"]), **common)
            patch = []
    return AdmissionDecision(True, patch=tuple(patch), **common)


# --- encoding --------------------------------------------------------------------------------------------------


def review_response(uid: str, decision: AdmissionDecision) -> dict[str, Any]:
    """The admission.k8s.io/v1 AdmissionReview answering request `uid`."""
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if not decision.allowed:
        response["status"] = {
            "status": "Failure",
            "code": decision.code,
            "reason": "Forbidden" if decision.code == DENIED_CODE else "InternalError",
            "message": decision.message,
        }
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    if decision.audit_annotations:
        response["auditAnnotations"] = dict(decision.audit_annotations)
    if decision.patch and decision.allowed:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(list(decision.patch))).decode()
    return {"apiVersion": API_VERSION, "kind": REVIEW_KIND, "response": response}


def error_body(message: str) -> dict[str, Any]:
    """The JSON body of a 4xx/5xx answer to a request that is not a review we can answer."""
    return {"error": _bounded(message, MAX_MESSAGE_BYTES)}


def resource_path(request: AdmissionRequest) -> str:
    """`namespace/Kind/name` of the request's object, for logs."""
    key = ResourceKey.of(request.subject)
    name = request.name or key.name
    kind = f"{request.kind.kind}/{request.sub_resource}" if request.sub_resource else request.kind.kind
    return f"{request.namespace}/{kind}/{name}" if request.namespace else f"{kind}/{name}"
