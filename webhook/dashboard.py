"""The governance dashboard: a small Starlette app with a JSON API and three server-rendered pages.

Why it exists: the decision history answers "what did the policies do this week?", and the people asking are not
all at a terminal. `GET /api/v1/overview|violations|policies` serve `webhook.overview`'s data as JSON; `/`,
`/policies` and `/violations` render the same data as plain HTML (an inline SVG chart, one small script for the
client-side filter), so there is no build toolchain and nothing to download.

Security, because policy messages and resource names come from users' objects:
- every value that reaches a page goes through `el`, which escapes text and attribute values; markup exists only
  as `Html`, which only `el` makes. No inline script or style, and a Content-Security-Policy of
  `default-src 'self'; script-src 'self'` on every answer, so even a missed escape could not run a script;
- with a `token`, every route but `/healthz`, `/login`, `/logout` and `/static/*` needs `Authorization: Bearer
  <token>` or the session cookie that `POST /login` (the token in a form body, never in a URL) sets. Those open
  routes are simply not wrapped by the guard: nothing decides "public" from the request's URL, whose host part comes
  from the Host header. The cookie holds an expiry and a nonce signed with a random key made at start (so it is not
  derived from the token, dies with the process, expires after 12 hours, and `/logout` revokes it); it is HttpOnly,
  SameSite=Strict, and Secure over TLS. Comparisons are constant-time. The CLI refuses a non-loopback address
  without a token;
- without a token (loopback only), a request must name the dashboard by a loopback Host (`localhost`, `127.0.0.1`,
  `[::1]`, any port) or one of `allowed_hosts`, else 400: a web page that rebinds its own DNS name to 127.0.0.1
  cannot read the history through the visitor's browser;
- served over TLS (`https`), answers carry Strict-Transport-Security;
- badge and card classes are picked from known values only, never made of stored text.

Store calls block (SQLite, psycopg): they run in the thread pool. A store that fails answers 503 (JSON for the
API, a message for pages), any other exception a plain 500 that still carries the security headers, never a
traceback; bad query parameters answer 400. A store given as a factory is opened on first use and retried after
a failure, so the dashboard starts while its database is still down.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import html
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Final, TypeAlias, TypeVar, cast
from urllib.parse import parse_qs, urlencode

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webhook.history import ACTIONS, SOURCES, DecisionStore, StoreError, ViolationQuery
from webhook.overview import (
    PolicyInfo,
    QueryError,
    filter_policies,
    overview,
    parse_violation_query,
    policies_table,
    violations,
)

log = logging.getLogger("celvern.dashboard")

COOKIE: Final = "celvern_dashboard"
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
STRICT_TRANSPORT_SECURITY: Final = "max-age=31536000"
"""Sent over TLS only; no includeSubDomains: the dashboard's host may serve other things."""
SESSION_LIFETIME: Final = datetime.timedelta(hours=12)
"""How long a session cookie is valid after `POST /login` (Max-Age and the signed expiry)."""
LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
"""The Host names accepted without a token (any port), besides `allowed_hosts`."""
_LOGIN_BODY_LIMIT: Final = 4096
"""Bytes of a `POST /login` form body read at most."""
_MESSAGE_PREVIEW: Final = 300
"""Characters of a message shown in a table cell; the whole message is in the cell's title."""

StoreArgument: TypeAlias = "DecisionStore | Callable[[], DecisionStore]"
Clock: TypeAlias = Callable[[], datetime.datetime]
_T = TypeVar("_T")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --- escaping HTML ------------------------------------------------------------------------------------------


class Html(str):
    """Markup that is already safe: made only by `el`."""

    __slots__ = ()


Node: TypeAlias = "str | int | Sequence[Node] | None"
_VOID: Final = frozenset({"meta", "link", "input", "br", "hr", "img"})


def _children(node: Node, out: list[str]) -> None:
    if node is None:
        return
    if isinstance(node, Html):
        out.append(node)
    elif isinstance(node, str):
        out.append(html.escape(node, quote=True))
    elif isinstance(node, int):
        out.append(str(node))
    else:
        for child in node:
            _children(child, out)


def el(tag: str, *children: Node, **attributes: str | int | bool | None) -> Html:
    """`<tag attributes>children</tag>` with every text child and attribute value escaped. Attribute names are
    the keywords with a trailing `_` dropped and `_` written as `-` (`class_`, `data_testid`); True writes a bare
    attribute, False and None leave it out."""
    parts = [f"<{tag}"]
    for key, value in attributes.items():
        if value is None or value is False:
            continue
        name = key.rstrip("_").replace("_", "-")
        parts.append(f" {name}" if value is True else f' {name}="{html.escape(str(value), quote=True)}"')
    parts.append(">")
    if tag in _VOID:
        return Html("".join(parts))
    _children(list(children), parts)
    parts.append(f"</{tag}>")
    return Html("".join(parts))


# --- static files -------------------------------------------------------------------------------------------


