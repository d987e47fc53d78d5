"""Typed, immutable views of the `policies.kyverno.io` documents celvern understands.

Parsing here is also schema validation: every field is read through a `Reader` that knows its path, so a wrong
type or a missing required field becomes a `SchemaError` naming the file, line and field path
(`spec.validations[2].expression`), never a KeyError deep inside evaluation. v1alpha1, v1beta1 and v1 share one
schema (kyverno-cel-spec.md 1.1), so one parser serves all three.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine.loader import Document, type_name
from engine.results import Action

GROUP = "policies.kyverno.io"
API_VERSIONS = frozenset({f"{GROUP}/v1alpha1", f"{GROUP}/v1beta1", f"{GROUP}/v1"})
NAMESPACED_ONLY_VERSIONS = frozenset({f"{GROUP}/v1beta1", f"{GROUP}/v1"})

VALIDATING_KINDS = frozenset({"ValidatingPolicy", "NamespacedValidatingPolicy"})
MUTATING_KINDS = frozenset({"MutatingPolicy", "NamespacedMutatingPolicy"})
GENERATING_KINDS = frozenset({"GeneratingPolicy", "NamespacedGeneratingPolicy"})
DELETING_KINDS = frozenset({"DeletingPolicy", "NamespacedDeletingPolicy"})
IMAGE_VALIDATING_KINDS = frozenset({"ImageValidatingPolicy", "NamespacedImageValidatingPolicy"})
EXCEPTION_KIND = "PolicyException"
POLICY_KINDS = VALIDATING_KINDS | MUTATING_KINDS | GENERATING_KINDS | DELETING_KINDS | IMAGE_VALIDATING_KINDS

OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT", "*"})
T = TypeVar("T")


class Reader:
    """Reads typed fields out of a raw mapping, raising located SchemaErrors with full field paths."""

    __slots__ = ("document", "path", "raw")

    def __init__(self, document: Document, raw: Any, path: str = "") -> None:
        self.document = document
        self.raw = raw
        self.path = path

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def fail(self, message: str, key: str | int | None = None) -> Exception:
        return self.document.error(message, self._child_path(key) if key is not None else self.path)

    def mapping(self, key: str, *, required: bool = False) -> Reader:
        value = self.raw.get(key) if isinstance(self.raw, Mapping) else None
        if value is None:
            if required:
                raise self.fail("required field is missing", key)
            return Reader(self.document, {}, self._child_path(key))
        if not isinstance(value, Mapping):
            raise self.fail(f"expected a mapping, got {type_name(value)}", key)
        return Reader(self.document, value, self._child_path(key))

    def items(self, key: str, *, required: bool = False) -> list[Reader]:
        value = self.raw.get(key) if isinstance(self.raw, Mapping) else None
        if value is None:
            if required:
                raise self.fail("required field is missing", key)
            return []
        if not isinstance(value, list):
            raise self.fail(f"expected a list, got {type_name(value)}", key)
        path = self._child_path(key)
        return [Reader(self.document, item, f"{path}[{index}]") for index, item in enumerate(value)]

    def string(self, key: str, *, required: bool = False, default: str = "") -> str:
        value = self.raw.get(key) if isinstance(self.raw, Mapping) else None
        if value is None:
            if required:
                raise self.fail("required field is missing", key)
            return default
        if not isinstance(value, str):
            raise self.fail(f"expected a string, got {type_name(value)}", key)
        if required and not value.strip():
            raise self.fail("must not be empty", key)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.raw.get(key) if isinstance(self.raw, Mapping) else None
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(f"expected a list of strings, got {type_name(value)}", key)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.document.error(
                    f"expected a string, got {type_name(item)}", f"{self._child_path(key)}[{index}]"
                )
        return tuple(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key) if isinstance(self.raw, Mapping) else None
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(f"expected true or false, got {type_name(value)}", key)
        return value

    def choice(self, key: str, allowed: frozenset[str], default: str) -> str:
        value = self.string(key, default=default)
        if value not in allowed:
            raise self.fail(f"must be one of {', '.join(sorted(allowed))}, got {value!r}", key)
        return value

    def string_map(self, key: str) -> dict[str, str]:
        reader = self.mapping(key)
        result: dict[str, str] = {}
        for name, value in reader.raw.items():
            if value is None:
                value = ""
            if not isinstance(value, str | int | float | bool):
                raise reader.fail(f"expected a string, got {type_name(value)}", str(name))
            result[str(name)] = (
                value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
            )
        return result


# --- shared admissionregistration types ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelSelectorRequirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A metav1.LabelSelector. An empty selector matches everything."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


@dataclass(frozen=True, slots=True)
class ResourceRule:
    """A NamedRuleWithOperations."""

    api_groups: tuple[str, ...]
    api_versions: tuple[str, ...]
    resources: tuple[str, ...]
    operations: tuple[str, ...]
    resource_names: tuple[str, ...] = ()
    scope: str = "*"


@dataclass(frozen=True, slots=True)
class MatchResources:
    namespace_selector: LabelSelector | None = None
    object_selector: LabelSelector | None = None
    resource_rules: tuple[ResourceRule, ...] = ()
    exclude_resource_rules: tuple[ResourceRule, ...] = ()
    match_policy: str = "Equivalent"


@dataclass(frozen=True, slots=True)
class NamedExpression:
    """A matchCondition or a variable: a name and a CEL expression, with the field path it came from."""

    name: str
    expression: str
    path: str


@dataclass(frozen=True, slots=True)
class Validation:
    expression: str
    message: str
    message_expression: str
    reason: str
    path: str


@dataclass(frozen=True, slots=True)
class AuditAnnotation:
    key: str
    value_expression: str
    path: str


@dataclass(frozen=True, slots=True)
class Metadata:
    name: str
    namespace: str
    annotations: Mapping[str, str]
    labels: Mapping[str, str]


class _PolicyIdentity:
    """What every policy family's model shares: namespaced-ness from its kind, the name from its metadata."""

    __slots__ = ()
    kind: str
    metadata: Metadata

    @property
    def namespaced(self) -> bool:
        return self.kind.startswith("Namespaced")

    @property
    def name(self) -> str:
        return self.metadata.name


