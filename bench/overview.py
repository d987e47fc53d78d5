"""`python -m bench.overview`: the governance API under load: 200,000 decisions in the store.

Issue 7's load target is that `GET /api/v1/overview` answers in under 200 ms with 200,000 decisions in the history.
This seeds a temporary SQLite store (and, with `--postgres URL`, a PostgreSQL database too) with a week of decisions
for about two thirds of the bundled library (the same generator as the README's screenshot: weekday peaks, a few
noisy policies, a background scan), serves the dashboard app with uvicorn on loopback, and times real HTTP requests
to the three API routes: medians and p95 over `--requests` requests after three warm-up requests.

    python -m bench.overview                         # SQLite; writes the `overview` section of BENCHMARKS.md
    python -m bench.overview --postgres postgresql://user@127.0.0.1:5432/bench --no-write

PostgreSQL is optional here because it needs a running server: `--postgres` takes the URL of an empty database that
may be written to (the benchmark creates its tables there and leaves them).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from bench.dashboard_screenshot import NOW, SEED, free_port, loaded_policies, seed
from bench.report import Table, Target, add_write_flag, command_line, section, targets_table, write_section
from cli.dashboard_command import load_library_catalogue
from webhook.dashboard import create_dashboard_app
from webhook.history import DecisionStore, ViolationQuery, open_store
from webhook.overview import PolicyInfo

TARGET_MS = 200.0
ROUTES = ("/api/v1/overview", "/api/v1/violations?limit=100", "/api/v1/policies")


def _get_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
        if response.status != 200:
            raise SystemExit(f"{url} answered {response.status}")
    return (time.perf_counter() - started) * 1000


def measure(store: DecisionStore, policies: Sequence[PolicyInfo], requests: int) -> dict[str, tuple[float, float]]:
    """(median ms, p95 ms) per route, over real HTTP to the dashboard app served on loopback."""
    totals, names = load_library_catalogue(None)
    app = create_dashboard_app(store, lambda: policies, totals, clock=lambda: NOW, library_names=names)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, loop="asyncio")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline:
                raise SystemExit("the dashboard did not start")
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        results = {}
        for route in ROUTES:
            for _ in range(3):  # warm-up: connection pools, SQLite page cache, query plans
                _get_ms(base + route)
            samples = sorted(_get_ms(base + route) for _ in range(requests))
            results[route] = (statistics.median(samples), samples[max(0, int(0.95 * len(samples)) - 1)])
        return results
    finally:
        server.should_exit = True
        thread.join(10)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overview", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=200_000, help="admission decisions to seed")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per route")
    parser.add_argument("--postgres", default=None, metavar="URL", help="also measure this PostgreSQL database")
    add_write_flag(parser)
    args = parser.parse_args(argv)
    rng = random.Random(SEED)
    policies = loaded_policies(rng)
    table = Table(
        f"Governance API with {args.decisions:,} admission decisions (plus scan failures) in the store, "
        f"{len(policies)} loaded policies, real HTTP on loopback",
        ("store", "route", "median ms", "p95 ms"),
    )
    targets = []
    with tempfile.TemporaryDirectory() as directory:
        stores = {"SQLite": str(Path(directory) / "history.db")}
        if args.postgres:
            stores["PostgreSQL"] = args.postgres
        for name, url in stores.items():
            store = open_store(url)
            try:
                if store.violations(ViolationQuery(limit=1)).total:
                    raise SystemExit(f"{name}: the store already holds decisions; give an empty database")
                started = time.perf_counter()
                seed(store, policies, args.decisions, random.Random(SEED))
                print(f"{name}: seeded in {time.perf_counter() - started:.1f} s", flush=True)
                results = measure(store, policies, args.requests)
            finally:
                store.close()
            for route, (median, p95) in results.items():
                table.add(name, route, median, p95)
            median, p95 = results[ROUTES[0]]
            targets.append(
                Target(
                    f"{name}: GET /api/v1/overview under {TARGET_MS:g} ms with {args.decisions:,} decisions",
                    f"{median:.1f} ms median, p95 {p95:.1f} ms",
                    p95 < TARGET_MS,
                )
            )
    table.notes.append(f"medians and p95 of {args.requests} requests per route after 3 warm-up requests")
    print(table.text())
    summary = targets_table(targets)
    summary.title = "Targets (issue 7; reported, not asserted)"
    print(summary.text())
    if not args.no_write:
        body = section(
            "Governance API: `python -m bench.overview`",
            command_line("python -m bench.overview", argv),
            [
                table,
                summary,
            ],
        )
        write_section("overview", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
