"""A compiled, immutable set of policies and exceptions, and the one `evaluate` every front calls.

The CLI builds a PolicySet from files, the webhook (later) from files or the cluster; both then call
`evaluate(policy_set, context)`. Documents of policy kinds this version does not evaluate yet (Mutating,
Generating, Deleting, ImageValidating policies) are kept in `unsupported`, so that callers can say so instead
of silently ignoring them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from engine import patching, pruning
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
from engine.evaluation import EvaluationContext, Selectable, Session, decide_statically, evaluate_in, select
from engine.generating import evaluate_generating
from engine.loader import Document
from engine.matching import RequestShape
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
from engine.validating import FusedValidations, evaluate_fused, evaluate_validating, fusable, fuse


@dataclass(frozen=True, slots=True)
class UnsupportedPolicy:
    kind: str
    name: str
    document: Document


_MAX_PLANS = 4096
"""Request shapes remembered per policy set (bounded: shapes come from requests)."""

_Policy = TypeVar("_Policy", CompiledMutatingPolicy, CompiledValidatingPolicy)


_MutatingEntries = tuple[tuple[CompiledMutatingPolicy, bool | None], ...]
_ValidatingEntries = tuple[tuple[CompiledValidatingPolicy, bool | None], ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """What to evaluate for one request shape: (policy, static match decision) pairs per family, in order."""

    mutating: _MutatingEntries
    validating: _ValidatingEntries
    fused: FusedValidations | None = None
    """The validating policies that match every request of this shape and can be tried in one runtime call."""
    admission_mutating: _MutatingEntries = dataclasses.field(init=False, repr=False, compare=False)
    admission_validating: _ValidatingEntries = dataclasses.field(init=False, repr=False, compare=False)
    """The entries without the policies that cannot match: what admission (`unmatched=False`) evaluates."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "admission_mutating", tuple(e for e in self.mutating if e[1] is not False))
        object.__setattr__(self, "admission_validating", tuple(e for e in self.validating if e[1] is not False))


def _planned(policies: Iterable[_Policy], shape: RequestShape) -> tuple[tuple[_Policy, bool | None], ...]:
    planned: list[tuple[_Policy, bool | None]] = []
    for policy in policies:
        decision = decide_statically(policy, shape)
        if decision is False and policy.variant:
            continue
        planned.append((policy, decision))
    return tuple(planned)


@dataclass(frozen=True, slots=True)
class PolicySet:
    validating: tuple[CompiledValidatingPolicy, ...] = ()
    exceptions: tuple[CompiledException, ...] = ()
    unsupported: tuple[UnsupportedPolicy, ...] = ()
    mutating: tuple[CompiledMutatingPolicy, ...] = ()
    generating: tuple[CompiledGeneratingPolicy, ...] = ()
    reads: pruning.Reads = dataclasses.field(init=False, repr=False, compare=False, default=pruning.EVERYTHING)
    """What the set's expressions can read of `object`/`oldObject`: the activation gets only that."""
    pruners: Mapping[str, pruning.Pruner] = dataclasses.field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    """Per root variable, the function that cuts a request's value down to `reads`."""

    _plans: dict[RequestShape, Plan] = dataclasses.field(init=False, repr=False, compare=False, default_factory=dict)
    _fusions: dict[tuple[int, ...], FusedValidations | None] = dataclasses.field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def plan(self, shape: RequestShape) -> Plan:
        """The mutating and validating policies for requests of this shape, in order, each with what matching
        decides for every such request: True (matches; `select` need not run), None (depends on the request's
        labels or name) or False (cannot match; autogen variants that cannot match are left out). Memoised per
        shape: a webhook sees a handful of shapes, so matching costs a dict look-up, not a rule walk per policy."""
        found = self._plans.get(shape)
        if found is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            validating = _planned(self.validating, shape)
            found = self._plans[shape] = Plan(_planned(self.mutating, shape), validating, self._fused(validating))
        return found

    def _fused(self, planned: Sequence[tuple[CompiledValidatingPolicy, bool | None]]) -> FusedValidations | None:
        policies = [policy for policy, decision in planned if decision is True and fusable(policy, self.exceptions)]
        key = tuple(id(policy) for policy in policies)
        if key not in self._fusions:  # shapes with the same policies (CREATE and UPDATE of pods) share one
            self._fusions[key] = fuse(policies)
        return self._fusions[key]

    @property
    def unplanned(self) -> Plan:
        """Every mutating and validating policy, each to be matched (for payloads that are not requests)."""
        return Plan(tuple((p, None) for p in self.mutating), tuple((p, None) for p in self.validating))

    def __post_init__(self) -> None:
        exception_programs = pruning.programs_in(self.exceptions)
        reads = pruning.merge(
            [*(policy.reads for policy in self.compiled), *(program.reads for program in exception_programs)]
        )
        object.__setattr__(self, "reads", reads)
        object.__setattr__(self, "pruners", {root: pruning.pruner(reads.tree(root)) for root in pruning.ROOTS})

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


