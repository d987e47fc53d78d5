"""ValidatingPolicy evaluation: a pure function from (compiled policy, request context) to a response.

Pipeline (kyverno-cel-spec.md 3.1): matchConstraints -> PolicyExceptions -> matchConditions -> validations
(stopping at the first false or error) -> auditAnnotations. The outcome is one rule result with rule name "",
or "exception" when an exception decided it; a policy that does not match gives a response with no rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.cel.environment import CelError, Program, validating_environment
from engine.compiler import CompiledException, CompiledValidatingPolicy, CompiledValidation
from engine.evaluation import EvaluationContext, Session, decide_exceptions, evaluate_in, properties, select
from engine.results import PolicyResponse, RuleResult, Status

SUCCESS = "success"
VALIDATION_INDEX = "cel.validationIndex"
PASSED = RuleResult(Status.PASS, SUCCESS)


def _response(policy: CompiledValidatingPolicy, context: EvaluationContext, *rules: RuleResult) -> PolicyResponse:
    return PolicyResponse(
        policy=policy.ref,
        resource=context.resource,
        rules=rules,
        operation=context.request.operation if context.request is not None else "",
        autogen=policy.variant,
    )


def evaluate_validating(
    policy: CompiledValidatingPolicy,
    context: EvaluationContext,
    exceptions: Sequence[CompiledException] = (),
    session: Session | None = None,
    *,
    matched: bool = False,
) -> PolicyResponse:
    """Evaluate one compiled ValidatingPolicy (or autogen variant) against one request.

    Pass the request's `session` when evaluating several policies, so they share one activation; the caller
    then installs the request's services (`engine.evaluation.evaluate_in`) around the whole batch.
    """
    if policy.json_mode != (context.request is None):
        return _response(policy, context)
    if not matched:  # `matched`: the caller already knows the request falls under matchConstraints
        selected = select(policy, context)
        if selected is not True:
            return _response(policy, context) if selected is False else _response(policy, context, selected)
    if policy.error is not None:
        status = Status.SKIP if policy.source.failure_policy == "Ignore" else Status.ERROR
        return _response(policy, context, RuleResult(status, f"policy failed to compile: {policy.error}"))
    if session is None:
        session = Session(validating_environment(), context)
        with evaluate_in(context.services):
            return _evaluate_matched(policy, context, exceptions, session)
    session.start_policy()
    return _evaluate_matched(policy, context, exceptions, session)


@dataclass(frozen=True, slots=True)
class FusedValidations:
    """The validations of several policies as one program, `[p1, p2, ...]`, each element the `&&` of one policy's
    validations: one runtime call instead of one per expression.

    It decides passes only: an element that is `true` means every validation of that policy was true, so the
    policy passes exactly as it would on its own. A `false` element sends that policy to the one-by-one path,
    which finds the failing validation and its message. Any other value (an error anywhere, the iteration budget
    spent by the whole batch) says nothing about which policy did what, so all of them go one by one.
    """

    policies: tuple[CompiledValidatingPolicy, ...]
    program: Program


def fusable(policy: CompiledValidatingPolicy, exceptions: Sequence[CompiledException]) -> bool:
    """Whether a policy's pass can be decided by its validations alone (no matchConditions, exceptions, audit
    annotations or compile error to take into account)."""
    return (
        policy.error is None
        and bool(policy.validations)
        and not policy.match_conditions
        and not policy.audit_annotations
        and not policy.json_mode
        and not any(
            ref.name == policy.name and ref.kind == policy.kind
            for exception in exceptions
            for ref in exception.source.policy_refs
        )
    )


def fuse(policies: Sequence[CompiledValidatingPolicy]) -> FusedValidations | None:
    """The fused program of `policies` (at least two, all `fusable`), or None when it cannot be built."""
    if len(policies) < 2:
        return None
    programs = [validation.program for policy in policies for validation in policy.validations]
    elements = []
    index = 0
    for policy in policies:
        count = len(policy.validations)
        elements.append(" && ".join(f"{{{i}}}" for i in range(index, index + count)))
        index += count
    template = "[" + ", ".join(elements) + "]"
    program = validating_environment().combine(programs, template, path="fused validations")
    return None if program is None else FusedValidations(tuple(policies), program)


def evaluate_fused(
    fused: FusedValidations, context: EvaluationContext, session: Session
) -> list[PolicyResponse | None] | None:
    """Per fused policy, its pass response when all of its validations were true, or None when it must be
    evaluated on its own (a false somewhere: which validation, and its message, are only known one by one).
    None for all of them when the batch did not give a list of booleans (an error anywhere, a budget spent)."""
    session.start_policy()
    value = session.evaluate(fused.program)
    if type(value) is not list or len(value) != len(fused.policies):
        return None
    if not all(item is True or item is False for item in value):
        return None
    return [
        _response(policy, context, PASSED) if passed else None
        for policy, passed in zip(fused.policies, value, strict=True)
    ]


def _evaluate_matched(
    policy: CompiledValidatingPolicy,
    context: EvaluationContext,
    exceptions: Sequence[CompiledException],
    scope: Session,
) -> PolicyResponse:
    # 1. PolicyExceptions, before matchConditions.
    decision = decide_exceptions(policy.kind, policy.name, context, exceptions, scope)
    if decision.result is not None:
        return _response(policy, context, decision.result)
    activation = decision.activation
    # 2. matchConditions.
    for _, program in policy.match_conditions:
        value = scope.evaluate(program, activation)
        if isinstance(value, CelError) or not isinstance(value, bool):
            message = (
                value.message
                if isinstance(value, CelError)
                else (f"matchCondition must return bool, got {type(value).__name__}")
            )
            if policy.source.failure_policy == "Ignore":
                return _response(policy, context, RuleResult(Status.SKIP, "skip", skip_reason="match conditions"))
            return _response(
                policy,
                context,
                RuleResult(Status.ERROR, f"failed to load context: {message}", rule="evaluation"),
            )
        if not value:
            return _response(policy, context, RuleResult(Status.SKIP, "skip", skip_reason="match conditions"))

    # 3. validations, stopping at the first false or error.
    result: RuleResult | None = None
    for validation in policy.validations:
        value = scope.evaluate(validation.program, activation)
        if isinstance(value, CelError) or not isinstance(value, bool):
            message = (
                value.message
                if isinstance(value, CelError)
                else (f"expression must return bool, got {type(value).__name__}")
            )
            result = RuleResult(
                Status.ERROR,
                f"error: {message}",
                properties=properties(**{VALIDATION_INDEX: str(validation.index)}),
            )
            break
        if not value:
            result = RuleResult(
                Status.FAIL,
                _failure_message(scope, validation, activation),
                properties=properties(**{VALIDATION_INDEX: str(validation.index)}),
            )
            break
    if result is None:
        result = PASSED
    if result.status is Status.ERROR or not policy.audit_annotations:
        return _response(policy, context, result)

    # 4. auditAnnotations, on pass and fail.
    annotated = dict(result.properties)
    for key, program in policy.audit_annotations:
        value = scope.evaluate(program, activation)
        if isinstance(value, CelError):
            return _response(
                policy,
                context,
                RuleResult(
                    Status.ERROR,
                    f"failed to evaluate audit annotation {key!r}: {value.message}",
                    properties=result.properties,
                ),
            )
        if value is None or value == "":
            continue
        annotated[key] = value if isinstance(value, str) else str(value)
    return _response(policy, context, RuleResult(result.status, result.message, properties=properties(**annotated)))


def _failure_message(scope: Session, validation: CompiledValidation, activation: Any) -> str:
    if validation.message_program is not None:
        value = scope.evaluate(validation.message_program, activation)
        if isinstance(value, CelError):
            return f"failed to evaluate message expression: {value.message}"
        if not isinstance(value, str):
            return f"failed to evaluate message expression: must return string, got {type(value).__name__}"
        if value.strip():
            return value
    if validation.message:
        return validation.message
    return f"CEL expression validation failed at index {validation.index}"
