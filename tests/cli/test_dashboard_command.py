"""`celvern overview` (the API's overview in the terminal) and `celvern dashboard`'s refusal to listen beyond
loopback without a token."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

import cli.overview_command
from cli.dashboard_command import is_loopback, load_library_catalogue, load_library_totals, run_dashboard
from cli.main import celvern
from tests.webhook.test_dashboard import EXPECTED_RECENT, NOW, get, make_store
from webhook.dashboard import create_dashboard_app

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
    ],
)
def test_dashboard_refuses_to_listen_in_the_open_without_a_token(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    arguments = [
        {"EMPTY": str(empty), "MISSING": str(tmp_path / "missing")}.get(argument, argument) for argument in arguments
    ]
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
    totals = load_library_totals(None)
    assert set(totals) == {"high", "medium", "low"}
    assert sum(totals.values()) > 50