def _static(name: str) -> bytes:
    return resources.files("webhook").joinpath("static", name).read_bytes()


# --- the store ------------------------------------------------------------------------------------------------


class StoreUnavailable(Exception):
    """The store failed; the message is safe to show."""


class _StoreHandle:
    """The store, or a factory opening it on first use (and again after a failed open)."""

    def __init__(self, store: StoreArgument) -> None:
        self._lock = threading.Lock()
        self._store: DecisionStore | None = None
        self._factory: Callable[[], DecisionStore] | None = None
        self._owned = False
        if hasattr(store, "violations"):
            self._store = cast(DecisionStore, store)
        else:
            self._factory = store
            self._owned = True

    def get(self) -> DecisionStore:
        with self._lock:
            if self._store is None:
                assert self._factory is not None
                self._store = self._factory()
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._owned and self._store is not None:
                self._store.close()
                self._store = None


def _describe(error: Exception) -> str:
    if isinstance(error, StoreError) and str(error):
        return f"the decision store is unavailable: {str(error).splitlines()[0]}"
    return f"the decision store is unavailable ({type(error).__name__})"


# --- responses ------------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _api_error(status: int, message: str) -> Response:
    return _json({"error": message, "status": status}, status)


_NAV: Final = (
    ("/", "Overview", "overview"),
    ("/policies", "Policies", "policies"),
    ("/violations", "Violations", "violations"),
)


def _page(
    title: str, current: str, body: Node, *, status: int = 200, generated: str = "", logout: bool = False
) -> Response:
    """A whole page; `logout` adds a "Sign out" link to the header (when the dashboard has a token)."""
    nav = el(
        "nav",
        [
            el("a", label, href=href, class_="active" if key == current else None, data_testid=f"nav-{key}")
            for href, label, key in _NAV
        ],
    )
    header = el(
        "header",
        el("a", "celvern", href="/", class_="brand"),
        el("span", "policy governance", class_="subtitle"),
        nav,
        el("span", f"as of {generated.replace('T', ' ')}" if generated else "", class_="generated"),
        el("a", "Sign out", href="/logout", class_="logout", data_testid="logout") if logout else None,
        class_="top",
    )
    document = el(
        "html",
        el(
            "head",
            el("meta", charset="utf-8"),
            el("meta", name="viewport", content="width=device-width, initial-scale=1"),
            el("title", f"{title} · celvern"),
            el("link", rel="stylesheet", href="/static/dashboard.css"),
            el("script", src="/static/dashboard.js", defer=True),
        ),
        el("body", header, el("main", el("h1", title), body, id="main"), data_page=current),
        lang="en",
    )
    return Response("<!doctype html>\n" + document, status_code=status, media_type="text/html; charset=utf-8")


def _notice(message: str, testid: str = "error") -> Html:
    return el("div", message, class_="notice error", role="alert", data_testid=testid)


_SEVERITIES: Final = frozenset({"critical", "high", "medium", "low", "info"})
_KNOWN: Final = {
    "severity": _SEVERITIES,
    "level": _SEVERITIES,
    "action": frozenset({"deny", "warn", "audit"}),
}
"""The values that have their own style; anything else (stored text, from users' annotations) gets `-other`."""


def _style(value: str, family: str) -> str:
    """`family-value` for a known value (case-insensitive), else `family-other`: a class is never stored text."""
    known = value.strip().lower()
    return f"{family}-{known}" if known in _KNOWN.get(family, ()) else f"{family}-other"


def _badge(value: str, family: str) -> Html:
    if not value:
        return el("span", "—", class_="muted")
    return el("span", value, class_=f"badge {_style(value, family)}")


def _link(path: str, params: Mapping[str, str | int]) -> str:
    clean = {key: value for key, value in params.items() if value not in ("", None)}
    return f"{path}?{urlencode(clean)}" if clean else path


def _message_cell(message: str) -> Html:
    preview = message if len(message) <= _MESSAGE_PREVIEW else message[:_MESSAGE_PREVIEW] + "…"
    return el("td", preview, class_="message", title=message if preview != message else None)


def _decision_rows(items: Sequence[Mapping[str, Any]], testid: str) -> Html:
    head = el(
        "thead",
        el(
            "tr",
            [el("th", name) for name in ("Time (UTC)", "Source", "Action", "Policy", "Severity", "Resource")],
            el("th", "Message"),
            el("th", "User"),
        ),
    )
    rows = []
    for item in items:
        resource = f"{item['kind']} {item['namespace'] + '/' if item['namespace'] else ''}{item['name']}"
        rows.append(
            el(
                "tr",
                el("td", el("time", str(item["time"]).replace("T", " "), datetime=item["time"]), class_="nowrap"),
                el("td", item["source"]),
                el("td", _badge(item["action"], "action"), " error" if item["result"] == "error" else ""),
                el("td", el("a", item["policy"], href=_link("/violations", {"policy": item["policy"]}))),
                el("td", _badge(item["severity"], "severity")),
                el("td", resource, class_="resource"),
                _message_cell(item["message"]),
                el("td", item["user"], class_="user"),
                data_testid=testid,
            )
        )
    return el("table", head, el("tbody", rows), class_="data")