@dataclass(frozen=True, slots=True)
class ValidatingPolicy(_PolicyIdentity):
    """A ValidatingPolicy or NamespacedValidatingPolicy, as written (before autogen and compilation)."""

    kind: str
    api_version: str
    metadata: Metadata
    match_constraints: MatchResources | None
    match_conditions: tuple[NamedExpression, ...]
    variables: tuple[NamedExpression, ...]
    validations: tuple[Validation, ...]
    audit_annotations: tuple[AuditAnnotation, ...]
    failure_policy: str
    validation_actions: tuple[Action, ...]
    evaluation_mode: str
    admission_enabled: bool
    background_enabled: bool
    autogen_controllers: tuple[str, ...] | None
    """`spec.autogen.podControllers.controllers`; None when unset (all controllers)."""
    document: Document


APPLY_CONFIGURATION = "ApplyConfiguration"
JSON_PATCH = "JSONPatch"


@dataclass(frozen=True, slots=True)
class Mutation:
    """One entry of `spec.mutations`: an ApplyConfiguration or a JSONPatch expression."""

    patch_type: str
    expression: str
    path: str


@dataclass(frozen=True, slots=True)
class MutatingPolicy(_PolicyIdentity):
    """A MutatingPolicy or NamespacedMutatingPolicy, as written (before autogen and compilation)."""

    kind: str
    api_version: str
    metadata: Metadata
    match_constraints: MatchResources | None
    match_conditions: tuple[NamedExpression, ...]
    variables: tuple[NamedExpression, ...]
    mutations: tuple[Mutation, ...]
    audit_annotations: tuple[AuditAnnotation, ...]
    failure_policy: str
    reinvocation_policy: str
    evaluation_mode: str
    admission_enabled: bool
    background_enabled: bool
    mutate_existing: bool
    """`spec.evaluation.mutateExisting.enabled`: mutate existing targets (not evaluated by this version)."""
    autogen_controllers: tuple[str, ...] | None
    document: Document


@dataclass(frozen=True, slots=True)
class Generation:
    """One entry of `spec.generate`: exactly one of a CEL `expression` or a YAML `template`."""

    expression: str
    template: str
    interpolate: bool
    """`template.interpolate: cel`: `(( expr ))` placeholders in the template are evaluated."""
    path: str


@dataclass(frozen=True, slots=True)
class GeneratingPolicy(_PolicyIdentity):
    """A GeneratingPolicy or NamespacedGeneratingPolicy, as written."""

    kind: str
    api_version: str
    metadata: Metadata
    match_constraints: MatchResources | None
    match_conditions: tuple[NamedExpression, ...]
    variables: tuple[NamedExpression, ...]
    generate: tuple[Generation, ...]
    audit_annotations: tuple[AuditAnnotation, ...]
    admission_enabled: bool
    generate_existing: bool
    synchronize: bool
    orphan_downstream_on_policy_delete: bool
    use_server_side_apply: bool
    document: Document

    @property
    def failure_policy(self) -> str:
        """GeneratingPolicies have no failurePolicy field; Kyverno treats them as Ignore."""
        return "Ignore"


