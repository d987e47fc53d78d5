"""MutatingPolicy evaluation: a pure function from (compiled policy, request context) to a response and the
patched object.

Pipeline (kyverno-cel-spec.md 3.1): matchConstraints -> PolicyExceptions -> matchConditions (which may read
variables: MutatingPolicy binds variables first) -> each mutation in order, each seeing the object as the
previous one left it -> auditAnnotations. ApplyConfiguration values are merged with server-side-apply semantics
using the Kubernetes OpenAPI schemas (`engine.schemas`, `engine.patching`); JSONPatch values are applied as
RFC 6902. The outcome is one rule result with rule name "" and, when something changed, the patched object;
policies chain through `engine.policy_set`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine import patching
from engine.cel.environment import CelError, mutating_environment
from engine.compiler import CompiledException, CompiledMutatingPolicy, CompiledMutation
from engine.evaluation import EvaluationContext, Session, decide_exceptions, evaluate_in, properties, select
from engine.model import APPLY_CONFIGURATION
from engine.results import PolicyResponse, RuleResult, Status
from engine.schemas import Schema, default_schema_index

SUCCESS = "success"
MUTATION_INDEX = "mutation.index"


@dataclass(frozen=True, slots=True)
class MutationOutcome:
    """A mutating policy's response and the object after its mutations (None when it changed nothing)."""

    response: PolicyResponse
    patched: Mapping[str, Any] | None = None


def _outcome(
    policy: CompiledMutatingPolicy,
    context: EvaluationContext,
    *rules: RuleResult,
    patched: Mapping[str, Any] | None = None,
) -> MutationOutcome:
    request = context.request
    after = patched if patched is not None else (request.object if request is not None else None)
    response = PolicyResponse(
        policy=policy.ref,
        resource=context.resource,
        rules=rules,
        operation=request.operation if request is not None else "",
        autogen=policy.variant,
        patched_object=after,
    )
    return MutationOutcome(response, patched)


def evaluate_mutating(
    policy: CompiledMutatingPolicy,
    context: EvaluationContext,
    exceptions: Sequence[CompiledException] = (),
    session: Session | None = None,
    *,
    matched: bool = False,
) -> MutationOutcome:
    """Evaluate one compiled MutatingPolicy (or autogen variant) against one request.

    As with `evaluate_validating`, pass the request's `session` when evaluating several policies (the caller
    then installs the request's services around the batch).
    """
    if context.request is None:
        return _outcome(policy, context)  # JSON payloads are not mutated by this version
    if not matched:  # `matched`: the caller already knows the request falls under matchConstraints
        selected = select(policy, context)
        if selected is not True:
            return _outcome(policy, context) if selected is False else _outcome(policy, context, selected)
    if policy.error is not None:
        status = Status.SKIP if policy.source.failure_policy == "Ignore" else Status.ERROR
        return _outcome(policy, context, RuleResult(status, f"policy failed to compile: {policy.error}"))
    if context.request.object is None:
        return _outcome(policy, context, RuleResult(Status.SKIP, "skip", skip_reason="no object to mutate"))
    if session is None:
        session = Session(mutating_environment(), context)
        with evaluate_in(context.services):
            return _evaluate_matched(policy, context, exceptions, session)
    session.start_policy()
    return _evaluate_matched(policy, context, exceptions, session)


def _evaluate_matched(
    policy: CompiledMutatingPolicy,
    context: EvaluationContext,
    exceptions: Sequence[CompiledException],
    session: Session,
) -> MutationOutcome:
    decision = decide_exceptions(policy.kind, policy.name, context, exceptions, session)
    if decision.result is not None:
        return _outcome(policy, context, decision.result)
    activation = decision.activation

    for _, program in policy.match_conditions:
        value = session.evaluate(program, activation)
        if isinstance(value, CelError) or not isinstance(value, bool):
            message = value.message if isinstance(value, CelError) else "matchCondition must return bool"
            return _outcome(
                policy, context, RuleResult(Status.ERROR, f"failed to evaluate policy: {message}", rule="evaluation")
            )
        if not value:
            return _outcome(policy, context, RuleResult(Status.SKIP, "skip", skip_reason="match conditions"))

    assert context.request is not None and context.request.object is not None
    current: Mapping[str, Any] = context.request.object
    notes: list[str] = []
    for mutation in policy.mutations:
        value = session.evaluate(mutation.program, activation)
        if isinstance(value, CelError):
            return _outcome(policy, context, _mutation_error(mutation, value.message))
        outcome = _apply(mutation, current, value, context)
        if isinstance(outcome, str):
            return _outcome(policy, context, _mutation_error(mutation, outcome))
        patched, mutation_notes = outcome
        notes.extend(mutation_notes)
        if patched != current:
            current = patched
            activation = session.derive(object_=current, exceptions=decision.exceptions)

    annotated: dict[str, str] = {}
    if notes:
        annotated["mutation.notes"] = "; ".join(dict.fromkeys(notes))
    for key, program in policy.audit_annotations:
        value = session.evaluate(program, activation)
        if isinstance(value, CelError):
            message = f"failed to evaluate audit annotation {key!r}: {value.message}"
            return _outcome(policy, context, RuleResult(Status.ERROR, message))
        if value is not None and value != "":
            annotated[key] = value if isinstance(value, str) else str(value)
    changed = current is not context.request.object
    return _outcome(
        policy,
        context,
        RuleResult(Status.PASS, SUCCESS, properties=properties(**annotated)),
        patched=current if changed else None,
    )


def _mutation_error(mutation: CompiledMutation, message: str) -> RuleResult:
    return RuleResult(
        Status.ERROR,
        f"failed to apply mutation {mutation.index} ({mutation.patch_type}): {message}",
        properties=properties(**{MUTATION_INDEX: str(mutation.index)}),
    )


def _apply(
    mutation: CompiledMutation, current: Mapping[str, Any], value: Any, context: EvaluationContext
) -> tuple[Mapping[str, Any], tuple[str, ...]] | str:
    """Apply one mutation's value; the new object and notes, or an error message."""
    if mutation.patch_type == APPLY_CONFIGURATION:
        if not isinstance(value, dict):
            return f"the expression must return an Object{{...}} value, got {_type_name(value)}"
        merged = patching.apply_configuration(current, value, _schema_for(current, context))
        if merged.error is not None:
            return merged.error
        return merged.object, merged.notes
    if not isinstance(value, list) or not all(isinstance(op, dict) for op in value):
        return f"the expression must return a list of JSONPatch{{...}} values, got {_type_name(value)}"
    applied = patching.apply_json_patch(current, value)
    if applied.error is not None:
        return applied.error
    return applied.object, ()


def _schema_for(obj: Mapping[str, Any], context: EvaluationContext) -> Schema | None:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return None
    schemas = context.schemas if context.schemas is not None else default_schema_index()
    return schemas.for_kind(api_version, kind)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "map", list: "list", str: "string", bool: "bool", int: "int", float: "double"}.get(
        type(value), type(value).__name__
    )
