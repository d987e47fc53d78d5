"""`celvern serve`: option checks, the loud --insecure-http warning, and real servers on loopback (HTTPS, renewed
certificates, metrics summed over workers)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import cli.serve_command as serve_module
from cli.serve_command import MULTIPROCESS_ENV, ServeOptions, serve_command

POLICY = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: disallow-latest-tag
spec:
  validationActions: [Deny]
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [CREATE, UPDATE]
        resources: [pods]
  validations:
    - expression: "object.spec.containers.all(c, !c.image.endsWith(':latest'))"
      message: Using a mutable image tag such as 'latest' is not allowed.
"""


def review(image: str, uid: str = "0b4e5a2c-1d2f-4e5a-9b8c-7d6e5f4a3b2c") -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web",
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
        },
    }


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "latest.yaml").write_text(POLICY)
    return directory


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "either --policies or --from-cluster"),
        (["--from-cluster", "--policies", "{dir}"], "either --policies or --from-cluster"),
        (["--policies", "{dir}", "--tls-cert", "{file}"], "go together"),
        (["--policies", "{dir}", "--insecure-http", "--tls-dir", "{dir}"], "--insecure-http serves no TLS"),
    ],
)
def test_option_errors(policy_dir: Path, arguments: list[str], message: str) -> None:
    file = policy_dir / "latest.yaml"
    args = [a.format(dir=policy_dir, file=file) for a in arguments]
    result = CliRunner().invoke(serve_command, args)
    assert result.exit_code == 2 and message in result.output


