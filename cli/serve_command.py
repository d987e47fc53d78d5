"""`celvern serve`: run the admission webhook server (uvicorn + uvloop + httptools, TLS 1.2+).

Why this module exists: it is the wiring between the pieces that each do one thing -- a policy source that hot
reloads (`webhook.snapshot`), a namespace label cache (`webhook.namespaces`), certificates (`webhook.tls`), and the
ASGI app (`webhook.server.create_app`) -- and the process model: one worker in this process, or `--workers N`
processes sharing one listening socket under a small supervisor that restarts a worker that dies.

Metrics with several workers: a scrape of `/metrics` reaches one worker, so each worker must report the totals of
all of them. The supervisor switches prometheus_client to its multiprocess mode: it creates a private directory
(0700), exports it as `PROMETHEUS_MULTIPROC_DIR` before it spawns any worker (spawned workers inherit the
environment and import prometheus_client afresh, so every metric they create is backed by a file there), tells
prometheus_client when a worker dies, and removes the directory when it stops. Counts of a worker that died stay
in the directory, so totals never go backwards. A single worker keeps in-memory metrics (no files).

TLS: one `ssl.SSLContext` per worker for the life of the process (handed to uvicorn through
`ssl_context_factory`). An asyncio task on the worker's event loop reloads the certificate files into that context
when they change, so renewal never restarts the server or drops a connection, and never races a handshake (it runs
on the thread that does the handshakes). With generated certificates, the parent process renews the files in a
timer thread when less than a third of their lifetime is left; with `--tls-cert/--tls-key`, whoever manages the
files (e.g. cert-manager through a mounted Secret) rotates them.

Heavy imports (uvicorn, the kubernetes client, the app) happen when the command runs, so `celvern --help` and the
offline commands stay fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from cli.history_options import history_options, resolve_history
from cli.history_options import recorder as history_recorder

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from webhook.kubernetes_cluster import KubernetesCluster
    from webhook.tls import CertificateFiles

log = logging.getLogger("celvern.serve")

DEFAULT_PORT = 9443
DEFAULT_DASHBOARD_PORT = 8080
DEFAULT_MAX_WORKER_MEMORY_MIB = 1024
MEMORY_CHECK_INTERVAL = 5.0
"""Seconds between checks of a worker's resident memory."""
RECYCLE_EXIT = 75
"""Exit code of a worker that stopped to be recycled (its memory grew over --max-worker-memory)."""
LISTEN_FD_ENV = "CELVERN_LISTEN_FD"
"""Set across the re-exec of a recycled single worker: the listening socket's descriptor, kept open so that
connections arriving meanwhile wait in its backlog instead of being refused."""
TLS_RELOAD_INTERVAL = 30.0
"""Seconds between checks of the certificate files by each worker."""
LISTEN_BACKLOG = 2048
RENEWAL_CHECK_INTERVAL = 3600.0
"""Seconds between renewal checks of generated certificates."""
GRACEFUL_SHUTDOWN_SECONDS = 10
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus_client's multiprocess mode keeps the metric files of all workers."""
INSECURE_WARNING = (
    "WARNING: --insecure-http: serving admission reviews over plain HTTP. The Kubernetes API server only calls "
    "webhooks over HTTPS; use this for local development only, never in a cluster."
)


class ServeError(click.ClickException):
    """The server cannot start (bad options, no cluster configuration for --from-cluster, unusable TLS files)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What each worker needs to build its own sources and app (picklable: workers are spawned processes)."""

    policy_paths: tuple[str, ...] = ()
    from_cluster: bool = False
    cert_path: str | None = None
    key_path: str | None = None
    """None for both: plain HTTP (--insecure-http)."""
    kubeconfig: str | None = None
    kube_context: str | None = None
    in_cluster: bool = False
    poll_interval: float = 2.0
    tls_reload_interval: float = TLS_RELOAD_INTERVAL
    log_level: str = "info"
    history_url: str | None = None
    """Where denials, warnings and audits are recorded (None: nowhere)."""
    history_retention: float = 7 * 86400.0
    """Seconds decisions are kept."""
    events: bool = True
    """Kubernetes Events for denials and warnings (when a cluster is connected)."""
    max_worker_memory: int = 0
    """Resident bytes above which a worker is recycled (0: never)."""
    memory_check_interval: float = MEMORY_CHECK_INTERVAL


