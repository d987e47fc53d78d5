"""ValidatingPolicy evaluation: a pure function from (compiled policy, request context) to a response.

Pipeline (kyverno-cel-spec.md 3.1): matchConstraints -> PolicyExceptions -> matchConditions -> validations
(stopping at the first false or error) -> auditAnnotations. The outcome is one rule result with rule name "",
or "exception" when an exception decided it; a policy that does not match gives a response with no rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Any

from engine.cel.environment import CelError, Program, validating_environment
from engine.compiler import CompiledException, CompiledValidatingPolicy, CompiledValidation
from engine.evaluation import EvaluationContext, Session, evaluate_in
from engine.matching import MatchError, matches
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


def _properties(**values: str) -> MappingProxyType[str, str]:
    return MappingProxyType(dict(values))


def _exception_label(exception: CompiledException) -> str:
    return f"{exception.namespace}/{exception.name}" if exception.namespace else exception.name


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
    if context.request is not None:
        if policy.resources is not None and context.request.resource.resource not in policy.resources:
            return _response(policy, context)
        if policy.source.namespaced and context.request.namespace != policy.source.metadata.namespace:
            return _response(policy, context)  # a namespaced policy sees only its own namespace
        try:
            if not matches(policy.match_constraints, context.request, context.namespace):
                return _response(policy, context)
        except MatchError as error:
            return _response(policy, context, RuleResult(Status.ERROR, f"failed to execute matching: {error}"))
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
    applicable = [e for e in exceptions if e.applies_to(policy.kind, policy.name, context.now)]

    # 1. PolicyExceptions, before matchConditions.
    partial_images: list[str] = []
    partial_values: list[str] = []
    full: list[CompiledException] = []
    if applicable:
        for exception in applicable:
            if exception.error is not None:
                if full:
                    continue
                return _response(
                    policy,
                    context,
                    RuleResult(
                        Status.ERROR,
                        f"policy exception {_exception_label(exception)} failed to compile: {exception.error}",
                        rule="exception",
                    ),
                )
            outcome = _all_true(scope, (p for _, p in exception.match_conditions))
            if isinstance(outcome, CelError):
                if full:
                    continue
                return _response(
                    policy,
                    context,
                    RuleResult(
                        Status.ERROR,
                        f"failed to evaluate policy exception {_exception_label(exception)}: {outcome.message}",
                        rule="exception",
                    ),
                )
            if not outcome:
                continue
            if exception.source.partial:
                partial_images.extend(exception.source.images)
                partial_values.extend(exception.source.allowed_values)
            else:
                full.append(exception)
        if full:
            decider = max(full, key=lambda e: e.source.priority)
            status = Status.PASS if decider.source.report_result == "pass" else Status.SKIP
            verb = "passed" if status is Status.PASS else "skipped"
            labels = ", ".join(_exception_label(e) for e in full)
            return _response(
                policy,
                context,
                RuleResult(
                    status,
                    f"rule is {verb} due to policy exception: {labels}",
                    rule="exception",
                    properties=_properties(exceptions=",".join(e.name for e in full)),
                ),
            )

    activation = scope.with_exceptions(partial_images, partial_values) if partial_images or partial_values else None
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
                properties=_properties(**{VALIDATION_INDEX: str(validation.index)}),
            )
            break
        if not value:
            result = RuleResult(
                Status.FAIL,
                _failure_message(scope, validation, activation),
                properties=_properties(**{VALIDATION_INDEX: str(validation.index)}),
            )
            break
    if result is None:
        result = RuleResult(Status.PASS, SUCCESS)
    if result.status is Status.ERROR or not policy.audit_annotations:
        return _response(policy, context, result)

    # 4. auditAnnotations, on pass and fail.
    properties = dict(result.properties)
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
        properties[key] = value if isinstance(value, str) else str(value)
    return _response(policy, context, RuleResult(result.status, result.message, properties=_properties(**properties)))


def _all_true(scope: Session, programs: Iterable[Program]) -> bool | CelError:
    for program in programs:
        value = scope.evaluate(program)
        if isinstance(value, CelError):
            return value
        if value is not True:
            return (
                False
                if isinstance(value, bool)
                else CelError(f"matchCondition must return bool, got {type(value).__name__}")
            )
    return True


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
