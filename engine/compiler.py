"""Compile policies once into immutable programs.

Compilation turns a parsed policy (`engine.model`) into a `CompiledValidatingPolicy`: every CEL expression
compiled to a `Program`, autogen variants derived, variables ordered and their dependencies known. A policy
whose CEL does not compile is not dropped: its compiled form carries the error, and evaluation turns it into an
`error` result (or a skip under `failurePolicy: Ignore`), so that a broken policy never fails open silently
(k8s `validator.compileError`).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from engine import autogen
from engine.cel.environment import (
    Environment,
    Program,
    VariableDefinition,
    generating_environment,
    mutating_environment,
    validating_environment,
)
from engine.errors import PolicyCompileError
from engine.matching import candidate_resources
from engine.model import (
    GeneratingPolicy,
    MatchResources,
    MutatingPolicy,
    NamedExpression,
    PolicyException,
    ValidatingPolicy,
)
from engine.pruning import EVERYTHING, Reads, merge, programs_in
from engine.results import PolicyRef
from engine.templating import Template, TemplateError, parse_template

SEVERITY = "policies.kyverno.io/severity"
CATEGORY = "policies.kyverno.io/category"
SCORED = "policies.kyverno.io/scored"


@dataclass(frozen=True, slots=True)
class CompiledVariable:
    name: str
    program: Program
    index: int


@dataclass(frozen=True, slots=True)
class CompiledValidation:
    index: int
    program: Program
    message: str
    message_program: Program | None
    reason: str


class _Identity:
    """What every compiled policy family shares: identity from its source, candidate resources from its match."""

    __slots__ = ()
    source: ValidatingPolicy | MutatingPolicy | GeneratingPolicy
    match_constraints: MatchResources | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "resources", candidate_resources(self.match_constraints))
        # Policy variables are only ever evaluated inlined into the expressions that read them (as `cel.bind`s),
        # so their standalone programs, whose whole value counts as read, do not take part.
        programs = programs_in(self, skip=(CompiledVariable,))
        object.__setattr__(self, "reads", merge(program.reads for program in programs))

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def namespace(self) -> str | None:
        """The policy's namespace for namespaced kinds, None for cluster-wide policies."""
        return self.source.metadata.namespace if self.source.namespaced else None


@dataclass(frozen=True, slots=True)
class CompiledValidatingPolicy(_Identity):
    """A ValidatingPolicy (or one of its autogen variants) ready to evaluate."""

    source: ValidatingPolicy
    ref: PolicyRef
    variant: str
    """"" for the policy as written, "autogen" or "autogen-cronjobs" for autogen variants."""
    match_constraints: MatchResources | None
    match_conditions: tuple[tuple[str, Program], ...] = ()
    variables: Mapping[str, CompiledVariable] = field(default_factory=dict)
    validations: tuple[CompiledValidation, ...] = ()
    audit_annotations: tuple[tuple[str, Program], ...] = ()
    error: PolicyCompileError | None = None
    resources: frozenset[str] | None = None
    reads: Reads = EVERYTHING
    """What the policy's expressions can read of `object`/`oldObject` (derived; see `engine.pruning`)."""
    """Plural resources the policy can match (None: any); see `engine.matching.candidate_resources`."""

    @property
    def json_mode(self) -> bool:
        return self.source.evaluation_mode == "JSON"


@dataclass(frozen=True, slots=True)
class CompiledException:
    """A PolicyException with its matchConditions compiled in the target policies' environment."""

    source: PolicyException
    match_conditions: tuple[tuple[str, Program], ...] = ()
    error: PolicyCompileError | None = None

    @property
    def name(self) -> str:
        return self.source.metadata.name

    @property
    def namespace(self) -> str:
        return self.source.metadata.namespace

    def applies_to(self, kind: str, name: str, now: datetime.datetime) -> bool:
        """Whether this exception targets the policy (by kind and name) and has not expired."""
        if self.source.expires_at is not None and now >= self.source.expires_at:
            return False
        return any(ref.name == name and ref.kind == kind for ref in self.source.policy_refs)


def policy_ref(policy: ValidatingPolicy | MutatingPolicy | GeneratingPolicy) -> PolicyRef:
    """The report-facing identity of a policy, with severity/category from its annotations."""
    annotations = policy.metadata.annotations
    actions = policy.validation_actions if isinstance(policy, ValidatingPolicy) else ()
    return PolicyRef(
        kind=policy.kind,
        name=policy.metadata.name,
        namespace=policy.metadata.namespace,
        severity=annotations.get(SEVERITY, ""),
        category=annotations.get(CATEGORY, ""),
        scored=annotations.get(SCORED, "true").lower() != "false",
        validation_actions=actions,
        failure_policy=policy.failure_policy,
    )