def _default_tls_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"celvern-tls-{os.getuid()}")


@click.command("serve")
@click.option(
    "--policies",
    "policy_paths",
    multiple=True,
    type=click.Path(exists=True),
    help="Policy files or directories, reloaded when they change (a broken file keeps the last good set).",
)
@click.option(
    "--from-cluster", is_flag=True, help="Read the policies.kyverno.io policies and exceptions from the cluster."
)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="Port (0: any).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None, help="Serving certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="Its private key.")
@click.option(
    "--tls-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory for the generated CA (ca.crt is the webhooks' caBundle) and serving certificate "
    "[default: <tmp>/celvern-tls-<uid>]. Created when missing, renewed before expiry.",
)
@click.option("--service-name", default="celvern", show_default=True, help="Service name in the certificate's SANs.")
@click.option("--service-namespace", default="celvern", show_default=True, help="Service namespace in the SANs.")
@click.option(
    "--tls-san", "extra_sans", multiple=True, help="Extra DNS name or IP address for the generated certificate."
)
@click.option("--insecure-http", is_flag=True, help="Serve plain HTTP. Local development only: never in a cluster.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes.")
@click.option(
    "--kubeconfig", type=click.Path(), default=None, help="Kubeconfig file (default: $KUBECONFIG or ~/.kube/config)."
)
@click.option("--context", "kube_context", default=None, help="Kubeconfig context.")
@click.option("--in-cluster", is_flag=True, help="Use the pod's service account.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between checks of --policies for changes (--from-cluster watches instead).",
)
@history_options()
@click.option(
    "--dashboard",
    "dashboard_address",
    default=f"127.0.0.1:{DEFAULT_DASHBOARD_PORT}",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the governance dashboard listens (a child process reading the decision history); off loopback it "
    "needs --dashboard-token-file.",
)
@click.option("--no-dashboard", is_flag=True, help="Serve no dashboard.")
@click.option(
    "--dashboard-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the bearer token the dashboard requires.",
)
@click.option(
    "--events/--no-events",
    default=True,
    show_default=True,
    help="Create Kubernetes Events (events.k8s.io/v1) for denials and warnings, rate-limited (needs a cluster).",
)
@click.option(
    "--max-worker-memory",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_WORKER_MEMORY_MIB,
    show_default=True,
    metavar="MIB",
    help="Recycle a worker whose resident memory grows over this (0: never): it finishes its requests and a fresh "
    "one takes over the listening socket. cel-expr-python leaks memory on calls of Python-implemented CEL functions "
    "(image, quantity, ...); this bounds it. Keep it under the container's memory limit.",
)
@click.option("--memory-check-interval", type=click.FloatRange(min=0.05), default=MEMORY_CHECK_INTERVAL, hidden=True)
@click.option("--tls-reload-interval", type=click.FloatRange(min=0.1), default=TLS_RELOAD_INTERVAL, hidden=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def serve_command(
    policy_paths: tuple[str, ...],
    from_cluster: bool,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    tls_dir: str | None,
    service_name: str,
    service_namespace: str,
    extra_sans: tuple[str, ...],
    insecure_http: bool,
    workers: int,
    kubeconfig: str | None,
    kube_context: str | None,
    in_cluster: bool,
    poll_interval: float,
    max_worker_memory: int,
    memory_check_interval: float,
    tls_reload_interval: float,
    log_level: str,
    history_url: str | None,
    no_history: bool,
    history_retention: float,
    dashboard_address: str,
    no_dashboard: bool,
    dashboard_token_file: str | None,
    events: bool,
) -> None:
    """Serve the admission webhook: POST /validate and /mutate, GET /healthz, /readyz and /metrics.

    Namespace labels (for namespaceSelector) come from a watched cache of the cluster's Namespaces, found through
    --kubeconfig/--context, --in-cluster, or automatically. Without any cluster configuration the server still
    starts with --policies, but every namespace is unknown: policies with a namespaceSelector then fail to
    evaluate and their failurePolicy decides (never "no labels").
    """
    if bool(policy_paths) == from_cluster:
        raise click.UsageError("give either --policies or --from-cluster")
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_cert and tls_dir:
        raise click.UsageError("give either --tls-cert/--tls-key or --tls-dir")
    if insecure_http and (tls_cert or tls_dir):
        raise click.UsageError("--insecure-http serves no TLS: drop the TLS options")
    history_url = resolve_history(history_url, no_history)
    dashboard: DashboardOptions | None = None
    if not no_history and not no_dashboard:
        dashboard = _dashboard_options(dashboard_address, dashboard_token_file)

    from webhook import logs

    logs.configure(log_level)
    _route_uvicorn_logs(log_level)

    store = None
    cert_path, key_path = tls_cert, tls_key
    if insecure_http:
        click.secho(INSECURE_WARNING, err=True, fg="red", bold=True)
        log.warning("serving plain HTTP (--insecure-http): local development only")
    elif not tls_cert:
        from webhook.tls import CertificateStore, service_dns_names

        directory = Path(tls_dir or _default_tls_dir())
        store = CertificateStore(directory, dns_names=service_dns_names(service_name, service_namespace, extra_sans))
        try:
            store.ensure()
        except OSError as error:
            raise ServeError(f"cannot write certificates to {directory}: {error}") from None
        cert_path, key_path = str(store.cert_path), str(store.key_path)
        log.info("using generated certificates", extra={"ca": str(store.ca_cert_path), "dns_names": store.dns_names})

    options = ServeOptions(
        policy_paths=policy_paths,
        from_cluster=from_cluster,
        cert_path=cert_path,
        key_path=key_path,
        kubeconfig=kubeconfig,
        kube_context=kube_context,
        in_cluster=in_cluster,
        poll_interval=poll_interval,
        tls_reload_interval=tls_reload_interval,
        log_level=log_level,
        history_url=history_url,
        history_retention=history_retention,
        events=events,
        max_worker_memory=max_worker_memory * 1024 * 1024,
        memory_check_interval=memory_check_interval,
    )
    if options.cert_path and options.key_path:  # fail here, not in every worker, on unusable files
        from webhook.tls import CertificateFiles

        try:
            CertificateFiles(options.cert_path, options.key_path).ssl_context()
        except (OSError, ValueError) as error:
            raise ServeError(f"cannot use the TLS certificate: {error}") from None
    if from_cluster:  # fail fast without a cluster, before binding anything
        connected = _connect(options)
        if connected is not None:
            connected.close()

    listener = _inherited_listener()
    try:
        if listener is None:
            # uvicorn's own default backlog: Python's (128) drops SYNs when many API server connections open at
            # once, and a dropped SYN costs the client a one-second retransmit.
            listener = socket.create_server(
                (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=LISTEN_BACKLOG
            )
    except OSError as error:
        raise ServeError(f"cannot listen on {host}:{port}: {error}") from None
    recycled = False
    with listener:
        log.info(
            "listening",
            extra={
                "host": host,
                "port": listener.getsockname()[1],
                "scheme": "http" if insecure_http else "https",
                "workers": workers,
            },
        )
        if store is not None:
            # Workers reload the files themselves (on their event loops); the timer only renews them.
            store.start(RENEWAL_CHECK_INTERVAL, on_renewed=lambda: None)
        dashboard_process = None
        if dashboard is not None:
            dashboard_process = _start_dashboard(dashboard, options)
        try:
            if workers == 1:
                recycled = run_worker(options, listener)
            else:
                _supervise(options, listener, workers)
        finally:
            if dashboard_process is not None:
                _stop_process(dashboard_process)
            if store is not None:
                store.stop()
        if recycled:
            _reexec(listener)  # does not return


def _inherited_listener() -> socket.socket | None:
    """The listening socket handed over by a recycled worker's re-exec (see `_reexec`), if any."""
    descriptor = os.environ.pop(LISTEN_FD_ENV, None)
    if descriptor is None:
        return None
    try:
        inherited = socket.socket(fileno=int(descriptor))
    except (OSError, ValueError):
        log.warning("ignoring an unusable inherited listening socket", extra={"fd": descriptor})
        return None
    if not inherited.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        inherited.close()
        return None
    return inherited


def _reexec(listener: socket.socket) -> None:
    """Start this command afresh in this process, keeping the listening socket open across the exec: the kernel
    keeps queueing connections in its backlog until the new image accepts them, so none is refused."""
    descriptor = listener.fileno()
    os.set_inheritable(descriptor, True)
    os.environ[LISTEN_FD_ENV] = str(descriptor)
    log.info("re-executing to recycle the worker", extra={"pid": os.getpid()})
    for handler in logging.getLogger("celvern").handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


@dataclass(frozen=True, slots=True)
class DashboardOptions:
    host: str
    port: int
    token: str | None


def _dashboard_options(address: str, token_file: str | None) -> DashboardOptions:
    """The checked --dashboard address and token: usage errors for a bad address or an exposed dashboard without a
    token, before anything starts."""
    from cli.dashboard_command import is_loopback, read_token

    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise click.BadParameter(f"expected HOST:PORT, got {address!r}", param_hint="--dashboard") from None
    if not host or not 0 <= port <= 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {address!r}", param_hint="--dashboard")
    token = read_token(token_file) if token_file else None
    if token is None and not is_loopback(host):
        raise click.UsageError(
            f"refusing to serve the dashboard on {host} without a token: pass --dashboard-token-file, or listen on "
            "127.0.0.1 (or --no-dashboard)"
        )
    return DashboardOptions(host, port, token)


def _start_dashboard(dashboard: DashboardOptions, options: ServeOptions) -> BaseProcess | None:
    """Run the dashboard in a child process, apart from admission: its queries over a week of history must never
    take the event loop that answers the API server. The socket is bound here, so that the port is logged; a port
    already in use is logged and admission starts anyway (the webhook matters more than its dashboard)."""
    family = socket.AF_INET6 if ":" in dashboard.host else socket.AF_INET
    try:
        listener = socket.create_server((dashboard.host, dashboard.port), family=family)
    except OSError as error:
        log.error(
            "cannot listen for the dashboard; serving admission without it",
            extra={"host": dashboard.host, "port": dashboard.port, "error": str(error)},
        )
        return None
    with listener:  # the child gets its own copy
        log.info(
            "dashboard listening",
            extra={"host": dashboard.host, "port": listener.getsockname()[1], "token": dashboard.token is not None},
        )
        process = multiprocessing.get_context("spawn").Process(
            target=_dashboard_main, args=(options, listener, dashboard.token), name="celvern-dashboard", daemon=True
        )
        process.start()
    return process


def _dashboard_main(options: ServeOptions, listener: socket.socket, token: str | None) -> None:
    from cli.dashboard_command import ClusterOptions, run_dashboard
    from webhook import logs

    logs.configure(options.log_level)
    _route_uvicorn_logs(options.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (SIGTERM) after admission has stopped
    assert options.history_url is not None
    cluster = (
        ClusterOptions(options.kubeconfig, options.kube_context, options.in_cluster) if options.from_cluster else None
    )
    host = listener.getsockname()[0]
    from cli.dashboard_command import is_loopback

    # Off loopback the dashboard carries a bearer token: it is served over TLS with the webhook's own certificate
    # (unless the webhook itself is --insecure-http).
    exposed = not is_loopback(str(host))
    run_dashboard(
        options.history_url,
        options.policy_paths,
        host=str(host),
        token=token,
        listener=listener,
        cluster_policies=cluster,
        tls_cert=options.cert_path if exposed else None,
        tls_key=options.key_path if exposed else None,
    )


def _stop_process(process: BaseProcess) -> None:
    if process.is_alive():
        process.terminate()
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join(5)


def _route_uvicorn_logs(level: str) -> None:
    """uvicorn's own records go through celvern's JSON handler."""
    ours = logging.getLogger("celvern")
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = list(ours.handlers)
        logger.setLevel(level.upper())
        logger.propagate = False


# --- a worker ---------------------------------------------------------------------------------------------------


def _connect(options: ServeOptions) -> KubernetesCluster | None:
    """A `KubernetesCluster`, or None when no configuration exists and none was asked for explicitly."""
    from webhook.kubernetes_cluster import ClusterConfigError, KubernetesCluster

    explicit = options.in_cluster or options.kubeconfig is not None or options.kube_context is not None
    try:
        if options.in_cluster:
            return KubernetesCluster.in_cluster()
        if not explicit and os.environ.get("KUBERNETES_SERVICE_HOST"):
            with contextlib.suppress(ClusterConfigError):
                return KubernetesCluster.in_cluster()
        return KubernetesCluster.from_kubeconfig(options.kubeconfig, options.kube_context)
    except ClusterConfigError as error:
        if explicit or options.from_cluster:
            raise ServeError(str(error)) from None
        log.warning(
            "no cluster configuration: namespace labels are unknown, policies with a namespaceSelector will follow "
            "their failurePolicy",
            extra={"error": str(error)},
        )
        return None


def run_worker(options: ServeOptions, listener: socket.socket) -> bool:
    """Serve on `listener` in this process until SIGTERM/SIGINT (or the server stops). Returns True when the worker
    stopped to be recycled (its memory grew over `options.max_worker_memory`)."""
    import uvicorn
    import uvloop

    from webhook.namespaces import NamespaceCache
    from webhook.server import create_app, new_registry
    from webhook.snapshot import ClusterPolicySource, DirectoryPolicySource
    from webhook.state import NamespaceResolver, StaticNamespaces

    cluster = _connect(options)
    policies: DirectoryPolicySource | ClusterPolicySource
    if options.from_cluster:
        if cluster is None:
            raise ServeError("--from-cluster needs a cluster configuration")
        # Watches deliver changes; a full re-list every 5 minutes is only a safety net against missed events.
        policies = ClusterPolicySource(cluster, poll_interval=300.0, watch_timeout=30, load=False)
    else:
        policies = DirectoryPolicySource(options.policy_paths, poll_interval=options.poll_interval)
    namespaces: NamespaceResolver
    cache: NamespaceCache | None = None
    if cluster is not None:
        cache = NamespaceCache(cluster)
        namespaces = cache
    else:
        namespaces = StaticNamespaces()

    certificates: CertificateFiles | None = None
    factory = None
    if options.cert_path and options.key_path:
        from webhook.tls import CertificateFiles

        certificates = CertificateFiles(options.cert_path, options.key_path)
        context = certificates.ssl_context()
        factory = lambda _config, _default: context  # noqa: E731
    registry = new_registry()
    recorder = None
    if options.history_url:
        recorder = history_recorder(options.history_url, options.history_retention, registry)
    event_recorder = None
    if cluster is not None and options.events:
        from webhook.events import EventRecorder

        event_recorder = EventRecorder(cluster, controller="celvern-admission", registry=registry)
    config = uvicorn.Config(
        create_app(policies, namespaces, registry=registry, history=recorder, events=event_recorder),
        loop="uvloop",
        http="httptools",
        ssl_context_factory=factory,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        proxy_headers=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    stopping = threading.Event()

    def request_stop(_signal: int, _frame: FrameType | None) -> None:
        # Installed around uvicorn's own handlers: uvicorn re-raises the signal it caught after a graceful
        # shutdown, and this turns that into a normal return instead of death by signal.
        stopping.set()
        server.should_exit = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Compiled policies and imported modules live as long as the worker: move them out of the collector's way, so
    # that the garbage of each review (a decoded 10 KB object) does not trigger full scans of them.
    gc.collect()
    gc.freeze()
    policies.start()
    if cache is not None:
        cache.start()
    if recorder is not None:
        recorder.start()
    if event_recorder is not None:
        event_recorder.start()
    recycled = False
    # uvicorn closes the sockets it serves on when it stops: it gets a duplicate, so that the listening socket itself
    # survives a recycle.
    serving = listener.dup()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            recycled = runner.run(_serve(server, serving, certificates, options))
    finally:
        serving.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        policies.stop()
        if recorder is not None:
            recorder.stop(timeout=5.0)  # what is queued is written before the worker exits
        if event_recorder is not None:
            event_recorder.stop(timeout=2.0)
        if cache is not None:
            cache.stop(timeout=1.0)
        if cluster is not None:
            cluster.close()
        log.info("server stopped", extra={"pid": os.getpid()})
    return recycled


async def _serve(
    server: Any, listener: socket.socket, certificates: CertificateFiles | None, options: ServeOptions
) -> bool:
    """Serve until stopped; True when stopped by the memory watcher."""
    tasks = []
    if certificates is not None:
        tasks.append(asyncio.create_task(_watch_certificates(certificates, options.tls_reload_interval)))
    recycle = asyncio.Event()
    if options.max_worker_memory:
        tasks.append(
            asyncio.create_task(
                _watch_memory(server, options.max_worker_memory, options.memory_check_interval, recycle)
            )
        )
    try:
        await server.serve(sockets=[listener])
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return recycle.is_set()


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def _watch_memory(
    server: Any, limit: int, interval: float, recycle: asyncio.Event, measure: Callable[[], int] = resident_bytes
) -> None:
    """Stop the server gracefully (in-flight requests finish) once its resident memory exceeds `limit`."""
    while True:
        await asyncio.sleep(interval)
        used = measure()
        if used > limit:
            log.warning(
                "worker memory over the limit; recycling the worker",
                extra={"resident_mib": used // (1024 * 1024), "limit_mib": limit // (1024 * 1024)},
            )
            recycle.set()
            server.should_exit = True
            return


async def _watch_certificates(certificates: CertificateFiles, interval: float) -> None:
    """Reload renewed certificate files into the worker's context, on the loop that does the handshakes."""
    while True:
        await asyncio.sleep(interval)
        certificates.reload()


# --- several workers ------------------------------------------------------------------------------------------


def _worker_main(options: ServeOptions, listener: socket.socket) -> None:
    from webhook import logs

    logs.configure(options.log_level)
    _route_uvicorn_logs(options.log_level)
    if run_worker(options, listener):
        sys.exit(RECYCLE_EXIT)


def _supervise(options: ServeOptions, listener: socket.socket, count: int) -> None:
    """Run `count` worker processes on the shared socket; restart any that dies; stop them all on SIGTERM/SIGINT.

    The workers share their metrics through a private directory (prometheus_client's multiprocess mode), so that
    whichever worker answers `/metrics` reports the totals of all of them.
    """
    from prometheus_client import multiprocess

    spawn = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def request_stop(_signal: int, _frame: FrameType | None) -> None:
        stop.set()

    # mkdtemp: a new, empty directory (nothing left from an earlier run to wipe), mode 0700. A "spawn" child starts
    # a new interpreter with this process's environment, so the variable is set before it imports prometheus_client.
    metrics_dir = tempfile.mkdtemp(prefix="celvern-metrics-")
    previous_env = os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = metrics_dir
    log.info("workers share metrics", extra={"directory": metrics_dir})
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def launch() -> BaseProcess:
        process = spawn.Process(target=_worker_main, args=(options, listener), name="celvern-worker")
        process.start()
        return process

    def retire(process: BaseProcess) -> None:
        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]

    processes: list[BaseProcess] = []
    try:
        processes.extend(launch() for _ in range(count))
        while not stop.wait(0.5):
            for index, process in enumerate(processes):
                if not process.is_alive():
                    if process.exitcode == RECYCLE_EXIT:
                        log.info("worker recycled; starting a fresh one", extra={"pid": process.pid})
                    else:
                        log.error("worker died; restarting", extra={"pid": process.pid, "exitcode": process.exitcode})
                    retire(process)
                    process.close()
                    processes[index] = launch()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(GRACEFUL_SHUTDOWN_SECONDS + 15)  # uvicorn, then the history, events and caches
            if process.is_alive():
                process.kill()
                process.join(5)
            retire(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if previous_env is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = previous_env
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":  # `python -m cli.serve_command ...` until the command is registered in cli.main
    serve_command(prog_name="celvern serve")
    sys.exit(0)
