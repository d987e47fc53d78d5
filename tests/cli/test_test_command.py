"""`celvern test`: discovery, Kyverno's scoring rules, output formats and exit codes."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import celvern

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(autouse=True)
def in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the fixtures directory so that printed paths are short and stable."""
    monkeypatch.chdir(FIXTURES)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(celvern, ["test", *map(str, args)])


def rows(*args: str) -> list[dict[str, object]]:
    result = run(*args, "-o", "json")
    results: list[dict[str, object]] = json.loads(result.stdout)["results"]
    return results


def test_json_output_golden() -> None:
    result = run("suite", "-o", "json")
    assert result.exit_code == 1
    path = GOLDEN / "test-suite.json"
    if os.environ.get("CELVERN_UPDATE_GOLDEN"):
        path.write_text(result.stdout)
    assert result.stdout == path.read_text()


@pytest.mark.parametrize(
    ("directory", "exit_code", "summary"),
    [
        ("suite/passing", 0, "Test Summary: 4 tests passed and 0 tests failed"),
        ("suite/hidden", 0, "Test Summary: 2 tests passed and 0 tests failed"),
        ("suite/services", 0, "Test Summary: 3 tests passed and 0 tests failed"),
        ("suite/failing", 1, "Test Summary: 1 tests passed and 5 tests failed"),
        ("suite/broken", 1, "Test Summary: 0 tests passed and 1 tests failed"),
        ("suite", 1, "Test Summary: 10 tests passed and 6 tests failed"),
    ],
    ids=[
        "passing",
        "hidden-dir-and-two-documents",
        "cluster-resources-and-api-calls",
        "failing",
        "broken",
        "all",
    ],
)
def test_summary_and_exit_code(directory: str, exit_code: int, summary: str) -> None:
    result = run(directory)
    assert result.exit_code == exit_code, result.output
    assert result.stdout.splitlines()[-1] == summary
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("policy", "resource", "ok", "reason"),
    [
        ("require-team-label", "v1/Pod/default/good", False, "Want fail, got pass"),
        ("require-team-label", "missing", False, "Not found"),
        # One plain resource rule: Kyverno drops the empty response, so the row is not found.
        ("require-team-label", "v1/ConfigMap/default/settings", False, "Not found"),
        # Two resource rules: the empty response is kept and scores as excluded.
        ("protect-config", "v1/Pod/default/good", True, "Excluded"),
        ("cleanup-old-pods", "v1/Pod/default/good", False, "not supported yet: DeletingPolicy"),
        ("typo", "v1/Pod/default/good", False, "Invalid Policy"),
    ],
    ids=[
        "mismatch",
        "unknown-resource",
        "dropped-response",
        "excluded",
        "unsupported-kind",
        "invalid-policy",
    ],
)
def test_scoring(policy: str, resource: str, ok: bool, reason: str) -> None:
    found = [row for row in rows("suite/failing") if row["policy"] == policy and row["resource"] == resource]
    assert len(found) == 1
    assert (found[0]["ok"], found[0]["reason"]) == (ok, reason)


def test_operation_and_namespaced_names_and_payloads() -> None:
    found = {(row["policy"], row["resource"]): row for row in rows("suite/passing")}
    assert found[("no-deletes-in-prod", "v1/Pod/prod/good")]["actual"] == "fail"
    assert found[("require-team-label", "v1/Pod/dev/bad")]["ok"] is True
    assert found[("no-public-buckets", "payload.json")]["actual"] == "fail"


def test_text_output() -> None:
    result = run("suite/failing", "--detailed-results")
    lines = result.stdout.splitlines()
    assert lines[0] == "Loading test  ( suite/failing/kyverno-test.yaml ) ..."
    assert lines[1] == "Checking results ..."
    header = next(line for line in lines if "POLICY" in line)
    assert [cell.strip() for cell in header.strip("│ ").split("│")] == [
        "ID", "POLICY", "RULE", "RESOURCE", "RESULT", "REASON", "MESSAGE",
    ]  # fmt: skip
    assert any("typo" in line and "Skip" in line and "Invalid Policy" in line for line in lines)
    assert "policy failed to compile" in result.stderr


def test_fail_only_hides_passing_rows() -> None:
    result = run("suite/failing", "--fail-only")
    assert "Excluded" not in result.stdout
    assert "Want fail, got pass" in result.stdout


def test_broken_file_reports_error_and_continues() -> None:
    result = run("suite/broken", "suite/passing")
    assert "  Error: suite/broken/kyverno-test.yaml:1:1: apiVersion: required field is missing" in result.stdout
    assert result.stdout.splitlines()[-1] == "Test Summary: 4 tests passed and 1 tests failed"


def test_junit_output() -> None:
    result = run("suite", "-o", "junit")
    assert result.exit_code == 1
    root = ElementTree.fromstring(result.stdout)
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "16", "6")
    suites = {suite.get("name"): suite for suite in root}
    failing = suites["suite/failing/kyverno-test.yaml"]
    messages = [failure.get("message") for failure in failing.iter("failure")]
    assert "Not found" in messages
    assert failing.find("testcase/skipped") is not None


def test_yaml_output_has_the_json_shape() -> None:
    result = run("suite/passing", "-o", "yaml")
    assert result.stdout.startswith("summary:\n  passed: 4\n  failed: 0\n")


def test_file_name_option(tmp_path: Path) -> None:
    target = tmp_path / "custom.yaml"
    target.write_text((FIXTURES / "suite/hidden/.kyverno-test/kyverno-test.yaml").read_text())
    # Paths inside the copy no longer resolve: the missing policies fail the file, without a crash.
    result = run(tmp_path, "--file-name", "custom.yaml")
    assert result.exit_code == 1
    assert "no such file or directory" in result.stdout


def test_missing_directory_is_a_usage_error() -> None:
    result = run("does-not-exist")
    assert result.exit_code == 2
    assert result.stderr.startswith("does-not-exist: no such file or directory")


def test_no_tests_found(tmp_path: Path) -> None:
    assert run(tmp_path).exit_code == 0
    assert run(tmp_path, "--require-tests").exit_code == 1


def test_examples_pass() -> None:
    result = run(EXAMPLES / "tests")
    assert result.exit_code == 0, result.output
    assert "0 tests failed" in result.stdout
