"""The governance dashboard in process (httpx over ASGI): the overview numbers, the API's JSON shapes, query
validation, paging, auth, escaping of hostile values, security headers and store failures.

The seeded history (`seed`) is the scenario every dashboard test uses, the browser tests and the CLI tests too:
its numbers are worked out by hand in the constants below."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import hmac
import html
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.types import Message

from engine.library import instantiate, load_library, render_policy
from engine.loader import parse_text
from engine.policy_set import build_policy_set
from webhook.dashboard import COOKIE, _badge, create_dashboard_app, el
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
TOKEN = "s3cret-token-for-tests"
"""At least 16 characters, what `celvern dashboard` demands of a token file."""


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
EXPECTED_SAFE: list[str] = []
"""No policy of the scenario is safe to enforce. disallow-privileged is in Deny mode and require-labels failed twice
in the last scan; require-limits (Warn) and team-a/team-policy (Audit) passed that scan, but they used to be listed
here, and no longer are: require-limits warned 4 admission requests on 2024-05-14 and team-a/team-policy audited one
on 2024-05-13, and switching either to Deny would have blocked those requests. The cases with a safe policy are in
`test_safe_to_enforce`."""


def seed(store: DecisionStore, *, scan: bool = True) -> DecisionStore:
    store.write(decisions())
    if scan:
        store.record_scan(SCAN)
    return store


def make_store(tmp_path: Path, *, scan: bool = True) -> DecisionStore:
    return seed(open_store(str(tmp_path / "history.db")), scan=scan)


def make_app(
    store: DecisionStore | Callable[[], DecisionStore],
    *,
    token: str | None = None,
    clock: Callable[[], datetime.datetime] = lambda: NOW,
    **options: Any,
) -> Starlette:
    return create_dashboard_app(store, lambda: POLICIES, LIBRARY_TOTALS, token=token, clock=clock, **options)


BASE_URL = "http://localhost"
"""The Host the in-process client names. It used to be `http://dashboard`, but a dashboard without a token now
answers only to loopback names (DNS rebinding, `test_host_header_is_checked_without_a_token`)."""


async def _send(app: Starlette, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        return await client.request(method, path, **kwargs)


def get(app: Starlette, path: str, **kwargs: Any) -> httpx.Response:
    return asyncio.run(_send(app, path, **kwargs))


def post(app: Starlette, path: str, **kwargs: Any) -> httpx.Response:
    return asyncio.run(_send(app, path, "POST", **kwargs))


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


def test_last_scan_has_its_counts_and_age(app: Starlette) -> None:
    body = get(app, "/api/v1/overview").json()
    assert body["lastScan"] == {
        "time": "2024-05-15T06:00:00Z",
        "ageSeconds": 6 * 3600,
        "policies": 4,
        "pass": 26,
        "fail": 2,
        "warn": 1,
        "error": 0,
        "skip": 1,
    }
    assert body["safeToEnforce"] == EXPECTED_SAFE


_CLEAN = PolicyScan("candidate", passed=10)


@pytest.mark.parametrize(
    ("actions", "scan", "admission", "safe"),
    [
        pytest.param(("Audit",), _CLEAN, [], True, id="audit-clean-scan-quiet-admission"),
        pytest.param(("Warn",), _CLEAN, [], True, id="warn-clean-scan-quiet-admission"),
        pytest.param(("Audit",), PolicyScan("candidate", passed=9, warned=1), [], True, id="scan-warn-is-no-failure"),
        pytest.param(("Deny",), _CLEAN, [], False, id="already-deny"),
        pytest.param(("Audit",), PolicyScan("candidate", passed=9, failed=1), [], False, id="scan-fail"),
        pytest.param(("Audit",), PolicyScan("candidate", passed=9, errored=1), [], False, id="scan-error"),
        pytest.param(("Audit",), None, [], False, id="not-in-the-scan"),
        pytest.param(("Warn",), _CLEAN, [("warn", 14)], False, id="admission-warning-this-week"),
        pytest.param(("Audit",), _CLEAN, [("audit", 9)], False, id="admission-audit-on-the-first-day"),
        pytest.param(("Audit",), _CLEAN, [("deny", 12)], False, id="denied-while-it-was-in-deny-mode"),
        pytest.param(("Audit",), _CLEAN, [("audit", 8)], True, id="admission-audit-before-the-window"),
        pytest.param(("Audit",), _CLEAN, [("scan-audit", 14)], True, id="scan-findings-count-in-the-scan-only"),
    ],
)
def test_safe_to_enforce(
    tmp_path: Path,
    actions: tuple[str, ...],
    scan: PolicyScan | None,
    admission: list[tuple[str, int]],
    safe: bool,
) -> None:
    """Safe to enforce: a validating policy not in Deny mode, covered by the last scan without a fail or an error,
    and with no admission decision in the 7-day window (a request it flagged is one Deny would have blocked)."""
    store = open_store(str(tmp_path / "safe.db"))
    for action, day in admission:
        source, _, action = action.rpartition("-")
        store.write([_decision(_at(day, 12), "candidate", action, source=source or "admission")])
    store.record_scan(ScanSummary(time=_at(15, 6), policies=(scan,) if scan is not None else ()))
    app = create_dashboard_app(store, lambda: (_info("candidate", "medium", actions),), {}, clock=lambda: NOW)
    body = get(app, "/api/v1/overview").json()
    expected = [
        {
            "policy": "candidate",
            "actions": list(actions),
            "severity": "medium",
            "category": "Governance: General",
            "title": "Title of candidate",
            "passed": scan.passed if scan is not None else 0,
        }
    ]
    assert body["safeToEnforce"] == (expected if safe else [])
    page = get(app, "/").text
    assert _testid(page, "safe-policy") == (["candidate"] if safe else [])
    assert _testid(page, "safe-as-of") == ["As of the scan of 2024-05-15 06:00:00Z (6 hours ago)."]


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
        # these used to escape as OverflowError or ValueError: a 500 without the security headers
        pytest.param(
            {"since": "0001-01-01T00:00:00+05:00"},
            "since: '0001-01-01T00:00:00+05:00' is out of range",
            id="since-before-year-1-in-utc",
        ),
        pytest.param(
            {"until": "9999-12-31T23:59:59-05:00"},
            "until: '9999-12-31T23:59:59-05:00' is out of range",
            id="until-after-year-9999-in-utc",
        ),
        pytest.param({"since": "9" * 5000 + "d"}, "since: expected an RFC 3339 time", id="since-5000-digit-duration"),
        pytest.param({"since": "9" * 12 + "w"}, "too long", id="since-duration-beyond-timedelta"),
        pytest.param({"offset": "10000001"}, "offset: must be at most 10000000", id="offset-too-large"),
        pytest.param({"offset": "9" * 5000}, "offset: must be at most 10000000", id="offset-5000-digits"),
        pytest.param({"limit": "1_000"}, "limit: expected an integer", id="limit-underscore"),
    ],
)
def test_violations_rejects_bad_queries(app: Starlette, query: dict[str, str], message: str) -> None:
    for path in ("/api/v1/violations", "/violations"):
        response = get(app, path, params=query)
        assert response.status_code == 400
        assert "default-src 'self'" in response.headers["content-security-policy"]
        text = response.json()["error"] if path.startswith("/api/") else _testid(response.text, "query-error")[0]
        assert message in html.unescape(text)


def test_the_largest_offset_is_accepted(app: Starlette) -> None:
    body = get(app, "/api/v1/violations", params={"offset": "10000000"}).json()
    assert (body["offset"], body["items"], body["nextOffset"]) == (10_000_000, [], None)


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


@pytest.mark.parametrize(
    ("params", "shown", "links"),
    [
        pytest.param({"limit": "8"}, "1–8", {"next-page"}, id="first-page"),
        pytest.param({"limit": "8", "offset": "16"}, "17–21", {"previous-page"}, id="last-page"),
        pytest.param({"limit": "8", "offset": "21"}, "0", {"first-page"}, id="just-past-the-end"),
        pytest.param({"offset": "1000", "limit": "1000"}, "0", {"first-page"}, id="far-past-the-end"),
    ],
)
def test_violations_pager(app: Starlette, params: dict[str, str], shown: str, links: set[str]) -> None:
    """Past the last row the pager used to say "1001–1000 of 21"; it says "0 of 21" and links to the first page."""
    page = get(app, "/violations", params=params).text
    assert _testid(page, "violations-range") == [shown, shown]
    assert _testid(page, "violations-total") == ["21", "21"]
    assert {name for name in ("first-page", "previous-page", "next-page") if f'data-testid="{name}"' in page} == links
    if "first-page" in links:
        assert f'href="/violations?limit={params["limit"]}" data-testid="first-page"' in page


@pytest.mark.parametrize(
    ("decisions", "count", "shown"),
    [
        pytest.param(16, "16", [], id="all-shown"),
        pytest.param(130, "130", ["latest 100 shown"], id="capped-at-100"),
    ],
)
def test_recent_violations_count_is_the_total(tmp_path: Path, decisions: int, count: str, shown: list[str]) -> None:
    """The header counts every decision of the window (`recentTotal`), not the 100 rows listed."""
    store = open_store(str(tmp_path / "recent.db"))
    store.write(
        [_decision(NOW - datetime.timedelta(minutes=i), "require-labels", "audit", index=i) for i in range(decisions)]
    )
    page = get(make_app(store), "/").text
    assert _testid(page, "recent-count") == [count]
    assert _testid(page, "recent-shown") == shown
    assert len(_testid(page, "recent-row")) == min(decisions, 100)


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


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/", 200, id="page"),
        pytest.param("/api/v1/overview", 200, id="api"),
        pytest.param("/healthz", 200, id="healthz"),
        pytest.param("/nothing", 404, id="not-found"),
        pytest.param("/api/v1/violations?since=0001-01-01T00:00:00%2B05:00", 400, id="bad-query"),
    ],
)
def test_security_headers_on_every_answer(app: Starlette, path: str, status: int) -> None:
    response = get(app, path)
    assert response.status_code == status
    headers = response.headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert "strict-transport-security" not in headers  # plain HTTP: HSTS only over TLS


class _Boom(Exception):
    pass


def _exploding_policies() -> Sequence[PolicyInfo]:
    raise _Boom("secret detail that must not be shown")


@pytest.mark.parametrize(
    ("path", "api"),
    [
        pytest.param("/", False, id="overview-page"),
        pytest.param("/policies", False, id="policies-page"),
        pytest.param("/api/v1/overview", True, id="overview-api"),
        pytest.param("/api/v1/policies", True, id="policies-api"),
    ],
)
def test_an_unexpected_error_is_a_500_with_the_security_headers(store: DecisionStore, path: str, api: bool) -> None:
    """An exception outside the store calls (here the policies provider) used to reach Starlette's own error page:
    "Internal Server Error" without the CSP. It is now a plain 500, logged, with every security header."""
    app = create_dashboard_app(store, _exploding_policies, LIBRARY_TOTALS, clock=lambda: NOW)
    response = get(app, path)
    assert response.status_code == 500
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert "Traceback" not in response.text and "secret detail" not in response.text
    if api:
        assert response.json() == {"error": "internal error", "status": 500}
    else:
        assert _testid(response.text, "error") == ["Internal error: the dashboard logged the details."]


def _old_session_cookie() -> str:
    """The cookie of the first dashboard: HMAC(token, constant), the same for every login and for ever."""
    return hmac.new(TOKEN.encode(), b"celvern-dashboard-session-v1", hashlib.sha256).hexdigest()


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
        pytest.param(
            "/", {"Cookie": f"{COOKIE}={_old_session_cookie()}"}, 401, id="hmac-of-the-token-is-not-a-session"
        ),
        pytest.param("/healthz", {}, 200, id="healthz-open"),
        pytest.param("/login", {}, 200, id="login-open"),
        pytest.param("/static/dashboard.css", {}, 200, id="static-open"),
        pytest.param("/logout", {}, 303, id="logout-open"),
    ],
)
def test_token_is_required(store: DecisionStore, path: str, headers: dict[str, str], status: int) -> None:
    response = get(make_app(store, token=TOKEN), path, headers=headers)
    assert response.status_code == status
    if status == 401 and path.startswith("/api/"):
        assert response.json()["status"] == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    if status == 401 and not path.startswith("/api/"):
        assert 'method="post" action="/login"' in response.text


def _url_from_the_host_header(self: Request) -> URL:
    """`request.url` as Starlette before 1.0.1 built it: the Host header pasted, unparsed, in front of the path."""
    query = self.scope["query_string"].decode()
    return URL(
        f"{self.scope['scheme']}://{self.headers.get('host', '')}{self.scope['path']}" + (f"?{query}" * bool(query))
    )


async def _raw(app: Starlette, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, str]]:
    """One GET through the ASGI interface with exactly these headers (httpx would normalise a Host like `x/?`)."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    await app(scope, receive, send)
    start = sent[0]
    return start["status"], {key.decode().lower(): value.decode() for key, value in start["headers"]}


