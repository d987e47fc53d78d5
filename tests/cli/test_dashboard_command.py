"""`celvern overview` (the API's overview in the terminal) and `celvern dashboard`: its refusal to listen beyond
loopback without a token (or with a short one), its TLS and Host options, and its warnings."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from click.testing import CliRunner

import cli.dashboard_command
import cli.overview_command
from cli.dashboard_command import is_loopback, load_library_catalogue, read_token, run_dashboard
from cli.main import celvern
from tests.webhook.test_dashboard import EXPECTED_RECENT, NOW, get, make_store
from webhook.dashboard import create_dashboard_app

TOKEN = "0123456789abcdef"
"""16 characters: the shortest token `celvern dashboard` accepts."""

POLICY = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: require-labels
  annotations:
    policies.kyverno.io/severity: medium
    policies.kyverno.io/category: "Governance: General"
spec:
  validationActions: [Audit]
  matchConstraints:
    resourceRules:
      - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  validations:
    - expression: "true"
"""


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(store path, policy file), with the CLI's clock at the scenario's NOW."""
    make_store(tmp_path).close()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    monkeypatch.setattr(cli.overview_command, "clock", lambda: NOW)
    return str(tmp_path / "history.db"), str(policy)


def test_overview_json_is_the_api_document(seeded: tuple[str, str]) -> None:
    store_path, policy = seeded
    result = CliRunner().invoke(celvern, ["overview", "--store", store_path, "-p", policy, "-o", "json"])
    assert result.exit_code == 0, result.output
    from cli.dashboard_command import load_infos
    from webhook.history import open_store

    infos = load_infos([policy])
    totals, names = load_library_catalogue(None)
    app = create_dashboard_app(open_store(store_path), lambda: infos, totals, clock=lambda: NOW, library_names=names)
    assert orjson.loads(result.output) == get(app, "/api/v1/overview").json()
    assert orjson.loads(result.output)["safeToEnforce"] == []  # require-labels failed twice in the last scan


def test_overview_table(seeded: tuple[str, str]) -> None:
    store_path, policy = seeded
    result = CliRunner().invoke(celvern, ["overview", "--store", store_path, "-p", policy])
    assert result.exit_code == 0, result.output
    output = result.output
    assert "\x1b[" not in output  # no colour off a terminal
    for heading in ("Policies by severity", "Last 7 days", "Top violated policies", "Safe to enforce"):
        assert heading in output
    assert f"Recent violations ({EXPECTED_RECENT} of {EXPECTED_RECENT})" in output
    day = next(line for line in output.splitlines() if line.strip().startswith("2024-05-14"))
    assert day.split() == ["2024-05-14", "1", "4", "0"]
    total = next(line for line in output.splitlines() if line.strip().startswith("total"))
    assert total.split() == ["total", "5", "9", "2"]


def test_overview_reports_a_bad_store_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(celvern, ["overview", "--store", "mysql://nowhere/db"])
    assert result.exit_code != 0
    assert "unsupported history store URL" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["--host", "0.0.0.0"], "refusing to serve the dashboard on 0.0.0.0 without a token", id="any"),
        pytest.param(["--host", "10.1.2.3"], "without a token", id="private-address"),
        pytest.param(["--host", "::"], "without a token", id="ipv6-any"),
        pytest.param(["--host", "0.0.0.0", "--token-file", "EMPTY"], "is empty", id="empty-token-file"),
        pytest.param(["--token-file", "MISSING"], "cannot read --token-file", id="missing-token-file"),
        pytest.param(["--token-file", "SHORT"], "has 15 characters: use at least 16", id="short-token-file"),
        pytest.param(["--tls-cert", "MISSING"], "does not exist", id="missing-tls-cert"),
    ],
)
def test_dashboard_refuses_to_listen_in_the_open_without_a_token(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    short = tmp_path / "short"
    short.write_text("0123456789abcde\n")
    short.chmod(0o600)
    files = {"EMPTY": str(empty), "MISSING": str(tmp_path / "missing"), "SHORT": str(short)}
    arguments = [files.get(argument, argument) for argument in arguments]
    result = CliRunner().invoke(celvern, ["dashboard", "--store", str(tmp_path / "h.db"), *arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_run_dashboard_refuses_too() -> None:
    with pytest.raises(Exception, match="without a token"):
        run_dashboard("h.db", host="192.168.1.10")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("example.com", False),
        ("10.0.0.1", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_library_totals_come_from_the_bundled_library() -> None:
    totals, _names = load_library_catalogue(None)
    assert set(totals) == {"high", "medium", "low"}
    assert sum(totals.values()) > 50


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """The messages `celvern.dashboard` logs at WARNING and above (a handler of its own: `webhook.logs.configure`,
    which other tests call, stops propagation to pytest's caplog)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("celvern.dashboard")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("content", "mode", "outcome"),
    [
        pytest.param("0123456789abcde", 0o600, "error: has 15 characters", id="15-characters"),
        pytest.param("  0123456789abcde \n", 0o600, "error: has 15 characters", id="15-after-trimming"),
        pytest.param(TOKEN, 0o600, "ok", id="16-characters-private"),
        pytest.param(TOKEN + "\n", 0o400, "ok", id="read-only-for-the-owner"),
        pytest.param(TOKEN, 0o640, "warning: readable by its group or by others (mode 0640)", id="group-readable"),
        pytest.param(TOKEN, 0o644, "warning: readable by its group or by others (mode 0644)", id="world-readable"),
    ],
)
def test_read_token(tmp_path: Path, warnings_logged: list[str], content: str, mode: int, outcome: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    os.chmod(path, mode)
    kind, _, detail = outcome.partition(": ")
    if kind == "error":
        with pytest.raises(Exception, match=detail):
            read_token(str(path))
        return
    assert read_token(str(path)) == TOKEN
    if kind == "warning":
        assert len(warnings_logged) == 1 and detail in warnings_logged[0] and "chmod 600" in warnings_logged[0]
    else:
        assert warnings_logged == []


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[uvicorn.Config]:
    """The uvicorn configs `run_dashboard` would serve, instead of serving them."""
    configs: list[uvicorn.Config] = []

    def run(self: uvicorn.Server, sockets: Any = None) -> None:
        configs.append(self.config)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return configs


async def _request(app: Any, path: str, *, host: str, https: bool = False, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"{'https' if https else 'http'}://{host}") as client:
        return await client.request(kwargs.pop("method", "GET"), path, **kwargs)


@pytest.mark.parametrize(
    ("host", "tls", "warned"),
    [
        pytest.param("127.0.0.1", False, False, id="loopback-plain-http"),
        pytest.param("::1", False, False, id="ipv6-loopback-plain-http"),
        pytest.param("0.0.0.0", False, True, id="open-plain-http-warns"),
        pytest.param("10.1.2.3", False, True, id="private-address-plain-http-warns"),
        pytest.param("0.0.0.0", True, False, id="open-tls"),
        pytest.param("127.0.0.1", True, False, id="loopback-tls"),
    ],
)
def test_run_dashboard_serves_tls_and_warns_about_plain_http(
    tmp_path: Path, served: list[uvicorn.Config], warnings_logged: list[str], host: str, tls: bool, warned: bool
) -> None:
    cert, key = (str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")) if tls else (None, None)
    run_dashboard(str(tmp_path / "h.db"), host=host, token=TOKEN, tls_cert=cert, tls_key=key)
    [config] = served
    assert (config.ssl_certfile, config.ssl_keyfile) == (cert, key)
    assert any("PLAIN HTTP" in message and "--tls-cert" in message for message in warnings_logged) is warned
    login = asyncio.run(
        _request(config.app, "/login", host="dashboard.example", https=tls, method="POST", data={"token": TOKEN})
    )
    assert login.status_code == 303
    assert ("Secure" in login.headers["set-cookie"]) is tls
    assert ("strict-transport-security" in login.headers) is tls


def test_run_dashboard_wants_both_tls_files(tmp_path: Path, served: list[uvicorn.Config]) -> None:
    with pytest.raises(Exception, match="--tls-cert and --tls-key go together"):
        run_dashboard(str(tmp_path / "h.db"), tls_cert=str(tmp_path / "tls.crt"))
    assert served == []


@pytest.mark.parametrize(
    ("allowed", "host", "status"),
    [
        pytest.param((), "localhost:8080", 200, id="loopback-name"),
        pytest.param((), "dashboard.lan:8080", 400, id="other-name"),
        pytest.param(("dashboard.lan",), "dashboard.lan:8080", 200, id="allowed-name"),
    ],
)
def test_run_dashboard_allowed_hosts(
    tmp_path: Path, served: list[uvicorn.Config], allowed: tuple[str, ...], host: str, status: int
) -> None:
    run_dashboard(str(tmp_path / "h.db"), allowed_hosts=allowed)
    assert asyncio.run(_request(served[0].app, "/static/dashboard.css", host=host)).status_code == status


def test_dashboard_command_passes_tls_and_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cli.dashboard_command, "run_dashboard", lambda *args, **kwargs: calls.append(kwargs))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("cert")
    key.write_text("key")
    arguments = ["--tls-cert", str(cert), "--tls-key", str(key), "--allowed-host", "a.lan", "--allowed-host", "b.lan"]
    result = CliRunner().invoke(celvern, ["dashboard", "--store", str(tmp_path / "h.db"), *arguments])
    assert result.exit_code == 0, result.output
    [kwargs] = calls
    assert (kwargs["tls_cert"], kwargs["tls_key"], kwargs["allowed_hosts"]) == (str(cert), str(key), ["a.lan", "b.lan"])
