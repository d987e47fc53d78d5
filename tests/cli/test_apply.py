"""`celvern apply`: exit codes, Kyverno's text output, reports, and the no-traceback error contract."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli import suite
from cli.main import DEBUG_VARIABLE, celvern
from engine.loader import load_paths
from engine.results import Status

FIXTURES = Path(__file__).parent / "fixtures"
APPLY = FIXTURES / "apply"
ERRORS = FIXTURES / "errors"
GOLDEN = FIXTURES / "golden"
EXAMPLES = Path(__file__).parents[2] / "examples"


def run(*args: str | Path, stdin: str | None = None) -> Result:
    return CliRunner().invoke(celvern, ["apply", *map(str, args)], input=stdin)


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CELVERN_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str | Path, ...]
    exit_code: int
    stdout: tuple[str, ...] = ()
    stderr: tuple[str, ...] = ()


POLICIES, RESOURCES = APPLY / "policies.yaml", APPLY / "resources.yaml"

CASES = [
    Case(
        "fail-exits-1",
        (POLICIES, "-r", RESOURCES),
        1,
        stdout=(
            "Applying 2 policy rule(s) to 2 resource(s)...",
            "policy require-team-label -> resource dev/Pod/bad failed:",
            "1 -  the team label is required",
            "pass: 1, fail: 1, warn: 0, error: 0, skip: 0 ",
        ),
    ),
    Case(
        "audit-warn-keeps-exit-1",
        (POLICIES, "-r", RESOURCES, "--audit-warn"),
        1,
        stdout=("policy require-team-label -> resource dev/Pod/bad failed as audit warning:",),
    ),
    Case(
        "values-operation-and-namespace-labels",
        (POLICIES, "-r", RESOURCES, "-f", APPLY / "values.yaml"),
        1,
        stdout=(
            "policy no-deletes-in-prod -> resource prod/Pod/good failed:",
            "1 -  only admin may delete pods in prod, not ",
            "pass: 0, fail: 1, warn: 0, error: 0, skip: 0 ",
        ),
    ),
    Case(
        "userinfo-file",
        (POLICIES, "-r", RESOURCES, "-f", APPLY / "values.yaml", "-u", APPLY / "userinfo.yaml"),
        0,
        stdout=("pass: 1, fail: 0, warn: 0, error: 0, skip: 0 ",),
    ),
    Case(
        "operation-flag-wins-over-values",
        (POLICIES, "-r", RESOURCES, "-f", APPLY / "values.yaml", "--operation", "create"),
        1,
        stdout=("pass: 1, fail: 1, warn: 0, error: 0, skip: 0 ",),
    ),
    Case(
        "exception-skips",
        (POLICIES, "-r", RESOURCES, "-e", APPLY / "exception.yaml"),
        0,
        stdout=(
            "Applying 2 policy rule(s) to 2 resource(s) with 1 exception(s)...",
            "pass: 1, fail: 0, warn: 0, error: 0, skip: 1 ",
        ),
    ),
    Case(
        "context-file-serves-resource-lookups",
        (APPLY / "context-policy.yaml", "-r", RESOURCES, "--context-file", APPLY / "context.yaml"),
        0,
        stdout=("pass: 2, fail: 0, warn: 0, error: 0, skip: 0 ",),
    ),
    Case(
        "json-payload",
        (APPLY / "json-policy.yaml", "--json", APPLY / "payload.json"),
        1,
        stdout=("policy no-public-buckets -> resource JSON payload failed:",),
    ),
    Case(
        "unscored-is-warn-with-warn-exit-code",
        (APPLY / "unscored.yaml", "-r", RESOURCES, "--warn-exit-code", "3"),
        3,
        stdout=("pass: 1, fail: 0, warn: 1, error: 0, skip: 0 ",),
    ),
    Case("unscored-warn-default-exit-0", (APPLY / "unscored.yaml", "-r", RESOURCES), 0),
    Case(
        "unsupported-kind-noted-not-counted",
        (APPLY / "deleting.yaml", APPLY / "unscored.yaml", "-r", RESOURCES),
        0,
        stdout=("Applying 1 policy rule(s) to 2 resource(s)...",),
        stderr=("note: DeletingPolicy cleanup-old-pods is not evaluated by this version",),
    ),
    Case(
        "mutation-printed-kyverno-style",
        (APPLY / "mutating.yaml", "-r", RESOURCES),
        0,
        stdout=(
            "Applying 1 policy rule(s) to 2 resource(s)...",
            "policy add-team-label applied to prod/Pod/good:",
            "    team: none",
            "Mutation has been applied successfully.",
            "pass: 2, fail: 0, warn: 0, error: 0, skip: 0 ",
        ),
    ),
    Case(
        "bad-yaml",
        (ERRORS / "bad-yaml.yaml", "-r", RESOURCES),
        2,
        stderr=(f"{ERRORS / 'bad-yaml.yaml'}:6:1: invalid YAML:",),
    ),
    Case(
        "schema-error",
        (ERRORS / "schema-error.yaml", "-r", RESOURCES),
        2,
        stderr=(f"{ERRORS / 'schema-error.yaml'}:13:7: spec.validations[0].expression: required field is missing",),
    ),
    Case(
        "compile-error-shows-expression",
        (ERRORS / "compile-error.yaml", "-r", RESOURCES),
        2,
        stderr=(
            f"{ERRORS / 'compile-error.yaml'}:13:19: spec.validations[0].expression:",
            "object.spec.containers.all(c, c.image.startsWith('nginx')",
            "^",
        ),
    ),
    Case("missing-file", (APPLY / "nope.yaml", "-r", RESOURCES), 2, stderr=("no such file or directory",)),
    Case("no-resources", (POLICIES,), 2, stderr=("no resources given",)),
    Case(
        "json-with-resources",
        (POLICIES, "-r", RESOURCES, "--json", APPLY / "payload.json"),
        2,
        stderr=("--json cannot be combined with --resource",),
    ),
    Case("bad-output", (POLICIES, "-r", RESOURCES, "-o", "xml"), 2, stderr=("Invalid value",)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_apply(case: Case) -> None:
    result = run(*case.args)
    assert result.exit_code == case.exit_code, result.output
    stdout_lines = result.stdout.splitlines()
    for line in case.stdout:
        assert line in stdout_lines
    for fragment in case.stderr:
        assert fragment in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("output", ["text", "table", "json", "yaml"])
def test_exit_code_is_the_same_in_every_output_mode(output: str) -> None:
    assert run(POLICIES, "-r", RESOURCES, "-o", output).exit_code == 1
    assert run(APPLY / "unscored.yaml", "-r", RESOURCES, "-o", output, "--warn-exit-code", "4").exit_code == 4


def test_text_output_golden() -> None:
    assert_golden("apply-basic.txt", run(POLICIES, "-r", RESOURCES).stdout)


def _normalised_json(text: str) -> str:
    return re.sub(r'"seconds": \d+', '"seconds": 0', text)


def test_json_reports_golden() -> None:
    result = run(APPLY / "namespaced.yaml", POLICIES, "-r", APPLY / "dev-pods.yaml", "-o", "json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["kind"] == "List"
    assert [item["kind"] for item in document["items"]] == ["ClusterReport", "PolicyReport"]
    assert_golden("apply-reports.json", _normalised_json(result.stdout))


def test_yaml_reports_are_documents() -> None:
    result = run(POLICIES, "-r", RESOURCES, "-o", "yaml", "--audit-warn")
    assert "kind: ClusterReport" in result.stdout
    assert "result: warn" in result.stdout
    assert "result: fail" not in result.stdout


def test_table_output_lists_every_result() -> None:
    result = run(POLICIES, "-r", RESOURCES, "-o", "table", "--detailed-results")
    assert result.exit_code == 1
    header = next(line for line in result.stdout.splitlines() if "POLICY" in line)
    assert [cell.strip() for cell in header.strip("│ ").split("│")] == [
        "ID", "POLICY", "RULE", "RESOURCE", "RESULT", "MESSAGE",
    ]  # fmt: skip
    assert re.search(r"require-team-label .*dev/Pod/bad .*fail .*the team label is required", result.stdout)
    assert "\x1b[" not in result.stdout  # no colour when stdout is not a terminal


def test_resources_from_stdin() -> None:
    result = run(POLICIES, "-r", "-", stdin=RESOURCES.read_text())
    assert result.exit_code == 1
    assert "policy require-team-label -> resource dev/Pod/bad failed:" in result.stdout


def test_namespace_defaults_for_namespaced_kinds(tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: lonely}\nspec: {containers: []}\n")
    result = run(POLICIES, "-r", tmp_path / "pod.yaml")
    assert "policy require-team-label -> resource default/Pod/lonely failed:" in result.stdout


def test_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("cli.apply_command.evaluate_subjects", explode)
    monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    result = run(POLICIES, "-r", RESOURCES)
    assert result.exit_code == 2
    assert result.stderr == "internal error: ZeroDivisionError: boom\n"

    monkeypatch.setenv(DEBUG_VARIABLE, "1")
    result = run(POLICIES, "-r", RESOURCES)
    assert isinstance(result.exception, ZeroDivisionError)


def test_examples_show_pass_and_fail() -> None:
    result = run(EXAMPLES / "policies", "-r", EXAMPLES / "resources")
    assert result.exit_code == 1
    summary = result.stdout.splitlines()[-1]
    passed, failed = (int(n) for n in re.findall(r"(?:pass|fail): (\d+)", summary))
    assert passed > 0 and failed > 0


def test_outcome_counts_every_resource(tmp_path: Path) -> None:
    pods = "".join(
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{i % 5}}}\n"
        f"spec: {{containers: [{{name: c, image: 'nginx:{i}'}}]}}\n"
        for i in range(300)
    )
    (tmp_path / "pods.yaml").write_text(pods)
    outcome = suite.ApplyOutcome()
    inputs = suite.RunInputs(
        policy_set=suite.load_policy_set([POLICIES]),
        subjects=tuple(suite.subjects_of(suite.resource_documents(load_paths([tmp_path / "pods.yaml"])))),
    )
    for subject, responses in suite.evaluate_subjects(inputs, "CREATE"):
        outcome.add(subject, responses)
    assert outcome.subjects == 300
    assert outcome.counts[Status.FAIL] == 300


def test_version() -> None:
    result = CliRunner().invoke(celvern, ["version"])
    assert result.exit_code == 0
    assert re.fullmatch(r"celvern \d+\.\d+\.\d+\S*\n", result.stdout)
