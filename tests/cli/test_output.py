"""Rendering from hand-built results: Kyverno's apply text, the test JSON shape, JUnit XML, error display."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

from cli.output import apply_text, documents_text, error_text, results_json, results_junit, summary_line
from cli.suite import ApplyOutcome, Row, Subject, TestFileResult
from engine.errors import Location, PolicyCompileError
from engine.results import PolicyRef, PolicyResponse, ResourceKey, RuleResult, Status

POD = ResourceKey("v1", "Pod", "shop", "web")
POLICY = PolicyRef("ValidatingPolicy", "require-labels")


def outcome(*rules: RuleResult, subject: Subject | None = None) -> ApplyOutcome:
    subject = subject or Subject(POD, resource={})
    result = ApplyOutcome()
    result.add(subject, [PolicyResponse(POLICY, subject.key, rules)])
    return result


def test_apply_text_matches_kyverno() -> None:
    lines = list(
        apply_text(outcome(RuleResult(Status.FAIL, "missing label")), policies=1, exceptions=0, audit_warn=False)
    )
    assert lines == [
        "",
        "Applying 1 policy rule(s) to 1 resource(s)...",
        "",
        "policy require-labels -> resource shop/Pod/web failed:",
        "1 -  missing label",
        "",
        "pass: 0, fail: 1, warn: 0, error: 0, skip: 0 ",
    ]


def test_apply_text_variants() -> None:
    failed = list(apply_text(outcome(RuleResult(Status.FAIL, "")), policies=2, exceptions=3, audit_warn=True))
    assert "Applying 2 policy rule(s) to 1 resource(s) with 3 exception(s)..." in failed
    assert "policy require-labels -> resource shop/Pod/web failed as audit warning:" in failed
    assert "1 -  validation failed" in failed  # Kyverno's text for an empty message

    errored = list(
        apply_text(outcome(RuleResult(Status.ERROR, "error: boom")), policies=1, exceptions=0, audit_warn=False)
    )
    assert "policy require-labels -> resource shop/Pod/web error:" in errored
    assert errored[-1] == "pass: 0, fail: 0, warn: 0, error: 1, skip: 0 "

    payload = Subject(ResourceKey("", "", "", "plan.json"), payload={})
    passed = list(
        apply_text(outcome(RuleResult(Status.FAIL, "x"), subject=payload), policies=1, exceptions=0, audit_warn=False)
    )
    assert "policy require-labels -> resource JSON payload failed:" in passed


def test_passes_produce_no_lines() -> None:
    lines = list(apply_text(outcome(RuleResult(Status.PASS, "success")), policies=1, exceptions=0, audit_warn=False))
    assert len(lines) == 4


def _results() -> list[TestFileResult]:
    good = Row("a/kyverno-test.yaml", "p", "", "v1/Pod/ns/x", "pass", "pass", True, "Ok")
    bad = Row("a/kyverno-test.yaml", "p", "", "v1/Pod/ns/y", "fail", "pass", False, "Want fail, got pass")
    broken = Row("b/kyverno-test.yaml", "", "", "", "", "error", False, "b/kyverno-test.yaml:1: boom")
    return [
        TestFileResult("a/kyverno-test.yaml", (good, bad)),
        TestFileResult("b/kyverno-test.yaml", (broken,), error="boom"),
    ]


def test_results_json_shape() -> None:
    document = json.loads(results_json(_results()))
    assert document["summary"] == {"passed": 1, "failed": 2}
    assert document["results"][1] == {
        "test": "a/kyverno-test.yaml", "policy": "p", "resource": "v1/Pod/ns/y", "expected": "fail",
        "actual": "pass", "ok": False, "reason": "Want fail, got pass",
    }  # fmt: skip
    assert summary_line(_results()) == "Test Summary: 1 tests passed and 2 tests failed"


def test_junit_one_suite_per_file() -> None:
    root = ElementTree.fromstring(results_junit(_results()))
    assert [suite.get("name") for suite in root] == ["a/kyverno-test.yaml", "b/kyverno-test.yaml"]
    assert [suite.get("failures") for suite in root] == ["1", "1"]
    failure = root[0][1].find("failure")
    assert failure is not None and failure.get("message") == "Want fail, got pass"


def test_documents_text() -> None:
    single = [{"kind": "ClusterReport"}]
    assert json.loads(documents_text(single, "json")) == {"kind": "ClusterReport"}
    assert documents_text(single, "yaml") == "kind: ClusterReport"
    two = [{"kind": "ClusterReport"}, {"kind": "PolicyReport"}]
    assert json.loads(documents_text(two, "json"))["items"] == two
    assert documents_text(two, "yaml") == "---\nkind: ClusterReport\n---\nkind: PolicyReport"


def test_compile_error_shows_expression_once() -> None:
    error = PolicyCompileError(
        "undeclared reference to 'objct'",
        field_path="spec.validations[0].expression",
        expression="objct.spec",
        location=Location("p.yaml", 12, 19),
    )
    assert error_text(error) == (
        "p.yaml:12:19: spec.validations[0].expression: undeclared reference to 'objct'\n    | objct.spec"
    )
    shown = PolicyCompileError("bad\n | objct.spec\n | ^", field_path="f", expression="objct.spec")
    assert error_text(shown) == str(shown)
