"""ValidatingPolicy evaluation: a pure function from (compiled policy, request context) to a response.

Pipeline (kyverno-cel-spec.md 3.1): matchConstraints -> PolicyExceptions -> matchConditions -> validations
(stopping at the first false or error) -> auditAnnotations. The outcome is one rule result with rule name "",
or "exception" when an exception decided it; a policy that does not match gives a response with no rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.cel.environment import CelError, validating_environment
from engine.compiler import CompiledException, CompiledValidatingPolicy, CompiledValidation
from engine.evaluation import EvaluationContext, Session, decide_exceptions, evaluate_in, properties, select
from engine.results import PolicyResponse, RuleResult, Status

SUCCESS = "success"
VALIDATION_INDEX = "cel.validationIndex"


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
) -> PolicyResponse:
    """Evaluate one compiled ValidatingPolicy (or autogen variant) against one request.

    Pass the request's `session` when evaluating several policies, so they share one activation; the caller
    then installs the request's services (`engine.evaluation.evaluate_in`) around the whole batch.
    """
    if policy.json_mode != (context.request is None):
        return _response(policy, context)
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
        result = RuleResult(Status.PASS, SUCCESS)
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