def run(policy_set: PolicySet, context: EvaluationContext, *, unmatched: bool = True) -> Evaluation:
    """Mutate, validate, generate: mutating policies run in order, each on the previous one's output; validating
    and generating policies see the mutated object (kyverno-cel-spec.md 3.3).

    Every policy as written answers, with no rules when it does not match (`celvern test` scores that as
    "Excluded"); autogen variants that cannot match the request's resource give no response. With
    `unmatched=False` (admission, which only acts on rule results), mutating and validating policies that cannot
    match requests of this shape (`PolicySet.plan`) give no response either and cost nothing. Every generating
    policy always answers (the generator pairs policies with responses).
    """
    responses: list[PolicyResponse] = []
    request = context.request
    original = request.object if request is not None else None
    plan = policy_set.plan(RequestShape.of(request)) if request is not None else policy_set.unplanned
    if unmatched:
        mutating, validating = plan.mutating, plan.validating
    else:
        mutating, validating = plan.admission_mutating, plan.admission_validating
    session: Session | None = None  # activations of either environment serve programs of both
    with evaluate_in(context.services):
        if mutating and original is not None:
            session = Session(mutating_environment(), context, policy_set.pruners)
            for mutating_policy, decision in mutating:
                matched = _matched(mutating_policy, decision, context, unmatched)
                if matched is None:
                    continue
                outcome = evaluate_mutating(mutating_policy, context, policy_set.exceptions, session, matched=matched)
                responses.append(outcome.response)
                if outcome.patched is not None:
                    context = context.with_object(outcome.patched)
                    session = Session(mutating_environment(), context, policy_set.pruners)
        if validating:
            session = session or Session(validating_environment(), context, policy_set.pruners)
            exceptions = policy_set.exceptions
            passed: dict[int, PolicyResponse] = {}
            if plan.fused is not None:
                fused = evaluate_fused(plan.fused, context, session)
                if fused is not None:
                    passed = {id(p): r for p, r in zip(plan.fused.policies, fused, strict=True) if r is not None}
            for validating_policy, decision in validating:
                response = passed.get(id(validating_policy))
                if response is None:
                    matched = _matched(validating_policy, decision, context, unmatched)
                    if matched is None:
                        continue
                    response = evaluate_validating(validating_policy, context, exceptions, session, matched=matched)
                responses.append(response)
        if policy_set.generating and request is not None:
            session = session or Session(generating_environment(), context, policy_set.pruners)
            responses.extend(
                evaluate_generating(policy, context, policy_set.exceptions, session) for policy in policy_set.generating
            )
    patched = context.request.object if context.request is not None else None
    return Evaluation(tuple(responses), original, patched if patched is not original else None)


def _matched(policy: Selectable, decision: bool | None, context: EvaluationContext, unmatched: bool) -> bool | None:
    """Whether the policy is known to match (True), must be matched by its evaluation (False), or is left out
    (None: it does not match and admission does not want rule-less responses)."""
    if decision is True:
        return True
    if unmatched:
        return False
    selected = select(policy, context)  # labels or names decide; a rule-less response is not wanted
    if selected is False:
        return None
    return selected is True  # an error result is produced by the evaluation's own matching


def evaluate(policy_set: PolicySet, context: EvaluationContext, *, unmatched: bool = True) -> list[PolicyResponse]:
    """Every response of the policy set for one request (see `run` for the patched object and `unmatched`)."""
    return list(run(policy_set, context, unmatched=unmatched).responses)
