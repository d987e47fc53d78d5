"""Evaluation results: what a policy decided about one resource, as plain immutable data.

Kyverno reports one rule response per CEL policy (rule name "" for ValidatingPolicy, "exception" when a
PolicyException decided, "evaluation" for a matchCondition error). celvern keeps that shape so that reports
and `kyverno-test.yaml` expectations carry over unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class Status(enum.StrEnum):
    """The outcome of one rule, as in PolicyReports."""

    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    ERROR = "error"
    SKIP = "skip"


class Action(enum.StrEnum):
    """validationActions: what admission does with a failing result."""

    DENY = "Deny"
    WARN = "Warn"
    AUDIT = "Audit"


_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ResourceKey:
    """Identifies the resource a result is about (for reports and test matching)."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str = ""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0] if "/" in self.api_version else ""

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def path(self) -> str:
        """`namespace/Kind/name` as Kyverno prints it (empty namespace omitted)."""
        return f"{self.namespace}/{self.kind}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    @classmethod
    def of(cls, obj: Mapping[str, Any] | None) -> ResourceKey:
        """Key of a Kubernetes object (missing fields become empty strings)."""
        obj = obj or {}
        metadata = obj.get("metadata")
        if not isinstance(metadata, Mapping):
            metadata = {}

        def text(value: Any) -> str:
            return value if isinstance(value, str) else ""

        return cls(
            api_version=text(obj.get("apiVersion")),
            kind=text(obj.get("kind")),
            namespace=text(metadata.get("namespace")),
            name=text(metadata.get("name")) or text(metadata.get("generateName")),
            uid=text(metadata.get("uid")),
        )


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule response: the unit of results in reports and tests."""

    status: Status
    message: str
    rule: str = ""
    properties: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    skip_reason: str = ""


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """The policy a result came from, with the metadata reports carry."""

    kind: str
    name: str
    namespace: str = ""
    severity: str = ""
    category: str = ""
    scored: bool = True
    validation_actions: tuple[Action, ...] = (Action.DENY,)
    failure_policy: str = "Fail"

    @property
    def key(self) -> str:
        """`name`, or `namespace/name` for namespaced policies (as in reports)."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True, slots=True)
class PolicyResponse:
    """Everything one policy decided about one resource. `rules` is empty when the policy did not match."""

    policy: PolicyRef
    resource: ResourceKey
    rules: tuple[RuleResult, ...]
    operation: str = "CREATE"
    autogen: str = ""
    """Name of the autogen variant that produced this response ("" for the policy as written)."""
    patched_object: Mapping[str, Any] | None = None
    """For mutating policies: the object after this policy (and the policies before it) ran."""
    generated: tuple[Mapping[str, Any], ...] = ()
    """For generating policies: the downstream objects to create or keep in sync."""

    @property
    def matched(self) -> bool:
        return bool(self.rules)


def report_status(policy: PolicyRef, status: Status) -> Status:
    """The status a report shows: a fail of an unscored policy (`policies.kyverno.io/scored: "false"`) is a warn."""
    if status is Status.FAIL and not policy.scored:
        return Status.WARN
    return status