def test_insecure_http_warns_loudly(policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[ServeOptions] = []
    monkeypatch.setattr(serve_module, "run_worker", lambda options, listener: started.append(options))
    result = CliRunner().invoke(
        serve_command, ["--policies", str(policy_dir), "--insecure-http", "--host", "127.0.0.1", "--port", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "WARNING: --insecure-http" in result.output and "never in a cluster" in result.output
    assert started and started[0].cert_path is None


def test_from_cluster_without_configuration_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(serve_command, ["--from-cluster", "--insecure-http", "--port", "0"])
    assert result.exit_code == 2 and "kubeconfig" in result.output


class Server:
    """`celvern serve` in a subprocess, with its JSON log lines collected from stderr."""

    def __init__(self, *arguments: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.serve_command", *arguments],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.log: list[bytes] = []
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for_port(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.log.append(line)
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if entry.get("message") == "listening":
                return int(entry["port"])
        raise AssertionError(f"the server did not start: {b''.join(self.log).decode(errors='replace')}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self.reader.join(10)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code


def wait_until_ready(client: httpx.Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_serves_admission_reviews_over_https(policy_dir: Path, tmp_path: Path, workers: int) -> None:
    env = {key: value for key, value in os.environ.items() if key != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(tmp_path / "no-kubeconfig")  # no cluster: namespaces unknown, server still starts
    tls_dir = tmp_path / "tls"
    server = Server(
        *("--policies", str(policy_dir), "--host", "127.0.0.1", "--port", "0", "--tls-dir", str(tls_dir)),
        *("--tls-san", "127.0.0.1", "--workers", str(workers), "--poll-interval", "0.2"),
        env=env,
    )
    try:
        port = server.wait_for_port()
        verify = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=verify, timeout=5) as client:
            wait_until_ready(client)
            denied = client.post("/validate", content=orjson.dumps(review("nginx:latest")))
            assert denied.status_code == 200
            answer = denied.json()
            assert answer["kind"] == "AdmissionReview" and answer["apiVersion"] == "admission.k8s.io/v1"
            assert answer["response"]["uid"] == "0b4e5a2c-1d2f-4e5a-9b8c-7d6e5f4a3b2c"
            assert answer["response"]["allowed"] is False
            assert "disallow-latest-tag" in answer["response"]["status"]["message"]
            allowed = client.post("/validate", content=orjson.dumps(review("nginx:1.25", uid="u-2")))
            assert allowed.json()["response"]["allowed"] is True
            assert allowed.http_version == "HTTP/1.1"
    finally:
        code = server.stop()
    assert code == 0, b"".join(server.log).decode(errors="replace")


def admission_requests(metrics: str) -> float:
    """The sum of `celvern_admission_requests_total` over all label sets of a /metrics page."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "celvern_admission_requests_total"
    )


def test_metrics_are_summed_over_workers(policy_dir: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("KUBERNETES_SERVICE_HOST", MULTIPROCESS_ENV)}
    env["KUBECONFIG"] = str(tmp_path / "no-kubeconfig")
    temporary = tmp_path / "tmp"  # where the supervisor creates its metrics directory
    temporary.mkdir()
    env["TMPDIR"] = str(temporary)
    server = Server(
        *("--policies", str(policy_dir), "--host", "127.0.0.1", "--port", "0", "--insecure-http"),
        *("--workers", "2", "--poll-interval", "0.2"),
        env=env,
    )
    try:
        port = server.wait_for_port()
        # No keep-alive: every request is a new connection, accepted by whichever worker wins it.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, limits=limits) as client:
            wait_until_ready(client)
            [metrics_dir] = temporary.glob("celvern-metrics-*")
            assert metrics_dir.stat().st_mode & 0o777 == 0o700
            sent = 0
            # At least 20 reviews, and until both workers have answered some (each has its own counter file): the
            # second one may still be starting.
            deadline = time.monotonic() + 30
            while sent < 20 or len(list(metrics_dir.glob("counter_*.db"))) < 2:
                assert time.monotonic() < deadline, "one worker answered every review"
                image = "nginx:latest" if sent % 2 else "nginx:1.25"
                response = client.post("/validate", content=orjson.dumps(review(image, uid=f"u-{sent}")))
                assert response.status_code == 200 and response.json()["response"]["uid"] == f"u-{sent}"
                sent += 1
            for _ in range(10):
                scrape = client.get("/metrics")
                assert scrape.status_code == 200
                assert admission_requests(scrape.text) == sent
    finally:
        code = server.stop()
    assert code == 0, b"".join(server.log).decode(errors="replace")
    assert not list(temporary.glob("celvern-metrics-*")), "the metrics directory outlived the server"


def http_get(connection: ssl.SSLSocket, path: str) -> bytes:
    """One keep-alive request; the whole response (headers and Content-Length body)."""
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
    )
    while len(body) < length:
        body += connection.recv(4096)
    return head + b"\r\n\r\n" + body


def test_renewed_certificate_is_served_without_dropping_connections(policy_dir: Path, tmp_path: Path) -> None:
    from cryptography import x509

    from webhook.tls import CertificateStore, service_dns_names

    env = {key: value for key, value in os.environ.items() if key != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(tmp_path / "no-kubeconfig")
    tls_dir = tmp_path / "tls"
    server = Server(
        *("--policies", str(policy_dir), "--host", "127.0.0.1", "--port", "0", "--tls-dir", str(tls_dir)),
        *("--tls-san", "127.0.0.1", "--tls-reload-interval", "0.1"),
        env=env,
    )
    try:
        port = server.wait_for_port()
        client = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))

        def connect() -> tuple[ssl.SSLSocket, int]:
            connection = client.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="127.0.0.1"
            )
            der = connection.getpeercert(binary_form=True)
            assert der is not None
            return connection, x509.load_der_x509_certificate(der).serial_number

        deadline = time.monotonic() + 30
        while True:
            try:
                before, old_serial = connect()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with before:
            assert http_get(before, "/healthz").startswith(b"HTTP/1.1 200")
            store = CertificateStore(tls_dir, dns_names=service_dns_names("celvern", "celvern", ["127.0.0.1"]))
            store.renew()  # what the renewal timer does when the certificate is due
            deadline = time.monotonic() + 10
            while True:
                after, new_serial = connect()
                with after:
                    if new_serial != old_serial:
                        assert http_get(after, "/healthz").startswith(b"HTTP/1.1 200")
                        break
                assert time.monotonic() < deadline, "the renewed certificate was never served"
                time.sleep(0.05)
            assert http_get(before, "/healthz").startswith(b"HTTP/1.1 200")  # the old connection still works
    finally:
        code = server.stop()
    assert code == 0, b"".join(server.log).decode(errors="replace")


def _messages(server: Server) -> list[str]:
    while True:
        try:
            server.log.append(server.lines.get_nowait())
        except queue.Empty:
            break
    found = []
    for line in server.log:
        try:
            found.append(orjson.loads(line).get("message", ""))
        except orjson.JSONDecodeError:
            continue
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_over_the_memory_limit_are_recycled_without_refusing_requests(
    policy_dir: Path, tmp_path: Path, workers: int
) -> None:
    """A 1 MiB limit is always exceeded: every worker is recycled after each check. Reviews sent meanwhile all get
    an answer: the listening socket stays open across recycles, so connections wait in its backlog."""
    env = {key: value for key, value in os.environ.items() if key != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(tmp_path / "no-kubeconfig")
    server = Server(
        *("--policies", str(policy_dir), "--insecure-http", "--host", "127.0.0.1", "--port", "0"),
        *("--workers", str(workers), "--max-worker-memory", "1", "--memory-check-interval", "0.5"),
        *("--no-history",),
        env=env,
    )
    try:
        port = server.wait_for_port()
        answered = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:  # a new connection each
                response = client.post("/validate", content=orjson.dumps(review("nginx:latest", uid=f"u-{answered}")))
            assert response.status_code == 200, response.text
            assert response.json()["response"]["allowed"] is False
            answered += 1
            recycles = _messages(server).count("worker memory over the limit; recycling the worker")
            if recycles >= 3 and answered >= 20:
                break
        assert recycles >= 3, f"{recycles} recycles in 60 s"
    finally:
        code = server.stop()
    assert code == 0, b"".join(server.log).decode(errors="replace")
    if workers == 1:
        assert "re-executing to recycle the worker" in _messages(server)
    else:
        assert "worker recycled; starting a fresh one" in _messages(server)
