"""engine.pruning: the paths expressions read, the pruned copies, and that pruning never changes an answer."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.policy_set
from engine.cel.environment import CelError, validating_environment
from engine.evaluation import EvaluationContext
from engine.loader import load_paths
from engine.matching import NamespaceLabels, RequestShape
from engine.policy_set import build_policy_set, run, split_documents
from engine.pruning import ANY, EVERYTHING, ReadTree, analyse, merge, pruner
from engine.request import UPDATE, request_for_resource


def paths(tree: ReadTree | None, prefix: str = "") -> set[str]:
    """`a.b*` style listing of a tree: every node, `!` marking the ones read whole."""
    if tree is None:
        return {"<everything>"}
    found: set[str] = set()
    for key, child in tree.children.items():
        name = f"{prefix}.{key}" if prefix else key
        found.add(name + ("!" if child.keeps_everything else ""))
        found |= paths(child, name)
    return found


ANALYSIS = [
    ("select", "object.spec.hostNetwork == true", {"spec", "spec.hostNetwork!"}),
    ("has", "has(object.spec.hostPID)", {"spec", "spec.hostPID!"}),
    (
        "iteration",
        "object.spec.containers.all(c, c.securityContext.privileged == false)",
        {
            "spec",
            "spec.containers",
            f"spec.containers.{ANY}",
            f"spec.containers.{ANY}.securityContext",
            f"spec.containers.{ANY}.securityContext.privileged!",
        },
    ),
    (
        "concatenation and orValue",
        "(object.spec.containers + object.spec.?initContainers.orValue([])).exists(c, c.name == 'x')",
        {
            "spec",
            "spec.containers",
            "spec.initContainers",
            f"spec.containers.{ANY}",
            f"spec.containers.{ANY}.name!",
            f"spec.initContainers.{ANY}",
            f"spec.initContainers.{ANY}.name!",
        },
    ),
    (
        "bind",
        "cel.bind(s, object.spec, s.volumes.all(v, !has(v.hostPath)))",
        {"spec", "spec.volumes", f"spec.volumes.{ANY}", f"spec.volumes.{ANY}.hostPath!"},
    ),
    ("size reads the whole value", "size(object.spec.containers) > 1", {"spec", "spec.containers!"}),
    (
        "whole wins over a selected child",
        "object.spec.containers[0].name == 'a' && object.spec.containers[0] == {}",
        {"spec", "spec.containers", f"spec.containers.{ANY}!", f"spec.containers.{ANY}.name!"},
    ),
    ("string index", "object.metadata['labels'].app == 'x'", {"metadata", "metadata.labels", "metadata.labels.app!"}),
    (
        "filter keeps elements",
        "object.spec.containers.filter(c, c.image != '').all(c, c.name != '')",
        {
            "spec",
            "spec.containers",
            f"spec.containers.{ANY}",
            f"spec.containers.{ANY}.image!",
            f"spec.containers.{ANY}.name!",
        },
    ),
    ("function argument", "string(object.spec)", {"spec!"}),
    ("the whole object", "object == oldObject", {"<everything>"}),
    ("comprehension variable named like a root", "[1].all(object, object > 0)", set()),
]


@pytest.mark.parametrize(("expression", "expected"), [case[1:] for case in ANALYSIS], ids=[c[0] for c in ANALYSIS])
def test_analysis(expression: str, expected: set[str]) -> None:
    reads = analyse(expression)
    actual = paths(reads.trees["object"]) if "object" in reads.trees else set()
    assert actual == expected


def test_unparsable_expression_reads_everything() -> None:
    assert analyse("object.spec.(") == EVERYTHING


def test_merge_keeps_the_union() -> None:
    merged = merge([analyse("object.spec.a == 1"), analyse("object.spec.b.c == 1"), analyse("oldObject.x == 1")])
    assert paths(merged.trees["object"]) == {"spec", "spec.a!", "spec.b", "spec.b.c!"}
    assert paths(merged.trees["oldObject"]) == {"x!"}
    assert merge([analyse("object.spec.a == 1"), analyse("size(object) > 0")]).trees["object"] is None


PRUNING = [
    (
        "keys and lists",
        "object.spec.containers.all(c, c.name != '')",
        {"spec": {"containers": [{"name": "a", "env": [1, 2]}, {"image": "x"}], "volumes": []}, "kind": "Pod"},
        {"spec": {"containers": [{"name": "a"}, {}]}},
    ),
    (
        "map iteration keeps every key",
        "object.metadata.labels.all(k, k != '')",
        {"metadata": {"labels": {"a": "1", "b": "2"}, "name": "n"}},
        {"metadata": {"labels": {"a": "1", "b": "2"}}},
    ),
    (
        "scalars where maps were expected stay",
        "object.spec.containers.all(c, c.name != '')",
        {"spec": {"containers": "not a list"}},
        {"spec": {"containers": "not a list"}},
    ),
]


@pytest.mark.parametrize(("expression", "value", "expected"), [c[1:] for c in PRUNING], ids=[c[0] for c in PRUNING])
def test_pruning(expression: str, value: Any, expected: Any) -> None:
    assert pruner(analyse(expression).tree("object"))(value) == expected


# --- pruning never changes an answer -----------------------------------------------------------------------------

EXPRESSIONS = [
    "object.spec.containers.all(c, c.securityContext.privileged == false)",
    "object.spec.containers.exists(c, has(c.securityContext) && c.securityContext.?runAsUser.orValue(1) == 0)",
    "(object.spec.containers + object.spec.?initContainers.orValue([])).map(c, c.name)",
    "object.spec.?containers.orValue([]).filter(c, has(c.image)).size()",
    "cel.bind(s, object.spec, s.?hostNetwork.orValue(false) || size(s.?volumes.orValue([])) > 1)",
    "object.metadata.labels.all(k, object.metadata.labels[k] != 'x')",
    "'app' in object.metadata.labels ? object.metadata.labels.app : 'none'",
    "object.spec.containers[0].securityContext",
    "object.spec.containers.exists_one(c, c.name == 'a')",
    "object.spec.volumes.all(v, !has(v.hostPath) || v.hostPath.path.startsWith('/var'))",
    "dyn(object.spec).containers.map(c, c.ports).size()",
    "object.metadata.?annotations['x'].orValue('') == ''",
]

_keys = st.sampled_from(
    [
        "spec",
        "containers",
        "initContainers",
        "securityContext",
        "privileged",
        "runAsUser",
        "name",
        "image",
        "volumes",
        "hostPath",
        "path",
        "metadata",
        "labels",
        "app",
        "x",
        "ports",
        "hostNetwork",
        "env",
    ]
)
_scalars = st.one_of(st.booleans(), st.integers(-2, 2), st.sampled_from(["a", "x", "/var/x", "/etc"]), st.none())
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(_keys, children, max_size=4)),
    max_leaves=25,
)
_objects = st.fixed_dictionaries(
    {},
    optional={
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "containers": st.lists(st.dictionaries(_keys, _values, max_size=4), max_size=3),
                "initContainers": st.lists(st.dictionaries(_keys, _values, max_size=3), max_size=2),
                "volumes": _values,
                "hostNetwork": _values,
                "env": _values,
            },
        ),
        "metadata": st.dictionaries(_keys, _values, max_size=3),
        "kind": st.just("Pod"),
    },
)

_ENVIRONMENT = validating_environment()
_PROGRAMS = [_ENVIRONMENT.compile(expression, path="expression") for expression in EXPRESSIONS]


def _outcome(value: Any) -> Any:
    return ("error", value.message) if isinstance(value, CelError) else ("value", value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_objects)
def test_pruned_objects_give_the_same_answers(obj: dict[str, Any]) -> None:
    for program in _PROGRAMS:
        full = program.evaluate(_ENVIRONMENT.activation({"object": obj}))
        pruned = pruner(program.reads.tree("object"))(obj)
        assert _outcome(program.evaluate(_ENVIRONMENT.activation({"object": pruned}))) == _outcome(full), (
            program.source,
            pruned,
        )


POD_SECURITY = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "kyverno-policies" / "pod-security-vpol"


@pytest.mark.skipif(not POD_SECURITY.is_dir(), reason="../shared/conformance is not beside the checkout")
def test_policy_set_answers_do_not_depend_on_pruning_or_fusion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Pod Security policy on every conformance resource, as CREATE and UPDATE: the same results with the
    pruned activation and fused validations as with the whole objects and one policy at a time."""
    policy_files = sorted(p for p in POD_SECURITY.glob("*/*/*.yaml") if p.name != "kustomization.yaml")
    policy_set = build_policy_set(split_documents(load_paths(policy_files))[0])
    resource_files = sorted(POD_SECURITY.glob("*/*/.chainsaw-test/*.yaml"))
    resources = [d for d in load_paths(resource_files) if d.data.get("kind") in ("Pod", "Deployment", "CronJob")]
    for resource in resources:  # plan and fuse every shape first, then turn fusion off for `whole`
        for operation in ("CREATE", UPDATE):
            policy_set.plan(RequestShape.of(request_for_resource(resource.data, operation=operation)))
    assert any(plan.fused is not None for plan in policy_set._plans.values())
    monkeypatch.setattr(engine.policy_set, "fuse", lambda policies: None)
    whole = dataclasses.replace(policy_set)
    object.__setattr__(whole, "pruners", {})
    assert policy_set.pruners and not whole.pruners
    compared = 0
    for document in resources:
        resource = document.data
        if not isinstance(resource.get("spec"), dict):
            continue
        for operation in ("CREATE", UPDATE):
            request = request_for_resource(resource, operation=operation)
            context = EvaluationContext(request=request, namespace=NamespaceLabels({}))
            assert run(policy_set, context).responses == run(whole, context).responses, document.source
            compared += 1
    assert compared > 50
