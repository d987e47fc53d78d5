"""`celvern scan --cluster`: evaluate the background-enabled validating policies against what a cluster holds.

Thin by design: load policies (files, like `celvern apply`, or the cluster's policies.kyverno.io objects), connect
through `webhook.kubernetes_cluster`, stream `webhook.scanner.Scanner` results into the same `cli.suite.ApplyOutcome`
apply uses, and render them with the same `cli.output` functions. So the output formats and the exit codes are
apply's: 0 clean, 1 on any fail or error, `--warn-exit-code` on warnings only, 2 for usage errors, policies that do
not load, and a cluster that cannot be reached or read (one clear line, never a traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from cli.history_options import history_options, resolve_history
from cli.history_options import recorder as history_recorder
from cli.output import console, error_text, print_outcome, report_options
from cli.suite import ApplyOutcome, Subject, load_policy_set
from engine.errors import CelvernError, PolicyCompileError
from engine.policy_set import PolicySet
from engine.results import ResourceKey

if TYPE_CHECKING:
    from webhook.cluster import Cluster


class ScanError(CelvernError):
    """The scan cannot run: no cluster configuration, policies that cannot be read, a failed list."""


def _connect(kubeconfig: str | None, context: str | None, in_cluster: bool) -> Cluster:
    from webhook.kubernetes_cluster import ClusterConfigError, KubernetesCluster

    try:
        return KubernetesCluster.connect(kubeconfig=kubeconfig, context=context, in_cluster=in_cluster)
    except ClusterConfigError as error:
        raise ScanError(str(error)) from None


connect_cluster: Callable[[str | None, str | None, bool], Cluster] = _connect
"""How the command reaches the cluster (tests replace it with one returning an `InMemoryCluster`)."""


def _cluster_policies(cluster: Cluster) -> PolicySet:
    from webhook.snapshot import ClusterPolicySource

    snapshot = ClusterPolicySource(cluster, load=True).current()
    if snapshot is None:
        raise ScanError("cannot read the policies.kyverno.io objects from the cluster")
    for problem in snapshot.errors:
        click.echo(f"warning: {problem}", err=True)
    return snapshot.policy_set


def _subject(key: ResourceKey) -> Subject:
    """A subject as apply's output needs it (key and identity), without keeping the object itself."""
    stub = {"apiVersion": key.api_version, "kind": key.kind, "metadata": {"name": key.name}}
    return Subject(key, resource=stub)


class _RecordedScan:
    """`--history`: the scan's new findings and its summary, written before the command exits."""

    def __init__(self, url: str, retention: float) -> None:
        from webhook.scan_history import ScanHistory

        self.recorder = history_recorder(url, retention)
        self.history = ScanHistory(self.recorder)
        self.add = self.history.add
        self.scan_finished = self.history.scan_finished
        self.recorder.start()

    def close(self) -> None:
        if not self.recorder.stop(timeout=30.0):
            click.echo("warning: some scan results could not be written to the decision history", err=True)


def _history(url: str | None, retention: float) -> _RecordedScan | None:
    return _RecordedScan(url, retention) if url else None


@click.command("scan")
@click.argument("policies", nargs=-1, type=click.Path(exists=True))
@click.option("--cluster", "scan_cluster", is_flag=True, help="Scan the objects of the current cluster (required).")
@click.option("-n", "--namespace", default="", help="Scan only this namespace (cluster-scoped kinds are skipped).")
@click.option(
    "--from-cluster-policies",
    is_flag=True,
    help="Use the cluster's policies.kyverno.io objects (the default when no POLICIES are given).",
)
@click.option(
    "-e",
    "--exception",
    "--exceptions",
    "exceptions",
    multiple=True,
    type=click.Path(exists=True),
    help="PolicyException file or directory (repeatable; with POLICIES).",
)
@click.option(
    "--kubeconfig", type=click.Path(), default=None, help="Kubeconfig file (default: $KUBECONFIG or ~/.kube/config)."
)
@click.option("--context", "kube_context", default=None, help="Kubeconfig context.")
@click.option("--in-cluster", is_flag=True, help="Use the pod's service account.")
@click.option("--page-size", type=click.IntRange(min=1), default=500, show_default=True, help="Objects per list call.")
@report_options
@history_options(default_on=False)
@click.pass_context
def scan_command(
    ctx: click.Context,
    policies: tuple[str, ...],
    scan_cluster: bool,
    namespace: str,
    from_cluster_policies: bool,
    exceptions: tuple[str, ...],
    kubeconfig: str | None,
    kube_context: str | None,
    in_cluster: bool,
    page_size: int,
    audit_warn: bool,
    warn_exit_code: int,
    output: str,
    detailed_results: bool,
    history_url: str | None,
    no_history: bool,
    history_retention: float,
) -> None:
    """Evaluate the background validating policies (POLICIES, or the cluster's) against the cluster's objects and
    print the results as `celvern apply` does."""
    if not scan_cluster:
        raise click.UsageError("give --cluster: only cluster scans are supported")
    if policies and from_cluster_policies:
        raise click.UsageError("give either POLICIES or --from-cluster-policies")
    if exceptions and not policies:
        raise click.UsageError("--exception needs POLICIES (the cluster's exceptions come with its policies)")
    history_url = resolve_history(history_url, no_history, default_on=False)
    policy_set = load_policy_set(policies, exceptions) if policies else None
    if policy_set is not None and policy_set.compile_errors:
        for error in policy_set.compile_errors:
            click.echo(error_text(error), err=True)
        ctx.exit(PolicyCompileError.exit_code)

    from webhook.cluster import ApiError
    from webhook.scanner import Scanner

    cluster = connect_cluster(kubeconfig, kube_context, in_cluster)
    history = _history(history_url, history_retention)
    try:
        if policy_set is None:
            policy_set = _cluster_policies(cluster)
        scanner = Scanner(cluster, policy_set, page_size=page_size)
        for note in scanner.plan.notes:
            click.echo(f"note: {note}", err=True)
        outcome = ApplyOutcome()
        with _ProgressBar() as progress:
            scan = scanner.scan(namespace, progress=progress)
            for result in scan:
                outcome.add(_subject(result.key), result.responses)
                if history is not None:
                    history.add([result])
        if history is not None:
            history.scan_finished(scan, scanner)
    except ApiError as error:
        raise ScanError(f"cannot scan the cluster: {error}") from None
    finally:
        if history is not None:
            history.close()
        close = getattr(cluster, "close", None)
        if close is not None:
            close()
    for note in scan.notes[len(scanner.plan.notes) :]:
        click.echo(f"note: {note}", err=True)
    print_outcome(
        outcome,
        output,
        policies=scanner.policy_count,
        exceptions=len(policy_set.exceptions),
        audit_warn=audit_warn,
        detailed=detailed_results,
    )
    if scan.errors:  # what could be scanned is shown; the run still fails as the API errors do
        for problem in scan.errors:
            click.echo(f"error: {problem.message}", err=True)
        ctx.exit(ScanError.exit_code)
    ctx.exit(outcome.exit_code(warn_exit_code))


class _ProgressBar:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""

    def __init__(self) -> None:
        self._progress: object | None = None

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not sys.stderr.isatty():
            return None
        from rich.progress import Progress

        progress = Progress(console=console(sys.stderr), transient=True)
        task = progress.add_task("Scanning", total=None)
        progress.start()
        self._progress = progress

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return update

    def __exit__(self, *_: object) -> None:
        stop = getattr(self._progress, "stop", None)
        if stop is not None:
            stop()