# --- the overview page --------------------------------------------------------------------------------------

_CHART_WIDTH: Final = 1100
_CHART_HEIGHT: Final = 240
_CHART_TOP: Final = 24
_CHART_BOTTOM: Final = 40
_CHART_LEFT: Final = 40


def _chart(days: Sequence[Mapping[str, Any]]) -> Html:
    """Blocked (deny) and alerted (warn + audit) admission decisions per day, as bars with their numbers."""
    peak = max([1, *(max(day["deny"], day["warnAudit"]) for day in days)])
    plot = _CHART_HEIGHT - _CHART_TOP - _CHART_BOTTOM
    slot = (_CHART_WIDTH - _CHART_LEFT) / len(days)
    bar = min(28.0, slot / 3)
    shapes: list[Html] = [
        el("line", x1=_CHART_LEFT, y1=_CHART_TOP + plot, x2=_CHART_WIDTH, y2=_CHART_TOP + plot, class_="axis"),
        el("text", str(peak), x=_CHART_LEFT - 6, y=_CHART_TOP + 4, class_="tick", text_anchor="end"),
        el("text", "0", x=_CHART_LEFT - 6, y=_CHART_TOP + plot + 4, class_="tick", text_anchor="end"),
        el("line", x1=_CHART_LEFT, y1=_CHART_TOP, x2=_CHART_WIDTH, y2=_CHART_TOP, class_="grid"),
    ]
    for index, day in enumerate(days):
        date = datetime.date.fromisoformat(day["date"])
        centre = _CHART_LEFT + slot * index + slot / 2
        for series, offset, label in (("deny", -bar - 2, "blocked"), ("warnAudit", 2, "alerted")):
            value = int(day[series])
            height = plot * value / peak
            x = centre + offset
            y = _CHART_TOP + plot - height
            shapes.append(
                el(
                    "rect",
                    el("title", f"{date.isoformat()}: {value} {label}"),
                    x=f"{x:.1f}",
                    y=f"{y:.1f}",
                    width=f"{bar:.1f}",
                    height=f"{max(height, 0):.1f}",
                    class_=f"bar {series.lower()}",
                    data_testid=f"bar-{series}-{date.isoformat()}",
                    data_value=value,
                )
            )
            shapes.append(el("text", str(value), x=f"{x + bar / 2:.1f}", y=f"{y - 5:.1f}", class_="value"))
        shapes.append(el("text", date.strftime("%a"), x=f"{centre:.1f}", y=_CHART_HEIGHT - 22, class_="day"))
        shapes.append(el("text", date.strftime("%m-%d"), x=f"{centre:.1f}", y=_CHART_HEIGHT - 8, class_="date"))
    svg = el(
        "svg",
        el("title", "Blocked and alerted admission requests over the last 7 days"),
        shapes,
        viewBox=f"0 0 {_CHART_WIDTH} {_CHART_HEIGHT}",
        role="img",
        class_="chart",
        data_testid="chart",
        xmlns="http://www.w3.org/2000/svg",
    )
    legend = el(
        "div",
        el("span", el("span", class_="swatch deny"), "Blocked (Deny)"),
        el("span", el("span", class_="swatch warnaudit"), "Alerted (Warn / Audit)"),
        class_="legend",
    )
    return el("div", svg, legend, class_="chart-box")


def _severity_cards(rows: Sequence[Mapping[str, Any]]) -> Html:
    cards = []
    for row in rows:
        severity = str(row["severity"])
        cards.append(
            el(
                "div",
                el("div", _badge(severity, "severity"), class_="card-title"),
                el(
                    "div",
                    el("span", row["enabled"], class_="big", data_testid=f"severity-{severity}-enabled"),
                    el("span", " of ", class_="muted"),
                    el("span", row["total"], data_testid=f"severity-{severity}-total"),
                    class_="figure",
                ),
                el(
                    "progress", value=min(row["enabled"], row["total"]) if row["total"] else 0, max=max(row["total"], 1)
                ),
                el("div", "enabled of the library's policies", class_="caption"),
                class_=f"card severity-card {_style(severity, 'level')}",
                data_testid=f"severity-{severity}",
            )
        )
    return el("div", cards, class_="cards")


def _total_cards(totals: Mapping[str, int], last_scan: Mapping[str, Any] | None) -> Html:
    items = (
        ("deny", "Blocked", "admission requests denied, 7 days"),
        ("warnAudit", "Alerted", "admission warnings and audits, 7 days"),
        ("scanFailures", "Scan failures", "background-scan fails and errors, 7 days"),
    )
    cards = [
        el(
            "div",
            el("div", label, class_="card-title"),
            el("div", el("span", totals[key], class_="big", data_testid=f"total-{key}"), class_="figure"),
            el("div", caption, class_="caption"),
            class_=f"card total-card total-{key.lower()}",
        )
        for key, label, caption in items
    ]
    scan_text = (
        f"{str(last_scan['time']).replace('T', ' ')} · {last_scan['policies']} policies · "
        f"{last_scan['fail']} fail · {last_scan['error']} error"
        if last_scan is not None
        else "no scan yet"
    )
    cards.append(
        el(
            "div",
            el("div", "Last background scan", class_="card-title"),
            el("div", scan_text, class_="scan", data_testid="last-scan"),
            class_="card total-card",
        )
    )
    return el("div", cards, class_="cards")