@dataclass(frozen=True, slots=True)
class PolicyRefSpec:
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class PolicyException:
    """A CEL PolicyException (`policies.kyverno.io` kind PolicyException)."""

    metadata: Metadata
    policy_refs: tuple[PolicyRefSpec, ...]
    match_conditions: tuple[NamedExpression, ...]
    images: tuple[str, ...]
    allowed_values: tuple[str, ...]
    report_result: str  # "skip" or "pass"
    expires_at: datetime.datetime | None
    priority: int
    document: Document

    @property
    def partial(self) -> bool:
        return bool(self.images or self.allowed_values)


# --- parsing ------------------------------------------------------------------------------------------------


def _metadata(reader: Reader, *, namespaced: bool) -> Metadata:
    meta = reader.mapping("metadata", required=True)
    name = meta.string("name", required=True)
    namespace = meta.string("namespace")
    return Metadata(name, namespace if namespaced else "", meta.string_map("annotations"), meta.string_map("labels"))


def _selector(reader: Reader, key: str) -> LabelSelector | None:
    raw = reader.raw.get(key) if isinstance(reader.raw, Mapping) else None
    if raw is None:
        return None
    selector = reader.mapping(key)
    requirements = []
    for item in selector.items("matchExpressions"):
        operator = item.choice("operator", frozenset({"In", "NotIn", "Exists", "DoesNotExist"}), "")
        values = item.strings("values")
        if operator in ("In", "NotIn") and not values:
            raise item.fail(f"operator {operator} needs a non-empty values list", "values")
        requirements.append(LabelSelectorRequirement(item.string("key", required=True), operator, values))
    return LabelSelector(selector.string_map("matchLabels"), tuple(requirements))


def _rules(reader: Reader, key: str) -> tuple[ResourceRule, ...]:
    rules = []
    for item in reader.items(key):
        operations = item.strings("operations")
        for index, operation in enumerate(operations):
            if operation not in OPERATIONS:
                raise item.document.error(
                    f"unknown operation {operation!r} (expected CREATE, UPDATE, DELETE, CONNECT or *)",
                    f"{item.path}.operations[{index}]",
                )
        rules.append(
            ResourceRule(
                api_groups=item.strings("apiGroups"),
                api_versions=item.strings("apiVersions"),
                resources=item.strings("resources"),
                operations=operations,
                resource_names=item.strings("resourceNames"),
                scope=item.choice("scope", frozenset({"Cluster", "Namespaced", "*"}), "*"),
            )
        )
    return tuple(rules)


def parse_match_resources(reader: Reader) -> MatchResources:
    return MatchResources(
        namespace_selector=_selector(reader, "namespaceSelector"),
        object_selector=_selector(reader, "objectSelector"),
        resource_rules=_rules(reader, "resourceRules"),
        exclude_resource_rules=_rules(reader, "excludeResourceRules"),
        match_policy=reader.choice("matchPolicy", frozenset({"Exact", "Equivalent"}), "Equivalent"),
    )


def _named_expressions(reader: Reader, key: str, *, limit: int | None = None) -> tuple[NamedExpression, ...]:
    items = reader.items(key)
    if limit is not None and len(items) > limit:
        raise reader.fail(f"at most {limit} entries are allowed, got {len(items)}", key)
    seen: set[str] = set()
    result = []
    for item in items:
        name = item.string("name", required=True)
        if name in seen:
            raise item.fail(f"duplicate name {name!r}", "name")
        seen.add(name)
        result.append(NamedExpression(name, item.string("expression", required=True), f"{item.path}.expression"))
    return tuple(result)


def _check_api_version(document: Document, kind: str) -> str:
    api_version = document.data.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise document.error(
            f"unsupported apiVersion {api_version!r} for {kind} (expected one of {', '.join(sorted(API_VERSIONS))})",
            "apiVersion",
        )
    if kind.startswith("Namespaced") and api_version not in NAMESPACED_ONLY_VERSIONS:
        raise document.error(f"{kind} is served only in v1beta1 and v1, not {api_version}", "apiVersion")
    return str(api_version)


def _audit_annotations(spec: Reader) -> tuple[AuditAnnotation, ...]:
    return tuple(
        AuditAnnotation(
            item.string("key", required=True),
            item.string("valueExpression", required=True),
            f"{item.path}.valueExpression",
        )
        for item in spec.items("auditAnnotations")
    )


