"""`python -m bench.dashboard_screenshot OUT.png [--decisions N]`: the README's picture of the dashboard.

Why it exists: a screenshot in the README goes stale unless it can be made again with one command. This seeds a
temporary SQLite decision store with a plausible week for the bundled library's policies (a fixed random seed and a
fixed clock, so the picture only changes when the dashboard does), serves the dashboard on loopback, and saves the
Overview page from Debian's headless Chromium. It also prints how long `GET /api/v1/overview` took on that store:
`--decisions 200000` seeds the load the overview is budgeted for (200 ms).
"""

from __future__ import annotations

import argparse
import datetime
import random
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from cli.dashboard_command import load_library_catalogue
from cli.library_command import DEFAULT_LIBRARY
from engine.library import instantiate, load_library, render_policy
from engine.loader import parse_text
from engine.policy_set import build_policy_set
from webhook.dashboard import create_dashboard_app
from webhook.history import Decision, DecisionStore, PolicyScan, ScanSummary, open_store
from webhook.overview import PolicyInfo, policy_infos

NOW = datetime.datetime(2025, 6, 18, 15, 30, tzinfo=datetime.UTC)
SEED = 20250618
NAMESPACES = ("payments", "checkout", "web", "search", "data-pipeline", "ml-training", "staging", "monitoring")
KINDS = ("Pod", "Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet")
USERS = (
    "system:serviceaccount:argocd:argocd-application-controller",
    "alice@example.com",
    "bob@example.com",
    "system:serviceaccount:flux-system:kustomize-controller",
    "ci-deployer",
)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def loaded_policies(rng: random.Random) -> tuple[PolicyInfo, ...]:
    """About two thirds of the library, validating policies set to Deny, Warn or Audit."""
    library = load_library(DEFAULT_LIBRARY)
    texts: list[str] = []
    for policy in library.policies:
        if rng.random() > 0.68 or policy.kind.startswith("Namespaced"):
            continue
        action = rng.choices(("Deny", "Audit", "Warn"), weights=(5, 4, 2))[0] if policy.validating else None
        texts.append(render_policy(instantiate(policy, {}, action=action)))
    documents = [document for text in texts for document in parse_text(text, "library.yaml")]
    return policy_infos(build_policy_set(documents))


def history(rng: random.Random, policies: Sequence[PolicyInfo], count: int) -> tuple[list[Decision], ScanSummary]:
    """`count` admission decisions over the week (more on weekdays, a few noisy policies), scan failures, and a
    scan in which some audit-only policies are clean."""
    validating = [policy for policy in policies if policy.validating]
    weights = [rng.paretovariate(1.2) for _ in validating]
    start = NOW - datetime.timedelta(days=6, hours=NOW.hour, minutes=NOW.minute)
    span = (NOW - start).total_seconds()
    scan_time = NOW - datetime.timedelta(minutes=47)
    clean = {policy.key for policy in validating if "Deny" not in policy.actions and rng.random() < 0.45}
    noisy = [policy for policy in validating if policy.key not in clean]
    decisions: list[Decision] = []
    noisy_weights = [weights[validating.index(policy)] for policy in noisy]
    for _ in range(count):
        policy = rng.choices(noisy, weights=noisy_weights)[0]
        moment = start + datetime.timedelta(seconds=rng.random() * span)
        if moment.weekday() >= 5 and rng.random() < 0.6:  # quieter weekends
            moment -= datetime.timedelta(days=2)
        moment = max(moment, start)
        kind = rng.choice(KINDS)
        namespace = rng.choice(NAMESPACES)
        name = f"{namespace}-{kind.lower()}-{rng.randrange(1, 60)}"
        decisions.append(
            Decision(
                time=moment,
                source="admission",
                policy=policy.key,
                action=policy.actions[0].lower(),
                kind=kind,
                namespace=namespace,
                name=name,
                message=f"{policy.title or policy.name}: {kind} {namespace}/{name} does not comply",
                severity=policy.severity,
                category=policy.category,
                user=rng.choice(USERS),
                operation=rng.choice(("CREATE", "CREATE", "UPDATE")),
            )
        )
    scans: list[PolicyScan] = []
    for policy in validating:
        failed = 0 if policy.key in clean else rng.randrange(0, 9)
        scans.append(PolicyScan(policy.key, passed=rng.randrange(20, 400), failed=failed, skipped=rng.randrange(0, 5)))
        for index in range(failed):
            decisions.append(
                Decision(
                    time=scan_time,
                    source="scan",
                    policy=policy.key,
                    action=policy.actions[0].lower(),
                    kind="Pod",
                    namespace=rng.choice(NAMESPACES),
                    name=f"existing-pod-{index}",
                    message=f"{policy.title or policy.name}: existing Pod does not comply",
                    severity=policy.severity,
                    category=policy.category,
                )
            )
    return decisions, ScanSummary(scan_time, tuple(scans))


def seed(store: DecisionStore, policies: Sequence[PolicyInfo], count: int, rng: random.Random) -> None:
    decisions, scan = history(rng, policies, count)
    for offset in range(0, len(decisions), 5000):
        store.write(decisions[offset : offset + 5000])
    store.record_scan(scan)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _time_overview(base: str) -> float:
    """Milliseconds of the fastest of five `GET /api/v1/overview` (the first warms the caches)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        with urllib.request.urlopen(f"{base}/api/v1/overview") as response:
            response.read()
        best = min(best, (time.perf_counter() - started) * 1000)
    return best


def screenshot(base: str, out: Path, *, width: int, height: int) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_window_size(width, height)
        driver.get(f"{base}/")
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_screenshot", description=__doc__)
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--decisions", type=int, default=1800, help="admission decisions to seed (default 1800)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1500)
    arguments = parser.parse_args(argv)
    rng = random.Random(SEED)
    policies = loaded_policies(rng)
    with tempfile.TemporaryDirectory() as directory:
        store = open_store(str(Path(directory) / "history.db"))
        seed(store, policies, arguments.decisions, rng)
        totals, names = load_library_catalogue(None)
        app = create_dashboard_app(store, lambda: policies, totals, clock=lambda: NOW, library_names=names)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started and thread.is_alive():
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        try:
            print(f"GET /api/v1/overview: {_time_overview(base):.1f} ms with {arguments.decisions} decisions")
            screenshot(base, arguments.out, width=arguments.width, height=arguments.height)
        finally:
            server.should_exit = True
            thread.join(10)
            store.close()
    print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