@pytest.mark.parametrize("path", ["/", "/api/v1/overview", "/api/v1/violations"])
@pytest.mark.parametrize(
    "host",
    [
        pytest.param("x/static/?", id="static-prefix"),
        pytest.param("x/healthz?", id="healthz-prefix"),
        pytest.param("x/login#", id="login-prefix"),
        pytest.param("x/static/dashboard.css?a=", id="static-file-prefix"),
    ],
)
def test_a_host_header_never_opens_a_guarded_route(
    store: DecisionStore, monkeypatch: pytest.MonkeyPatch, path: str, host: str
) -> None:
    """`authorized()` used to call `request.url.path.startswith(("/healthz", "/login", "/static/"))`; on Starlette
    before 1.0.1 `request.url` is built from the Host header, so `Host: x/static/?` made every route public. That
    Starlette is emulated here; the guard now only wraps the routes that need it and never looks at the URL."""
    monkeypatch.setattr(Request, "url", property(_url_from_the_host_header))
    status, _ = asyncio.run(_raw(make_app(store, token=TOKEN), path, [(b"host", host.encode())]))
    assert status == 401


@pytest.mark.parametrize(
    ("host", "token", "allowed", "status"),
    [
        pytest.param("localhost", None, (), 200, id="localhost"),
        pytest.param("localhost:8080", None, (), 200, id="localhost-port"),
        pytest.param("LOCALHOST:8080", None, (), 200, id="localhost-upper-case"),
        pytest.param("127.0.0.1:8080", None, (), 200, id="ipv4-loopback"),
        pytest.param("[::1]:8080", None, (), 200, id="ipv6-loopback"),
        pytest.param("[::1]", None, (), 200, id="ipv6-loopback-no-port"),
        pytest.param("attacker.example", None, (), 400, id="rebound-name"),
        pytest.param("attacker.example:8080", None, (), 400, id="rebound-name-port"),
        pytest.param("localhost.attacker.example", None, (), 400, id="localhost-prefix"),
        pytest.param("127.0.0.1.nip.io", None, (), 400, id="ip-prefix"),
        pytest.param("127.0.0.2", None, (), 400, id="other-loopback-address"),
        pytest.param("localhost:80:80", None, (), 400, id="two-ports"),
        pytest.param("localhost:http", None, (), 400, id="port-name"),
        pytest.param("[::1", None, (), 400, id="unclosed-bracket"),
        pytest.param(None, None, (), 400, id="no-host-header"),
        pytest.param("dashboard.internal:8080", None, ("dashboard.internal",), 200, id="allowed-host"),
        pytest.param("DASHBOARD.internal", None, ("dashboard.INTERNAL",), 200, id="allowed-host-any-case"),
        pytest.param("[fd00::1]:8080", None, ("fd00::1",), 200, id="allowed-ipv6-address"),
        pytest.param("other.internal", None, ("dashboard.internal",), 400, id="not-the-allowed-host"),
        pytest.param("attacker.example", TOKEN, (), 200, id="any-host-with-a-token"),
    ],
)
def test_host_header_is_checked_without_a_token(
    store: DecisionStore, host: str | None, token: str | None, allowed: tuple[str, ...], status: int
) -> None:
    """DNS rebinding: without a token, a page whose name now resolves to 127.0.0.1 must not read the history."""
    app = make_app(store, token=token, allowed_hosts=allowed)
    headers = [(b"host", host.encode())] if host is not None else []
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    for path in ("/", "/api/v1/violations"):
        answer, response_headers = asyncio.run(_raw(app, path, headers))
        assert answer == status
        assert "default-src 'self'" in response_headers["content-security-policy"]
    assert asyncio.run(_raw(app, "/healthz", headers))[0] == 200  # probes may name the pod's address


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime.datetime:
        return self.now


