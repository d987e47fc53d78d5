"""Shared evaluation machinery: the per-request context and lazily evaluated policy variables.

Every policy family evaluates against the same per-request data: the `object`, `oldObject`, `request` and
`namespaceObject` CEL variables, built once per request and shared by all policies through one `Session`.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
from engine.matching import NamespaceLabels
from engine.request import AdmissionRequest
from engine.results import ResourceKey

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
    resource: ResourceKey = field(default=ResourceKey("", "", "", ""))
    """Key of the object the request is about (derived; computed once per request)."""

    def __post_init__(self) -> None:
        subject = self.request.subject if self.request is not None else self.payload
        object.__setattr__(self, "resource", ResourceKey.of(subject))

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

    __slots__ = ("_activation", "_base", "_deadline", "_environment", "_time_budget")

    def __init__(self, environment: Environment, context: EvaluationContext) -> None:
        self._environment = environment
        self._base = context.base_data()
        self._base[VARIABLES] = {}
        self._base[EXCEPTIONS] = NO_EXCEPTIONS
        self._activation = environment.activation(self._base)
        self._time_budget = context.time_budget
        self._deadline = time.monotonic() + context.time_budget

    def start_policy(self) -> None:
        """Restart the time budget for the next policy."""
        self._deadline = time.monotonic() + self._time_budget

    def with_exceptions(self, allowed_images: list[str], allowed_values: list[str]) -> Any:
        """An activation that also binds `exceptions` from partial PolicyExceptions (rare: costs a conversion)."""
        data = dict(self._base)
        data[EXCEPTIONS] = {"allowedImages": allowed_images, "allowedValues": allowed_values}
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
