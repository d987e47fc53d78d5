"""GeneratingPolicy evaluation: from (compiled policy, trigger request) to the downstream objects to create.

Pipeline (kyverno-cel-spec.md 3.1): matchConstraints -> PolicyExceptions -> matchConditions (false: no result
at all, unlike the other families) -> `generate[]` in order -> auditAnnotations. A generate expression calls
`generator.Apply(namespace, objects)`; a template renders YAML with `(( expr ))` placeholders. The objects are
then normalised — `...List` objects expanded, cluster-scoped kinds without a namespace, server-populated fields
dropped — and labelled so that every downstream object can be traced to its policy and trigger:

    generate.celvern.io/policy-name        the policy's name
    generate.celvern.io/policy-namespace   its namespace (namespaced policies only)
    generate.celvern.io/trigger-kind       the trigger's kind
    generate.celvern.io/trigger-namespace  the trigger's namespace ("" for cluster-scoped triggers)
    generate.celvern.io/trigger-name       the trigger's name
    generate.celvern.io/trigger-uid        the trigger's uid (when it has one)

Label values follow Kubernetes' label-value rules (at most 63 characters of [A-Za-z0-9_.-]); a longer name is
cut and suffixed with a short hash so that it stays unique. A namespaced policy may only generate namespaced
objects in its own namespace: anything else is an `error` result, and nothing is generated.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from engine.cel.environment import CelError, generating_environment
from engine.cel.libraries.generator import collecting
from engine.compiler import CompiledException, CompiledGeneratingPolicy, CompiledGeneration
from engine.evaluation import EvaluationContext, Session, decide_exceptions, evaluate_in, properties, select
from engine.results import PolicyResponse, RuleResult, Status

SUCCESS = "policy evaluated successfully"
LABEL_PREFIX = "generate.celvern.io/"
POLICY_NAME = f"{LABEL_PREFIX}policy-name"
POLICY_NAMESPACE = f"{LABEL_PREFIX}policy-namespace"
TRIGGER_KIND = f"{LABEL_PREFIX}trigger-kind"
TRIGGER_NAMESPACE = f"{LABEL_PREFIX}trigger-namespace"
TRIGGER_NAME = f"{LABEL_PREFIX}trigger-name"
TRIGGER_UID = f"{LABEL_PREFIX}trigger-uid"

_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "selfLink")
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _response(
    policy: CompiledGeneratingPolicy,
    context: EvaluationContext,
    *rules: RuleResult,
    generated: tuple[Mapping[str, Any], ...] = (),
) -> PolicyResponse:
    return PolicyResponse(
        policy=policy.ref,
        resource=context.resource,
        rules=rules,
        operation=context.request.operation if context.request is not None else "",
        generated=generated,
    )


def _error(policy: CompiledGeneratingPolicy, context: EvaluationContext, message: str) -> PolicyResponse:
    return _response(
        policy, context, RuleResult(Status.ERROR, f"failed to evaluate policy: {message}", rule=policy.name)
    )


def evaluate_generating(
    policy: CompiledGeneratingPolicy,
    context: EvaluationContext,
    exceptions: Sequence[CompiledException] = (),
    session: Session | None = None,
    *,
    matched: bool = False,
) -> PolicyResponse:
    """Evaluate one compiled GeneratingPolicy against one trigger request."""
    if context.request is None:
        return _response(policy, context)
    if not matched:  # `matched`: the caller already knows the request falls under matchConstraints
        selected = select(policy, context)
        if selected is not True:
            return _response(policy, context) if selected is False else _response(policy, context, selected)
    if policy.error is not None:
        return _response(policy, context, RuleResult(Status.ERROR, f"policy failed to compile: {policy.error}"))
    if session is None:
        session = Session(generating_environment(), context)
        with evaluate_in(context.services):
            return _evaluate_matched(policy, context, exceptions, session)
    session.start_policy()
    return _evaluate_matched(policy, context, exceptions, session)


def _evaluate_matched(
    policy: CompiledGeneratingPolicy,
    context: EvaluationContext,
    exceptions: Sequence[CompiledException],
    session: Session,
) -> PolicyResponse:
    decision = decide_exceptions(policy.kind, policy.name, context, exceptions, session)
    if decision.result is not None:
        return _response(policy, context, decision.result)
    activation = decision.activation
    for _, program in policy.match_conditions:
        value = session.evaluate(program, activation)
        if isinstance(value, CelError) or not isinstance(value, bool):
            message = value.message if isinstance(value, CelError) else "matchCondition must return bool"
            return _error(policy, context, message)
        if not value:
            return _response(policy, context)  # Kyverno: a false matchCondition gives no result at all

    generated: list[dict[str, Any]] = []
    for generation in policy.generations:
        objects = _run_generation(generation, session, activation)
        if isinstance(objects, str):
            return _error(policy, context, f"generate[{generation.index}]: {objects}")
        for namespace, obj in objects:
            normalised = _normalise(obj, namespace, policy, context)
            if isinstance(normalised, str):
                return _error(policy, context, f"generate[{generation.index}]: {normalised}")
            generated.extend(normalised)

    annotated: dict[str, str] = {}
    for key, program in policy.audit_annotations:
        value = session.evaluate(program, activation)
        if isinstance(value, CelError):
            return _error(policy, context, f"audit annotation {key!r}: {value.message}")
        if value is not None and value != "":
            annotated[key] = value if isinstance(value, str) else str(value)
    result = RuleResult(Status.PASS, SUCCESS, rule=policy.name, properties=properties(**annotated))
    return _response(policy, context, result, generated=tuple(MappingProxyType(o) for o in generated))


def _run_generation(
    generation: CompiledGeneration, session: Session, activation: Any
) -> list[tuple[str | None, Any]] | str:
    """(target namespace, object) pairs produced by one generate entry, or an error message."""
    if generation.program is not None:
        with collecting() as calls:
            value = session.evaluate(generation.program, activation)
        if isinstance(value, CelError):
            return value.message
        if value is not True:
            return f"the expression must return true (a generator.Apply(...) call), got {value!r}"
        return [(call.namespace, obj) for call in calls for obj in call.objects]
    assert generation.template is not None
    values = []
    for program in generation.placeholders:
        value = session.evaluate(program, activation)
        if isinstance(value, CelError):
            return f"template placeholder (( {program.source.strip()} )): {value.message}"
        values.append(value)
    try:
        rendered = generation.template.render(values)
    except ValueError as error:
        return str(error)
    return [(None, document) for document in rendered]


def _normalise(
    obj: Any, namespace: str | None, policy: CompiledGeneratingPolicy, context: EvaluationContext
) -> list[dict[str, Any]] | str:
    """Expand Lists, place the object in its namespace, drop server fields, add tracing labels."""
    if not isinstance(obj, Mapping):
        return f"a generated object must be a map, got {type(obj).__name__}"
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(obj.get("items"), list):
        expanded: list[dict[str, Any]] = []
        for item in obj["items"]:
            result = _normalise(item, namespace, policy, context)
            if isinstance(result, str):
                return result
            expanded.extend(result)
        return expanded
    if not isinstance(kind, str) or not kind or not isinstance(api_version, str) or not api_version:
        return "a generated object needs apiVersion and kind"
    metadata = dict(obj.get("metadata") or {}) if isinstance(obj.get("metadata") or {}, Mapping) else None
    if metadata is None or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        return f"a generated {kind} needs metadata.name"
    for field in _SERVER_FIELDS:
        metadata.pop(field, None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, Mapping) and _LAST_APPLIED in annotations:
        metadata["annotations"] = {k: v for k, v in annotations.items() if k != _LAST_APPLIED}
    namespaced = context.mapper.for_kind(api_version, kind).namespaced
    if not namespaced:
        metadata.pop("namespace", None)
    elif namespace:
        metadata["namespace"] = namespace
    if policy.source.namespaced:
        own = policy.source.metadata.namespace
        if not namespaced:
            return f"namespaced policy {own}/{policy.name} may not generate cluster-scoped {kind} {metadata['name']}"
        if metadata.get("namespace", own) != own:
            return (
                f"namespaced policy {own}/{policy.name} may not generate {kind} {metadata['name']} in namespace "
                f"{metadata['namespace']!r}"
            )
        metadata["namespace"] = own
    labels = dict(metadata.get("labels") or {}) if isinstance(metadata.get("labels") or {}, Mapping) else {}
    labels.update(_tracing_labels(policy, context))
    metadata["labels"] = labels
    rest = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind", "metadata")}
    return [{"apiVersion": api_version, "kind": kind, "metadata": metadata, **rest}]


def _tracing_labels(policy: CompiledGeneratingPolicy, context: EvaluationContext) -> dict[str, str]:
    trigger = context.resource
    labels = {
        POLICY_NAME: label_value(policy.name),
        TRIGGER_KIND: label_value(trigger.kind),
        TRIGGER_NAMESPACE: label_value(trigger.namespace),
        TRIGGER_NAME: label_value(trigger.name),
    }
    if policy.source.namespaced:
        labels[POLICY_NAMESPACE] = label_value(policy.source.metadata.namespace)
    if trigger.uid:
        labels[TRIGGER_UID] = label_value(trigger.uid)
    return labels


_INVALID = re.compile(r"[^A-Za-z0-9_.-]")


def label_value(value: str) -> str:
    """`value` as a valid label value: invalid characters replaced, long values cut with a hash suffix."""
    cleaned = _INVALID.sub("-", value)
    if len(cleaned) > 63:
        digest = hashlib.sha256(value.encode()).hexdigest()[:10]
        cleaned = f"{cleaned[:52]}-{digest}"
    return cleaned.strip("-_.")  # a label value starts and ends with an alphanumeric character


def is_tracing_label(key: str) -> bool:
    """Whether a label is one celvern adds to generated objects (ignored when comparing them in tests)."""
    return key.startswith(LABEL_PREFIX)
