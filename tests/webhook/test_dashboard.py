"""The governance dashboard in process (httpx over ASGI): the overview numbers, the API's JSON shapes, query
validation, paging, auth, escaping of hostile values, security headers and store failures.

The seeded history (`seed`) is the scenario every dashboard test uses, the browser tests and the CLI tests too:
its numbers are worked out by hand in the constants below."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from engine.library import instantiate, load_library, render_policy
from engine.loader import parse_text
from engine.policy_set import build_policy_set
from webhook.dashboard import COOKIE, create_dashboard_app, el
from webhook.history import Decision, DecisionStore, PolicyScan, ScanSummary, StoreError, open_store
from webhook.overview import (
    PolicyInfo,
    QueryError,
    describe_scope,
    parse_duration,
    parse_violation_query,
    policy_infos,
)

NOW = datetime.datetime(2024, 5, 15, 12, 0, tzinfo=datetime.UTC)
"""A Wednesday; the 7-day window is 2024-05-09 .. 2024-05-15."""
LIBRARY_TOTALS = {"high": 28, "medium": 40, "low": 16}
TOKEN = "s3cret-token"


def _info(key: str, severity: str, actions: tuple[str, ...], *, kind: str = "ValidatingPolicy") -> PolicyInfo:
    namespace, _, name = key.rpartition("/")
    return PolicyInfo(
        key=key,
        name=name,
        namespace=namespace,
        kind=kind,
        actions=actions,
        scope=f"namespace {namespace}" if namespace else "all namespaces",
        severity=severity,
        category="Governance: General" if severity != "high" else "Pod Security Standards (Baseline)",
        title=f"Title of {name}",
        background=True,
    )


POLICIES = (
    _info("disallow-privileged", "high", ("Deny",)),
    _info("require-labels", "medium", ("Audit",)),
    _info("require-limits", "medium", ("Warn",)),
    _info("team-a/team-policy", "low", ("Audit",), kind="NamespacedValidatingPolicy"),
    _info("add-defaults", "low", ("MutatingPolicy",), kind="MutatingPolicy"),
)


def _at(day: int, hour: int, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(2024, 5, day, hour, minute, tzinfo=datetime.UTC)


def _decision(
    time: datetime.datetime, policy: str, action: str, *, source: str = "admission", severity: str = "", index: int = 0
) -> Decision:
    severity = severity or {"disallow-privileged": "high", "team-a/team-policy": "low"}.get(policy, "medium")
    return Decision(
        time=time,
        source=source,
        policy=policy,
        action=action,
        kind="Pod",
        namespace="team-a" if index % 2 == 0 else "team-b",
        name=f"pod-{policy.replace('/', '-')}-{time:%d%H%M}-{index}",
        message=f"{policy} said no ({index})",
        severity=severity,
        category="Governance: General",
        user="alice" if source == "admission" else "",
        operation="CREATE" if source == "admission" else "",
    )


def decisions() -> list[Decision]:
    """The seeded history (see the expected numbers below)."""
    out: list[Decision] = []
    out += [_decision(_at(15, 9, i), "disallow-privileged", "deny", index=i) for i in range(3)]
    out += [_decision(_at(15, 8, i), "require-labels", "audit", index=i) for i in range(2)]
    out += [_decision(_at(14, 10), "disallow-privileged", "deny")]
    out += [_decision(_at(14, 11, i), "require-limits", "warn", index=i) for i in range(4)]
    out += [_decision(_at(10, 7, i), "require-labels", "audit", index=i) for i in range(2)]
    out += [_decision(_at(9, 0, 30), "disallow-privileged", "deny")]
    out += [_decision(_at(8, 23, i), "disallow-privileged", "deny", index=i) for i in range(5)]  # before the window
    out += [_decision(_at(15, 6, i), "require-labels", "audit", source="scan", index=i) for i in range(2)]
    out += [_decision(_at(13, 6), "team-a/team-policy", "audit", index=0)]
    return out


SCAN = ScanSummary(
    time=_at(15, 6),
    policies=(
        PolicyScan("disallow-privileged", passed=8),
        PolicyScan("require-labels", passed=5, failed=2),
        PolicyScan("require-limits", passed=10, warned=1),
        PolicyScan("team-a/team-policy", passed=3, skipped=1),
    ),
)

EXPECTED_DAYS = {
    "2024-05-09": (1, 0, 0),
    "2024-05-10": (0, 2, 0),
    "2024-05-11": (0, 0, 0),
    "2024-05-12": (0, 0, 0),
    "2024-05-13": (0, 1, 0),
    "2024-05-14": (1, 4, 0),
    "2024-05-15": (3, 2, 2),
}
"""date -> (deny, warnAudit, scanFailures)."""
EXPECTED_TOP = [("require-labels", 6), ("disallow-privileged", 5), ("require-limits", 4), ("team-a/team-policy", 1)]
EXPECTED_RECENT = 16
"""Decisions in the window: every seeded one but the 5 of 2024-05-08."""
EXPECTED_SAFE = ["require-limits", "team-a/team-policy"]


def seed(store: DecisionStore, *, scan: bool = True) -> DecisionStore:
    store.write(decisions())
    if scan:
        store.record_scan(SCAN)
    return store


def make_store(tmp_path: Path, *, scan: bool = True) -> DecisionStore:
    return seed(open_store(str(tmp_path / "history.db")), scan=scan)


def make_app(store: DecisionStore | Callable[[], DecisionStore], *, token: str | None = None) -> Starlette:
    return create_dashboard_app(store, lambda: POLICIES, LIBRARY_TOTALS, token=token, clock=lambda: NOW)


async def _send(app: Starlette, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
        return await client.get(path, **kwargs)


def get(app: Starlette, path: str, **kwargs: Any) -> httpx.Response:
    return asyncio.run(_send(app, path, **kwargs))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DecisionStore]:
    store = make_store(tmp_path)
    yield store
    store.close()


@pytest.fixture
def app(store: DecisionStore) -> Starlette:
    return make_app(store)


# --- /api/v1/overview ---------------------------------------------------------------------------------------


def test_overview_counts_policies_by_severity_against_the_library(app: Starlette) -> None:
    body = get(app, "/api/v1/overview").json()
    assert body["policies"]["bySeverity"] == [
        {"severity": "high", "enabled": 1, "total": 28},
        {"severity": "medium", "enabled": 2, "total": 40},
        {"severity": "low", "enabled": 2, "total": 16},
    ]
    assert body["policies"]["loaded"] == 5
    assert body["policies"]["libraryTotal"] == 84


@pytest.mark.parametrize(
    ("loaded", "enabled", "custom"),
    [
        pytest.param(("disallow-privileged",), {"high": 1}, 0, id="library-policy"),
        pytest.param(
            ("disallow-privileged", "prod-disallow-privileged@disallow-privileged"), {"high": 1}, 0, id="two-instances"
        ),
        pytest.param(("disallow-privileged", "my-own-policy"), {"high": 1}, 1, id="custom-policy-not-enabled"),
        pytest.param(("renamed@unknown-library-policy",), {}, 1, id="instance-of-a-policy-not-in-the-library"),
    ],
)
def test_enabled_counts_library_policies_once(
    store: DecisionStore, loaded: tuple[str, ...], enabled: dict[str, int], custom: int
) -> None:
    infos = []
    for entry in loaded:
        name, _, library = entry.partition("@")
        infos.append(dataclasses.replace(_info(name, "high", ("Deny",)), library=library))
    app = create_dashboard_app(
        store,
        lambda: infos,
        LIBRARY_TOTALS,
        clock=lambda: NOW,
        library_names={"disallow-privileged", "require-labels"},
    )
    policies = get(app, "/api/v1/overview").json()["policies"]
    assert {row["severity"]: row["enabled"] for row in policies["bySeverity"] if row["enabled"]} == enabled
    assert policies["custom"] == custom and policies["loaded"] == len(loaded)


def test_overview_days_split_deny_from_warn_and_audit_and_scan_failures(app: Starlette) -> None:
    body = get(app, "/api/v1/overview").json()
    days = {row["date"]: (row["deny"], row["warnAudit"], row["scanFailures"]) for row in body["days"]}
    assert days == EXPECTED_DAYS
    assert [row["date"] for row in body["days"]] == sorted(EXPECTED_DAYS)
    assert body["totals"] == {"deny": 5, "warnAudit": 9, "scanFailures": 2}
    assert body["window"] == {"since": "2024-05-09T00:00:00Z", "until": "2024-05-16T00:00:00Z", "days": 7}


def test_overview_ranks_top_violated_and_lists_recent_newest_first(app: Starlette) -> None:
    body = get(app, "/api/v1/overview").json()
    assert [(row["policy"], row["total"]) for row in body["topViolated"]] == EXPECTED_TOP
    assert body["topViolated"][1] == {
        "policy": "disallow-privileged",
        "severity": "high",
        "category": "Governance: General",
        "deny": 5,
        "warn": 0,
        "audit": 0,
        "total": 5,
    }
    recent = body["recent"]
    assert len(recent) == EXPECTED_RECENT == body["recentTotal"]
    times = [item["time"] for item in recent]
    assert times == sorted(times, reverse=True)
    assert recent[0] == {
        "time": "2024-05-15T09:02:00Z",
        "source": "admission",
        "policy": "disallow-privileged",
        "action": "deny",
        "result": "fail",
        "kind": "Pod",
        "namespace": "team-a",
        "name": "pod-disallow-privileged-150902-2",
        "message": "disallow-privileged said no (2)",
        "severity": "high",
        "category": "Governance: General",
        "user": "alice",
        "operation": "CREATE",
    }


def test_overview_recent_is_capped_at_100(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "many.db"))
    store.write(
        [_decision(NOW - datetime.timedelta(minutes=i), "require-labels", "audit", index=i) for i in range(130)]
    )
    body = get(make_app(store), "/api/v1/overview").json()
    assert len(body["recent"]) == 100
    assert body["recentTotal"] == 130


def test_safe_to_enforce_needs_a_clean_scan_and_no_deny(app: Starlette) -> None:
    body = get(app, "/api/v1/overview").json()
    assert [row["policy"] for row in body["safeToEnforce"]] == EXPECTED_SAFE
    assert body["safeToEnforce"][0] == {
        "policy": "require-limits",
        "actions": ["Warn"],
        "severity": "medium",
        "category": "Governance: General",
        "title": "Title of require-limits",
        "passed": 10,
    }
    assert body["lastScan"] == {
        "time": "2024-05-15T06:00:00Z",
        "policies": 4,
        "pass": 26,
        "fail": 2,
        "warn": 1,
        "error": 0,
        "skip": 1,
    }


def test_without_a_scan_nothing_is_safe_to_enforce(tmp_path: Path) -> None:
    body = get(make_app(make_store(tmp_path, scan=False)), "/api/v1/overview").json()
    assert body["lastScan"] is None
    assert body["safeToEnforce"] == []


def test_an_empty_store_gives_zeros(tmp_path: Path) -> None:
    body = get(make_app(open_store(str(tmp_path / "empty.db"))), "/api/v1/overview").json()
    assert [row["deny"] + row["warnAudit"] + row["scanFailures"] for row in body["days"]] == [0] * 7
    assert body["topViolated"] == body["recent"] == body["safeToEnforce"] == []


# --- /api/v1/violations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "total"),
    [
        pytest.param({}, 21, id="everything"),
        pytest.param({"policy": "disallow-privileged"}, 10, id="policy"),
        pytest.param({"action": "deny"}, 10, id="action"),
        pytest.param({"source": "scan"}, 2, id="source"),
        pytest.param({"namespace": "team-b"}, 8, id="namespace"),
        pytest.param({"since": "24h"}, 7, id="since-duration"),
        pytest.param({"since": "2024-05-14T00:00:00Z"}, 12, id="since-rfc3339"),
        pytest.param({"since": "2024-05-14T02:00:00+02:00"}, 12, id="since-offset"),
        pytest.param({"policy": "require-labels", "source": "admission", "since": "7d"}, 4, id="combined"),
    ],
)
def test_violations_filters(app: Starlette, query: dict[str, str], total: int) -> None:
    body = get(app, "/api/v1/violations", params=query).json()
    assert body["total"] == total
    for item in body["items"]:
        for key in ("policy", "action", "source", "namespace"):
            if key in query:
                assert item[key] == query[key]


def test_violations_pages(app: Starlette) -> None:
    first = get(app, "/api/v1/violations", params={"limit": 8}).json()
    assert (first["total"], first["offset"], first["limit"], first["nextOffset"]) == (21, 0, 8, 8)
    second = get(app, "/api/v1/violations", params={"limit": 8, "offset": 8}).json()
    third = get(app, "/api/v1/violations", params={"limit": 8, "offset": 16}).json()
    assert second["nextOffset"] == 16
    assert third["nextOffset"] is None
    assert len(third["items"]) == 5
    names = [item["name"] for page in (first, second, third) for item in page["items"]]
    assert len(set(names)) == 21


def test_violations_limit_is_capped(app: Starlette) -> None:
    assert get(app, "/api/v1/violations", params={"limit": 10_000}).json()["limit"] == 500


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param({"since": "yesterday"}, "since: expected an RFC 3339 time", id="since-word"),
        pytest.param({"since": "2024-05-14T00:00:00"}, "has no time zone", id="since-naive"),
        pytest.param({"since": "2024-05-14"}, "since: expected an RFC 3339 time", id="since-date-only"),
        pytest.param({"since": "99999999d"}, "too long", id="since-huge"),
        pytest.param({"until": "soon"}, "until: expected", id="until-word"),
        pytest.param({"since": "1h", "until": "2h"}, "until: must be later than since", id="until-before-since"),
        pytest.param({"action": "block"}, "action: expected one of deny, warn, audit", id="action"),
        pytest.param({"source": "audit-log"}, "source: expected one of admission, scan", id="source"),
        pytest.param({"limit": "ten"}, "limit: expected an integer", id="limit-word"),
        pytest.param({"limit": "0"}, "limit: must be at least 1", id="limit-zero"),
        pytest.param({"offset": "-1"}, "offset: must be at least 0", id="offset-negative"),
    ],
)
def test_violations_rejects_bad_queries(app: Starlette, query: dict[str, str], message: str) -> None:
    response = get(app, "/api/v1/violations", params=query)
    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", datetime.timedelta(minutes=30)),
        ("24h", datetime.timedelta(hours=24)),
        ("7d", datetime.timedelta(days=7)),
        ("1d12h", datetime.timedelta(days=1, hours=12)),
        ("2w", datetime.timedelta(weeks=2)),
        ("", None),
        ("h", None),
        ("7 d", None),
        ("-1h", None),
    ],
    ids=repr,
)
def test_parse_duration(text: str, expected: datetime.timedelta | None) -> None:
    assert parse_duration(text) == expected


def test_parse_violation_query_defaults() -> None:
    query = parse_violation_query({}, NOW)
    assert (query.limit, query.offset, query.since, query.action) == (50, 0, None, "")
    assert parse_violation_query({"since": "2h", "action": "DENY"}, NOW).since == NOW - datetime.timedelta(hours=2)
    assert parse_violation_query({"action": "DENY"}, NOW).action == "deny"
    with pytest.raises(QueryError):
        parse_violation_query({"since": "later"}, NOW)


# --- /api/v1/policies ---------------------------------------------------------------------------------------


def test_policies_table_has_scan_and_admission_counts(app: Starlette) -> None:
    body = get(app, "/api/v1/policies").json()
    assert body["total"] == 5
    rows = {row["policy"]: row for row in body["items"]}
    assert rows["require-labels"]["lastScan"] == {"pass": 5, "fail": 2, "warn": 0, "error": 0, "skip": 0}
    assert rows["require-labels"]["admission"] == {"deny": 0, "warn": 0, "audit": 4}
    assert rows["disallow-privileged"]["admission"] == {"deny": 5, "warn": 0, "audit": 0}
    assert rows["add-defaults"]["lastScan"] is None
    assert rows["team-a/team-policy"] == {
        "policy": "team-a/team-policy",
        "name": "team-policy",
        "namespace": "team-a",
        "kind": "NamespacedValidatingPolicy",
        "actions": ["Audit"],
        "scope": "namespace team-a",
        "severity": "low",
        "category": "Governance: General",
        "title": "Title of team-policy",
        "background": True,
        "lastScan": {"pass": 3, "fail": 0, "warn": 0, "error": 0, "skip": 1},
        "admission": {"deny": 0, "warn": 0, "audit": 1},
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({"severity": "medium"}, ["require-labels", "require-limits"], id="severity"),
        pytest.param({"action": "audit"}, ["require-labels", "team-a/team-policy"], id="action"),
        pytest.param({"category": "pod security standards (baseline)"}, ["disallow-privileged"], id="category"),
        pytest.param({"severity": "low", "action": "MutatingPolicy"}, ["add-defaults"], id="combined"),
    ],
)
def test_policies_filters(app: Starlette, query: dict[str, str], expected: list[str]) -> None:
    body = get(app, "/api/v1/policies", params=query).json()
    assert [row["policy"] for row in body["items"]] == expected


# --- pages --------------------------------------------------------------------------------------------------


def _testid(page: str, testid: str) -> list[str]:
    """The text of the elements with this data-testid (tags inside stripped)."""
    pattern = re.compile(rf'<(\w+)[^>]*data-testid="{re.escape(testid)}"[^>]*>(.*?)</\1>', re.S)
    return [re.sub(r"<[^>]+>", "", match.group(2)) for match in pattern.finditer(page)]


def test_overview_page_shows_the_numbers(app: Starlette) -> None:
    response = get(app, "/")
    assert response.status_code == 200
    page = response.text
    assert _testid(page, "severity-high-enabled") == ["1"]
    assert _testid(page, "severity-medium-total") == ["40"]
    assert _testid(page, "recent-count") == [str(EXPECTED_RECENT)]
    assert len(_testid(page, "recent-row")) == EXPECTED_RECENT
    assert _testid(page, "top-violated-policy") == [policy for policy, _ in EXPECTED_TOP]
    assert _testid(page, "safe-policy") == EXPECTED_SAFE
    for date, (deny, warn_audit, _) in EXPECTED_DAYS.items():
        assert f'data-testid="bar-deny-{date}" data-value="{deny}"' in page
        assert f'data-testid="bar-warnAudit-{date}" data-value="{warn_audit}"' in page


def test_overview_page_says_when_no_scan_ran(tmp_path: Path) -> None:
    page = get(make_app(make_store(tmp_path, scan=False)), "/").text
    assert _testid(page, "no-scan")
    assert _testid(page, "last-scan") == ["no scan yet"]


def test_policies_page_filters_server_side(app: Starlette) -> None:
    page = get(app, "/policies", params={"severity": "medium"}).text
    assert _testid(page, "policy-name") == ["require-labels", "require-limits"]
    assert '<option value="medium" selected>' in page


def test_violations_page_pages_and_keeps_filters(app: Starlette) -> None:
    page = get(app, "/violations", params={"action": "deny", "limit": "4"}).text
    assert _testid(page, "violations-total") == ["10", "10"]
    assert _testid(page, "violations-range")[0] == "1–4"
    assert len(_testid(page, "violation-row")) == 4
    assert 'href="/violations?action=deny&amp;limit=4&amp;offset=4"' in page
    assert "previous-page" not in page


def test_violations_page_explains_a_bad_since(app: Starlette) -> None:
    response = get(app, "/violations", params={"since": "last tuesday"})
    assert response.status_code == 400
    assert "since: expected an RFC 3339 time" in _testid(response.text, "query-error")[0]
    assert 'value="last tuesday"' in response.text


def test_static_files_and_health() -> None:
    app = make_app(_FailingStore(), token=TOKEN)
    assert get(app, "/healthz").text == "ok"
    script = get(app, "/static/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "policy-filter" in script.text
    assert get(app, "/static/dashboard.css").headers["content-type"].startswith("text/css")
    assert get(app, "/static/secrets.txt").status_code == 404


def test_unknown_paths_are_404() -> None:
    app = make_app(_FailingStore())
    assert get(app, "/api/v1/nothing").json() == {"error": "Not Found", "status": 404}
    assert get(app, "/nothing").status_code == 404


# --- security -----------------------------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_hostile_values_are_escaped_everywhere(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "hostile.db"))
    store.write(
        [
            Decision(
                time=NOW - datetime.timedelta(hours=1),
                source="admission",
                policy=HOSTILE,
                action="deny",
                kind=HOSTILE,
                namespace='"><script>alert(2)</script>',
                name=HOSTILE,
                message=HOSTILE,
                severity=HOSTILE,
                category=HOSTILE,
                user=HOSTILE,
            )
        ]
    )
    hostile_policy = _info(HOSTILE, HOSTILE, (HOSTILE,))
    app = create_dashboard_app(store, lambda: (hostile_policy,), {HOSTILE: 1}, clock=lambda: NOW)
    for path, params in (
        ("/", {}),
        ("/policies", {"severity": HOSTILE}),
        ("/violations", {"policy": HOSTILE, "namespace": HOSTILE}),
        ("/violations", {"since": HOSTILE}),
    ):
        page = get(app, path, params=params).text
        assert "<script>" not in page.replace('<script src="/static/dashboard.js" defer></script>', "")
        assert "<img" not in page
        assert "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in get(app, "/").text


def test_el_escapes_text_and_attributes() -> None:
    assert el("a", "<b>&", href='x" onclick="y') == '<a href="x&quot; onclick=&quot;y">&lt;b&gt;&amp;</a>'
    assert el("input", disabled=True, value=None, data_testid="t") == '<input disabled data-testid="t">'
    assert el("p", el("b", "ok"), 3, None, ["<", "x"]) == "<p><b>ok</b>3&lt;x</p>"


def test_security_headers_on_every_answer(app: Starlette) -> None:
    for path in ("/", "/api/v1/overview", "/healthz", "/nothing"):
        headers = get(app, path).headers
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        pytest.param("/api/v1/overview", {}, 401, id="api-no-token"),
        pytest.param("/api/v1/overview", {"Authorization": "Bearer wrong"}, 401, id="api-wrong-token"),
        pytest.param("/api/v1/overview", {"Authorization": f"Basic {TOKEN}"}, 401, id="api-wrong-scheme"),
        pytest.param("/api/v1/overview", {"Authorization": f"Bearer {TOKEN}"}, 200, id="api-token"),
        pytest.param("/api/v1/violations", {"Authorization": f"bearer {TOKEN}"}, 200, id="api-lowercase-scheme"),
        pytest.param("/", {}, 401, id="page-no-token"),
        pytest.param("/policies", {"Authorization": f"Bearer {TOKEN}"}, 200, id="page-token"),
        pytest.param("/violations", {"Cookie": f"{COOKIE}={TOKEN}"}, 401, id="raw-token-is-not-a-session"),
        pytest.param("/healthz", {}, 200, id="healthz-open"),
        pytest.param("/login", {}, 200, id="login-open"),
    ],
)
def test_token_is_required(store: DecisionStore, path: str, headers: dict[str, str], status: int) -> None:
    response = get(make_app(store, token=TOKEN), path, headers=headers)
    assert response.status_code == status
    if status == 401 and path.startswith("/api/"):
        assert response.json()["status"] == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    if status == 401 and not path.startswith("/api/"):
        assert 'action="/login"' in response.text


def test_login_sets_a_strict_http_only_cookie(store: DecisionStore) -> None:
    app = make_app(store, token=TOKEN)

    async def flow() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
            wrong = await client.get("/login", params={"token": "nope"})
            login = await client.get("/login", params={"token": TOKEN})
            page = await client.get("/")
            return wrong, login, page

    wrong, login, page = asyncio.run(flow())
    assert wrong.status_code == 401
    assert _testid(wrong.text, "login-error")
    assert login.status_code == 303
    assert login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert TOKEN not in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert page.status_code == 200
    assert _testid(page.text, "severity-high-enabled") == ["1"]


def test_login_without_a_token_configured_goes_home(app: Starlette) -> None:
    response = get(app, "/login", params={"token": "anything"})
    assert (response.status_code, response.headers["location"]) == (303, "/")


# --- store failures -----------------------------------------------------------------------------------------


class _FailingStore:
    """A store whose every read fails, the way a store behind a dead database connection does."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error or StoreError("connection refused")

    def write(self, decisions: Sequence[Decision]) -> None:
        raise self.error

    def record_scan(self, summary: ScanSummary) -> None:
        raise self.error

    def last_scan(self) -> ScanSummary | None:
        raise self.error

    def purge(self, before: datetime.datetime) -> int:
        raise self.error

    def daily_counts(self, since: datetime.datetime, until: datetime.datetime) -> list[Any]:
        raise self.error

    def policy_counts(
        self, since: datetime.datetime, *, source: str = "", limit: int = 0, labels: bool = True
    ) -> list[Any]:
        raise self.error

    def violations(self, query: Any) -> Any:
        raise self.error

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "error", [StoreError("connection refused"), RuntimeError("boom")], ids=["store-error", "unexpected"]
)
@pytest.mark.parametrize("path", ["/api/v1/overview", "/api/v1/violations", "/api/v1/policies"])
def test_store_failure_is_503_json(path: str, error: Exception) -> None:
    response = get(make_app(_FailingStore(error)), path)
    assert response.status_code == 503
    body = response.json()
    assert body["error"].startswith("the decision store is unavailable")
    assert "Traceback" not in response.text


