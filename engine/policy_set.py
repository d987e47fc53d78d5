"""A compiled, immutable set of policies and exceptions, and the one `evaluate` every front calls.

The CLI builds a PolicySet from files, the webhook (later) from files or the cluster; both then call
`evaluate(policy_set, context)`. Documents of policy kinds this version does not evaluate yet (Mutating,
Generating, Deleting, ImageValidating policies) are kept in `unsupported`, so that callers can say so instead
of silently ignoring them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine import patching
from engine.cel.environment import generating_environment, mutating_environment, validating_environment
from engine.compiler import (
    CompiledException,
    CompiledGeneratingPolicy,
    CompiledMutatingPolicy,
    CompiledPolicy,
    CompiledValidatingPolicy,
    compile_exception,
    compile_generating_policy,
    compile_mutating_policy,
    compile_validating_policy,
)
from engine.errors import PolicyCompileError
from engine.evaluation import EvaluationContext, Session, evaluate_in
from engine.generating import evaluate_generating
from engine.loader import Document
from engine.model import (
    EXCEPTION_KIND,
    GENERATING_KINDS,
    MUTATING_KINDS,
    POLICY_KINDS,
    VALIDATING_KINDS,
    is_policy_document,
    parse_generating_policy,
    parse_mutating_policy,
    parse_policy_exception,
    parse_validating_policy,
)
from engine.mutating import evaluate_mutating
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
    mutating: tuple[CompiledMutatingPolicy, ...] = ()
    generating: tuple[CompiledGeneratingPolicy, ...] = ()

    @property
    def compiled(self) -> tuple[CompiledPolicy, ...]:
        """Every compiled policy, in evaluation order: mutating, validating, generating."""
        return (*self.mutating, *self.validating, *self.generating)

    @property
    def compile_errors(self) -> list[PolicyCompileError]:
        errors = [p.error for p in self.compiled if p.error is not None and not p.variant]
        errors.extend(e.error for e in self.exceptions if e.error is not None)
        return errors

    @property
    def policy_count(self) -> int:
        """Policies as written (autogen variants not counted), as Kyverno's "Applying N policy rule(s)"."""
        written = sum(1 for p in self.compiled if not p.variant)
        return written + len(self.unsupported)

    def names(self) -> set[str]:
        return {p.name for p in self.compiled} | {p.name for p in self.unsupported}


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
    mutating: list[CompiledMutatingPolicy] = []
    generating: list[CompiledGeneratingPolicy] = []
    exceptions: list[CompiledException] = []
    unsupported: list[UnsupportedPolicy] = []
    for document in [*policy_documents, *exception_documents]:
        kind = document.data.get("kind")
        if kind in VALIDATING_KINDS:
            validating.extend(compile_validating_policy(parse_validating_policy(document)))
        elif kind in MUTATING_KINDS:
            mutating.extend(compile_mutating_policy(parse_mutating_policy(document)))
        elif kind in GENERATING_KINDS:
            generating.append(compile_generating_policy(parse_generating_policy(document)))
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
    return PolicySet(tuple(validating), tuple(exceptions), tuple(unsupported), tuple(mutating), tuple(generating))


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Everything a policy set decided about one request."""

    responses: tuple[PolicyResponse, ...]
    """Responses in the order the policies ran: mutating, then validating, then generating."""
    original: Mapping[str, Any] | None
    patched: Mapping[str, Any] | None
    """The object after every mutation, or None when no mutation changed it."""

    @property
    def generated(self) -> list[Mapping[str, Any]]:
        """Every downstream object the generating policies asked for."""
        return [obj for response in self.responses for obj in response.generated]

    def patch(self) -> list[dict[str, Any]]:
        """The RFC 6902 patch from the original object to the patched one (what an admission webhook returns)."""
        if self.patched is None or self.original is None:
            return []
        return patching.diff(self.original, self.patched)


def run(policy_set: PolicySet, context: EvaluationContext) -> Evaluation:
    """Mutate, validate, generate: mutating policies run in order, each on the previous one's output; validating
    and generating policies see the mutated object (kyverno-cel-spec.md 3.3)."""
    responses: list[PolicyResponse] = []
    original = context.request.object if context.request is not None else None
    resource = context.request.resource.resource if context.request is not None else None
    session: Session | None = None  # activations of either environment serve programs of both
    with evaluate_in(context.services):
        if policy_set.mutating and original is not None:
            session = Session(mutating_environment(), context)
            for mutating_policy in policy_set.mutating:
                if _cannot_match_variant(mutating_policy, resource):
                    continue
                outcome = evaluate_mutating(mutating_policy, context, policy_set.exceptions, session)
                responses.append(outcome.response)
                if outcome.patched is not None:
                    context = context.with_object(outcome.patched)
                    session = Session(mutating_environment(), context)
        if policy_set.validating:
            session = session or Session(validating_environment(), context)
            responses.extend(
                evaluate_validating(policy, context, policy_set.exceptions, session)
                for policy in policy_set.validating
                if not _cannot_match_variant(policy, resource)
            )
        if policy_set.generating and context.request is not None:
            session = session or Session(generating_environment(), context)
            responses.extend(
                evaluate_generating(policy, context, policy_set.exceptions, session) for policy in policy_set.generating
            )
    patched = context.request.object if context.request is not None else None
    return Evaluation(tuple(responses), original, patched if patched is not original else None)


def _cannot_match_variant(policy: CompiledPolicy, resource: str | None) -> bool:
    """An autogen variant that cannot match the request's resource gives no response at all (the policy as
    written always answers, with no rules when it does not match), which saves work on every request."""
    return (
        bool(policy.variant)
        and resource is not None
        and policy.resources is not None
        and resource not in policy.resources
    )


def evaluate(policy_set: PolicySet, context: EvaluationContext) -> list[PolicyResponse]:
    """Every response of the policy set for one request (see `run` for the patched object)."""
    return list(run(policy_set, context).responses)