def _overview_body(data: Mapping[str, Any]) -> Html:
    top_rows = [
        el(
            "tr",
            el("td", index + 1, class_="num"),
            el(
                "td",
                el("a", row["policy"], href=_link("/violations", {"policy": row["policy"]})),
                class_="policy-name",
                data_testid="top-violated-policy",
            ),
            el("td", _badge(row["severity"], "severity")),
            el("td", row["category"] or "—"),
            el("td", row["deny"], class_="num"),
            el("td", row["warn"], class_="num"),
            el("td", row["audit"], class_="num"),
            el("td", row["total"], class_="num strong", data_testid="top-violated-total"),
            data_testid="top-violated-row",
        )
        for index, row in enumerate(data["topViolated"])
    ]
    top = (
        el(
            "table",
            el(
                "thead",
                el(
                    "tr",
                    [el("th", name) for name in ("#", "Policy", "Severity", "Category")],
                    [el("th", name, class_="num") for name in ("Deny", "Warn", "Audit", "Total")],
                ),
            ),
            el("tbody", top_rows),
            class_="data",
            data_testid="top-violated",
        )
        if top_rows
        else el("p", "No violations in the last 7 days.", class_="muted", data_testid="top-violated-empty")
    )
    if data["lastScan"] is None:
        safe: Html = el(
            "p",
            "No background scan recorded yet: run one to see which policies are safe to enforce.",
            class_="muted",
            data_testid="no-scan",
        )
    elif data["safeToEnforce"]:
        safe = el(
            "table",
            el("thead", el("tr", [el("th", name) for name in ("Policy", "Now", "Severity", "Passed")])),
            el(
                "tbody",
                [
                    el(
                        "tr",
                        el(
                            "td",
                            row["policy"],
                            class_="policy-name",
                            title=row["title"] or None,
                            data_testid="safe-policy",
                        ),
                        el("td", ", ".join(row["actions"])),
                        el("td", _badge(row["severity"], "severity")),
                        el("td", row["passed"], class_="num"),
                        data_testid="safe-row",
                    )
                    for row in data["safeToEnforce"]
                ],
            ),
            class_="data",
            data_testid="safe-to-enforce",
        )
    else:
        safe = el(
            "p",
            "No Audit/Warn policy passed the last scan without failures and stayed quiet at admission.",
            class_="muted",
            data_testid="safe-empty",
        )
    recent = data["recent"]
    scan = data["lastScan"]
    as_of = (
        el(
            "p",
            "As of the scan of ",
            el("time", str(scan["time"]).replace("T", " "), datetime=scan["time"]),
            f" ({_ago(int(scan.get('ageSeconds', 0)))}).",
            class_="caption",
            data_testid="safe-as-of",
        )
        if scan is not None
        else None
    )
    shown = (
        el("span", f"latest {len(recent)} shown", class_="muted", data_testid="recent-shown")
        if data["recentTotal"] > len(recent)
        else None
    )
    return el(
        "div",
        el("section", el("h2", "Policies by severity"), _severity_cards(data["policies"]["bySeverity"])),
        el("section", el("h2", "Last 7 days"), _total_cards(data["totals"], data["lastScan"]), _chart(data["days"])),
        el(
            "div",
            el("section", el("h2", "Top violated policies"), top, class_="panel"),
            el(
                "section",
                el("h2", "Safe to enforce"),
                el(
                    "p",
                    "In Audit or Warn mode, no fail or error in the last background scan, and no admission request "
                    "warned, audited or denied in the last 7 days.",
                    class_="caption",
                ),
                as_of,
                safe,
                class_="panel",
            ),
            class_="columns",
        ),
        el(
            "section",
            el(
                "h2",
                "Recent violations ",
                el("span", data["recentTotal"], class_="count", data_testid="recent-count"),
                shown,
                el("a", "all violations →", href="/violations", class_="more"),
            ),
            _decision_rows(recent, "recent-row")
            if recent
            else el("p", "Nothing recorded in the last 7 days.", class_="muted", data_testid="recent-empty"),
        ),
    )


# --- the policies page --------------------------------------------------------------------------------------


def _select(name: str, label: str, options: Iterable[str], selected: str) -> Html:
    return el(
        "label",
        label,
        el(
            "select",
            el("option", "any", value=""),
            [el("option", option, value=option, selected=option.lower() == selected.lower()) for option in options],
            name=name,
            data_testid=f"select-{name}",
        ),
    )


