"""`celvern dashboard`: serve the governance dashboard (`webhook.dashboard`) on its own, against a decision store.

Why this module exists: the dashboard runs inside `celvern serve`, but a security team also wants it next to a
store the webhooks write to (a shared SQLite file, PostgreSQL) without running an admission server. This module
parses flags, refuses to expose the dashboard beyond loopback without a token (the history names users, namespaces
and what they tried to deploy) or with a token shorter than 16 characters, serves TLS with `--tls-cert/--tls-key`
(and warns loudly when it listens beyond loopback over plain HTTP: fine only behind a TLS-terminating proxy), and
starts uvicorn.

`run_dashboard` takes plain, picklable arguments so that `celvern serve` can run it in a child process.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from cli.library_command import DEFAULT_LIBRARY, LIBRARY_VARIABLE
from cli.suite import load_policy_set
from engine.library import load_library
from webhook.overview import PolicyInfo, library_totals, policy_infos
from webhook.state import PolicySource

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MIN_TOKEN_LENGTH = 16
"""Characters a dashboard token needs at least (`openssl rand -hex 32` makes 64)."""

log = logging.getLogger("celvern.dashboard")


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """How to reach the cluster whose policies.kyverno.io resources the dashboard lists (picklable)."""

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (`localhost`, 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The token in `path` (surrounding whitespace dropped); a usage error when unreadable, empty or shorter than
    16 characters. A file that its group or others may read is logged as a warning (the token is the only key)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as error:
        raise click.UsageError(f"cannot read --token-file {path}: {error}") from None
    if not token:
        raise click.UsageError(f"--token-file {path} is empty")
    if len(token) < MIN_TOKEN_LENGTH:
        raise click.UsageError(
            f"the token in --token-file {path} has {len(token)} characters: use at least {MIN_TOKEN_LENGTH} "
            "(e.g. openssl rand -hex 32)"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            f"the dashboard token file {path} is readable by its group or by others "
            f"(mode {stat.S_IMODE(mode):04o}): chmod 600 it",
            extra={"path": path},
        )
    return token


def load_infos(policy_paths: Sequence[str]) -> tuple[PolicyInfo, ...]:
    """The policies in `policy_paths`, as the dashboard lists them (none without paths)."""
    return policy_infos(load_policy_set(policy_paths)) if policy_paths else ()


class LivePolicies:
    """The dashboard's view of the loaded policies, following the same source the webhook reads (files reloaded
    when they change, or the cluster's policies.kyverno.io resources), so that the Policies page never shows a
    stale set. The infos are computed once per snapshot version."""

    def __init__(self, source: PolicySource | None) -> None:
        self._source = source
        self._cached: tuple[str, tuple[PolicyInfo, ...]] = ("", ())

    def __call__(self) -> tuple[PolicyInfo, ...]:
        snapshot = self._source.current() if self._source is not None else None
        if snapshot is None:
            return ()
        version, infos = self._cached
        if version != snapshot.version:
            infos = policy_infos(snapshot.policy_set)
            self._cached = (snapshot.version, infos)
        return infos


def load_library_catalogue(library_dir: str | None) -> tuple[dict[str, int], frozenset[str]]:
    """Policies per severity and the policy names of the library (`library_dir`, `$CELVERN_LIBRARY`, else the
    bundled `policies/`); nothing when there is no library there."""
    root = library_dir or os.environ.get(LIBRARY_VARIABLE) or DEFAULT_LIBRARY
    if not Path(root).exists():
        return {}, frozenset()
    library = load_library(root)
    return library_totals(library), frozenset(policy.name for policy in library.policies)


def run_dashboard(
    store_url: str,
    policy_paths: Sequence[str] = (),
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    library_dir: str | None = None,
    listener: socket.socket | None = None,
    cluster_policies: ClusterOptions | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Serve the dashboard until interrupted. The store is opened on first use (a database that is still down
    answers 503 until it is up). Raises click.UsageError for a non-loopback `host` without a `token`, or for only
    one of `tls_cert` and `tls_key`.

    `listener`, when given, is an already bound socket to serve on (`celvern serve` binds it, so that it can log
    the port and fail early); `host` is then only checked. The policies come from `policy_paths` (reloaded when they
    change) or, with `cluster_policies`, from the cluster. `tls_cert` and `tls_key` (PEM files) serve HTTPS, with a
    Secure session cookie and HSTS; beyond loopback without them a warning is logged (plain HTTP is only right
    behind a TLS-terminating proxy). Without a token, `allowed_hosts` are Host names accepted besides localhost,
    127.0.0.1 and [::1]. Every parameter after `host` is optional, so older callers keep working unchanged."""
    import uvicorn

    from webhook.dashboard import create_dashboard_app
    from webhook.history import open_store
    from webhook.snapshot import ClusterPolicySource, DirectoryPolicySource

    if not token and not is_loopback(host):
        raise click.UsageError(
            f"refusing to serve the dashboard on {host} without a token: pass --token-file, or listen on 127.0.0.1"
        )
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together: give both, or neither")
    https = tls_cert is not None
    if not https and not is_loopback(host):
        log.warning(
            f"SERVING THE DASHBOARD ON {host} OVER PLAIN HTTP: its token and session cookie cross the network in "
            "clear. Pass --tls-cert and --tls-key, unless a TLS-terminating proxy is the only way in.",
            extra={"host": host},
        )
    source: DirectoryPolicySource | ClusterPolicySource | None = None
    cluster = None
    if cluster_policies is not None:
        from webhook.kubernetes_cluster import ClusterConfigError, KubernetesCluster

        try:
            cluster = KubernetesCluster.connect(
                kubeconfig=cluster_policies.kubeconfig,
                context=cluster_policies.context,
                in_cluster=cluster_policies.in_cluster,
            )
        except ClusterConfigError as error:
            raise click.UsageError(str(error)) from None
        source = ClusterPolicySource(cluster, poll_interval=300.0, watch_timeout=30, load=False)
    elif policy_paths:
        source = DirectoryPolicySource(policy_paths, poll_interval=2.0)
    totals, names = load_library_catalogue(library_dir)
    app = create_dashboard_app(
        lambda: open_store(store_url),
        LivePolicies(source),
        totals,
        token=token,
        library_names=names,
        allowed_hosts=allowed_hosts,
        https=https,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,  # the history's filters name users and namespaces; nothing of it belongs in a log
        proxy_headers=False,
        server_header=False,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )
    if source is not None:
        source.start()
    try:
        uvicorn.Server(config).run(sockets=[listener] if listener is not None else None)
    finally:
        if source is not None:
            source.stop()
        if cluster is not None:
            cluster.close()