async def _login(client: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    return await client.post("/login", data={"token": token})


@pytest.mark.parametrize(
    ("scenario", "status"),
    [
        pytest.param("fresh", 200, id="fresh-session"),
        pytest.param("almost-12-hours", 200, id="just-before-expiry"),
        pytest.param("12-hours", 401, id="expired-after-12-hours"),
        pytest.param("after-logout", 401, id="revoked-by-logout"),
        pytest.param("other-process", 401, id="another-process-key"),
        pytest.param("tampered-expiry", 401, id="expiry-changed"),
        pytest.param("tampered-mac", 401, id="mac-changed"),
        pytest.param("garbage", 401, id="garbage"),
    ],
)
def test_session_cookies_expire_and_are_revoked(store: DecisionStore, scenario: str, status: int) -> None:
    """The session used to be HMAC(token, constant): the same for everyone, valid for ever, alive after logout."""
    clock = _Clock()
    app = make_app(store, token=TOKEN, clock=clock)
    other = make_app(store, token=TOKEN, clock=clock)

    async def flow() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            login = await _login(client)
            assert login.status_code == 303
            cookie = client.cookies[COOKIE]
            expires, nonce, mac = cookie.split(".")
            if scenario == "almost-12-hours":
                clock.now = NOW + datetime.timedelta(hours=12, seconds=-1)
            elif scenario == "12-hours":
                clock.now = NOW + datetime.timedelta(hours=12)
            elif scenario == "after-logout":
                logout = await client.get("/logout")
                assert logout.status_code == 303 and logout.headers["location"] == "/login"
                assert COOKIE not in client.cookies
            elif scenario == "tampered-expiry":
                cookie = f"{int(expires) + 3600}.{nonce}.{mac}"
            elif scenario == "tampered-mac":
                cookie = f"{expires}.{nonce}.{'0' * len(mac)}"
            elif scenario == "garbage":
                cookie = "a.b.c.d"
            target = other if scenario == "other-process" else app
            headers = {"Cookie": f"{COOKIE}={cookie}"}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=target), base_url=BASE_URL) as fresh:
                return (await fresh.get("/api/v1/overview", headers=headers)).status_code

    assert asyncio.run(flow()) == status


