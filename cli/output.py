"""Rendering of `celvern apply` and `celvern test` results: text, tables, JSON, YAML and JUnit XML.

Everything here turns already-computed results (`cli.suite`) into text; nothing evaluates or decides exit
codes. The plain text of `apply` copies Kyverno's output byte for byte (kyverno-cel-spec.md 4.1, trailing
space of the summary line included) so scripts written against `kyverno apply` keep working, and it is built
from plain strings: only failures and errors produce lines, so large runs spend no time rendering passes.
Tables go through rich, with colour only when the output is a terminal."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click
import orjson
import yaml
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.suite import JSON_PAYLOAD, ApplyOutcome, Row, Subject, TestFileResult, summarize
from engine.errors import CelvernError, PolicyCompileError
from engine.model import MUTATING_KINDS
from engine.reports import build_reports, result_status
from engine.results import PolicyResponse, ResourceKey, Status

_NON_TERMINAL_WIDTH = 10_000
"""Width given to rich when output is not a terminal, so that tables in logs and files never wrap."""


def console(stream: TextIO | None = None) -> Console:
    """A rich console on `stream` (stdout by default): colour and terminal width only on a terminal."""
    stream = stream if stream is not None else sys.stdout
    terminal = stream.isatty()
    return Console(
        file=stream,
        force_terminal=terminal,
        no_color=not terminal,
        highlight=False,
        width=None if terminal else _NON_TERMINAL_WIDTH,
        soft_wrap=False,
    )


def _table(*columns: str) -> Table:
    table = Table(box=box.SQUARE, show_lines=False, pad_edge=True)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


_STATUS_STYLE = {
    "pass": "green",
    "fail": "red",
    "warn": "yellow",
    "error": "magenta",
    "skip": "cyan",
    "Pass": "green",
    "Fail": "red",
    "Skip": "cyan",
}


def _styled(value: str) -> Text:
    return Text(value, style=_STATUS_STYLE.get(value, ""))


# --- apply --------------------------------------------------------------------------------------------------


def subject_path(subject: Subject) -> str:
    """`namespace/Kind/name` as Kyverno prints resources (`JSON payload` for payloads)."""
    return JSON_PAYLOAD if subject.is_payload else subject.key.path()


def apply_text(outcome: ApplyOutcome, *, policies: int, exceptions: int, audit_warn: bool) -> Iterator[str]:
    """Kyverno's `apply` text output, line by line."""
    with_exceptions = f" with {exceptions} exception(s)" if exceptions else ""
    yield ""
    yield f"Applying {policies} policy rule(s) to {outcome.subjects} resource(s){with_exceptions}..."
    mutated = False
    for subject, response in outcome.responses:
        if response.policy.kind in MUTATING_KINDS:
            printed = yield from _mutation(subject, response)
            mutated = mutated or printed
    if mutated:
        yield ""
        yield "Mutation:"
        yield "Mutation has been applied successfully."
    generated = False
    for subject, response in outcome.responses:
        for obj in response.generated:
            generated = True
            yield ""
            yield f"policy {response.policy.name} applied to {subject_path(subject)}:"
            yield yaml.safe_dump(_plain(obj), sort_keys=False).rstrip("\n")
            yield "---"
    if generated:
        yield ""
        yield "Generate:"
        yield "Generation completed successfully."
    for subject, response in outcome.responses:
        if response.policy.kind not in MUTATING_KINDS:
            yield from _violations(subject, response, audit_warn=audit_warn)
    counts = outcome.counts
    yield ""
    yield (
        f"pass: {counts[Status.PASS]}, fail: {counts[Status.FAIL]}, warn: {counts[Status.WARN]}, "
        f"error: {counts[Status.ERROR]}, skip: {counts[Status.SKIP]} "
    )


def _mutation(subject: Subject, response: PolicyResponse) -> Generator[str, None, bool]:
    """Kyverno's block for one mutating policy's response; returns whether a patched resource was printed."""
    path = subject_path(subject)
    for rule in response.rules:
        if rule.status is Status.PASS and response.patched_object is not None:
            yield ""
            yield f"policy {response.policy.name} applied to {path}:"
            yield yaml.safe_dump(_plain(response.patched_object), sort_keys=False).rstrip("\n")
            yield "---"
            return True
        if rule.status is Status.SKIP:
            yield ""
            yield f"skipped mutate policy {response.policy.name} -> resource {path}"
        elif rule.status is Status.ERROR:
            yield ""
            yield f"error while applying mutate policy {response.policy.name} -> resource {path}"
            yield f"error:  {rule.message}"
    return False