def _autogen_controllers(spec: Reader) -> tuple[str, ...] | None:
    autogen = spec.mapping("autogen").mapping("podControllers")
    return autogen.strings("controllers") if "controllers" in autogen.raw else None


def _match_constraints(spec: Reader, key: str = "matchConstraints") -> MatchResources | None:
    return parse_match_resources(spec.mapping(key)) if spec.raw.get(key) is not None else None


def parse_validating_policy(document: Document) -> ValidatingPolicy:
    """Parse and schema-check a (Namespaced)ValidatingPolicy document."""
    kind = str(document.data.get("kind"))
    api_version = _check_api_version(document, kind)
    reader = Reader(document, document.data)
    namespaced = kind.startswith("Namespaced")
    metadata = _metadata(reader, namespaced=namespaced)
    spec = reader.mapping("spec", required=True)
    match_constraints = _match_constraints(spec)
    validations = []
    for item in spec.items("validations"):
        validations.append(
            Validation(
                expression=item.string("expression", required=True),
                message=item.string("message"),
                message_expression=item.string("messageExpression"),
                reason=item.choice(
                    "reason",
                    frozenset({"Unauthorized", "Forbidden", "Invalid", "RequestEntityTooLarge", ""}),
                    "",
                ),
                path=f"{item.path}.expression",
            )
        )
    annotations = _audit_annotations(spec)
    if not validations and not annotations:
        raise spec.fail("validations and auditAnnotations may not both be empty", "validations")
    actions_raw = spec.strings("validationActions")
    actions = []
    for index, action in enumerate(actions_raw):
        try:
            actions.append(Action(action))
        except ValueError:
            raise document.error(
                f"unknown validation action {action!r} (expected Deny, Warn or Audit)",
                f"spec.validationActions[{index}]",
            ) from None
    if Action.DENY in actions and Action.WARN in actions:
        raise spec.fail("Deny and Warn may not be used together", "validationActions")
    evaluation = spec.mapping("evaluation")
    return ValidatingPolicy(
        kind=kind,
        api_version=api_version,
        metadata=metadata,
        match_constraints=match_constraints,
        match_conditions=_named_expressions(spec, "matchConditions", limit=64),
        variables=_named_expressions(spec, "variables"),
        validations=tuple(validations),
        audit_annotations=tuple(annotations),
        failure_policy=spec.choice("failurePolicy", frozenset({"Fail", "Ignore"}), "Fail"),
        validation_actions=tuple(dict.fromkeys(actions)) or (Action.DENY,),
        evaluation_mode=evaluation.choice("mode", frozenset({"Kubernetes", "JSON", "HTTP", "Envoy"}), "Kubernetes"),
        admission_enabled=evaluation.mapping("admission").boolean("enabled", True),
        background_enabled=evaluation.mapping("background").boolean("enabled", True),
        autogen_controllers=_autogen_controllers(spec),
        document=document,
    )


def parse_mutating_policy(document: Document) -> MutatingPolicy:
    """Parse and schema-check a (Namespaced)MutatingPolicy document."""
    kind = str(document.data.get("kind"))
    api_version = _check_api_version(document, kind)
    reader = Reader(document, document.data)
    metadata = _metadata(reader, namespaced=kind.startswith("Namespaced"))
    spec = reader.mapping("spec", required=True)
    mutations = []
    for item in spec.items("mutations"):
        patch_type = item.choice("patchType", frozenset({APPLY_CONFIGURATION, JSON_PATCH}), "")
        if not patch_type:
            raise item.fail("required field is missing", "patchType")
        key = "applyConfiguration" if patch_type == APPLY_CONFIGURATION else "jsonPatch"
        body = item.mapping(key, required=True)
        mutations.append(Mutation(patch_type, body.string("expression", required=True), f"{body.path}.expression"))
    evaluation = spec.mapping("evaluation")
    return MutatingPolicy(
        kind=kind,
        api_version=api_version,
        metadata=metadata,
        match_constraints=_match_constraints(spec),
        match_conditions=_named_expressions(spec, "matchConditions", limit=64),
        variables=_named_expressions(spec, "variables"),
        mutations=tuple(mutations),
        audit_annotations=_audit_annotations(spec),
        failure_policy=spec.choice("failurePolicy", frozenset({"Fail", "Ignore"}), "Fail"),
        reinvocation_policy=spec.choice("reinvocationPolicy", frozenset({"Never", "IfNeeded"}), "Never"),
        evaluation_mode=evaluation.choice("mode", frozenset({"Kubernetes", "JSON"}), "Kubernetes"),
        admission_enabled=evaluation.mapping("admission").boolean("enabled", True),
        background_enabled=evaluation.mapping("background").boolean("enabled", True),
        mutate_existing=evaluation.mapping("mutateExisting").boolean("enabled", False),
        autogen_controllers=_autogen_controllers(spec),
        document=document,
    )


