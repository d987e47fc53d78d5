"""`celvern test`: run Kyverno CLI test suites (`kyverno-test.yaml`) and score their expected results.

Discovery, loading and scoring live in `cli.suite`; this module parses flags and prints. A test file that does
not load is reported (as a failed row carrying its error) and the run goes on with the other files; only a
command line that cannot be served at all (a path that does not exist) exits 2. Any failed row exits 1.
"""

from __future__ import annotations

import click

from cli.output import (
    console,
    loading_line,
    results_json,
    results_junit,
    results_table,
    results_yaml,
    summary_line,
)
from cli.suite import TestFileResult, discover_test_files, run_test_file, summarize


@click.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "-f",
    "--file-name",
    default="kyverno-test.yaml",
    show_default=True,
    help="Name of the test files to look for.",
)
@click.option(
    "-o",
    "--output",
    "--output-format",
    "output",
    type=click.Choice(["text", "json", "yaml", "junit"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.option("--detailed-results", is_flag=True, help="Add the message column to the results table.")
@click.option("--fail-only", is_flag=True, help="Show only failed results in the table.")
@click.option("--require-tests", is_flag=True, help="Exit 1 when no test file is found.")
@click.pass_context
def test_command(
    ctx: click.Context,
    paths: tuple[str, ...],
    file_name: str,
    output: str,
    detailed_results: bool,
    fail_only: bool,
    require_tests: bool,
) -> None:
    """Run the Kyverno test files (kyverno-test.yaml) found under PATHS."""
    files = discover_test_files(paths, file_name)
    if not files and output == "text":
        click.echo(f"No test files named {file_name} found.")
    text = output == "text"
    target = console() if text else None
    results: list[TestFileResult] = []
    for path in files:
        if text:
            click.echo(loading_line(str(path)))
        result = run_test_file(path)
        results.append(result)
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        if target is None:
            continue
        if result.error is not None:
            click.echo(f"  Error: {result.error}")
        click.echo("Checking results ...")
        rows = [row for row in result.rows if not row.ok] if fail_only else list(result.rows)
        if rows:
            results_table(target, rows, detailed=detailed_results)
        click.echo("")

    if output == "json":
        click.echo(results_json(results))
    elif output == "yaml":
        click.echo(results_yaml(results))
    elif output == "junit":
        click.echo(results_junit(results))
    else:
        click.echo(summary_line(results))
    _, failed = summarize(results)
    if failed or (require_tests and not files):
        ctx.exit(1)