def _scan_cell(counts: Mapping[str, int] | None) -> Html:
    if counts is None:
        return el("td", "—", class_="muted num")
    return el(
        "td",
        el("span", counts["pass"], class_="pass", title="pass"),
        " / ",
        el("span", counts["fail"], class_="fail" if counts["fail"] else None, title="fail"),
        " / ",
        el("span", counts["warn"], title="warn"),
        " / ",
        el("span", counts["error"], class_="fail" if counts["error"] else None, title="error"),
        " / ",
        el("span", counts["skip"], title="skip"),
        class_="num nowrap",
    )


def _policies_body(
    rows: Sequence[Mapping[str, Any]], shown: Sequence[Mapping[str, Any]], params: Mapping[str, str]
) -> Html:
    categories = sorted({str(row["category"]) for row in rows if row["category"]})
    actions = sorted({str(action) for row in rows for action in row["actions"]})
    severities = [s for s in ("high", "medium", "low") if any(row["severity"] == s for row in rows)] or [
        "high",
        "medium",
        "low",
    ]
    form = el(
        "form",
        _select("severity", "Severity", severities, params.get("severity", "")),
        _select("category", "Category", categories, params.get("category", "")),
        _select("action", "Action", actions, params.get("action", "")),
        el("button", "Apply", type="submit"),
        el("a", "Reset", href="/policies", class_="reset"),
        method="get",
        action="/policies",
        class_="filters",
    )
    filter_box = el(
        "div",
        el(
            "input",
            type="search",
            id="policy-filter",
            placeholder="Filter by name, title, scope…",
            aria_label="Filter policies",
            autocomplete="off",
            data_testid="policy-filter",
        ),
        el(
            "span",
            el("span", len(shown), id="policies-visible", data_testid="policies-visible"),
            " of ",
            el("span", len(shown), data_testid="policies-total"),
            " policies",
            class_="muted",
        ),
        class_="filter-box",
    )
    head = el(
        "thead",
        el(
            "tr",
            [el("th", name) for name in ("Policy", "Title", "Action", "Scope", "Severity", "Category", "Background")],
            el("th", "Last scan", el("br"), el("small", "pass / fail / warn / error / skip"), class_="num"),
            el("th", "7 days", el("br"), el("small", "deny / warn / audit"), class_="num"),
        ),
    )
    body_rows = [
        el(
            "tr",
            el("td", row["policy"], class_="policy", data_testid="policy-name"),
            el("td", row["title"] or "—"),
            el("td", [_badge(str(action), "action") for action in row["actions"]]),
            el("td", row["scope"], class_="scope"),
            el("td", _badge(str(row["severity"]), "severity")),
            el("td", row["category"] or "—"),
            el("td", "yes" if row["background"] else "no"),
            _scan_cell(row["lastScan"]),
            el(
                "td",
                el(
                    "a",
                    f"{row['admission']['deny']} / {row['admission']['warn']} / {row['admission']['audit']}",
                    href=_link("/violations", {"policy": row["policy"]}),
                ),
                class_="num nowrap",
            ),
            data_testid="policy-row",
            data_policy=row["policy"],
        )
        for row in shown
    ]
    table = el("table", head, el("tbody", body_rows), class_="data", id="policies-table", data_testid="policies-table")
    if not rows:
        return el(
            "div",
            el(
                "p",
                "No policies are loaded: start the dashboard with --policies PATH.",
                class_="muted",
                data_testid="no-policies",
            ),
        )
    return el("div", form, filter_box, table)


# --- the violations page ------------------------------------------------------------------------------------


def _violations_form(params: Mapping[str, str]) -> Html:
    def text(name: str, label: str, placeholder: str) -> Html:
        return el(
            "label",
            label,
            el(
                "input",
                type="text",
                name=name,
                value=params.get(name, ""),
                placeholder=placeholder,
                data_testid=f"input-{name}",
            ),
        )

    return el(
        "form",
        text("policy", "Policy", "name or namespace/name"),
        text("namespace", "Namespace", "any"),
        _select("action", "Action", ACTIONS, params.get("action", "")),
        _select("source", "Source", SOURCES, params.get("source", "")),
        text("since", "Since", "24h, 7d or RFC 3339"),
        el("input", type="hidden", name="limit", value=params.get("limit", "")) if params.get("limit") else None,
        el("button", "Search", type="submit", data_testid="search"),
        el("a", "Reset", href="/violations", class_="reset"),
        method="get",
        action="/violations",
        class_="filters",
        data_testid="violations-form",
    )


