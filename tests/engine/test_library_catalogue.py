"""The policy library catalogue (`engine.library`): CEL literals, parameter types, annotation errors, instances."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.errors import SchemaError
from engine.library import (
    LibraryError,
    LibraryPolicy,
    LiteralError,
    ValueMismatch,
    check_value,
    instantiate,
    load_library,
    parse_literal,
    parse_text_value,
    render_literal,
    render_policy,
)
from engine.loader import parse_text
from engine.policy_set import build_policy_set

# --- CEL literals ---------------------------------------------------------------------------------------------

ROUND_TRIPS: list[tuple[str, Any]] = [
    ("'MustRunAs'", "MustRunAs"),
    ("''", ""),
    ("'it\\'s'", "it's"),
    ("'a\\\\b'", "a\\b"),
    ("'line\\none\\ttab'", "line\none\ttab"),
    ("'\\u0007'", "\x07"),
    ("'é ü'", "é ü"),
    ("0", 0),
    ("-5", -5),
    ("9223372036854775807", 2**63 - 1),
    ("-9223372036854775808", -(2**63)),
    ("1.5", 1.5),
    ("-0.25", -0.25),
    ("1e+300", 1e300),
    ("true", True),
    ("false", False),
    ("null", None),
    ("[]", []),
    ("{}", {}),
    ("['registry.k8s.io/', 'ghcr.io/example/']", ["registry.k8s.io/", "ghcr.io/example/"]),
    ("[80, 443]", [80, 443]),
    ("[{'min': 1, 'max': 65535}]", [{"min": 1, "max": 65535}]),
    ("{'a': {'b': ['c']}}", {"a": {"b": ["c"]}}),
    # Items of different types: the first is wrapped in dyn() (homogeneous aggregate literals, as in Kyverno).
    ("{'key': dyn('team'), 'optional': true}", {"key": "team", "optional": True}),
    ("[dyn('a'), 1]", ["a", 1]),
    ("[{'key': dyn('a'), 'optional': true}, {'key': 'b'}]", [{"key": "a", "optional": True}, {"key": "b"}]),
    ("[dyn([1]), ['a']]", [[1], ["a"]]),
    ("[dyn(null), 'a']", [None, "a"]),
]


@pytest.mark.parametrize(("text", "value"), ROUND_TRIPS, ids=[text for text, _ in ROUND_TRIPS])
def test_literal_round_trip(text: str, value: Any) -> None:
    assert parse_literal(text) == value
    assert render_literal(value) == text
    assert parse_literal(render_literal(value)) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('"double"', "double"),
        ("r'raw\\n'", "raw\\n"),
        ("'''multi\nline'''", "multi\nline"),
        ("0x10", 16),
        (" ( 7 ) ", 7),
        ("[1, 2,]", [1, 2]),
        ("{'a': 1, 'b': 'x'}", {"a": 1, "b": "x"}),  # celvern reads it; Kyverno would want a dyn()
        ("dyn(['a'])", ["a"]),
        ("[\n  'a',  // a comment\n  'b'\n]", ["a", "b"]),
    ],
)
def test_other_literal_spellings_are_read(text: str, value: Any) -> None:
    assert parse_literal(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("variables.x", "'variables.x' is not a literal"),
        ("1 + 2", "'1 + 2' is not a literal"),
        ("-(1)", "'-(1)' is not a literal"),
        ("size([])", "'size([])' is not a literal"),
        ("dyn(1, 2)", "is not a literal"),
        ("['a', x]", "'x' is not a literal"),
        ("1u", "unsigned literals are not supported: write 1, not 1u"),
        ("b'x'", "bytes literals are not supported"),
        ("1e999", "out of range for a double"),
        ("[?x]", "optional list elements are not literals"),
        ("{?'a': 1}", "optional map entries are not literals"),
        ("{1: 'a'}", "map keys must be strings"),
        ("{'a': 1, 'a': 2}", "duplicate map key 'a'"),
        ("'unterminated", "Syntax error"),
        ("", "Syntax error"),
    ],
)
def test_non_literals_are_rejected(text: str, message: str) -> None:
    with pytest.raises(LiteralError) as caught:
        parse_literal(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2**63, "out of range for a CEL int"),
        (math.nan, "cannot be written as a CEL double"),
        (math.inf, "cannot be written as a CEL double"),
        ({1: "a"}, "map keys must be strings"),
        (object(), "cannot be written as a CEL literal"),
        ("\ud800", "lone surrogate"),
    ],
)
def test_values_without_a_literal_are_rejected(value: Any, message: str) -> None:
    with pytest.raises(LiteralError, match=message):
        render_literal(value)


def test_rendered_literals_compile_and_evaluate_to_the_value() -> None:
    values = [{"key": "a", "optional": True}, {"key": "b'c\\", "n": 1.5, "none": None}]
    text = POLICY.replace("expression: \"['a']\"", f"expression: {yaml.safe_dump(render_literal(values)).strip()}")
    text = text.replace("variables.names.all(n, n != '')", "variables.names[1].key == 'b\\'c\\\\'")
    policy_set = build_policy_set(parse_text(text, "<test>"))
    assert not policy_set.compile_errors


# --- parameter types ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    type: str
    value: Any
    expected: Any = None
    error: str = ""
    enum: tuple[str, ...] = ()


CHECKS = [
    Check("string", "x", "x"),
    Check("string", 1, error="expected a string, got integer 1"),
    Check("string", "b", "b", enum=("a", "b")),
    Check("string", "c", error="'c' is not one of the allowed values", enum=("a", "b")),
    Check("integer", 3, 3),
    Check("integer", True, error="expected an integer, got boolean true"),
    Check("integer", "3", error="expected an integer, got string '3'"),
    Check("integer", 2**63, error="out of range for a 64-bit integer"),
    Check("boolean", False, False),
    Check("boolean", 0, error="expected true or false, got integer 0"),
    Check("quantity", "500m", "500m"),
    Check("quantity", "2Gi", "2Gi"),
    Check("quantity", "", ""),
    Check("quantity", "2GB", error="'2GB' is not a Kubernetes quantity"),
    Check("quantity", 2, error="expected a string, got integer 2"),
    Check("regex", "^[a-z]+$", "^[a-z]+$"),
    Check("regex", "(?=x)", error="not supported by RE2"),
    Check("regex", "[a-", error="is not an RE2 regular expression: error parsing regexp: missing closing ]"),
    Check("list[string]", ["a", "b"], ["a", "b"]),
    Check("list[string]", ("a",), ["a"]),
    Check("list[string]", "a", error="expected a list, got string 'a'"),
    Check("list[string]", ["a", 1], error="item 2: expected a string, got integer 1"),
    Check("list[string]", ["a", "z"], error="'z' is not one of the allowed values", enum=("a", "b")),
    Check("list[integer]", [80, 443], [80, 443]),
    Check("list[integer]", [80, "443"], error="item 2: expected an integer, got string '443'"),
    Check("object", [{"min": 1, "max": 2.5}], [{"min": 1, "max": 2.5}]),
    Check("object", "anything", "anything"),
    Check("object", None, None),
    Check("object", {1: 2}, error="map keys must be strings"),
    Check("object", math.nan, error="nan is not a JSON number"),
    Check("object", {"when": object()}, error="is not a JSON value"),
    Check("number", 1, error="unknown parameter type 'number'"),
]


@pytest.mark.parametrize("case", CHECKS, ids=lambda c: f"{c.type}-{c.value!r}"[:60])
def test_check_value(case: Check) -> None:
    if case.error:
        with pytest.raises(ValueMismatch) as caught:
            check_value(case.type, case.value, case.enum)
        assert case.error in str(caught.value)
    else:
        assert check_value(case.type, case.value, case.enum) == case.expected


TEXT_VALUES = [
    Check("string", "hello world", "hello world"),
    Check("string", "", ""),
    Check("string", "Warn", error="'Warn' is not one of the allowed values", enum=("Deny", "Audit")),
    Check("integer", "42", 42),
    Check("integer", " -7 ", -7),
    Check("integer", "1.5", error="expected an integer, got '1.5'"),
    Check("integer", "ten", error="expected an integer, got 'ten'"),
    Check("integer", "99999999999999999999", error="out of range for a 64-bit integer"),
    Check("integer", "9" * 5000, error="is out of range for a 64-bit integer"),
    Check("boolean", "true", True),
    Check("boolean", "False", False),
    Check("boolean", "yes", error="expected true or false, got 'yes'"),
    Check("quantity", "1.5Gi", "1.5Gi"),
    Check("quantity", "lots", error="'lots' is not a Kubernetes quantity (such as 500m or 2Gi)"),
    Check("regex", "^prod$", "^prod$"),
    Check("regex", "a(b", error="missing closing )"),
    Check("list[string]", "a,b", ["a", "b"]),
    Check("list[string]", " a , b ", ["a", "b"]),
    Check("list[string]", "registry.k8s.io/", ["registry.k8s.io/"]),
    Check("list[string]", "", []),
    Check("list[string]", "[]", []),
    Check("list[string]", '["a,b", "c"]', ["a,b", "c"]),
    Check("list[string]", "[a, b]", ["a", "b"]),
    Check("list[string]", "a,,b", error="empty item in 'a,,b'"),
    Check("list[string]", "[a, 1]", error="item 2: expected a string, got integer 1"),
    Check("list[string]", "[a", error="invalid JSON/YAML"),
    Check("list[string]", "a,x", error="'x' is not one of the allowed values", enum=("a", "b")),
    Check("list[integer]", "80,443", [80, 443]),
    Check("list[integer]", "[80, 443]", [80, 443]),
    Check("list[integer]", "80,http", error="expected an integer, got 'http'"),
    Check("object", '[{"min": 1, "max": 65535}]', [{"min": 1, "max": 65535}]),
    Check("object", "{key: team, optional: true}", {"key": "team", "optional": True}),
    Check("object", "{a: [1", error="invalid JSON/YAML"),
    Check("object", "2024-01-01", error="date is not a JSON value"),
]


@pytest.mark.parametrize("case", TEXT_VALUES, ids=lambda c: f"{c.type}-{c.value!r}"[:60])
def test_parse_text_value(case: Check) -> None:
    if case.error:
        with pytest.raises(ValueMismatch) as caught:
            parse_text_value(case.type, case.value, case.enum)
        assert case.error in str(caught.value)
    else:
        assert parse_text_value(case.type, case.value, case.enum) == case.expected


# --- reading library policies ---------------------------------------------------------------------------------

POLICY = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: demo
  annotations:
    policies.kyverno.io/title: Demo
    policies.kyverno.io/category: 'Governance: General'
    policies.kyverno.io/severity: low
    policies.kyverno.io/subject: Pod
    policies.kyverno.io/description: A demo.
    celvern.io/parameters: |
      - name: limit
        type: integer
        description: The limit.
      - name: names
        type: list[string]
        enum: [a, b, c]
        description: Some names.
spec:
  validationActions: [Audit]
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [CREATE]
        resources: [pods]
  variables:
    - name: limit
      expression: "3"
    - name: names
      expression: "['a']"
    - name: size
      expression: size(object.spec.containers)
  validations:
    - expression: variables.size <= variables.limit && variables.names.all(n, n != '')
      message: too many containers
"""


