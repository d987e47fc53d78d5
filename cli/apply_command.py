"""`celvern apply`: evaluate policies against resource manifests or JSON payloads, as `kyverno apply` does.

Thin by design: parse flags, load inputs through `cli.inputs`/`cli.suite`, evaluate with `cli.suite`, render
with `cli.output`. Exit codes are the same in every output mode: 0 clean, 1 on any fail or error, the
`--warn-exit-code` value on warnings only, and 2 for usage errors or input that does not load.

`--concurrency N` evaluates in N forked worker processes (`cli.parallel`); the output is the same, byte for
byte."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import click

from cli import parallel
from cli.inputs import ClusterContext, RequestUser, Values, load_context, load_user_info, load_values
from cli.output import console, error_text, print_outcome, report_options, write_outputs
from cli.parallel import ParallelEvaluation, chunk_size, worker_count
from cli.suite import (
    ApplyOutcome,
    RunInputs,
    Subject,
    build_services,
    evaluate_subjects,
    load_payloads,
    load_policy_set,
    resource_documents,
    subjects_of,
)
from engine.errors import PolicyCompileError
from engine.loader import STDIN, load_paths
from engine.request import CREATE
from engine.resources import ResourceMapper
from engine.results import PolicyResponse
from engine.schemas import default_schema_index

PROGRESS_THRESHOLD = 200
"""Show a progress bar (on a terminal) when more resources than this are evaluated."""

_OPERATIONS = click.Choice(["CREATE", "UPDATE", "DELETE"], case_sensitive=False)


def _progress_shown(total: int) -> bool:
    return total > PROGRESS_THRESHOLD and sys.stderr.isatty()


def _with_progress(
    evaluations: Iterator[tuple[Subject, list[PolicyResponse]]], total: int
) -> Iterable[tuple[Subject, list[PolicyResponse]]]:
    if not _progress_shown(total):
        return evaluations
    from rich.progress import track

    return track(evaluations, total=total, description="Evaluating", console=console(sys.stderr), transient=True)


@click.command("apply")
@click.argument("policies", nargs=-1, required=True, type=click.Path())
@click.option(
    "-r",
    "--resource",
    "--resources",
    "resources",
    multiple=True,
    type=click.Path(),
    help="Resource file or directory (repeatable); `-` reads stdin.",
)
@click.option(
    "-e",
    "--exception",
    "--exceptions",
    "exceptions",
    multiple=True,
    type=click.Path(),
    help="PolicyException file or directory (repeatable).",
)
@click.option(
    "-f",
    "--values",
    "--values-file",
    "values_file",
    type=click.Path(),
    help="Values file (namespace labels and objects, globalValues).",
)
@click.option("-u", "--userinfo", "userinfo_file", type=click.Path(), help="UserInfo file for request.userInfo.")
@click.option(
    "--operation",
    type=_OPERATIONS,
    default=None,
    help="Admission operation to simulate [default: CREATE, or request.operation from --values].",
)
@click.option(
    "--crd",
    "--crd-paths",
    "crds",
    multiple=True,
    type=click.Path(),
    help="CustomResourceDefinition file or directory (repeatable), for kind to resource mapping.",
)
@click.option("--context-file", type=click.Path(), help="Context file: objects for resource.* and image data.")
@click.option(
    "--json",
    "json_payloads",
    multiple=True,
    type=click.Path(),
    help="JSON payload file for JSON-mode policies (repeatable; not with --resource).",
)
@report_options
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write mutated resources to DIR/<name>-mutated.yaml and generated ones to DIR/<policy>-generated.yaml.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=0),
    metavar="N",
    default=1,
    show_default=True,
    help="Evaluate in N worker processes (0: one per CPU); the output does not change.",
)
@click.pass_context
def apply_command(
    ctx: click.Context,
    policies: tuple[str, ...],
    resources: tuple[str, ...],
    exceptions: tuple[str, ...],
    values_file: str | None,
    userinfo_file: str | None,
    operation: str | None,
    crds: tuple[str, ...],
    context_file: str | None,
    json_payloads: tuple[str, ...],
    audit_warn: bool,
    warn_exit_code: int,
    output: str,
    detailed_results: bool,
    output_dir: str | None,
    concurrency: int,
) -> None:
    """Apply POLICIES (files or directories) to resources and print the results."""
    if json_payloads and resources:
        raise click.UsageError("--json cannot be combined with --resource")
    if not json_payloads and not resources:
        raise click.UsageError("no resources given: use --resource (or --json for JSON payloads)")

    policy_set = load_policy_set(policies, exceptions)
    if policy_set.compile_errors:
        ctx.exit(_report_compile_errors(policy_set.compile_errors))
    for unsupported in policy_set.unsupported:
        click.echo(f"note: {unsupported.kind} {unsupported.name} is not evaluated by this version", err=True)

    stdin_text = sys.stdin.read() if STDIN in resources else None
    documents = resource_documents(load_paths(resources, stdin_text=stdin_text)) if resources else []
    payloads = load_payloads(json_payloads)
    values = load_values(values_file) if values_file else Values()
    user = load_user_info(userinfo_file) if userinfo_file else RequestUser()
    context = load_context(context_file) if context_file else ClusterContext()
    crd_documents = [*(d.data for d in load_paths(crds)), *context.crds]
    mapper = ResourceMapper.build(crd_documents)
    inputs = RunInputs(
        policy_set=policy_set,
        subjects=tuple(subjects_of(documents, payloads, mapper=mapper)),
        values=values,
        user=user,
        mapper=mapper,
        services=build_services(context, mapper),
        schemas=default_schema_index().with_crds(crd_documents),
    )

    outcome = ApplyOutcome()
    chosen = (operation.upper() if operation else None) or values.operation or CREATE
    total = len(inputs.subjects)
    workers = worker_count(concurrency, total)
    # cel-expr-python keeps what Python-implemented CEL functions receive and return, so a long run grows: without a
    # progress bar (whose thread would make forking again unsafe), evaluators are recycled every few hundred
    # subjects, and a long sequential run evaluates in one recycled forked worker.
    recycle = not _progress_shown(total) and parallel.fork_available()
    if workers == 1 and recycle and total >= parallel.RECYCLE_MIN_SUBJECTS:
        workers = -1  # one forked, recycled worker
    with ExitStack() as stack:
        if workers != 1:  # workers fork here, after compilation and before the progress bar starts its thread
            count = max(workers, 1)
            size = chunk_size(total, count)
            evaluations: Iterable[tuple[Subject, list[PolicyResponse]]] = stack.enter_context(
                ParallelEvaluation(
                    inputs,
                    chosen,
                    unmatched=False,
                    workers=count,
                    size=size,
                    recycle_after=max(1, parallel.RECYCLE_AFTER_SUBJECTS // size) if recycle else 0,
                )
            )
        else:
            # The compiled policies and loaded documents live until the end: out of the collector's way, so that
            # the garbage of each evaluation does not trigger full scans of them (a third of the evaluation time).
            gc.collect()
            gc.freeze()
            stack.callback(gc.unfreeze)
            evaluations = evaluate_subjects(inputs, chosen, unmatched=False)
        for subject, responses in _with_progress(iter(evaluations), len(inputs.subjects)):
            outcome.add(subject, responses)

    print_outcome(
        outcome,
        output,
        policies=policy_set.policy_count - len(policy_set.unsupported),
        exceptions=len(policy_set.exceptions),
        audit_warn=audit_warn,
        detailed=detailed_results,
    )
    if output_dir:
        for path in write_outputs(outcome, Path(output_dir)):
            click.echo(f"wrote {path}", err=True)
    ctx.exit(outcome.exit_code(warn_exit_code))


def _report_compile_errors(errors: Iterable[PolicyCompileError]) -> int:
    for error in errors:
        click.echo(error_text(error), err=True)
    return PolicyCompileError.exit_code
