"""`celvern controller`: run the background generator and the background scan against a cluster.

Thin by design: load the GeneratingPolicies (from a directory or from the cluster's policies.kyverno.io
resources), connect through `webhook.kubernetes_cluster`, refuse to start without the permissions the policies
need, then loop `webhook.generator.Generator` while this replica holds the leader Lease
(`webhook.leader.LeaderElector`). Metrics are served for Prometheus and logs are JSON lines on stderr.

It runs the generator when there are GeneratingPolicies and the background scan when there are validating policies
with `evaluation.background.enabled` (either may come later with `--from-cluster`): the leader scans at the start of
its term, every `--scan-interval` seconds and shortly after the policies change, in a background round
(`webhook.policy_reports.ChildReportRounds`), keeps one PolicyReport (or, with `--report-format openreports`, one
openreports.io Report) per resource, and records a `celvern-scan` Event for the findings of each report it changes.
Each round (`--once` included) runs in a fresh child process that exits after it: the CEL runtime keeps a reference
to every value its Python-implemented functions see, so evaluating a whole cluster in the long-lived controller
would grow it by gigabytes per scan. A round that overruns `--scan-timeout` (default max(2 x --scan-interval, 1 h))
or dies is counted as failed; on a lost Lease or at shutdown the running round is stopped (SIGTERM, then killed).

With `--tls-secret`, the leader also owns the webhook's TLS material (`webhook.certificates`): at the start of each
term and every `--certificate-check-interval` seconds it keeps that Secret holding a valid CA and serving
certificate, and the caBundle of the `--webhook-configuration`s holding the CA, in a background round that never
holds up the Lease renewal.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click
import yaml

from cli.history_options import history_options, resolve_history
from cli.suite import load_policy_set
from engine.errors import CelvernError
from engine.policy_set import PolicySet
from engine.resources import DEFAULT_MAPPER, ResourceType
from webhook.cluster import ApiError, Cluster
from webhook.state import PolicySource, StaticPolicySource

if TYPE_CHECKING:  # imported when the command runs: the kubernetes client costs every other command 0.5 s
    from webhook.certificates import CertificateRounds, SecretCertificates
    from webhook.events import EventRecorder
    from webhook.generator import Generator
    from webhook.policy_reports import ScanRounds

log = logging.getLogger("celvern.controller")

DEFAULT_GENERATED_KINDS = (
    "networking.k8s.io/v1/NetworkPolicy",
    "v1/ResourceQuota",
    "v1/LimitRange",
    "rbac.authorization.k8s.io/v1/RoleBinding",
    "v1/ConfigMap",
)


def has_background_policies(policy_set: PolicySet) -> bool:
    """Whether a background scan has anything to run: a validating policy with evaluation.background.enabled."""
    return any(policy.source.background_enabled for policy in policy_set.validating)


class ControllerError(CelvernError):
    """The controller cannot start (no cluster configuration, missing permissions, no policies)."""


def _resource_type(text: str) -> ResourceType:
    api_version, _, kind = text.rpartition("/")
    if not api_version or not kind:
        raise click.BadParameter(f"expected apiVersion/Kind (e.g. networking.k8s.io/v1/NetworkPolicy), got {text!r}")
    return DEFAULT_MAPPER.for_kind(api_version, kind)


def _secret_reference(_: click.Context, __: click.Parameter, value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    namespace, _slash, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise click.BadParameter(f"expected NAMESPACE/NAME, got {value!r}")
    return namespace, name


def check_permissions(cluster: Cluster, kinds: Iterable[ResourceType]) -> None:
    """Refuse to start, naming the kind, when this identity may not manage a kind the policies generate."""
    missing = []
    for resource in kinds:
        for verb in ("create", "update", "delete", "list", "watch"):
            if not cluster.allowed(verb, resource):
                missing.append(f"{verb} {resource.resource}.{resource.group or 'core'}")
    if missing:
        raise ControllerError(
            "the controller's service account lacks permissions for generated kinds: "
            + ", ".join(missing)
            + " (see deploy/base/controller-rbac.yaml)"
        )


def _template_kinds(policy_set: PolicySet) -> list[ResourceType]:
    """Kinds named literally by the policies' templates (expressions are only known when they run)."""
    kinds = []
    for policy in policy_set.generating:
        for generation in policy.source.generate:
            if not generation.template:
                continue
            try:
                documents = [d for d in yaml.safe_load_all(generation.template) if isinstance(d, dict)]
            except yaml.YAMLError:
                continue  # the compiler reported it already
            for document in documents:
                api_version, kind = document.get("apiVersion"), document.get("kind")
                if isinstance(api_version, str) and isinstance(kind, str) and "((" not in api_version + kind:
                    kinds.append(DEFAULT_MAPPER.for_kind(api_version, kind))
    return kinds