def _violations_body(data: Mapping[str, Any], params: Mapping[str, str]) -> Html:
    items = data["items"]
    offset, limit, total = data["offset"], data["limit"], data["total"]
    keep = {key: value for key, value in params.items() if key != "offset"}
    past_the_end = not items and offset > 0
    pager = el(
        "div",
        el(
            "span",
            el("span", f"{offset + 1}–{offset + len(items)}" if items else "0", data_testid="violations-range"),
            " of ",
            el("span", total, data_testid="violations-total"),
            class_="muted",
        ),
        el("a", "← First page", href=_link("/violations", keep), data_testid="first-page") if past_the_end else None,
        el(
            "a",
            "← Previous",
            href=_link("/violations", {**keep, "offset": max(offset - limit, 0)}),
            rel="prev",
            data_testid="previous-page",
        )
        if offset > 0 and not past_the_end
        else None,
        el(
            "a",
            "Next →",
            href=_link("/violations", {**keep, "offset": data["nextOffset"]}),
            rel="next",
            data_testid="next-page",
        )
        if data["nextOffset"] is not None
        else None,
        class_="pager",
    )
    table = (
        _decision_rows(items, "violation-row")
        if items
        else el("p", "No decisions match these filters.", class_="muted", data_testid="violations-empty")
    )
    return el("div", _violations_form(params), pager, table, pager)


def _ago(seconds: int) -> str:
    """`12 minutes ago`, `3 hours ago`, `2 days ago` (rounded down)."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


# --- auth and headers ---------------------------------------------------------------------------------------


class _Sessions:
    """Session cookies: `expires.nonce.mac`, the MAC an HMAC-SHA256 under a key drawn at start. A cookie is valid
    until its expiry, unless `/logout` revoked its nonce; a restart invalidates them all. Nothing about the token is
    in it, so a cookie is worth nothing once the process is gone."""

    def __init__(self, clock: Clock, lifetime: datetime.timedelta = SESSION_LIFETIME) -> None:
        self._key = os.urandom(32)
        self._clock = clock
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._revoked: dict[str, int] = {}

    def _now(self) -> int:
        return int(self._clock().timestamp())

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        payload = f"{self._now() + int(self.lifetime.total_seconds())}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._mac(payload)}"

    def _check(self, cookie: str) -> tuple[str, int] | None:
        """(nonce, expiry) of a genuine, unexpired cookie, else None."""
        expires, _, rest = cookie.partition(".")
        nonce, _, mac = rest.partition(".")
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12 and nonce and mac):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(f"{expires}.{nonce}").encode()):
            return None
        if int(expires) <= self._now():
            return None
        return nonce, int(expires)

    def valid(self, cookie: str) -> bool:
        checked = self._check(cookie)
        if checked is None:
            return False
        with self._lock:
            return checked[0] not in self._revoked

    def revoke(self, cookie: str) -> None:
        checked = self._check(cookie)
        if checked is None:
            return
        now = self._now()
        with self._lock:
            for nonce in [nonce for nonce, expires in self._revoked.items() if expires <= now]:
                del self._revoked[nonce]
            self._revoked[checked[0]] = checked[1]


def host_name(value: str) -> str | None:
    """The host of a Host header, lower case, without the port (`[::1]` keeps its brackets); None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit() and len(rest) <= 6):
        return None
    return name or None


def _normalise_host(host: str) -> str:
    """An `allowed_hosts` entry as `host_name` gives it: lower case, an IPv6 address in brackets, no port."""
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):
        if host.count(":") > 1:  # a bare IPv6 address
            return f"[{host}]"
        host = host.partition(":")[0]
    return host_name(host) or host


def _security_headers(headers: MutableHeaders, *, tls: bool) -> None:
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    if tls:
        headers["Strict-Transport-Security"] = STRICT_TRANSPORT_SECURITY
    if "cache-control" not in headers:
        headers["Cache-Control"] = "no-store"


def _internal_error(path: str) -> Response:
    if path.startswith("/api/"):
        return _api_error(500, "internal error")
    return _page("Error", "", _notice("Internal error: the dashboard logged the details."), status=500)


