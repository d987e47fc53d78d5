"""Shared evaluation machinery: the per-request context and lazily evaluated policy variables.

Every policy family evaluates against the same per-request data: the `object`, `oldObject`, `request` and
`namespaceObject` CEL variables, built once per request and shared by all policies through one `Session`.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from engine import matching
from engine.cel import services as cel_services
from engine.cel.environment import (
    EXCEPTIONS,
    NAMESPACE_OBJECT,
    OBJECT,
    OLD_OBJECT,
    REQUEST,
    VARIABLES,
    CelError,
    Environment,
    Program,
)
from engine.compiler import CompiledException
from engine.matching import MatchError, NamespaceLabels, RequestShape, matches
from engine.model import MatchResources
from engine.pruning import Pruner
from engine.request import AdmissionRequest
from engine.resources import DEFAULT_MAPPER, ResourceMapper
from engine.results import ResourceKey, RuleResult, Status
from engine.schemas import SchemaIndex

DEFAULT_TIME_BUDGET = 1.0
"""Seconds one policy evaluation may take before its remaining expressions are refused."""


@dataclass(frozen=True, slots=True)
class EvaluationContext:
    """Everything about one request that policies are evaluated against (immutable; shared by policies)."""

    request: AdmissionRequest | None
    """None for JSON payloads (evaluation.mode JSON)."""
    payload: Mapping[str, Any] | None = None
    namespace: NamespaceLabels = field(default_factory=lambda: NamespaceLabels({}))
    namespace_object: Mapping[str, Any] | None = None
    services: cel_services.Services = field(default_factory=cel_services.Services)
    now: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    time_budget: float = DEFAULT_TIME_BUDGET
    mapper: ResourceMapper = DEFAULT_MAPPER
    """Kind <-> resource mapping (scope of generated kinds); the CLI adds CRDs to it."""
    schemas: SchemaIndex | None = None
    """Structural schemas for ApplyConfiguration merges; None means the default Kubernetes schemas."""
    resource: ResourceKey = field(default=ResourceKey("", "", "", ""))
    """Key of the object the request is about (derived; computed once per request)."""

    def __post_init__(self) -> None:
        subject = self.request.subject if self.request is not None else self.payload
        key = ResourceKey.of(subject)
        if self.request is not None and key.namespace != self.request.namespace:
            key = dataclasses.replace(key, namespace=self.request.namespace)  # e.g. defaulted to `default`
        object.__setattr__(self, "resource", key)

    def with_object(self, obj: Mapping[str, Any]) -> EvaluationContext:
        """The same request about a different (mutated) object; oldObject is unchanged."""
        assert self.request is not None
        return dataclasses.replace(self, request=dataclasses.replace(self.request, object=obj))

    def base_data(self) -> dict[str, Any]:
        """CEL variables shared by every policy of this request."""
        if self.request is None:
            return {OBJECT: self.payload}
        return {
            OBJECT: self.request.object,
            OLD_OBJECT: self.request.old_object,
            REQUEST: self.request.to_cel(),
            NAMESPACE_OBJECT: self.namespace_object,
        }


class Session:
    """The CEL activation of one request, shared by every policy evaluated against it.

    The runtime converts `object` (and the other inputs) into CEL values lazily, once per activation; for a
    10 KB Pod that conversion costs far more than evaluating a policy, so one activation serves all policies.
    Policy variables are bound inside each compiled program (see `engine.cel.rewriting.bind_variables`) and
    need no per-policy state here. Each policy gets a time budget: once it is spent, its remaining expressions
    are refused with an error instead of run.
    """

    __slots__ = ("_activation", "_base", "_deadline", "_environment", "_pruners", "_time_budget")

    def __init__(
        self, environment: Environment, context: EvaluationContext, pruners: Mapping[str, Pruner] | None = None
    ) -> None:
        """`pruners`: per root variable (`object`, `oldObject`), what cuts its value down to the parts the
        expressions evaluated in this session can read (`engine.pruning`). None: the activation gets it all."""
        self._environment = environment
        self._pruners = pruners or {}
        self._base = context.base_data()
        for root, prune in self._pruners.items():
            if self._base.get(root) is not None:
                self._base[root] = prune(self._base[root])
        self._base[VARIABLES] = {}
        self._base[EXCEPTIONS] = NO_EXCEPTIONS
        self._activation = environment.activation(self._base)
        self._time_budget = context.time_budget
        self._deadline = time.monotonic() + context.time_budget

    def start_policy(self) -> None:
        """Restart the time budget for the next policy."""
        self._deadline = time.monotonic() + self._time_budget

    def derive(self, *, object_: Any = None, exceptions: Mapping[str, list[str]] | None = None) -> Any:
        """A new activation differing from the session's in `object` and/or `exceptions` (costs a conversion)."""
        data = dict(self._base)
        if object_ is not None:
            prune = self._pruners.get(OBJECT)
            data[OBJECT] = object_ if prune is None else prune(object_)
        if exceptions is not None:
            data[EXCEPTIONS] = exceptions
        return self._environment.activation(data)

    def evaluate(self, program: Program, activation: Any = None) -> Any:
        """The program's value, or a CelError (runtime error, iteration or time budget)."""
        if time.monotonic() > self._deadline:
            return CelError("evaluation exceeded its time budget; the remaining expressions were not run")
        return program.evaluate(self._activation if activation is None else activation)