def _plain(value: Any) -> Any:
    """Plain dicts and lists (mappings may be read-only views) for YAML output."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _violations(subject: Subject, response: PolicyResponse, *, audit_warn: bool) -> Iterator[str]:
    failed = [rule for rule in response.rules if rule.status is Status.FAIL]
    errors = [rule for rule in response.rules if rule.status is Status.ERROR]
    head = f"policy {response.policy.name} -> resource {subject_path(subject)}"
    if failed:
        yield ""
        yield f"{head} failed as audit warning:" if audit_warn else f"{head} failed:"
        for number, rule in enumerate(failed, start=1):
            yield f"{number} - {rule.rule} {rule.message or 'validation failed'}"
    if errors:
        yield ""
        yield f"{head} error:"
        for number, rule in enumerate(errors, start=1):
            yield f"{number} - {rule.rule} {rule.message}"


def apply_table(target: Console, outcome: ApplyOutcome, *, detailed: bool, audit_warn: bool) -> None:
    """One row per rule result: ID, POLICY, RULE, RESOURCE, RESULT (and MESSAGE with `detailed`)."""
    table = _table("ID", "POLICY", "RULE", "RESOURCE", "RESULT", *(("MESSAGE",) if detailed else ()))
    number = 0
    for subject, response in outcome.responses:
        for rule in response.rules:
            number += 1
            status = result_status(response.policy, rule.status, audit_warn=audit_warn).value
            cells = [
                Text(str(number)),
                Text(response.policy.name),
                Text(rule.rule),
                Text(subject_path(subject)),
                _styled(status),
            ]
            if detailed:
                cells.append(Text(rule.message))
            table.add_row(*cells)
    target.print(table)


def documents_text(documents: Sequence[dict[str, Any]], output: str) -> str:
    """Report documents as YAML (`---`-separated) or JSON (one object; a `List` when there are several)."""
    if output == "json":
        value: Any = (
            documents[0] if len(documents) == 1 else {"apiVersion": "v1", "kind": "List", "items": list(documents)}
        )
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=len(documents) > 1).rstrip("\n")


# --- test ---------------------------------------------------------------------------------------------------


def loading_line(path: str) -> str:
    return f"Loading test  ( {path} ) ..."


def results_table(target: Console, rows: Sequence[Row], *, detailed: bool) -> None:
    """Kyverno's results table: ID, POLICY, RULE, RESOURCE, RESULT, REASON (and MESSAGE)."""
    table = _table("ID", "POLICY", "RULE", "RESOURCE", "RESULT", "REASON", *(("MESSAGE",) if detailed else ()))
    for number, row in enumerate(rows, start=1):
        cells = [
            Text(str(number)),
            Text(row.policy),
            Text(row.rule),
            Text(row.resource),
            _styled(row.verdict),
            Text(row.reason),
        ]
        if detailed:
            cells.append(Text(row.message))
        table.add_row(*cells)
    target.print(table)


def summary_line(results: Iterable[TestFileResult]) -> str:
    passed, failed = summarize(results)
    return f"Test Summary: {passed} tests passed and {failed} tests failed"


def results_document(results: Sequence[TestFileResult]) -> dict[str, Any]:
    """The `-o json|yaml` document: a summary and one entry per (result entry x resource)."""
    passed, failed = summarize(results)
    return {
        "summary": {"passed": passed, "failed": failed},
        "results": [row.to_json() for result in results for row in result.rows],
    }


def results_json(results: Sequence[TestFileResult]) -> str:
    return orjson.dumps(results_document(results), option=orjson.OPT_INDENT_2).decode()


def results_yaml(results: Sequence[TestFileResult]) -> str:
    return yaml.safe_dump(results_document(results), sort_keys=False).rstrip("\n")