@pytest.mark.parametrize("path", ["/", "/policies", "/violations"])
def test_store_failure_is_a_clear_page(path: str) -> None:
    response = get(make_app(_FailingStore()), path)
    assert response.status_code == 503
    assert _testid(response.text, "store-error") == ["the decision store is unavailable: connection refused"]


def test_a_store_factory_is_retried_after_failing(tmp_path: Path) -> None:
    attempts: list[int] = []
    ready = make_store(tmp_path)

    def factory() -> DecisionStore:
        attempts.append(1)
        if len(attempts) == 1:
            raise StoreError("not yet")
        return ready

    app = make_app(factory)
    assert get(app, "/api/v1/overview").status_code == 503
    assert get(app, "/api/v1/overview").status_code == 200
    assert get(app, "/api/v1/overview").status_code == 200
    assert len(attempts) == 2


# --- policy_infos -------------------------------------------------------------------------------------------

_POLICIES_YAML = """
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: check-nodes
  annotations:
    policies.kyverno.io/severity: High
    policies.kyverno.io/category: "Governance: Infra"
    policies.kyverno.io/title: Nodes are labelled
spec:
  validationActions: [Audit, Warn]
  evaluation: {background: {enabled: false}}
  matchConstraints:
    resourceRules:
      - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [nodes], scope: Cluster}
  validations:
    - expression: "true"
---
apiVersion: policies.kyverno.io/v1
kind: NamespacedValidatingPolicy
metadata: {name: local, namespace: shop}
spec:
  matchConstraints:
    resourceRules:
      - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  validations:
    - expression: "true"
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: labelled}
spec:
  matchConstraints:
    namespaceSelector: {matchLabels: {team: a}}
    resourceRules:
      - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  validations:
    - expression: "true"
"""


