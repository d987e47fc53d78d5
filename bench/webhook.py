"""Admission webhook throughput and latency on loopback, measured with `wrk` (Debian package `wrk`).

Three servers, each pinned to core 0 while wrk runs on core 1: `celvern serve` with the 16 Pod Security
ValidatingPolicies, the same server with no policies (the HTTP floor: parsing, routing, encoding), and a bare
Starlette echo of the AdmissionReview (the framework floor). Every request is a `/validate` AdmissionReview of a
~10 KB Pod. wrk saturates the one-core server, so 1/throughput is its time per review, and the engine's share is
the difference of that between the first two.

Then the same celvern server is driven at fixed rates (`--rates`, default 1,000 and 1,500 reviews/s) by wrk with
random pauses between requests, which is how an API server loads a webhook: that shows the latency at a given
load, while the flat-out runs show capacity.

    python -m bench.webhook              # concurrency 2, 8, 32, 128; 5 s each; paced at 1,000 and 1,500/s
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from bench.core import POD_SECURITY, make_pod, pod_security_policy_files
from bench.report import Table, Target, add_write_flag, command_line, section, targets_table, write_section

REPOSITORY = Path(__file__).resolve().parents[1]
ECHO_APP = """
import orjson
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def validate(request):
    review = orjson.loads(await request.body())
    answer = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "response": {"uid": review["request"]["uid"], "allowed": True}}
    return Response(orjson.dumps(answer), media_type="application/json")

app = Starlette(routes=[Route("/validate", validate, methods=["POST"])])
"""


def review_body() -> bytes:
    pod = make_pod("bench")
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b6c1f5e-bench",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "name": "bench",
            "operation": "CREATE",
            "userInfo": {"username": "bench", "groups": ["system:authenticated"]},
            "object": pod,
            "dryRun": False,
        },
    }
    return orjson.dumps(review)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, path: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            if b" 200 " in sock.recv(128):
                return
        time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not become ready")


def pinned(command: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *command] if shutil.which("taskset") else command


@contextlib.contextmanager
def server(kind: str, policies: Path, workdir: Path) -> Iterator[tuple[int, int]]:
    """(port, pid) of a running server of `kind`: celvern, floor (no policies) or echo."""
    port = free_port()
    if kind == "echo":
        (workdir / "echo_app.py").write_text(ECHO_APP)
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "echo_app:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--app-dir",
            str(workdir),
        ]
        ready = "/validate"
    else:
        directory = policies if kind == "celvern" else workdir / "empty"
        directory.mkdir(exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "cli.main",
            "serve",
            "--policies",
            str(directory),
            "--insecure-http",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            # The decision history stays on, as by default, but in the benchmark's own directory; no dashboard.
            "--history",
            str(workdir / f"{kind}-history.db"),
            "--no-dashboard",
        ]
        ready = "/readyz"
    process = subprocess.Popen(pinned(command, 0), cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if kind == "echo":
            time.sleep(1.5)
        else:
            wait_ready(port, ready)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def rss_mib(pid: int) -> float:
    """Resident memory of the server process and its children (uvicorn workers)."""
    total = 0
    for candidate in [pid, *children(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{candidate}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]
    return []


_LATENCY = re.compile(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(port: int, body_file: Path, connections: int, seconds: int) -> dict[str, float]:
    script = body_file.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*all"); f:close()\n'
    )
    return _wrk(port, script, connections, seconds)


def _wrk(port: int, script: Path, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run (one thread, on core 1) against the server's /validate, parsed."""
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/validate",
    ]
    output = subprocess.run(pinned(command, 1), capture_output=True, text=True, check=True).stdout
    return _parse_wrk(output)