@click.command("controller")
@click.option(
    "--policies", "policy_paths", multiple=True, type=click.Path(exists=True), help="Policy files or directories."
)
@click.option("--from-cluster", is_flag=True, help="Read policies and PolicyExceptions from the cluster.")
@click.option(
    "--kubeconfig", type=click.Path(), default=None, help="Kubeconfig file (default: $KUBECONFIG or ~/.kube/config)."
)
@click.option("--context", "kube_context", default=None, help="Kubeconfig context.")
@click.option("--in-cluster", is_flag=True, help="Use the pod's service account.")
@click.option("--namespace", default="celvern", show_default=True, help="Namespace of the leader-election Lease.")
@click.option("--lease-name", default="celvern-generator", show_default=True)
@click.option("--identity", default=None, help="This replica's identity in the Lease [default: hostname].")
@click.option("--metrics-port", type=int, default=9090, show_default=True, help="Prometheus metrics port (0: off).")
@click.option(
    "--generated-kind",
    "generated_kinds",
    multiple=True,
    default=DEFAULT_GENERATED_KINDS,
    show_default=True,
    help="apiVersion/Kind the policies generate; permissions are checked at start (repeatable).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.option("--once", is_flag=True, help="Reconcile what exists now, without leader election, then exit.")
@click.option(
    "--tls-secret",
    metavar="NAMESPACE/NAME",
    default=None,
    callback=_secret_reference,
    help="Keep the webhook's CA and serving certificate in this Secret (created, renewed) [default: off].",
)
@click.option("--service-name", default="celvern", show_default=True, help="Webhook Service name, for the SANs.")
@click.option("--service-namespace", default="celvern", show_default=True, help="Webhook Service namespace (SANs).")
@click.option(
    "--tls-san", "extra_sans", multiple=True, help="Extra DNS name or IP address for the serving certificate."
)
@click.option(
    "--webhook-configuration",
    "webhook_configurations",
    multiple=True,
    help="Validating/MutatingWebhookConfiguration whose caBundle gets the CA (repeatable; needs --tls-secret).",
)
@click.option(
    "--certificate-check-interval",
    type=click.FloatRange(min=1.0),
    default=600.0,
    show_default=True,
    help="Seconds between checks of the TLS Secret and caBundles.",
)
@click.option(
    "--scan-interval",
    type=click.FloatRange(min=0.0),
    default=3600.0,
    show_default=True,
    help="Seconds between background scans of the validating policies (0: no scans, no reports).",
)
@click.option(
    "--report-format",
    type=click.Choice(["wgpolicyk8s", "openreports"]),
    default="wgpolicyk8s",
    show_default=True,
    help="Reports as wgpolicyk8s.io/v1alpha2 PolicyReports or openreports.io/v1alpha1 Reports.",
)
@click.option(
    "--scan-timeout",
    type=click.FloatRange(min=1.0),
    default=None,
    help="Seconds a scan round (a child process) may run before it is stopped and counted as failed "
    "[default: max(2 x --scan-interval, 3600)].",
)
@history_options()
def controller_command(
    policy_paths: tuple[str, ...],
    from_cluster: bool,
    kubeconfig: str | None,
    kube_context: str | None,
    in_cluster: bool,
    namespace: str,
    lease_name: str,
    identity: str | None,
    metrics_port: int,
    generated_kinds: tuple[str, ...],
    log_level: str,
    once: bool,
    tls_secret: tuple[str, str] | None,
    service_name: str,
    service_namespace: str,
    extra_sans: tuple[str, ...],
    webhook_configurations: tuple[str, ...],
    certificate_check_interval: float,
    scan_interval: float,
    report_format: str,
    scan_timeout: float | None,
    history_url: str | None,
    no_history: bool,
    history_retention: float,
) -> None:
    """Create and keep in sync the resources GeneratingPolicies generate, keep policy reports of the validating
    policies' background scans (and, with --tls-secret, the webhook's certificates)."""
    if bool(policy_paths) == from_cluster:
        raise click.UsageError("give either --policies or --from-cluster")
    if webhook_configurations and tls_secret is None:
        raise click.UsageError("--webhook-configuration needs --tls-secret")
    from prometheus_client import CollectorRegistry, start_http_server

    from webhook import logs
    from webhook.certificates import CertificateRounds, SecretCertificates
    from webhook.generator import Generator, GeneratorMetrics
    from webhook.kubernetes_cluster import ClusterConfigError, ClusterConnection

    logs.configure(log_level)
    history_url = resolve_history(history_url, no_history) if scan_interval > 0 else None
    connection = ClusterConnection(kubeconfig=kubeconfig, context=kube_context, in_cluster=in_cluster)
    try:
        cluster = connection.connect()
    except ClusterConfigError as error:
        raise ControllerError(str(error)) from None
    with cluster:
        source: PolicySource
        if from_cluster:
            from webhook.snapshot import ClusterPolicySource

            # Policies are watched: the controller starts on an empty cluster and picks up GeneratingPolicies as
            # they are created, changed or deleted (a full re-list every 5 minutes is a safety net).
            source = ClusterPolicySource(cluster, poll_interval=300.0, watch_timeout=30)
            snapshot = source.current()
            if snapshot is None:
                raise ControllerError("cannot read the policies.kyverno.io objects from the cluster")
            policy_set = snapshot.policy_set
            if not policy_set.generating and not has_background_policies(policy_set):
                log.warning("no GeneratingPolicy or background ValidatingPolicy in the cluster yet; waiting for one")
        else:
            source = StaticPolicySource(None)
            policy_set = load_policy_set(policy_paths, ())
            if policy_set.compile_errors:
                raise ControllerError("; ".join(str(error) for error in policy_set.compile_errors))
            scans = scan_interval > 0 and has_background_policies(policy_set)
            if not policy_set.generating and not scans:
                raise ControllerError(
                    "nothing to run: no GeneratingPolicy, and no ValidatingPolicy with background scans enabled"
                    + ("" if scan_interval > 0 else " (--scan-interval is 0)")
                )
        if from_cluster or policy_set.generating:
            kinds = {*(_resource_type(text) for text in generated_kinds), *_template_kinds(policy_set)}
            try:
                check_permissions(cluster, sorted(kinds, key=lambda r: (r.group, r.resource)))
            except ApiError as error:
                raise ControllerError(f"cannot check permissions: {error}") from None
        certificates = None
        if tls_secret is not None:
            from webhook.tls import service_dns_names

            certificates = SecretCertificates(
                cluster,
                namespace=tls_secret[0],
                name=tls_secret[1],
                dns_names=service_dns_names(service_name, service_namespace, extra_sans),
                webhook_configurations=webhook_configurations,
            )
        registry = CollectorRegistry()
        generator = Generator(cluster, policy_set, metrics=GeneratorMetrics(registry))
        reports: ScanRounds | None = None
        if scan_interval > 0 and (from_cluster or has_background_policies(policy_set)):
            from webhook.policy_reports import ChildReportRounds, IsolatedRound, ReportMetrics

            # Each round runs in a child process that writes the reports, the history and the Events itself.
            isolated = IsolatedRound(
                connection,
                policy_paths=() if from_cluster else tuple(str(path) for path in policy_paths),
                report_format="openreports" if report_format == "openreports" else "wgpolicyk8s",
                history_url=history_url,
                history_retention=history_retention,
                events=not once,
                log_level=log_level,
            )
            reports = ChildReportRounds(
                isolated, policy_set, interval=scan_interval, timeout=scan_timeout, metrics=ReportMetrics(registry)
            )
        try:
            if once:
                _reconcile_certificates_once(certificates)
                if policy_set.generating:
                    generator.start()
                    for _ in range(1000):  # bounded: a run over a quiet cluster converges in a few rounds
                        generator.sync_once()
                        if not generator.pending:
                            break
                if reports is not None and has_background_policies(policy_set):
                    _scan_once(reports)
                return
            if metrics_port:
                start_http_server(metrics_port, registry=registry)
            rounds = None
            if certificates is not None:
                rounds = CertificateRounds(certificates, interval=certificate_check_interval)
            _run(
                cluster,
                generator,
                source,
                namespace,
                lease_name,
                identity or socket.gethostname(),
                rounds,
                reports=reports,
            )
        finally:
            if reports is not None:
                reports.stop_round()  # an exception above: no scan process outlives the controller
                reports.join(timeout=reports_grace(reports))


def reports_grace(reports: ScanRounds) -> float:
    """How long to wait for a stopped round: its process's grace period, and a margin."""
    return float(getattr(reports, "grace", 10.0)) + 5.0


def _scan_once(reports: ScanRounds) -> None:
    from webhook.policy_reports import RoundFailed, log_round

    try:
        result = reports.run_once()
    except RoundFailed as error:
        raise ControllerError(f"the background scan failed: {error}") from None
    log_round(result)
    errors = [*result.scan_errors, *result.writes.errors]
    if errors:
        raise ControllerError("the background scan did not complete: " + "; ".join(errors))


def _reconcile_certificates_once(certificates: SecretCertificates | None) -> None:
    if certificates is None:
        return
    result = certificates.reconcile()
    if result.errors:
        raise ControllerError("cannot reconcile the webhook certificates: " + "; ".join(result.errors))
    log.info(
        "webhook certificates reconciled",
        extra={
            "secret": result.secret,
            "webhook_configurations": result.webhook_configurations,
            "missing": result.missing,
        },
    )


def _run(
    cluster: Cluster,
    generator: Generator,
    source: PolicySource,
    namespace: str,
    lease_name: str,
    identity: str,
    certificates: CertificateRounds | None = None,
    *,
    reports: ScanRounds | None = None,
    events: EventRecorder | None = None,
) -> None:
    """Loop while not stopped: follow policy changes, and while leader run the generator and the background rounds.

    A round in flight is stopped when this replica loses the Lease, and at shutdown before the Lease is released.
    `events` (if given) is started and stopped with the loop."""
    from webhook.leader import LeaderElector

    stop = threading.Event()

    def request_stop(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    elector = LeaderElector(cluster, namespace=namespace, name=lease_name, identity=identity)
    started = False
    snapshot = source.current()
    version = snapshot.version if snapshot is not None else ""
    start_source = getattr(source, "start", None)
    if start_source is not None:
        start_source()
    if events is not None:
        events.start()
    while not stop.is_set():
        snapshot = source.current()
        if snapshot is not None and snapshot.version != version:
            version = snapshot.version
            generator.replace_policies(snapshot.policy_set)
            if reports is not None:
                reports.update_policies(snapshot.policy_set)  # a debounced scan with the new policies
            log.info("policies reloaded", extra={"version": version})
        if elector.step():
            if certificates is not None:
                certificates.tick(new_term=not started)  # a background round: never holds up the Lease
            if reports is not None:
                reports.tick(new_term=not started)  # likewise: a scan runs in its own thread
            if not started:
                generator.start()
                started = True
            generator.sync_once(timeout_seconds=1)
        else:
            if started and reports is not None:
                reports.stop_round()  # another replica leads now: its scan must not race with ours
            started = False  # a new leader term starts with a fresh list
            stop.wait(elector.retry_period)
    if certificates is not None:
        certificates.join(timeout=15)  # a round in flight finishes before another replica may start one
    if reports is not None:
        reports.stop_round()  # the scan process gets SIGTERM, then is killed after its grace period
        reports.join(timeout=reports_grace(reports))
    if events is not None:
        events.stop()
    elector.release()
    stop_source = getattr(source, "stop", None)
    if stop_source is not None:
        stop_source()
    log.info("controller stopped", extra={"identity": identity})
