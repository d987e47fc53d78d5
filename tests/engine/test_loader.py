"""Loading documents and policies: bad input gives located errors (file, line, field path), never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import LoadError, SchemaError
from engine.loader import load_paths, parse_text
from engine.model import parse_policy_exception, parse_validating_policy

POLICY = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: demo
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [pods]
  validations:
  - expression: "true"
    message: ok
"""


def test_multi_document_and_list_expansion() -> None:
    text = "a: 1\n---\n---\nkind: List\napiVersion: v1\nitems:\n- {kind: Pod}\n- {kind: Service}\n"
    documents = parse_text(text, "<test>")
    assert [d.data.get("kind", d.data.get("a")) for d in documents] == [1, "Pod", "Service"]
    assert [d.item for d in documents] == [None, 0, 1]


def test_directories_are_walked_in_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.yaml").write_text("kind: Two\n")
    (tmp_path / "a.yml").write_text("kind: One\n")
    (tmp_path / "ignored.txt").write_text("kind: Nope\n")
    assert [d.data["kind"] for d in load_paths([tmp_path])] == ["One", "Two"]


def test_hidden_directories_are_skipped_unless_named(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("a: 1\n")
    for hidden in (".kyverno-test", ".git"):
        (tmp_path / hidden).mkdir()
        (tmp_path / hidden / "instances.yaml").write_text("b: 2\n")
    assert [d.data for d in load_paths([tmp_path])] == [{"a": 1}]
    assert [d.data for d in load_paths([tmp_path / ".kyverno-test"])] == [{"b": 2}]  # asked for by name


def test_stdin() -> None:
    assert load_paths(["-"], stdin_text="kind: Pod\n")[0].data == {"kind": "Pod"}


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("a: [1, 2\n", "invalid YAML", 2),
        ("a: 1\n  b: 2\n", "invalid YAML", 2),
        ("- 1\n- 2\n", "expected a mapping", 1),
        ("kind: List\nitems: [5]\n", "expected a mapping", 2),
        ("a: " + "[" * 300 + "]" * 300 + "\n", "nested deeper", 0),
    ],
    ids=["unclosed-flow", "bad-indentation", "top-level-list", "list-item-not-mapping", "deep-nesting"],
)
def test_bad_yaml_is_located(text: str, message: str, line: int) -> None:
    with pytest.raises(LoadError, match=message) as caught:
        parse_text(text, "<test>")
    assert caught.value.location.line == line


def test_missing_file() -> None:
    with pytest.raises(LoadError, match="no such file"):
        load_paths(["/nonexistent/policy.yaml"])


def _policy_error(text: str) -> SchemaError:
    document = parse_text(text, "<test>")[0]
    with pytest.raises(SchemaError) as caught:
        parse_validating_policy(document)
    return caught.value


@pytest.mark.parametrize(
    ("old", "new", "field_path", "message", "line"),
    [
        (
            '  - expression: "true"\n',
            "  - expression: 5\n",
            "spec.validations[0].expression",
            "expected a string",
            13,
        ),
        (
            "      operations: [CREATE]\n",
            "      operations: [CREATE, PATCH]\n",
            "spec.matchConstraints.resourceRules[0].operations[1]",
            "unknown operation 'PATCH'",
            10,
        ),
        ("  name: demo\n", "  labels: {}\n", "metadata.name", "required field is missing", 4),
        (
            '  validations:\n  - expression: "true"\n    message: ok\n',
            "  validations: []\n",
            "spec.validations",
            "may not both be empty",
            12,
        ),
        (
            "apiVersion: policies.kyverno.io/v1\n",
            "apiVersion: policies.kyverno.io/v2\n",
            "apiVersion",
            "unsupported apiVersion",
            1,
        ),
        (
            "    resourceRules:\n",
            "    resourceRules: 5\n    x:\n",
            "spec.matchConstraints.resourceRules",
            "expected a list",
            7,
        ),
        (
            "spec:\n",
            "spec:\n  failurePolicy: Sometimes\n",
            "spec.failurePolicy",
            "must be one of Fail, Ignore",
            6,
        ),
        (
            "spec:\n",
            "spec:\n  validationActions: [Deny, Warn]\n",
            "spec.validationActions",
            "Deny and Warn may not be used together",
            6,
        ),
    ],
    ids=[
        "wrong-type",
        "unknown-operation",
        "missing-name",
        "no-validations",
        "bad-api-version",
        "rules-not-list",
        "bad-failure-policy",
        "deny-and-warn",
    ],
)
def test_schema_errors_name_field_and_line(old: str, new: str, field_path: str, message: str, line: int) -> None:
    assert old in POLICY
    error = _policy_error(POLICY.replace(old, new))
    assert error.field_path == field_path
    assert message in str(error)
    assert error.location.line == line
    assert str(error).startswith(f"<test>:{line}")


def test_valid_policy_parses_with_defaults() -> None:
    policy = parse_validating_policy(parse_text(POLICY, "<test>")[0])
    assert policy.failure_policy == "Fail"
    assert [a.value for a in policy.validation_actions] == ["Deny"]
    assert policy.autogen_controllers is None
    assert policy.validations[0].path == "spec.validations[0].expression"


def test_exception_parses() -> None:
    text = """\
apiVersion: policies.kyverno.io/v1
kind: PolicyException
metadata: {name: ex, namespace: team, labels: {polex.kyverno.io/priority: "3"}}
spec:
  policyRefs: [{name: demo, kind: ValidatingPolicy}]
  expiresAt: "2030-01-01T00:00:00Z"
  matchConditions: [{name: c, expression: "true"}]
"""
    exception = parse_policy_exception(parse_text(text, "<test>")[0])
    assert exception.priority == 3
    assert exception.report_result == "skip"
    assert exception.expires_at is not None and exception.expires_at.year == 2030
    assert not exception.partial