def results_junit(results: Sequence[TestFileResult]) -> str:
    """JUnit XML: one testsuite per test file, one testcase per row; failures carry the reason."""
    passed, failed = summarize(results)
    root = ElementTree.Element("testsuites", name="celvern test", tests=str(passed + failed), failures=str(failed))
    for result in results:
        suite = ElementTree.SubElement(
            root,
            "testsuite",
            name=result.path,
            tests=str(len(result.rows)),
            failures=str(result.failed),
            skipped=str(sum(1 for row in result.rows if row.skipped)),
        )
        for row in result.rows:
            name = f"{row.policy} {row.resource}".strip() if row.policy else "load"
            case = ElementTree.SubElement(suite, "testcase", classname=result.path, name=name)
            if row.skipped:
                ElementTree.SubElement(case, "skipped", message=row.reason).text = row.message or None
            elif not row.ok:
                failure = ElementTree.SubElement(case, "failure", message=row.reason)
                failure.text = f"expected {row.expected}, got {row.actual or 'nothing'}" if row.policy else row.reason
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="unicode")


__all__ = [
    "apply_table",
    "apply_text",
    "console",
    "documents_text",
    "error_text",
    "loading_line",
    "results_document",
    "results_json",
    "results_junit",
    "results_table",
    "results_yaml",
    "subject_path",
    "summary_line",
]


def error_text(error: CelvernError) -> str:
    """`file:line: field.path: message`, followed for compile errors by the expression when not yet shown."""
    text = str(error)
    if isinstance(error, PolicyCompileError) and error.expression and error.expression not in text:
        text += "\n" + "\n".join(f"    | {line}" for line in error.expression.splitlines())
    return text


def write_outputs(outcome: ApplyOutcome, directory: Path) -> list[Path]:
    """Write each subject's final mutated resource to `directory/<name>-mutated.yaml` and each generating
    policy's objects to `directory/<policy>-generated.yaml` (Kyverno's naming; the namespace is prefixed when two
    resources share a name). Returns the files written."""
    finals: dict[ResourceKey, Mapping[str, Any]] = {}
    for subject, response in outcome.responses:
        if response.policy.kind in MUTATING_KINDS and response.patched_object is not None:
            finals[subject.key] = response.patched_object
    directory.mkdir(parents=True, exist_ok=True)
    names = [key.name for key in finals]
    written = []
    for key, resource in finals.items():
        name = key.name
        if names.count(name) > 1 and key.namespace:
            name = f"{key.namespace}-{name}"
        path = directory / f"{name}-mutated.yaml"
        path.write_text(yaml.safe_dump(_plain(resource), sort_keys=False))
        written.append(path)
    generated: dict[str, list[Any]] = {}
    for _, response in outcome.responses:
        if response.generated:
            generated.setdefault(response.policy.name, []).extend(_plain(obj) for obj in response.generated)
    for policy, objects in generated.items():
        path = directory / f"{policy}-generated.yaml"
        path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        written.append(path)
    return written


# --- the report options `celvern apply` and `celvern scan` share ---------------------------------------------------

_Command = TypeVar("_Command", bound=Callable[..., Any])


def report_options(command: _Command) -> _Command:
    """`--audit-warn`, `--warn-exit-code`, `-o/--output` and `--detailed-results`: the command receives `audit_warn`,
    `warn_exit_code`, `output` and `detailed_results`, and prints with `print_outcome`."""
    for option in reversed(
        (
            click.option("--audit-warn", is_flag=True, help="Report failures as audit warnings."),
            click.option(
                "--warn-exit-code",
                type=int,
                default=0,
                show_default=True,
                help="Exit code when there are warnings but no failures or errors.",
            ),
            click.option(
                "-o",
                "--output",
                type=click.Choice(["text", "table", "json", "yaml"]),
                default="text",
                show_default=True,
                help="Output format; json and yaml print policy reports.",
            ),
            click.option("--detailed-results", is_flag=True, help="Add the message column to the table output."),
        )
    ):
        command = option(command)
    return command


def print_outcome(
    outcome: ApplyOutcome, output: str, *, policies: int, exceptions: int, audit_warn: bool, detailed: bool
) -> None:
    """Print what a run found in the chosen `--output` format (the same for `celvern apply` and `celvern scan`)."""
    if output == "text":
        click.echo("\n".join(apply_text(outcome, policies=policies, exceptions=exceptions, audit_warn=audit_warn)))
    elif output == "table":
        apply_table(console(), outcome, detailed=detailed, audit_warn=audit_warn)
    else:
        reports = build_reports((response for _, response in outcome.responses), audit_warn=audit_warn)
        click.echo(documents_text(reports, output))
