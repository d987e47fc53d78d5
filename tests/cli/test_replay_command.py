"""`celvern replay`, and the README's laptop walk-through end to end: `celvern serve` with the library's validating
policies and a decision history, the bundled AdmissionReviews replayed against it, and the dashboard's API showing
what was decided."""

from __future__ import annotations

import json
import os
import queue
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from cli.main import celvern
from tests.cli.test_serve_command import Server
from webhook.history import ViolationQuery, open_store

REPOSITORY = Path(__file__).resolve().parents[2]
REVIEWS = REPOSITORY / "examples" / "admission-reviews"
LIBRARY = REPOSITORY / "policies" / "validating"


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        pytest.param("{not json", "bad.json", "not valid JSON", id="bad-json"),
        pytest.param("kind: Pod\n", "pod.yaml", "not an AdmissionReview", id="not-a-review"),
        pytest.param("kind: AdmissionReview\nrequest: 3\n", "r.yaml", "request:", id="no-request"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: str, name: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = CliRunner().invoke(celvern, ["replay", str(path), "--server", "http://127.0.0.1:1"])
    assert result.exit_code == 1 and str(path) in result.output and message in result.output
    assert "Traceback" not in result.output


def test_bad_server_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(celvern, ["replay", str(REVIEWS), "--server", "ftp://example"])
    assert result.exit_code == 2 and "--server" in result.output


def test_no_server_counts_reviews_without_an_answer(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        celvern, ["replay", str(REVIEWS / "01-compliant-pod.json"), "--server", "http://127.0.0.1:1"]
    )
    assert result.exit_code == 1 and "1 without an answer" in result.output


def _dashboard_port(server: Server, timeout: float = 30) -> int:
    """The dashboard's port, from its "dashboard listening" log line."""

    def port_in(line: bytes) -> int | None:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        return int(entry["port"]) if entry.get("message") == "dashboard listening" else None

    for line in server.log:
        if (port := port_in(line)) is not None:
            return port
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = server.lines.get(timeout=0.1)
        except queue.Empty:
            continue
        server.log.append(line)
        if (port := port_in(line)) is not None:
            return port
    raise AssertionError("the dashboard did not start")


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_laptop_walkthrough_serve_replay_dashboard(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(tmp_path / "no-kubeconfig")
    history = tmp_path / "history.db"
    server = Server(
        *("--policies", str(LIBRARY), "--insecure-http", "--host", "127.0.0.1", "--port", "0"),
        *("--history", str(history), "--dashboard", "127.0.0.1:0"),
        env=env,
    )
    try:
        admission_port = server.wait_for_port()
        dashboard_port = _dashboard_port(server)
        result = CliRunner().invoke(celvern, ["replay", str(REVIEWS), "--server", f"http://127.0.0.1:{admission_port}"])
        assert result.exit_code == 0, result.output
        assert "14 reviews sent" in result.output and "1 denied" in result.output
        assert "0 without an answer" in result.output
        # Decisions are written in batches, off the request path: wait (bounded) for them to land.
        deadline = time.monotonic() + 30
        while True:
            overview = _get_json(f"http://127.0.0.1:{dashboard_port}/api/v1/overview")
            if overview["totals"]["deny"] == 1 and overview["totals"]["warnAudit"] > 0:
                break
            assert time.monotonic() < deadline, overview["totals"]
            time.sleep(0.2)
        store = open_store(str(history))
        try:
            recorded = store.violations(ViolationQuery(limit=500))
        finally:
            store.close()
        assert overview["totals"]["deny"] + overview["totals"]["warnAudit"] == recorded.total
        denied = [d for d in recorded.items if d.action == "deny"]
        assert [(d.policy, d.kind, d.name, d.user, d.operation) for d in denied] == [
            ("protect-labelled-namespaces", "Namespace", "payments", "mallory", "DELETE")
        ]
        assert {d.name for d in recorded.items if d.action == "audit"} >= {"debug-1", "agent-1", "admin-tools", "shop"}
        assert not {"web-1", "checkout"} & {d.name for d in recorded.items}  # the compliant ones pass every policy
        policies = _get_json(f"http://127.0.0.1:{dashboard_port}/api/v1/policies")
        by_key = {row["policy"]: row for row in policies["items"]}
        assert by_key["protect-labelled-namespaces"]["admission"]["deny"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/violations?action=deny", timeout=10) as page:
            assert b"protect-labelled-namespaces" in page.read()
    finally:
        code = server.stop()
    assert code == 0, b"".join(server.log).decode(errors="replace")