@pytest.mark.parametrize(
    ("https", "secure"),
    [pytest.param(False, False, id="plain-http"), pytest.param(True, True, id="tls")],
)
def test_login_sets_a_strict_http_only_cookie(store: DecisionStore, https: bool, secure: bool) -> None:
    app = make_app(store, token=TOKEN, https=https)

    async def flow() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        base = BASE_URL.replace("http:", "https:") if https else BASE_URL
        async with httpx.AsyncClient(transport=transport, base_url=base) as client:
            wrong = await _login(client, "nope")
            login = await _login(client)
            page = await client.get("/")
            return wrong, login, page

    wrong, login, page = asyncio.run(flow())
    assert wrong.status_code == 401
    assert _testid(wrong.text, "login-error") == ["That token is not valid."]
    assert login.status_code == 303
    assert login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert TOKEN not in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Max-Age=43200" in cookie
    assert ("Secure" in cookie) is secure
    assert ("strict-transport-security" in login.headers) is https
    assert page.status_code == 200
    assert _testid(page.text, "severity-high-enabled") == ["1"]
    assert _testid(page.text, "logout") == ["Sign out"]


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        pytest.param({"method": "GET", "params": {"token": TOKEN}}, 400, id="token-in-the-url-is-refused"),
        pytest.param({"method": "POST", "json": {"token": TOKEN}}, 400, id="json-body"),
        pytest.param({"method": "POST", "data": {"token": TOKEN + "x"}}, 401, id="longer-token"),
        pytest.param({"method": "POST", "data": {"token": ""}}, 401, id="empty-token"),
        pytest.param({"method": "POST", "data": {"other": TOKEN}}, 401, id="no-token-field"),
        pytest.param({"method": "POST", "data": {"token": TOKEN, "pad": "x" * 5000}}, 400, id="oversized-form"),
        pytest.param(
            {
                "method": "POST",
                "content": b"token=%ff",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            400,
            id="not-utf8",
        ),
        pytest.param({"method": "POST", "data": {"token": TOKEN}}, 303, id="form-post"),
    ],
)
def test_login_takes_the_token_from_a_posted_form_only(
    store: DecisionStore, request_: dict[str, Any], status: int
) -> None:
    """`GET /login?token=` put the token in URLs (histories, proxy logs); it is refused, and only a POSTed form
    signs in."""
    arguments = dict(request_)
    response = asyncio.run(_send(make_app(store, token=TOKEN), "/login", arguments.pop("method"), **arguments))
    assert response.status_code == status
    assert ("set-cookie" in response.headers) is (status == 303)
    if status != 303:
        assert 'method="post" action="/login"' in response.text