def test_policy_infos_read_annotations_actions_and_scope() -> None:
    policy_set = build_policy_set(parse_text(_POLICIES_YAML, "policies.yaml"))
    infos = {info.key: info for info in policy_infos(policy_set)}
    assert set(infos) == {"check-nodes", "shop/local", "labelled"}
    nodes = infos["check-nodes"]
    assert (nodes.severity, nodes.category, nodes.title) == ("high", "Governance: Infra", "Nodes are labelled")
    assert (nodes.actions, nodes.scope, nodes.background) == (("Audit", "Warn"), "cluster-scoped resources", False)
    assert infos["shop/local"].actions == ("Deny",)
    assert infos["shop/local"].scope == "namespace shop"
    assert infos["labelled"].scope == "selected namespaces"


def test_policy_infos_of_the_library_list_each_policy_once() -> None:
    library = load_library(Path(__file__).resolve().parents[2] / "policies")
    documents = [document for policy in library.policies for document in [policy.document]]
    infos = policy_infos(build_policy_set(documents))
    assert len(infos) == len(library.policies)
    assert {info.severity for info in infos} <= {"high", "medium", "low"}
    mutating = [info for info in infos if info.kind == "MutatingPolicy"]
    assert mutating and all(info.actions == ("MutatingPolicy",) for info in mutating)