def _compile(
    env: Environment,
    policy: ValidatingPolicy | MutatingPolicy | GeneratingPolicy,
    expression: str,
    path: str,
    variables: tuple[VariableDefinition, ...] = (),
) -> Program:
    return env.compile(
        expression, path=path, location=functools.partial(policy.document.locate, path), variables=variables
    )


def _compile_variables(
    env: Environment, policy: ValidatingPolicy | MutatingPolicy | GeneratingPolicy, variables: Iterable[NamedExpression]
) -> tuple[dict[str, CompiledVariable], tuple[VariableDefinition, ...]]:
    """Compile variables in order; each may use only those declared before it."""
    compiled: dict[str, CompiledVariable] = {}
    definitions: list[VariableDefinition] = []
    for index, variable in enumerate(variables):
        program = _compile(env, policy, variable.expression, variable.path, tuple(definitions))
        compiled[variable.name] = CompiledVariable(variable.name, program, index)
        definitions.append(VariableDefinition(variable.name, program.inlined, program.variables))
    return compiled, tuple(definitions)


def _compile_one(policy: ValidatingPolicy, variant: str, env: Environment) -> CompiledValidatingPolicy:
    ref = policy_ref(policy)
    try:
        variables, scope = _compile_variables(env, policy, policy.variables)
        conditions = tuple(
            (c.name, _compile(env, policy, c.expression, c.path, scope)) for c in policy.match_conditions
        )
        validations = []
        for index, validation in enumerate(policy.validations):
            program = _compile(env, policy, validation.expression, validation.path, scope)
            if program.return_type.lower() not in ("bool", "dyn"):
                raise PolicyCompileError(
                    f"a validation must return bool, this expression returns {program.return_type.lower()}",
                    field_path=validation.path,
                    expression=validation.expression,
                    location=policy.document.locate(validation.path),
                )
            message_program = None
            if validation.message_expression:
                message_path = validation.path.rpartition(".")[0] + ".messageExpression"
                message_program = _compile(env, policy, validation.message_expression, message_path, scope)
            validations.append(
                CompiledValidation(index, program, validation.message, message_program, validation.reason)
            )
        annotations = tuple(
            (a.key, _compile(env, policy, a.value_expression, a.path, scope)) for a in policy.audit_annotations
        )
    except PolicyCompileError as error:
        return CompiledValidatingPolicy(policy, ref, variant, policy.match_constraints, error=error)
    return CompiledValidatingPolicy(
        source=policy,
        ref=ref,
        variant=variant,
        match_constraints=policy.match_constraints,
        match_conditions=conditions,
        variables=variables,
        validations=tuple(validations),
        audit_annotations=annotations,
    )


def compile_validating_policy(policy: ValidatingPolicy) -> tuple[CompiledValidatingPolicy, ...]:
    """The compiled policy followed by its compiled autogen variants."""
    env = validating_environment()
    compiled = [_compile_one(policy, "", env)]
    if compiled[0].error is None:
        compiled.extend(_compile_one(variant, name, env) for name, variant in autogen.variants(policy))
    return tuple(compiled)


def compile_exception(exception: PolicyException) -> CompiledException:
    """Compile a PolicyException's matchConditions (in the validating environment)."""
    env = validating_environment()
    try:
        conditions = tuple(
            (
                c.name,
                env.compile(c.expression, path=c.path, location=functools.partial(exception.document.locate, c.path)),
            )
            for c in exception.match_conditions
        )
    except PolicyCompileError as error:
        return CompiledException(exception, error=error)
    return CompiledException(exception, conditions)


@dataclass(frozen=True, slots=True)
class CompiledMutation:
    index: int
    patch_type: str
    program: Program


@dataclass(frozen=True, slots=True)
class CompiledMutatingPolicy(_Identity):
    """A MutatingPolicy (or one of its autogen variants) ready to evaluate."""

    source: MutatingPolicy
    ref: PolicyRef
    variant: str
    match_constraints: MatchResources | None
    match_conditions: tuple[tuple[str, Program], ...] = ()
    variables: Mapping[str, CompiledVariable] = field(default_factory=dict)
    mutations: tuple[CompiledMutation, ...] = ()
    audit_annotations: tuple[tuple[str, Program], ...] = ()
    error: PolicyCompileError | None = None
    resources: frozenset[str] | None = None
    reads: Reads = EVERYTHING
    """What the policy's expressions can read of `object`/`oldObject` (derived; see `engine.pruning`)."""