STORE_OPTION = click.option(
    "--store", "store_url", required=True, help="Decision store: a SQLite path, sqlite:///PATH or postgresql://..."
)
"""`--store URL`, shared by `celvern dashboard` and `celvern overview`."""
LIBRARY_OPTION = click.option(
    "--library",
    "library_dir",
    type=click.Path(),
    envvar=LIBRARY_VARIABLE,
    default=None,
    help=f"Library directory for the totals [default: ${LIBRARY_VARIABLE}, else the policies/ shipped with celvern].",
)
"""`--library DIR`, shared by `celvern dashboard` and `celvern overview`."""


@click.command("dashboard")
@STORE_OPTION
@click.option(
    "-p",
    "--policies",
    "policy_paths",
    multiple=True,
    type=click.Path(exists=True),
    help="Policies to list (repeatable; reloaded when they change).",
)
@click.option("--from-cluster", is_flag=True, help="List the cluster's policies.kyverno.io policies instead.")
@click.option("--kubeconfig", type=click.Path(), default=None, help="Kubeconfig file (with --from-cluster).")
@click.option("--context", "kube_context", default=None, help="Kubeconfig context (with --from-cluster).")
@click.option("--in-cluster", is_flag=True, help="Use the pod's service account (with --from-cluster).")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), help="Port.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the bearer token the dashboard requires (required off loopback; at least 16 characters; "
    "keep it chmod 600).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM certificate to serve HTTPS with (with --tls-key). Off loopback, serve TLS this way unless a "
    "TLS-terminating proxy is in front: plain HTTP is logged as a warning.",
)
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM private key of --tls-cert."
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="Without a token, a Host name to answer besides localhost, 127.0.0.1 and [::1] (repeatable); other Host "
    "headers get 400 (DNS rebinding).",
)
@LIBRARY_OPTION
def dashboard_command(
    store_url: str,
    policy_paths: tuple[str, ...],
    from_cluster: bool,
    kubeconfig: str | None,
    kube_context: str | None,
    in_cluster: bool,
    host: str,
    port: int,
    token_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    allowed_hosts: tuple[str, ...],
    library_dir: str | None,
) -> None:
    """Serve the governance dashboard (Overview, Policies, Violations) and its JSON API.

    Off loopback it needs --token-file, and should serve HTTPS with --tls-cert/--tls-key (or sit behind a
    TLS-terminating proxy)."""
    if from_cluster and policy_paths:
        raise click.UsageError("give either --policies or --from-cluster")
    cluster = ClusterOptions(kubeconfig, kube_context, in_cluster) if from_cluster else None
    token = read_token(token_file) if token_file else None
    if token is None and not is_loopback(host):
        raise click.UsageError(
            f"refusing to serve the dashboard on {host} without a token: pass --token-file, or listen on 127.0.0.1"
        )
    run_dashboard(
        store_url,
        list(policy_paths),
        host=host,
        port=port,
        token=token,
        library_dir=library_dir,
        cluster_policies=cluster,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allowed_hosts=list(allowed_hosts),
    )