def test_login_without_a_token_configured_goes_home(app: Starlette) -> None:
    response = get(app, "/login", params={"token": "anything"})
    assert (response.status_code, response.headers["location"]) == (303, "/")


@pytest.mark.parametrize(
    ("token", "link"),
    [pytest.param(None, [], id="no-token-no-link"), pytest.param(TOKEN, ["Sign out"], id="token-sign-out-link")],
)
def test_sign_out_link_in_the_header(store: DecisionStore, token: str | None, link: list[str]) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for path in ("/", "/policies", "/violations"):
        assert _testid(get(make_app(store, token=token), path, headers=headers).text, "logout") == link


@pytest.mark.parametrize(
    ("family", "value", "css_class"),
    [
        pytest.param("severity", "high", "badge severity-high", id="severity-known"),
        pytest.param("severity", "Critical", "badge severity-critical", id="severity-any-case"),
        pytest.param("severity", "info", "badge severity-info", id="severity-info"),
        pytest.param("severity", "high evil", "badge severity-other", id="severity-two-words"),
        pytest.param("severity", "urgent", "badge severity-other", id="severity-unknown"),
        pytest.param("severity", 'x" onclick="y', "badge severity-other", id="severity-quote"),
        pytest.param("action", "deny", "badge action-deny", id="action-known"),
        pytest.param("action", "MutatingPolicy", "badge action-other", id="action-kind"),
        pytest.param("action", "deny notice", "badge action-other", id="action-two-words"),
    ],
)
def test_badge_classes_come_from_known_values(family: str, value: str, css_class: str) -> None:
    """Badge classes used to be `family-<stored text>`: an annotation could pick any class of the stylesheet."""
    assert _badge(value, family) == el("span", value, class_=css_class)


def test_severity_cards_use_known_classes_only(store: DecisionStore) -> None:
    app = create_dashboard_app(store, lambda: POLICIES, {**LIBRARY_TOTALS, "high danger": 1}, clock=lambda: NOW)
    page = get(app, "/").text
    assert 'class="card severity-card level-high"' in page
    assert 'class="card severity-card level-other" data-testid="severity-high danger"' in page
    assert "level-high danger" not in page


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


# --- the same answers from either store -----------------------------------------------------------------------


def test_the_api_answers_the_same_from_sqlite_and_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """The overview, violations and policies documents are a function of the decisions, not of the store."""
    from tests.webhook.test_history import _postgres_store

    paths = (
        "/api/v1/overview",
        "/api/v1/violations?limit=7&offset=3",
        "/api/v1/violations?action=deny&since=3d",
        "/api/v1/policies",
    )
    sqlite = make_store(tmp_path)
    try:
        expected = {path: get(make_app(sqlite), path).json() for path in paths}
    finally:
        sqlite.close()
    for postgres in _postgres_store(postgres_url):
        seed(postgres)
        app = make_app(postgres)
        for path in paths:
            assert get(app, path).json() == expected[path], path