def _compile_mutating(policy: MutatingPolicy, variant: str, env: Environment) -> CompiledMutatingPolicy:
    ref = policy_ref(policy)
    try:
        variables, scope = _compile_variables(env, policy, policy.variables)
        conditions = tuple(
            (c.name, _compile(env, policy, c.expression, c.path, scope)) for c in policy.match_conditions
        )
        mutations = tuple(
            CompiledMutation(index, m.patch_type, _compile(env, policy, m.expression, m.path, scope))
            for index, m in enumerate(policy.mutations)
        )
        annotations = tuple(
            (a.key, _compile(env, policy, a.value_expression, a.path, scope)) for a in policy.audit_annotations
        )
    except PolicyCompileError as error:
        return CompiledMutatingPolicy(policy, ref, variant, policy.match_constraints, error=error)
    return CompiledMutatingPolicy(
        source=policy,
        ref=ref,
        variant=variant,
        match_constraints=policy.match_constraints,
        match_conditions=conditions,
        variables=variables,
        mutations=mutations,
        audit_annotations=annotations,
    )


def compile_mutating_policy(policy: MutatingPolicy) -> tuple[CompiledMutatingPolicy, ...]:
    """The compiled MutatingPolicy followed by its compiled autogen variants."""
    env = mutating_environment()
    compiled = [_compile_mutating(policy, "", env)]
    if compiled[0].error is None:
        compiled.extend(_compile_mutating(variant, name, env) for name, variant in autogen.mutating_variants(policy))
    return tuple(compiled)


@dataclass(frozen=True, slots=True)
class CompiledGeneration:
    """A `generate` entry: a compiled expression, or a template with its compiled placeholders."""

    index: int
    program: Program | None = None
    template: Template | None = None
    placeholders: tuple[Program, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledGeneratingPolicy(_Identity):
    """A GeneratingPolicy ready to evaluate (GeneratingPolicies have no autogen)."""

    source: GeneratingPolicy
    ref: PolicyRef
    match_constraints: MatchResources | None
    match_conditions: tuple[tuple[str, Program], ...] = ()
    variables: Mapping[str, CompiledVariable] = field(default_factory=dict)
    generations: tuple[CompiledGeneration, ...] = ()
    audit_annotations: tuple[tuple[str, Program], ...] = ()
    error: PolicyCompileError | None = None
    resources: frozenset[str] | None = None
    reads: Reads = EVERYTHING
    """What the policy's expressions can read of `object`/`oldObject` (derived; see `engine.pruning`)."""
    variant: str = ""


def _compile_generation(
    env: Environment, policy: GeneratingPolicy, index: int, scope: tuple[VariableDefinition, ...]
) -> CompiledGeneration:
    generation = policy.generate[index]
    if generation.expression:
        program = _compile(env, policy, generation.expression, generation.path, scope)
        if program.return_type.lower() not in ("bool", "dyn"):
            raise PolicyCompileError(
                f"a generate expression must return bool (generator.Apply(...)), this one returns "
                f"{program.return_type.lower()}",
                field_path=generation.path,
                expression=generation.expression,
                location=policy.document.locate(generation.path),
            )
        return CompiledGeneration(index, program=program)
    try:
        template = parse_template(generation.template, interpolate=generation.interpolate)
    except TemplateError as error:
        raise PolicyCompileError(
            str(error),
            field_path=generation.path,
            expression=generation.template,
            location=policy.document.locate(generation.path),
        ) from None
    placeholders = tuple(_compile(env, policy, text, generation.path, scope) for text in template.expressions)
    return CompiledGeneration(index, template=template, placeholders=placeholders)


def compile_generating_policy(policy: GeneratingPolicy) -> CompiledGeneratingPolicy:
    """Compile a GeneratingPolicy; errors are kept in the compiled policy."""
    env = generating_environment()
    ref = policy_ref(policy)
    try:
        variables, scope = _compile_variables(env, policy, policy.variables)
        conditions = tuple(
            (c.name, _compile(env, policy, c.expression, c.path, scope)) for c in policy.match_conditions
        )
        generations = tuple(_compile_generation(env, policy, index, scope) for index in range(len(policy.generate)))
        annotations = tuple(
            (a.key, _compile(env, policy, a.value_expression, a.path, scope)) for a in policy.audit_annotations
        )
    except PolicyCompileError as error:
        return CompiledGeneratingPolicy(policy, ref, policy.match_constraints, error=error)
    return CompiledGeneratingPolicy(
        source=policy,
        ref=ref,
        match_constraints=policy.match_constraints,
        match_conditions=conditions,
        variables=variables,
        generations=generations,
        audit_annotations=annotations,
    )


CompiledPolicy = CompiledValidatingPolicy | CompiledMutatingPolicy | CompiledGeneratingPolicy
"""Any compiled policy (the families share name, kind, variant, ref, source, error and match data)."""