def parse_generating_policy(document: Document) -> GeneratingPolicy:
    """Parse and schema-check a (Namespaced)GeneratingPolicy document."""
    kind = str(document.data.get("kind"))
    api_version = _check_api_version(document, kind)
    reader = Reader(document, document.data)
    metadata = _metadata(reader, namespaced=kind.startswith("Namespaced"))
    spec = reader.mapping("spec", required=True)
    generate = []
    for item in spec.items("generate", required=True):
        has_expression = item.raw.get("expression") is not None if isinstance(item.raw, Mapping) else False
        has_template = item.raw.get("template") is not None if isinstance(item.raw, Mapping) else False
        if has_expression == has_template:
            raise item.fail("exactly one of expression or template is required")
        if has_expression:
            generate.append(Generation(item.string("expression", required=True), "", False, f"{item.path}.expression"))
            continue
        template = item.mapping("template", required=True)
        interpolate = template.choice("interpolate", frozenset({"none", "cel"}), "none") == "cel"
        value = template.string("value", required=True)
        generate.append(Generation("", value, interpolate, f"{template.path}.value"))
    if not generate:
        raise spec.fail("at least one generate entry is required", "generate")
    evaluation = spec.mapping("evaluation")
    return GeneratingPolicy(
        kind=kind,
        api_version=api_version,
        metadata=metadata,
        match_constraints=_match_constraints(spec),
        match_conditions=_named_expressions(spec, "matchConditions", limit=64),
        variables=_named_expressions(spec, "variables"),
        generate=tuple(generate),
        audit_annotations=_audit_annotations(spec),
        admission_enabled=evaluation.mapping("admission").boolean("enabled", True),
        generate_existing=evaluation.mapping("generateExisting").boolean("enabled", False),
        synchronize=evaluation.mapping("synchronize").boolean("enabled", False),
        orphan_downstream_on_policy_delete=evaluation.mapping("orphanDownstreamOnPolicyDelete").boolean(
            "enabled", False
        ),
        use_server_side_apply=spec.boolean("useServerSideApply", False),
        document=document,
    )


def _timestamp(reader: Reader, key: str) -> datetime.datetime | None:
    raw = reader.raw.get(key)
    if raw is None:
        return None
    if isinstance(raw, datetime.datetime):  # YAML may already have parsed it
        return raw if raw.tzinfo else raw.replace(tzinfo=datetime.UTC)
    if not isinstance(raw, str):
        raise reader.fail(f"expected an RFC 3339 time, got {type_name(raw)}", key)
    try:
        value = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise reader.fail(f"expected an RFC 3339 time, got {raw!r}", key) from None
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def parse_policy_exception(document: Document) -> PolicyException:
    """Parse and schema-check a CEL PolicyException document."""
    _check_api_version(document, EXCEPTION_KIND)
    reader = Reader(document, document.data)
    metadata = _metadata(reader, namespaced=True)
    spec = reader.mapping("spec", required=True)
    refs = []
    for item in spec.items("policyRefs", required=True):
        refs.append(PolicyRefSpec(item.string("name", required=True), item.string("kind", required=True)))
    if not refs:
        raise spec.fail("at least one policyRef is required", "policyRefs")
    priority_text = metadata.labels.get("polex.kyverno.io/priority", "0")
    try:
        priority = int(priority_text)
    except ValueError:
        raise reader.fail(
            f"label polex.kyverno.io/priority must be an integer, got {priority_text!r}", "metadata"
        ) from None
    return PolicyException(
        metadata=metadata,
        policy_refs=tuple(refs),
        match_conditions=_named_expressions(spec, "matchConditions", limit=64),
        images=spec.strings("images"),
        allowed_values=spec.strings("allowedValues"),
        report_result=spec.choice("reportResult", frozenset({"skip", "pass"}), "skip"),
        expires_at=_timestamp(spec, "expiresAt"),
        priority=priority,
        document=document,
    )


def is_policy_document(data: Mapping[str, Any]) -> bool:
    """True for documents of the policies.kyverno.io group (policies and exceptions)."""
    api_version = data.get("apiVersion")
    return isinstance(api_version, str) and api_version.startswith(f"{GROUP}/")