NO_EXCEPTIONS: Mapping[str, list[str]] = {"allowedImages": [], "allowedValues": []}


def evaluate_in(services: cel_services.Services) -> Any:
    """Context manager that installs the services library functions may use during evaluation."""
    return cel_services.use(services)


def properties(**values: str) -> MappingProxyType[str, str]:
    """Immutable result properties."""
    return MappingProxyType(dict(values))


class Selectable(Protocol):
    """What `select` needs of a compiled policy of any family."""

    @property
    def resources(self) -> frozenset[str] | None: ...

    @property
    def match_constraints(self) -> MatchResources | None: ...

    @property
    def namespace(self) -> str | None:
        """The policy's namespace for namespaced kinds, None for cluster-wide policies."""


def select(policy: Selectable, context: EvaluationContext) -> bool | RuleResult:
    """Whether the request falls under the policy's matchConstraints; an error result when undecidable.

    A quick look-up of the request's resource among the policy's candidate resources rejects most policies
    before any selector is examined. A namespaced policy sees only requests in its own namespace.
    """
    request = context.request
    if request is None:
        return True
    if policy.resources is not None and request.resource.resource not in policy.resources:
        return False
    if policy.namespace is not None and request.namespace != policy.namespace:
        return False
    try:
        return matches(policy.match_constraints, request, context.namespace)
    except MatchError as error:
        return RuleResult(Status.ERROR, f"failed to execute matching: {error}")


def decide_statically(policy: Selectable, shape: RequestShape) -> bool | None:
    """What `select` answers for every request of this shape, or None when it depends on more than the shape."""
    if policy.resources is not None and shape.resource not in policy.resources:
        return False
    if policy.namespace is not None:
        return None
    return matching.decide_statically(policy.match_constraints, shape)


@dataclass(frozen=True, slots=True)
class ExceptionDecision:
    """What PolicyExceptions decided: a final result (full exemption or error), or the activation to use."""

    result: RuleResult | None = None
    activation: Any = None
    """An activation binding `exceptions` from partial exceptions; None to use the session's own."""
    exceptions: Mapping[str, list[str]] | None = None
    """The `exceptions` variable bound in `activation` (None when no partial exception applies)."""


NO_DECISION = ExceptionDecision()
"""No exception applies: evaluate the policy with the session's activation."""


def exception_label(exception: CompiledException) -> str:
    return f"{exception.namespace}/{exception.name}" if exception.namespace else exception.name


def _all_true(session: Session, programs: Iterable[Program]) -> bool | CelError:
    for program in programs:
        value = session.evaluate(program)
        if isinstance(value, CelError):
            return value
        if value is not True:
            return (
                False
                if isinstance(value, bool)
                else CelError(f"matchCondition must return bool, got {type(value).__name__}")
            )
    return True


def decide_exceptions(
    kind: str, name: str, context: EvaluationContext, exceptions: Sequence[CompiledException], session: Session
) -> ExceptionDecision:
    """Apply the PolicyExceptions that target policy `kind`/`name` (kyverno-cel-spec.md 1.7 and 3.1)."""
    if not exceptions:
        return NO_DECISION
    applicable = [e for e in exceptions if e.applies_to(kind, name, context.now)]
    if not applicable:
        return NO_DECISION
    images: list[str] = []
    values: list[str] = []
    full: list[CompiledException] = []
    for exception in applicable:
        if exception.error is not None:
            if full:
                continue
            message = f"policy exception {exception_label(exception)} failed to compile: {exception.error}"
            return ExceptionDecision(RuleResult(Status.ERROR, message, rule="exception"))
        outcome = _all_true(session, (program for _, program in exception.match_conditions))
        if isinstance(outcome, CelError):
            if full:
                continue
            message = f"failed to evaluate policy exception {exception_label(exception)}: {outcome.message}"
            return ExceptionDecision(RuleResult(Status.ERROR, message, rule="exception"))
        if not outcome:
            continue
        if exception.source.partial:
            images.extend(exception.source.images)
            values.extend(exception.source.allowed_values)
        else:
            full.append(exception)
    if full:
        decider = max(full, key=lambda e: e.source.priority)
        status = Status.PASS if decider.source.report_result == "pass" else Status.SKIP
        verb = "passed" if status is Status.PASS else "skipped"
        labels = ", ".join(exception_label(e) for e in full)
        return ExceptionDecision(
            RuleResult(
                status,
                f"rule is {verb} due to policy exception: {labels}",
                rule="exception",
                properties=properties(exceptions=",".join(e.name for e in full)),
            )
        )
    if images or values:
        partial = {"allowedImages": images, "allowedValues": values}
        return ExceptionDecision(activation=session.derive(exceptions=partial), exceptions=partial)
    return NO_DECISION