def test_scope_of_an_instance_scoped_to_namespaces() -> None:
    library = load_library(Path(__file__).resolve().parents[2] / "policies")
    policy = next(p for p in library.policies if p.validating and not p.kind.startswith("Namespaced"))
    text = render_policy(instantiate(policy, {}, action="Audit", namespaces=["shop", "web"]))
    info = policy_infos(build_policy_set(parse_text(text, "instance.yaml")))[0]
    assert info.scope == "namespaces: shop, web"
    assert info.actions == ("Audit",)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param(None, "all namespaces", id="none"),
        pytest.param({"matchExpressions": []}, "all namespaces", id="empty"),
        pytest.param(
            {
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}
                ]
            },
            "all namespaces except kube-system",
            id="not-in",
        ),
        pytest.param(
            {
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]},
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]},
                ]
            },
            "namespaces: a, b",
            id="in-after-not-in",
        ),
        pytest.param({"matchLabels": {"kubernetes.io/metadata.name": "a"}}, "namespaces: a", id="match-label"),
        pytest.param(
            {"matchExpressions": [{"key": "env", "operator": "Exists", "values": []}]},
            "selected namespaces",
            id="other",
        ),
    ],
)
def test_describe_scope(selector: Mapping[str, Any] | None, expected: str) -> None:
    constraints = {
        "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    }
    if selector is not None:
        constraints["namespaceSelector"] = selector  # type: ignore[assignment]
    text = f"""
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {{name: p}}
spec:
  matchConstraints: {constraints}
  validations: [{{expression: "true"}}]
"""
    policy = build_policy_set(parse_text(text, "p.yaml")).validating[0]
    assert describe_scope(policy.match_constraints) == expected