PACED_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb"); wrk.body = f:read("*all"); f:close()
local mean = {pause_ms}
math.randomseed(os.time())
function delay() return -mean * math.log(1 - math.random()) end
"""


def run_paced(port: int, body_file: Path, rate: float, connections: int, seconds: int) -> dict[str, float]:
    """wrk at a target rate instead of flat out: after each answer, every connection pauses for an exponentially
    distributed time (so arrivals are close to random, not in lock-step bursts). The pause is calibrated by a
    short run so that connections x 1/(pause + latency) is `rate`. Latencies exclude the pause: they are what
    the API server would wait at that load."""

    def once(pause_ms: float, duration: int) -> dict[str, float]:
        script = body_file.with_name("paced.lua")
        script.write_text(PACED_SCRIPT.format(body=body_file, pause_ms=f"{pause_ms:.4f}"))
        return _wrk(port, script, connections, duration)

    period_ms = 1000 * connections / rate
    pause = period_ms
    for _ in range(2):  # calibrate: latency = connections/achieved - pause
        achieved = once(pause, 2)["reviews/s"]
        latency_ms = 1000 * connections / max(achieved, 1.0) - pause
        pause = max(0.0, period_ms - latency_ms)
    return once(pause, seconds)


def _parse_wrk(output: str) -> dict[str, float]:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    latencies = {f"p{p}": float(v) * _UNIT[u] for p, v, u in _LATENCY.findall(output)}
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(count) for count in socket_errors.groups())
    return {"reviews/s": rate, **latencies, "errors": float(failed)}


REVIEWS_TARGET = 2000.0
P99_TARGET_MS = 5.0
ENGINE_TARGET_MS = 0.3
TARGET_CONNECTIONS = 32


def _targets(flat_out: dict[tuple[str, int], dict[str, float]], shares: dict[int, float]) -> list[Target]:
    connections = TARGET_CONNECTIONS
    result = flat_out.get(("celvern", connections))
    if result is None:
        return [Target(f"webhook targets at concurrency {connections}", "not run (pass --connections ... 32)", None)]
    rate, p99 = result["reviews/s"], result.get("p99", float("inf"))
    return [
        Target(
            f"one worker: >= {REVIEWS_TARGET:,.0f} reviews/s at concurrency {connections}",
            f"{rate:,.0f} reviews/s",
            rate >= REVIEWS_TARGET,
        ),
        Target(
            f"one worker: p99 < {P99_TARGET_MS:g} ms at concurrency {connections}",
            f"{p99:.2f} ms (flat out: {connections} in flight / {rate:,.0f} per s = "
            f"{1000 * connections / max(rate, 1.0):.1f} ms mean by Little's law)",
            p99 < P99_TARGET_MS,
        ),
        Target(
            f"engine adds < {ENGINE_TARGET_MS:g} ms per review over the HTTP floor",
            f"{shares[connections]:.3f} ms of server time at {connections} connections",
            shares[connections] < ENGINE_TARGET_MS,
        ),
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhook", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, nargs="+", default=[2, 8, 32, 128])
    parser.add_argument(
        "--rates",
        type=float,
        nargs="*",
        default=[1000.0, 1500.0],
        help="reviews/s for the paced runs of celvern (8 connections); none to skip them",
    )
    add_write_flag(parser)
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed (Debian package `wrk`)", file=sys.stderr)
        return 2
    if not POD_SECURITY.is_dir():
        print(f"pod-security policies not found at {POD_SECURITY}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="celvern-webhook-bench-"))
    tables: list[Table] = []
    try:
        policies = workdir / "policies"
        policies.mkdir()
        for path in pod_security_policy_files():
            shutil.copy(path, policies / f"{path.parent.name}.yaml")
        body = workdir / "review.json"
        body.write_bytes(review_body())
        setting = f"review body {body.stat().st_size} bytes; wrk on core 1, server on core 0; {args.seconds} s per run"
        print(f"machine: {os.cpu_count()} cpus; {setting}")
        flat = Table(
            "Flat out: wrk keeps every connection busy (one worker; celvern = Pod Security set, floor = no policies, "
            "echo = bare Starlette)",
            ("server", "conns", "reviews/s", "p50 ms", "p90 ms", "p99 ms", "errors", "RSS MiB"),
        )
        flat_out: dict[tuple[str, int], dict[str, float]] = {}
        for kind in ("celvern", "floor", "echo"):
            with server(kind, policies, workdir) as (port, pid):
                run_wrk(port, body, 8, 1)  # warm-up
                for connections in args.connections:
                    result = flat_out[(kind, connections)] = run_wrk(port, body, connections, args.seconds)
                    flat.add(
                        kind,
                        connections,
                        result["reviews/s"],
                        result.get("p50"),
                        result.get("p90"),
                        result.get("p99"),
                        int(result["errors"]),
                        rss_mib(pid),
                    )
                    print(f"  {kind} at {connections} connections: {result['reviews/s']:,.0f} reviews/s", flush=True)
        tables.append(flat)
        if args.rates:
            paced = Table(
                "Paced: 8 connections with random pauses; latency is the server's answer time at that load",
                ("server", "target/s", "reviews/s", "p50 ms", "p90 ms", "p99 ms", "errors"),
            )
            for kind in ("celvern", "floor"):  # the floor's tail is the machine's and the HTTP stack's share
                with server(kind, policies, workdir) as (port, _):
                    run_wrk(port, body, 8, 1)  # warm-up
                    for rate in args.rates:
                        result = run_paced(port, body, rate, 8, args.seconds)
                        paced.add(
                            kind,
                            rate,
                            result["reviews/s"],
                            result.get("p50"),
                            result.get("p90"),
                            result.get("p99"),
                            int(result["errors"]),
                        )
            tables.append(paced)
        share = Table(
            "Engine share: server time per review, celvern minus the no-policy floor (both saturated on one core)",
            ("conns", "celvern ms", "floor ms", "engine ms", "celvern / floor throughput"),
        )
        shares: dict[int, float] = {}
        for connections in args.connections:
            ours = 1000 / flat_out[("celvern", connections)]["reviews/s"]
            floor = 1000 / flat_out[("floor", connections)]["reviews/s"]
            shares[connections] = ours - floor
            share.add(connections, ours, floor, ours - floor, floor / ours)
        tables.append(share)
        tables.append(targets_table(_targets(flat_out, shares)))
        for table in tables:
            print(table.text())
        if not args.no_write:
            body_text = section(
                "Webhook: `python -m bench.webhook`",
                command_line("python -m bench.webhook", argv),
                tables,
                {"setting": setting},
            )
            write_section("webhook", body_text)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