def write_library(root: Path, text: str, name: str = "demo") -> Path:
    path = root / "validating" / "governance" / name / "policy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def demo_policy(tmp_path: Path, text: str = POLICY) -> LibraryPolicy:
    write_library(tmp_path, text)
    return load_library(tmp_path).get("demo")


def test_a_policy_is_read_into_the_catalogue(tmp_path: Path) -> None:
    path = write_library(tmp_path, POLICY)
    (path.parent / "resources.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    (path.parent / "kyverno-test.yaml").write_text("apiVersion: cli.kyverno.io/v1alpha1\nkind: Test\n")
    library = load_library(tmp_path)
    assert [policy.name for policy in library.policies] == ["demo"]
    policy = library.policies[0]
    assert (policy.kind, policy.title, policy.category, policy.severity, policy.subject) == (
        "ValidatingPolicy",
        "Demo",
        "Governance: General",
        "low",
        "Pod",
    )
    assert (policy.description, policy.pss_control, policy.psp_field, policy.source) == ("A demo.", "", "", str(path))
    assert [(p.name, p.type, p.default, p.enum, p.description) for p in policy.parameters] == [
        ("limit", "integer", 3, (), "The limit."),
        ("names", "list[string]", ["a"], ("a", "b", "c"), "Some names."),
    ]
    assert policy.validating
    assert library.categories == ("Governance: General",)
    assert policy.to_json()["parameters"][1] == {
        "name": "names",
        "type": "list[string]",
        "description": "Some names.",
        "enum": ["a", "b", "c"],
        "default": ["a"],
    }


def test_documents_that_are_not_policies_are_ignored(tmp_path: Path) -> None:
    write_library(tmp_path, POLICY + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert [policy.name for policy in load_library(tmp_path).policies] == ["demo"]


def test_a_policy_without_parameters_has_none(tmp_path: Path) -> None:
    text = POLICY.replace("    celvern.io/parameters: |\n", "    celvern.io/unused: |\n")
    assert demo_policy(tmp_path, text).parameters == ()


def test_unknown_policy_names_suggest_close_ones(tmp_path: Path) -> None:
    write_library(tmp_path, POLICY)
    with pytest.raises(LibraryError, match=r"no policy named 'dmeo' in the library .*; did you mean demo\?"):
        load_library(tmp_path).get("dmeo")


def test_duplicate_names_are_an_error(tmp_path: Path) -> None:
    write_library(tmp_path, POLICY)
    other = tmp_path / "validating" / "other" / "demo" / "policy.yaml"
    other.parent.mkdir(parents=True)
    other.write_text(POLICY)
    with pytest.raises(SchemaError) as caught:
        load_library(tmp_path)
    assert str(caught.value).startswith(f"{other}:4:9: metadata.name: policy name 'demo' is also used by ")


@dataclass(frozen=True)
class Broken:
    id: str
    old: str
    new: str
    error: str
    """`line:column: field: message` after the file name."""


BROKEN = [
    Broken(
        "unknown-type",
        "type: integer",
        "type: int",
        "13:15: metadata.annotations[celvern.io/parameters][0].type: unknown type 'int' for parameter 'limit' "
        "(expected one of: string, integer, boolean, quantity, regex, list[string], list[integer], object)",
    ),
    Broken(
        "not-a-literal",
        'expression: "3"',
        'expression: "2 + 1"',
        "29:19: spec.variables[0].expression: parameter 'limit': the variable's expression must be a CEL literal "
        "(its default): '2 + 1' is not a literal (write a string, number, boolean, null, list or map)",
    ),
    Broken(
        "default-does-not-fit",
        'expression: "3"',
        "expression: \"'3'\"",
        "29:19: spec.variables[0].expression: parameter 'limit': the default does not fit type integer: "
        "expected an integer, got string '3'",
    ),
    Broken(
        "default-not-in-enum",
        "expression: \"['a']\"",
        "expression: \"['d']\"",
        "31:19: spec.variables[1].expression: parameter 'names': the default does not fit type list[string] "
        "(one of: a, b, c): 'd' is not one of the allowed values",
    ),
    Broken(
        "declared-without-variable",
        "    - name: limit\n      expression",
        "    - name: lim\n      expression",
        "12:15: metadata.annotations[celvern.io/parameters][0].name: parameter 'limit' has no variable in "
        "spec.variables: declare it as a variable whose expression is a literal (the default)",
    ),
    Broken(
        "unknown-field",
        "description: The limit.",
        "default: 3",
        "14:18: metadata.annotations[celvern.io/parameters][0].default: unknown field 'default' (the default is "
        "the variable's expression); expected name, type, description, enum",
    ),
    Broken(
        "misspelt-field",
        "description: The limit.",
        "descriptio: The limit.",
        "14:21: metadata.annotations[celvern.io/parameters][0].descriptio: unknown field 'descriptio'; "
        "expected name, type, description, enum",
    ),
    Broken(
        "enum-on-integer",
        "type: list[string]",
        "type: integer",
        "17:15: metadata.annotations[celvern.io/parameters][1].enum: enum only applies to string and list[string] "
        "parameters, not integer",
    ),
    Broken(
        "declared-twice",
        "  - name: names\n        type",
        "  - name: limit\n        type",
        "15:15: metadata.annotations[celvern.io/parameters][1].name: parameter 'limit' is declared twice",
    ),
    Broken(
        "bad-name",
        "  - name: names\n        type",
        "  - name: my-names\n        type",
        "15:15: metadata.annotations[celvern.io/parameters][1].name: expected a variable name (letters, digits, "
        "_), got 'my-names'",
    ),
    Broken(
        "invalid-yaml",
        "type: list[string]",
        "type: [list",
        "17:13: metadata.annotations[celvern.io/parameters]: invalid YAML: while parsing a flow sequence "
        "expected ',' or ']', but got ':'",
    ),
    Broken(
        "yaml-mapping-and-list-mixed",
        "      - name: limit\n",
        "      name: limit\n",
        "13:13: metadata.annotations[celvern.io/parameters]: invalid YAML: mapping values are not allowed here",
    ),
    Broken(
        "parameters-after-other-variables",
        '    - name: limit\n      expression: "3"\n    - name: names\n      expression: "[\'a\']"\n'
        "    - name: size\n      expression: size(object.spec.containers)\n",
        "    - name: size\n      expression: size(object.spec.containers)\n"
        '    - name: limit\n      expression: "3"\n    - name: names\n      expression: "[\'a\']"\n',
        "28:13: spec.variables[0].name: parameter variable 'names' must come before the policy's other variables "
        "(policies/README.md)",
    ),
    Broken(
        "unknown-category",
        "category: 'Governance: General'",
        "category: Governance",
        "7:5: metadata.annotations[policies.kyverno.io/category]: unknown category 'Governance' (expected one of: ",
    ),
    Broken(
        "unknown-severity",
        "severity: low",
        "severity: critical",
        "8:5: metadata.annotations[policies.kyverno.io/severity]: unknown severity 'critical' (expected one of: "
        "low, medium, high)",
    ),
    Broken(
        "missing-title",
        "policies.kyverno.io/title: Demo",
        "policies.kyverno.io/tilte: Demo",
        "6:5: metadata.annotations[policies.kyverno.io/title]: annotation policies.kyverno.io/title is required "
        "of library policies (see policies/README.md)",
    ),
    Broken(
        "pss-without-control",
        "category: 'Governance: General'",
        "category: 'Pod Security Standards (Baseline)'",
        "7:5: metadata.annotations[policies.kyverno.io/category]: a Pod Security Standards (Baseline) policy needs "
        "the annotation celvern.io/pss-control",
    ),
    Broken(
        "name-is-not-the-directory",
        "  name: demo\n",
        "  name: demo2\n",
        "4:9: metadata.name: metadata.name 'demo2' must match the policy's directory 'demo' (policies/README.md)",
    ),
]


@pytest.mark.parametrize("case", BROKEN, ids=lambda case: case.id)
def test_malformed_policies_are_located_errors(tmp_path: Path, case: Broken) -> None:
    assert POLICY.count(case.old) == 1, case.old
    path = write_library(tmp_path, POLICY.replace(case.old, case.new))
    with pytest.raises(SchemaError) as caught:
        load_library(tmp_path)
    assert str(caught.value).startswith(f"{path}:{case.error}")


def test_an_annotation_that_is_not_a_list(tmp_path: Path) -> None:
    text = POLICY.replace("    celvern.io/parameters: |\n", "    celvern.io/parameters: 'limit'\n    x-old: |\n")
    path = write_library(tmp_path, text)
    with pytest.raises(SchemaError) as caught:
        load_library(tmp_path)
    assert str(caught.value) == (
        f"{path}:11:5: metadata.annotations[celvern.io/parameters]: expected a YAML list of parameters, got string"
    )


# --- instances ------------------------------------------------------------------------------------------------


def test_instantiate_rewrites_parameters_action_namespaces_and_name(tmp_path: Path) -> None:
    policy = demo_policy(tmp_path)
    original = yaml.safe_dump(dict(policy.document.data))
    document = instantiate(policy, {"limit": 5}, "Deny", ["shop", "dev", "shop"], "demo-shop")
    assert document["metadata"]["name"] == "demo-shop"
    assert document["metadata"]["annotations"]["celvern.io/library-policy"] == policy.name  # renamed: traced back
    assert document["spec"]["validationActions"] == ["Deny"]
    assert document["spec"]["variables"] == [
        {"name": "limit", "expression": "5"},
        {"name": "names", "expression": "['a']"},  # not set: the library's text is kept
        {"name": "size", "expression": "size(object.spec.containers)"},
    ]
    assert document["spec"]["matchConstraints"]["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop", "dev"]}]
    }
    assert yaml.safe_dump(dict(policy.document.data)) == original  # the library policy is left alone
    rendered = render_policy(document)
    assert yaml.safe_load(rendered) == document
    assert "expression: \"['a']\"" in rendered
    assert not build_policy_set(parse_text(rendered, "<instance>")).compile_errors


