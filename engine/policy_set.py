"""A compiled, immutable set of policies and exceptions, and the one `evaluate` every front calls.

The CLI builds a PolicySet from files, the webhook (later) from files or the cluster; both then call
`evaluate(policy_set, context)`. Documents of policy kinds this version does not evaluate yet (Mutating,
Generating, Deleting, ImageValidating policies) are kept in `unsupported`, so that callers can say so instead
of silently ignoring them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.cel.environment import validating_environment
from engine.compiler import (
    CompiledException,
    CompiledValidatingPolicy,
    compile_exception,
    compile_validating_policy,
)
from engine.errors import PolicyCompileError
from engine.evaluation import EvaluationContext, Session, evaluate_in
from engine.loader import Document
from engine.model import (
    EXCEPTION_KIND,
    POLICY_KINDS,
    VALIDATING_KINDS,
    is_policy_document,
    parse_policy_exception,
    parse_validating_policy,
)
from engine.results import PolicyResponse
from engine.validating import evaluate_validating


@dataclass(frozen=True, slots=True)
class UnsupportedPolicy:
    kind: str
    name: str
    document: Document


@dataclass(frozen=True, slots=True)
class PolicySet:
    validating: tuple[CompiledValidatingPolicy, ...] = ()
    exceptions: tuple[CompiledException, ...] = ()
    unsupported: tuple[UnsupportedPolicy, ...] = ()

    @property
    def compile_errors(self) -> list[PolicyCompileError]:
        errors = [p.error for p in self.validating if p.error is not None and not p.variant]
        errors.extend(e.error for e in self.exceptions if e.error is not None)
        return errors

    @property
    def policy_count(self) -> int:
        """Policies as written (autogen variants not counted), as Kyverno's "Applying N policy rule(s)"."""
        return sum(1 for p in self.validating if not p.variant) + len(self.unsupported)

    def names(self) -> set[str]:
        return {p.name for p in self.validating} | {p.name for p in self.unsupported}


def split_documents(documents: Iterable[Document]) -> tuple[list[Document], list[Document]]:
    """(policy and exception documents, everything else)."""
    policies: list[Document] = []
    others: list[Document] = []
    for document in documents:
        (policies if is_policy_document(document.data) else others).append(document)
    return policies, others


def build_policy_set(policy_documents: Iterable[Document], exception_documents: Iterable[Document] = ()) -> PolicySet:
    """Parse and compile policies and exceptions. Raises SchemaError for documents that do not fit the schema.

    Exceptions may be mixed into `policy_documents`; `exception_documents` may only hold exceptions.
    """
    validating: list[CompiledValidatingPolicy] = []
    exceptions: list[CompiledException] = []
    unsupported: list[UnsupportedPolicy] = []
    for document in [*policy_documents, *exception_documents]:
        kind = document.data.get("kind")
        if kind in VALIDATING_KINDS:
            validating.extend(compile_validating_policy(parse_validating_policy(document)))
        elif kind == EXCEPTION_KIND:
            exceptions.append(compile_exception(parse_policy_exception(document)))
        elif kind in POLICY_KINDS:
            name = (
                document.data.get("metadata", {}).get("name", "")
                if isinstance(document.data.get("metadata"), dict)
                else ""
            )
            unsupported.append(UnsupportedPolicy(str(kind), str(name), document))
        else:
            raise document.error(f"unknown kind {kind!r} in group policies.kyverno.io", "kind")
    return PolicySet(tuple(validating), tuple(exceptions), tuple(unsupported))


def evaluate(policy_set: PolicySet, context: EvaluationContext) -> list[PolicyResponse]:
    """Evaluate every validating policy of the set against one request; one response per compiled policy."""
    session = Session(validating_environment(), context)
    with evaluate_in(context.services):
        return [
            evaluate_validating(policy, context, policy_set.exceptions, session) for policy in policy_set.validating
        ]