class _Frontline:
    """The outermost layer of the app (inside Starlette's own error middleware, which it never lets an exception
    reach before the answer started):

    - the CSP and friends on every answer, errors included (HSTS over TLS);
    - with `allowed_hosts`, a Host header naming anything else is refused with 400 (`/healthz` excepted: a probe
      may name the pod's address, and "ok" is no secret);
    - an unexpected exception becomes a plain 500 (JSON under `/api/`), logged here, never a traceback."""

    def __init__(self, app: ASGIApp, *, https: bool = False, allowed_hosts: frozenset[str] | None = None) -> None:
        self.app = app
        self.https = https
        self.allowed_hosts = allowed_hosts

    def _host_allowed(self, scope: Scope) -> bool:
        if self.allowed_hosts is None or scope["path"] == "/healthz":
            return True
        for key, value in scope["headers"]:
            if key == b"host":
                return host_name(value.decode("latin-1")) in self.allowed_hosts
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = self.https or scope.get("scheme") == "https"
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                _security_headers(MutableHeaders(scope=message), tls=tls)
            await send(message)

        if not self._host_allowed(scope):
            response: Response = PlainTextResponse(
                "Invalid Host header: without a token this dashboard answers only to localhost, 127.0.0.1 and [::1] "
                "(add a name with celvern dashboard --allowed-host NAME).",
                status_code=400,
            )
            await response(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if started:
                raise
            log.exception("dashboard request failed", extra={"path": scope["path"]})
            await _internal_error(scope["path"])(scope, receive, send_with_headers)


class _BadForm(Exception):
    """A `POST /login` body that is not a small urlencoded form."""


async def _read_form(request: Request) -> dict[str, list[str]]:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise _BadForm("expected a form (application/x-www-form-urlencoded)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _LOGIN_BODY_LIMIT:
            raise _BadForm("the form is too large")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=8, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _BadForm("the form does not parse") from None


# --- the app ------------------------------------------------------------------------------------------------

_Endpoint = Callable[[Request], Awaitable[Response]]


class _Dashboard:
    def __init__(
        self,
        store: StoreArgument,
        policies_provider: Callable[[], Sequence[PolicyInfo]],
        library_totals: Mapping[str, int],
        token: str | None,
        clock: Clock,
        library_names: Collection[str] | None = None,
        https: bool = False,
    ) -> None:
        self.store = _StoreHandle(store)
        self.policies = policies_provider
        self.library_totals = dict(library_totals)
        self.library_names = frozenset(library_names) if library_names is not None else None
        self.token = token or None
        self.sessions = _Sessions(clock)
        self.clock = clock
        self.https = https

    def page(self, title: str, current: str, body: Node, *, status: int = 200, generated: str = "") -> Response:
        return _page(title, current, body, status=status, generated=generated, logout=self.token is not None)

    # auth

    def authorized(self, request: Request) -> bool:
        """Whether a request to a guarded route may pass: always without a token, else with the bearer token or a
        valid session cookie. Only guarded routes ask; what is open is decided by the routing, not here."""
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and self.sessions.valid(cookie)

    def guard(self, endpoint: _Endpoint, *, api: bool) -> _Endpoint:
        async def guarded(request: Request) -> Response:
            if self.authorized(request):
                return await endpoint(request)
            if api:
                response = _api_error(401, "a bearer token is required (Authorization: Bearer <token>)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="celvern"'
                return response
            return self.login_page(status=401)

        return guarded

    def _secure(self, request: Request) -> bool:
        return self.https or request.scope.get("scheme") == "https"

    def login_page(self, *, status: int = 200, error: str = "") -> Response:
        form = el(
            "form",
            el(
                "label",
                "Token",
                el(
                    "input",
                    type="password",
                    name="token",
                    autocomplete="current-password",
                    required=True,
                    data_testid="token",
                ),
            ),
            el("button", "Sign in", type="submit", data_testid="sign-in"),
            method="post",
            action="/login",
            class_="login",
        )
        body = el(
            "div",
            _notice(error, "login-error") if error else None,
            el("p", "This dashboard needs the token it was started with (celvern dashboard --token-file)."),
            form,
        )
        return _page("Sign in", "", body, status=status)

    async def login(self, request: Request) -> Response:
        if self.token is None:
            return RedirectResponse("/", status_code=303)
        if request.method != "POST":
            if "token" in request.query_params:  # a token in a URL lands in histories and logs: not accepted
                return self.login_page(status=400, error="Send the token with the form below, not in the URL.")
            return self.login_page()
        try:
            given = (await _read_form(request)).get("token", [""])[0]
        except _BadForm as error:
            return self.login_page(status=400, error=f"That sign-in did not work: {error}.")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return self.login_page(status=401, error="That token is not valid.")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            self.sessions.issue(),
            max_age=int(self.sessions.lifetime.total_seconds()),
            httponly=True,
            samesite="strict",
            secure=self._secure(request),
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        """Revokes the session (if any) and clears the cookie; open to everyone, so a stale session can leave too."""
        cookie = request.cookies.get(COOKIE, "")
        if cookie:
            self.sessions.revoke(cookie)
        response = RedirectResponse("/login" if self.token else "/", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=self._secure(request))
        return response

    # data

    async def call(self, work: Callable[[DecisionStore], _T]) -> _T:
        def run() -> _T:
            return work(self.store.get())

        try:
            return await run_in_threadpool(run)
        except Exception as error:
            log.warning("decision store call failed", exc_info=True)
            raise StoreUnavailable(_describe(error)) from None

    async def overview_data(self) -> dict[str, Any]:
        now = self.clock()
        policies = tuple(self.policies())
        return await self.call(
            lambda store: overview(store, policies, self.library_totals, now, library_names=self.library_names)
        )

    async def policies_data(self) -> list[dict[str, Any]]:
        now = self.clock()
        policies = tuple(self.policies())
        return await self.call(lambda store: policies_table(store, policies, now))

    async def violations_data(self, query: ViolationQuery) -> dict[str, Any]:
        return await self.call(lambda store: violations(store, query))

    # API

    async def api_overview(self, request: Request) -> Response:
        try:
            return _json(await self.overview_data())
        except StoreUnavailable as error:
            return _api_error(503, str(error))

    async def api_violations(self, request: Request) -> Response:
        try:
            query = parse_violation_query(request.query_params, self.clock())
        except QueryError as error:
            return _api_error(400, str(error))
        try:
            return _json(await self.violations_data(query))
        except StoreUnavailable as error:
            return _api_error(503, str(error))

    async def api_policies(self, request: Request) -> Response:
        params = request.query_params
        try:
            rows = await self.policies_data()
        except StoreUnavailable as error:
            return _api_error(503, str(error))
        shown = filter_policies(
            rows,
            severity=params.get("severity", ""),
            category=params.get("category", ""),
            action=params.get("action", ""),
        )
        return _json({"items": shown, "total": len(shown)})

    # pages

    async def page_overview(self, request: Request) -> Response:
        try:
            data = await self.overview_data()
        except StoreUnavailable as error:
            return self.page("Overview", "overview", _notice(str(error), "store-error"), status=503)
        return self.page("Overview", "overview", _overview_body(data), generated=data["generatedAt"])

    async def page_policies(self, request: Request) -> Response:
        params = dict(request.query_params)
        try:
            rows = await self.policies_data()
        except StoreUnavailable as error:
            return self.page("Policies", "policies", _notice(str(error), "store-error"), status=503)
        shown = filter_policies(
            rows,
            severity=params.get("severity", ""),
            category=params.get("category", ""),
            action=params.get("action", ""),
        )
        return self.page("Policies", "policies", _policies_body(rows, shown, params))

    async def page_violations(self, request: Request) -> Response:
        params = dict(request.query_params)
        try:
            query = parse_violation_query(params, self.clock())
        except QueryError as error:
            body = el("div", _violations_form(params), _notice(str(error), "query-error"))
            return self.page("Violations", "violations", body, status=400)
        try:
            data = await self.violations_data(query)
        except StoreUnavailable as error:
            return self.page("Violations", "violations", _notice(str(error), "store-error"), status=503)
        return self.page("Violations", "violations", _violations_body(data, params))

    async def healthz(self, request: Request) -> Response:
        return Response("ok", media_type="text/plain")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        media = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}.get(name)
        if media is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(
            _static(name), media_type=f"{media}; charset=utf-8", headers={"Cache-Control": "public, max-age=300"}
        )

    async def not_found(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if request.scope["path"].startswith("/api/"):
            return _api_error(status, str(message))
        return self.page("Not found" if status == 404 else "Error", "", _notice(str(message)), status=status)


def create_dashboard_app(
    store: StoreArgument,
    policies_provider: Callable[[], Sequence[PolicyInfo]],
    library_totals: Mapping[str, int],
    *,
    token: str | None = None,
    clock: Clock = _utcnow,
    library_names: Collection[str] | None = None,
    allowed_hosts: Iterable[str] = (),
    https: bool = False,
) -> Starlette:
    """The dashboard as an ASGI app.

    `store` is a DecisionStore, or a factory that opens one (opened on first use, closed at shutdown);
    `policies_provider` returns the loaded policies (called per request, so a hot-reloading caller can swap them);
    `library_totals` maps severity to the library's number of policies and `library_names` names them (so that
    "enabled" counts library policies that are on, not every loaded policy); `token`, when set, is required on every
    route but `/healthz`, `/login`, `/logout` and `/static/*`; without a token, only requests whose Host is
    `localhost`, `127.0.0.1`, `[::1]` or one of `allowed_hosts` (names or addresses, any port) are answered (DNS
    rebinding); `https` says the app is served over TLS (Secure cookie, HSTS; an https scope counts too); `clock`
    gives the current time (UTC), for reproducible tests and session expiry."""
    dashboard = _Dashboard(store, policies_provider, library_totals, token, clock, library_names, https)
    hosts = None if token else LOOPBACK_HOSTS | {_normalise_host(host) for host in allowed_hosts if host.strip()}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(dashboard.store.close)

    def route(path: str, endpoint: _Endpoint, *, api: bool = False) -> Route:
        return Route(path, dashboard.guard(endpoint, api=api), methods=["GET", "HEAD"])

    routes = [  # the open routes are the ones not wrapped by `route` (the guard)
        route("/", dashboard.page_overview),
        route("/policies", dashboard.page_policies),
        route("/violations", dashboard.page_violations),
        route("/api/v1/overview", dashboard.api_overview, api=True),
        route("/api/v1/violations", dashboard.api_violations, api=True),
        route("/api/v1/policies", dashboard.api_policies, api=True),
        Route("/login", dashboard.login, methods=["GET", "HEAD", "POST"]),
        Route("/logout", dashboard.logout, methods=["GET", "POST"]),
        Route("/healthz", dashboard.healthz, methods=["GET", "HEAD"]),
        Route("/static/{name}", dashboard.static, methods=["GET", "HEAD"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Frontline, https=https, allowed_hosts=hosts)],
        exception_handlers={HTTPException: dashboard.not_found},
        lifespan=lifespan,
    )