def test_instantiate_keeps_everything_when_nothing_is_asked(tmp_path: Path) -> None:
    policy = demo_policy(tmp_path)
    assert instantiate(policy, {}) == dict(policy.document.data)


def test_namespaces_are_added_to_an_existing_selector(tmp_path: Path) -> None:
    text = POLICY.replace(
        "  matchConstraints:\n",
        "  matchConstraints:\n    namespaceSelector:\n      matchLabels: {env: prod}\n"
        "      matchExpressions: [{key: tier, operator: Exists}]\n",
    )
    document = instantiate(demo_policy(tmp_path, text), {}, namespaces=["shop"])
    assert document["spec"]["matchConstraints"]["namespaceSelector"] == {
        "matchLabels": {"env": "prod"},
        "matchExpressions": [
            {"key": "tier", "operator": "Exists"},
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop"]},
        ],
    }


@pytest.mark.parametrize(
    ("values", "action", "namespaces", "name", "error"),
    [
        ({"limits": 1}, None, (), None, "unknown parameter 'limits' for policy demo; did you mean 'limit'? "),
        ({"size": 1}, None, (), None, "(its parameters: limit (integer), names (list[string]))"),
        ({"limit": "5"}, None, (), None, "invalid value for parameter 'limit' (integer): expected an integer"),
        (
            {"names": ["a", "x"]},
            None,
            (),
            None,
            "invalid value for parameter 'names' (list[string], items one of: a, b, c): 'x' is not one of the "
            "allowed values",
        ),
        ({}, "Block", (), None, "unknown action 'Block' (expected one of: Deny, Warn, Audit)"),
        ({}, None, ("Shop",), None, "invalid namespace name 'Shop'"),
        ({}, None, ("a" * 64,), None, "invalid namespace name"),
        ({}, None, (), "Demo", "invalid policy name 'Demo'"),
        ({}, None, (), "", "invalid policy name ''"),
    ],
)
def test_instantiate_rejects_bad_requests(
    tmp_path: Path,
    values: dict[str, Any],
    action: str | None,
    namespaces: tuple[str, ...],
    name: str | None,
    error: str,
) -> None:
    with pytest.raises(LibraryError) as caught:
        instantiate(demo_policy(tmp_path), values, action, namespaces, name)
    assert error in str(caught.value)


