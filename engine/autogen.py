"""Autogen: the copies of a Pod policy that apply it to the Pods inside pod controllers.

A policy written for Pods also guards Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs,
because those create Pods from a template. Kyverno derives, for eligible policies, two variants whose
expressions are textually rewritten (`object.spec` -> `object.spec.template.spec`, and the CronJob equivalent),
keeping `.metadata.name`/`.metadata.namespace` anchored to the controller itself (kyverno-cel-spec.md 3.2).
Each variant is compiled and evaluated like a policy of its own and reports under the original's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.model import (
    APPLY_CONFIGURATION,
    MatchResources,
    MutatingPolicy,
    NamedExpression,
    ResourceRule,
    ValidatingPolicy,
)

DEFAULTS = "defaults"
CRONJOBS = "cronjobs"


@dataclass(frozen=True, slots=True)
class Target:
    group: str
    version: str
    resource: str
    kind: str
    replacements: str


TARGETS: dict[str, Target] = {
    "daemonsets": Target("apps", "v1", "daemonsets", "DaemonSet", DEFAULTS),
    "deployments": Target("apps", "v1", "deployments", "Deployment", DEFAULTS),
    "replicasets": Target("apps", "v1", "replicasets", "ReplicaSet", DEFAULTS),
    "statefulsets": Target("apps", "v1", "statefulsets", "StatefulSet", DEFAULTS),
    "jobs": Target("batch", "v1", "jobs", "Job", DEFAULTS),
    "cronjobs": Target("batch", "v1", "cronjobs", "CronJob", CRONJOBS),
}

REPLACEMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    DEFAULTS: (("spec", "spec.template.spec"), ("metadata", "spec.template.metadata")),
    CRONJOBS: (
        ("spec", "spec.jobTemplate.spec.template.spec"),
        ("metadata", "spec.jobTemplate.spec.template.metadata"),
    ),
}

_PROTECTED_SUFFIXES = (".namespace", ".name")


def _identifier_char(char: str) -> bool:
    return char == "_" or (char.isascii() and char.isalnum())


def _replace(text: str, old: str, new: str) -> str:
    """Replace `old` by `new` except where followed by a protected suffix (`.name`, `.namespace`)."""
    if old not in text:
        return text
    parts: list[str] = []
    start = 0
    while True:
        index = text.find(old, start)
        if index < 0:
            parts.append(text[start:])
            return "".join(parts)
        parts.append(text[start:index])
        rest = text[index + len(old) :]
        protected = any(
            rest.startswith(suffix) and (len(rest) == len(suffix) or not _identifier_char(rest[len(suffix)]))
            for suffix in _PROTECTED_SUFFIXES
        )
        parts.append(old if protected else new)
        start = index + len(old)


def rewrite_text(text: str, replacements: str) -> str:
    """Apply one replacement set to an expression or message (Kyverno `Replacement.Apply`)."""
    for old, new in REPLACEMENTS[replacements]:
        text = _replace(text, f"object.{old}", f"object.{new}")
        text = _replace(text, f"oldObject.{old}", f"oldObject.{new}")
    return text


def eligible(constraints: MatchResources | None) -> bool:
    """Kyverno `CanAutoGen`: exactly one plain Pod rule, no names, no exclusions, no object selector."""
    if constraints is None or len(constraints.resource_rules) != 1:
        return False
    rule = constraints.resource_rules[0]
    return (
        rule.api_groups == ("",)
        and rule.api_versions == ("v1",)
        and rule.resources == ("pods",)
        and not rule.resource_names
        and not constraints.exclude_resource_rules
        and constraints.object_selector is None
    )


def _match_constraints(targets: list[Target], original: MatchResources) -> MatchResources:
    by_group_version: dict[tuple[str, str], set[str]] = {}
    for target in targets:
        by_group_version.setdefault((target.group, target.version), set()).add(target.resource)
    operations = original.resource_rules[0].operations
    rules = tuple(
        ResourceRule(
            api_groups=(group,),
            api_versions=(version,),
            resources=tuple(sorted(resources)),
            operations=operations,
        )
        for (group, version), resources in sorted(by_group_version.items())
    )
    return MatchResources(namespace_selector=original.namespace_selector, resource_rules=rules)


def _match_conditions(
    prefix: str, targets: list[Target], conditions: tuple[NamedExpression, ...]
) -> tuple[NamedExpression, ...]:
    preconditions = sorted(
        {
            f"(object.apiVersion == '{t.group + '/' if t.group else ''}{t.version}' && object.kind =='{t.kind}')"
            for t in targets
        }
    )
    guard = "||".join(preconditions)
    return tuple(NamedExpression(f"{prefix}-{c.name}", f"!({guard}) || ({c.expression})", c.path) for c in conditions)


def _groups(controllers: tuple[str, ...] | None) -> dict[str, list[Target]]:
    """Targets grouped by replacement set, in a stable order."""
    wanted = controllers if controllers is not None else tuple(TARGETS)
    groups: dict[str, list[Target]] = {}
    for name in wanted:
        target = TARGETS.get(name)
        if target is not None:
            groups.setdefault(target.replacements, []).append(target)
    return {key: groups[key] for key in sorted(groups)}


def _prefix(replacements: str) -> str:
    return "autogen" if replacements == DEFAULTS else f"autogen-{replacements}"


def variants(policy: ValidatingPolicy) -> list[tuple[str, ValidatingPolicy]]:
    """The autogen variants of a ValidatingPolicy as (variant name, policy) pairs; empty when not eligible."""
    if not eligible(policy.match_constraints):
        return []
    assert policy.match_constraints is not None
    result = []
    for replacements, targets in _groups(policy.autogen_controllers).items():
        prefix = _prefix(replacements)

        def text(value: str, replacements: str = replacements) -> str:
            return rewrite_text(value, replacements)

        conditions = _match_conditions(prefix, targets, policy.match_conditions)
        variant = dataclasses.replace(
            policy,
            match_constraints=_match_constraints(targets, policy.match_constraints),
            match_conditions=tuple(dataclasses.replace(c, expression=text(c.expression)) for c in conditions),
            variables=tuple(dataclasses.replace(v, expression=text(v.expression)) for v in policy.variables),
            validations=tuple(
                dataclasses.replace(
                    v,
                    expression=text(v.expression),
                    message=text(v.message),
                    message_expression=text(v.message_expression),
                )
                for v in policy.validations
            ),
            audit_annotations=tuple(
                dataclasses.replace(a, value_expression=text(a.value_expression)) for a in policy.audit_annotations
            ),
        )
        result.append((prefix, variant))
    return result


# MutatingPolicy autogen (Kyverno `mpol/autogen`): only matchConditions and ApplyConfiguration expressions are
# rewritten, by plain substitution, and a root `Object{...}` literal is wrapped into the pod template.
_MUTATION_PATHS = {
    DEFAULTS: ("spec.template.spec", "spec.template.metadata"),
    CRONJOBS: ("spec.jobTemplate.spec.template.spec", "spec.jobTemplate.spec.template.metadata"),
}
_OBJECT_WRAPPERS = {
    DEFAULTS: ("Object{spec: Object.spec{template: Object.spec.template{", "}}}"),
    CRONJOBS: (
        "Object{spec: Object.spec{jobTemplate: Object.spec.jobTemplate{spec: Object.spec.jobTemplate.spec{"
        "template: Object.spec.jobTemplate.spec.template{",
        "}}}}}",
    ),
}


def rewrite_mutation_text(expression: str, replacements: str) -> str:
    """Kyverno's `convertPodToTemplateExpression` for one replacement set."""
    spec_path, metadata_path = _MUTATION_PATHS[replacements]
    for root in ("object", "Object"):
        expression = expression.replace(f"{root}.spec", f"{root}.{spec_path}")
    for root in ("object", "Object"):
        for field in ("labels", "annotations"):
            expression = expression.replace(f"{root}.metadata.{field}", f"{root}.{metadata_path}.{field}")
    stripped = expression.strip()
    if not stripped.startswith("Object{"):
        return expression
    content = stripped[len("Object{") :]
    depth = 1
    for index, char in enumerate(content):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                opening, closing = _OBJECT_WRAPPERS[replacements]
                return opening + content[:index] + closing + content[index + 1 :]
    return expression


def mutating_variants(policy: MutatingPolicy) -> list[tuple[str, MutatingPolicy]]:
    """The autogen variants of a MutatingPolicy; JSONPatch mutations and variables are not rewritten."""
    if not eligible(policy.match_constraints):
        return []
    assert policy.match_constraints is not None
    result = []
    for replacements, targets in _groups(policy.autogen_controllers).items():
        variant = dataclasses.replace(
            policy,
            match_constraints=_match_constraints(targets, policy.match_constraints),
            match_conditions=tuple(
                dataclasses.replace(c, expression=rewrite_mutation_text(c.expression, replacements))
                for c in policy.match_conditions
            ),
            mutations=tuple(
                dataclasses.replace(m, expression=rewrite_mutation_text(m.expression, replacements))
                if m.patch_type == APPLY_CONFIGURATION
                else m
                for m in policy.mutations
            ),
        )
        result.append((_prefix(replacements), variant))
    return result