MUTATING = """\
apiVersion: policies.kyverno.io/v1
kind: MutatingPolicy
metadata:
  name: demo
  annotations:
    policies.kyverno.io/title: Demo
    policies.kyverno.io/category: Mutation Defaults
    policies.kyverno.io/severity: low
    policies.kyverno.io/description: A demo.
spec:
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [CREATE]
        resources: [pods]
  mutations:
    - patchType: ApplyConfiguration
      applyConfiguration:
        expression: "Object{metadata: Object.metadata{labels: {'team': 'none'}}}"
"""


def test_actions_only_apply_to_validating_policies(tmp_path: Path) -> None:
    policy = demo_policy(tmp_path, MUTATING)
    assert policy.subject == ""  # informational, may be missing
    with pytest.raises(LibraryError, match="applies to validating policies only; demo is a MutatingPolicy"):
        instantiate(policy, {}, "Deny")
    assert "validationActions" not in instantiate(policy, {}, namespaces=["shop"])["spec"]


def test_namespaced_policies_cannot_be_scoped_to_namespaces(tmp_path: Path) -> None:
    policy = demo_policy(tmp_path, POLICY.replace("kind: ValidatingPolicy", "kind: NamespacedValidatingPolicy"))
    with pytest.raises(LibraryError, match="NamespacedValidatingPolicy: it applies in its own namespace only"):
        instantiate(policy, {}, namespaces=["shop"])
