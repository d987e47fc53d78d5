"""The governance overview as data: what the dashboard, its JSON API and `celvern overview` show.

Why it exists: a security team asks four questions of a policy engine, the way a cloud console's governance page
answers them: which policies are on (by severity, against the library's total), what did they block or only flag
over the last 7 days, which policies are violated most and by what, and which audit-only policies could be switched
to Deny without breaking anything (no fail or error in the last background scan and no admission request flagged in
the last 7 days). The answers come from the decision
history (`webhook.history.DecisionStore`) and the loaded policies; this module turns them into JSON-ready dicts so
the HTTP front (`webhook.dashboard`) and the terminal (`cli/overview_command.py`) print the same numbers.

No HTTP here and no I/O besides the store calls it is handed; time comes in as `now` (timezone-aware UTC), so every
number is reproducible in tests. Query-string parsing lives here too (`parse_violation_query`): the same rules for
the API and the HTML page, with `QueryError` carrying the message a 400 answer shows.
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from engine.compiler import CATEGORY, SEVERITY
from engine.library import LIBRARY_POLICY, NAMESPACE_LABEL, SEVERITIES, Library
from engine.model import GeneratingPolicy, MatchResources, MutatingPolicy, ValidatingPolicy
from engine.policy_set import PolicySet
from webhook.history import ACTIONS, SOURCES, Decision, DecisionStore, PolicyScan, ScanSummary, ViolationQuery

TITLE: Final = "policies.kyverno.io/title"
WINDOW_DAYS: Final = 7
"""The overview looks at the last 7 UTC days, today included."""
TOP_VIOLATED: Final = 10
RECENT: Final = 100
MAX_LIMIT: Final = 500
"""The largest page `/api/v1/violations` serves; bigger limits are cut to this."""
DEFAULT_LIMIT: Final = 50
SEVERITY_ORDER: Final = tuple(reversed(SEVERITIES))
"""high, medium, low: how severities are listed."""
UNSET_SEVERITY: Final = "unset"
"""How a policy without a `policies.kyverno.io/severity` annotation is counted."""


# --- loaded policies ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """What the dashboard shows of one loaded policy (as written: autogen variants are not listed)."""

    key: str
    """`name`, or `namespace/name` for namespaced policies: the `policy` of recorded decisions."""
    name: str
    namespace: str
    kind: str
    actions: tuple[str, ...]
    """validationActions ("Deny", "Warn", "Audit") for validating policies; the kind for the others."""
    scope: str
    """Where the policy applies, in words ("all namespaces", "namespaces: a, b", ...)."""
    severity: str
    category: str
    title: str
    background: bool
    library: str = ""
    """The library policy this is an instance of, when renamed (the `celvern.io/library-policy` annotation)."""

    @property
    def library_name(self) -> str:
        """The name to look up in the library: the instance's library policy, else its own name."""
        return self.library or self.name

    @property
    def validating(self) -> bool:
        return self.kind.endswith("ValidatingPolicy")

    @property
    def enforcing(self) -> bool:
        return "Deny" in self.actions

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.key,
            "name": self.name,
            "namespace": self.namespace or None,
            "kind": self.kind,
            "actions": list(self.actions),
            "scope": self.scope,
            "severity": self.severity,
            "category": self.category,
            "title": self.title,
            "background": self.background,
        }


_Source = ValidatingPolicy | MutatingPolicy | GeneratingPolicy


def describe_scope(match_constraints: MatchResources | None, namespace: str = "") -> str:
    """Where a policy applies, in words. A namespaced policy applies in its own namespace; a namespaceSelector
    made of `kubernetes.io/metadata.name In [...]` requirements (what `celvern library instantiate --namespaces`
    writes) names those namespaces; only `NotIn` requirements on that label read "all namespaces except ..."; any
    other selector is "selected namespaces"; rules that only match cluster-scoped resources say so."""
    if namespace:
        return f"namespace {namespace}"
    selector = match_constraints.namespace_selector if match_constraints is not None else None
    rules = match_constraints.resource_rules if match_constraints is not None else ()
    if rules and all(rule.scope == "Cluster" for rule in rules):
        return "cluster-scoped resources"
    if selector is None or selector.empty:
        return "all namespaces"
    if selector.match_labels and set(selector.match_labels) == {NAMESPACE_LABEL} and not selector.match_expressions:
        return f"namespaces: {selector.match_labels[NAMESPACE_LABEL]}"
    if selector.match_labels:
        return "selected namespaces"
    included: list[str] | None = None
    excluded: list[str] = []
    for requirement in selector.match_expressions:
        if requirement.key != NAMESPACE_LABEL or requirement.operator not in ("In", "NotIn"):
            return "selected namespaces"
        if requirement.operator == "In":
            values = list(dict.fromkeys(requirement.values))
            included = values if included is None else [value for value in included if value in values]
        else:
            excluded.extend(value for value in requirement.values if value not in excluded)
    if included is not None:
        names = [value for value in included if value not in excluded]
        return f"namespaces: {', '.join(names)}" if names else "no namespaces"
    return f"all namespaces except {', '.join(excluded)}"


def _info(source: _Source) -> PolicyInfo:
    annotations = source.metadata.annotations
    namespace = source.metadata.namespace if source.namespaced else ""
    if isinstance(source, ValidatingPolicy):
        actions: tuple[str, ...] = tuple(str(action) for action in source.validation_actions)
        background = source.background_enabled
    elif isinstance(source, MutatingPolicy):
        actions = (source.kind,)
        background = source.background_enabled or source.mutate_existing
    else:
        actions = (source.kind,)
        background = source.generate_existing
    return PolicyInfo(
        key=f"{namespace}/{source.name}" if namespace else source.name,
        name=source.name,
        namespace=namespace,
        kind=source.kind,
        actions=actions,
        scope=describe_scope(source.match_constraints, namespace),
        severity=annotations.get(SEVERITY, "").strip().lower(),
        category=annotations.get(CATEGORY, "").strip(),
        title=annotations.get(TITLE, "").strip(),
        background=background,
        library=annotations.get(LIBRARY_POLICY, "").strip(),
    )


def policy_infos(policy_set: PolicySet) -> tuple[PolicyInfo, ...]:
    """Every policy of the set as written (autogen variants left out), sorted by key. Policies whose kind the
    engine does not support are not listed: there is nothing loaded to describe."""
    infos = [_info(policy.source) for policy in policy_set.compiled if not policy.variant]
    return tuple(sorted(infos, key=lambda info: info.key))


def library_totals(library: Library) -> dict[str, int]:
    """How many policies the library holds per severity (what "enabled N of M" compares against)."""
    return dict(Counter(policy.severity for policy in library.policies))


# --- JSON ---------------------------------------------------------------------------------------------------


def _time(value: datetime.datetime) -> str:
    """RFC 3339 in UTC with a `Z`, to the second (what the UI and the terminal show)."""
    return value.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "time": _time(decision.time),
        "source": decision.source,
        "policy": decision.policy,
        "action": decision.action,
        "result": decision.result,
        "kind": decision.kind,
        "namespace": decision.namespace,
        "name": decision.name,
        "message": decision.message,
        "severity": decision.severity,
        "category": decision.category,
        "user": decision.user,
        "operation": decision.operation,
    }


def _scan_counts(scan: PolicyScan) -> dict[str, int]:
    return {
        "pass": scan.passed,
        "fail": scan.failed,
        "warn": scan.warned,
        "error": scan.errored,
        "skip": scan.skipped,
    }


def _scan_json(summary: ScanSummary) -> dict[str, Any]:
    totals = Counter[str]()
    for scan in summary.policies:
        totals.update(_scan_counts(scan))
    return {
        "time": _time(summary.time),
        "policies": len(summary.policies),
        **{result: totals[result] for result in ("pass", "fail", "warn", "error", "skip")},
    }


# --- the overview -------------------------------------------------------------------------------------------


def window_start(now: datetime.datetime) -> datetime.datetime:
    """Midnight (UTC) opening the 7-day window that ends today."""
    today = now.astimezone(datetime.UTC).date()
    start = today - datetime.timedelta(days=WINDOW_DAYS - 1)
    return datetime.datetime.combine(start, datetime.time(), tzinfo=datetime.UTC)


def _severity_rows(
    policies: Sequence[PolicyInfo], totals: Mapping[str, int], library_names: Collection[str] | None
) -> list[dict[str, Any]]:
    if library_names is None:
        enabled = Counter(policy.severity or UNSET_SEVERITY for policy in policies)
    else:  # library policies switched on, each counted once however many instances it has
        on = {(p.library_name, p.severity or UNSET_SEVERITY) for p in policies if p.library_name in library_names}
        enabled = Counter(severity for _, severity in on)
    extra = sorted((set(enabled) | set(totals)) - set(SEVERITY_ORDER))
    return [
        {"severity": severity, "enabled": enabled.get(severity, 0), "total": totals.get(severity, 0)}
        for severity in (*SEVERITY_ORDER, *extra)
    ]


def overview(
    store: DecisionStore,
    policies: Sequence[PolicyInfo],
    library_totals: Mapping[str, int],
    now: datetime.datetime,
    *,
    library_names: Collection[str] | None = None,
) -> dict[str, Any]:
    """The governance overview (the body of `GET /api/v1/overview`):

    - `policies.bySeverity`: per severity, the library policies that are on (`enabled`, each counted once, with
      `library_names` the library's policy names; without them, every loaded policy) against the library's
      `total`; `policies.custom` counts the loaded policies that are not from the library;
    - `days`: the last 7 UTC days, oldest first, with admission `deny` and `warnAudit` (warn + audit) counts and
      background-scan failures (`scanFailures`) apart; `totals` sums them;
    - `topViolated`: the 10 policies with the most recorded decisions (admission and scans) in the window;
    - `recent`: the 100 most recent decisions in the window, newest first;
    - `lastScan`: the latest scan's time, its age in seconds at `now` (`ageSeconds`, so that a page can say how old
      the evidence is) and its result counts, or null when no scan was recorded;
    - `safeToEnforce`: loaded validating policies not in Deny mode with no fail and no error in the last scan and
      no admission decision (warn, audit, or deny from an earlier Deny mode) in the 7-day window: a policy that
      flagged live requests this week would have blocked them. Empty when there was no scan: no evidence is not
      evidence of safety. The verdict is as of `lastScan.time`.
    """
    start = window_start(now)
    until = start + datetime.timedelta(days=WINDOW_DAYS)
    days = [start.date() + datetime.timedelta(days=offset) for offset in range(WINDOW_DAYS)]
    per_day: dict[datetime.date, Counter[str]] = {day: Counter() for day in days}
    for count in store.daily_counts(start, until):
        if count.day not in per_day:
            continue
        if count.source == "scan":
            per_day[count.day]["scanFailures"] += count.count
        elif count.action == "deny":
            per_day[count.day]["deny"] += count.count
        else:
            per_day[count.day]["warnAudit"] += count.count
    day_rows = [
        {
            "date": day.isoformat(),
            "deny": per_day[day]["deny"],
            "warnAudit": per_day[day]["warnAudit"],
            "scanFailures": per_day[day]["scanFailures"],
        }
        for day in days
    ]
    top = store.policy_counts(start, limit=TOP_VIOLATED)
    recent = store.violations(ViolationQuery(since=start, limit=RECENT))
    scan = store.last_scan()
    flagged = (
        {count.policy: count.total for count in store.policy_counts(start, source="admission", labels=False)}
        if scan is not None
        else {}
    )
    return {
        "generatedAt": _time(now),
        "window": {"since": _time(start), "until": _time(until), "days": WINDOW_DAYS},
        "policies": {
            "loaded": len(policies),
            "libraryTotal": sum(library_totals.values()),
            "custom": (
                sum(1 for p in policies if p.library_name not in library_names) if library_names is not None else None
            ),
            "bySeverity": _severity_rows(policies, library_totals, library_names),
        },
        "days": day_rows,
        "totals": {key: sum(row[key] for row in day_rows) for key in ("deny", "warnAudit", "scanFailures")},
        "topViolated": [
            {
                "policy": count.policy,
                "severity": count.severity,
                "category": count.category,
                "deny": count.deny,
                "warn": count.warn,
                "audit": count.audit,
                "total": count.total,
            }
            for count in top
        ],
        "recent": [decision_json(decision) for decision in recent.items],
        "recentTotal": recent.total,
        "lastScan": {**_scan_json(scan), "ageSeconds": _age(scan.time, now)} if scan is not None else None,
        "safeToEnforce": _safe_to_enforce(policies, scan, flagged),
    }


def _age(then: datetime.datetime, now: datetime.datetime) -> int:
    """Whole seconds from `then` to `now`, never negative (a scan stamped by a clock slightly ahead is "now")."""
    return max(int((now - then).total_seconds()), 0)


def _safe_to_enforce(
    policies: Iterable[PolicyInfo], scan: ScanSummary | None, admission: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Validating policies not in Deny mode that the last scan covered without a fail or an error and that
    recorded no admission decision (`admission`: policy -> decisions in the window) this week."""
    if scan is None:
        return []
    results = {entry.policy: entry for entry in scan.policies}
    safe: list[dict[str, Any]] = []
    for policy in policies:
        entry = results.get(policy.key)
        if not policy.validating or policy.enforcing or entry is None or entry.failed or entry.errored:
            continue
        if admission.get(policy.key, 0) > 0:
            continue
        safe.append(
            {
                "policy": policy.key,
                "actions": list(policy.actions),
                "severity": policy.severity,
                "category": policy.category,
                "title": policy.title,
                "passed": entry.passed,
            }
        )
    return safe


def policies_table(
    store: DecisionStore, policies: Sequence[PolicyInfo], now: datetime.datetime
) -> list[dict[str, Any]]:
    """Every loaded policy with its last-scan counts (null when the last scan did not cover it, or there was no
    scan) and its admission counts over the 7-day window."""
    scan = store.last_scan()
    scanned = {entry.policy: entry for entry in scan.policies} if scan is not None else {}
    admission = {
        count.policy: count for count in store.policy_counts(window_start(now), source="admission", labels=False)
    }
    rows: list[dict[str, Any]] = []
    for policy in policies:
        entry = scanned.get(policy.key)
        count = admission.get(policy.key)
        rows.append(
            {
                **policy.to_json(),
                "lastScan": _scan_counts(entry) if entry is not None else None,
                "admission": {
                    "deny": count.deny if count else 0,
                    "warn": count.warn if count else 0,
                    "audit": count.audit if count else 0,
                },
            }
        )
    return rows


def filter_policies(
    rows: Iterable[Mapping[str, Any]], *, severity: str = "", category: str = "", action: str = ""
) -> list[Mapping[str, Any]]:
    """The rows of `policies_table` with this severity, category and action (case-insensitive; "" means any)."""
    severity, category, action = severity.strip().lower(), category.strip().lower(), action.strip().lower()
    return [
        row
        for row in rows
        if (not severity or str(row["severity"]).lower() == severity)
        and (not category or str(row["category"]).lower() == category)
        and (not action or action in (str(value).lower() for value in row["actions"]))
    ]


def violations(store: DecisionStore, query: ViolationQuery) -> dict[str, Any]:
    """One page of decisions (the body of `GET /api/v1/violations`), with `nextOffset` null on the last page."""
    page = store.violations(query)
    following = page.offset + len(page.items)
    return {
        "items": [decision_json(decision) for decision in page.items],
        "total": page.total,
        "offset": page.offset,
        "limit": page.limit,
        "nextOffset": following if following < page.total and page.items else None,
    }


# --- query strings ------------------------------------------------------------------------------------------


class QueryError(ValueError):
    """A query parameter that does not parse; the message is what the 400 answer says."""


_DURATION: Final = re.compile(
    r"(?:(\d{1,12})w)?(?:(\d{1,12})d)?(?:(\d{1,12})h)?(?:(\d{1,12})m)?(?:(\d{1,12})s)?", re.ASCII
)
"""At most 12 digits a unit: `int()` of thousands of digits is refused (and slow), and 12 is already too long."""
_MAX_DURATION: Final = datetime.timedelta(days=3660)
MAX_OFFSET: Final = 10_000_000
"""The largest `offset` accepted: beyond it SQLite's integers overflow, and no history holds that many rows."""


def parse_duration(text: str) -> datetime.timedelta | None:
    """`90m`, `24h`, `7d`, `1d12h`, `2w` as a timedelta; None when `text` is not a duration."""
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.groups()):
        return None
    weeks, days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    try:
        return datetime.timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:  # a duration after all, just longer than any timedelta: "too long" for parse_time
        return datetime.timedelta.max


def parse_time(text: str, now: datetime.datetime, parameter: str = "since") -> datetime.datetime:
    """An RFC 3339 time, or a duration meaning that long before `now`. Raises QueryError."""
    value = text.strip()
    duration = parse_duration(value)
    if duration is not None:
        if duration > _MAX_DURATION:
            raise QueryError(f"{parameter}: duration {_abbreviate(text)!r} is too long (at most {_MAX_DURATION.days}d)")
        return now - duration
    # a `+` of an offset arrives as a space when the query string was not percent-encoded
    candidate = value.replace(" ", "+") if "T" in value else value
    try:
        parsed = datetime.datetime.fromisoformat(candidate)
    except ValueError:
        parsed = None
    if parsed is None or "T" not in candidate.upper():
        raise QueryError(
            f"{parameter}: expected an RFC 3339 time (2024-05-01T12:00:00Z) or a duration (30m, 24h, 7d), "
            f"got {_abbreviate(text)!r}"
        )
    if parsed.tzinfo is None:
        raise QueryError(f"{parameter}: {_abbreviate(text)!r} has no time zone (add Z or an offset like +02:00)")
    try:  # 0001-01-01T00:00:00+05:00 is before year 1 in UTC, 9999-12-31T23:59:59-05:00 after year 9999
        return parsed.astimezone(datetime.UTC)
    except OverflowError:
        raise QueryError(f"{parameter}: {_abbreviate(text)!r} is out of range (years 1 to 9999 in UTC)") from None


def _integer(params: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    text = params.get(name, "").strip()
    if not text:
        return default
    if not re.fullmatch(r"[+-]?\d+", text, re.ASCII):  # no `1_000`, no Unicode digits
        raise QueryError(f"{name}: expected an integer, got {_abbreviate(text)!r}")
    negative = text.startswith("-")
    if len(text.lstrip("+-").lstrip("0")) > _INTEGER_DIGITS:  # beyond every bound; int() of 5000 digits raises
        value = -(10**_INTEGER_DIGITS) if negative else 10**_INTEGER_DIGITS
    else:
        value = int(text)
    if value < minimum:
        raise QueryError(f"{name}: must be at least {minimum}, got {_abbreviate(text)}")
    if maximum is not None and value > maximum:
        raise QueryError(f"{name}: must be at most {maximum}, got {_abbreviate(text)}")
    return value


_INTEGER_DIGITS: Final = 18


def _abbreviate(text: str, length: int = 40) -> str:
    return text if len(text) <= length else text[:length] + "…"


def _choice(params: Mapping[str, str], name: str, allowed: Sequence[str]) -> str:
    value = params.get(name, "").strip().lower()
    if value and value not in allowed:
        raise QueryError(f"{name}: expected one of {', '.join(allowed)}, got {params[name]!r}")
    return value


def parse_violation_query(params: Mapping[str, str], now: datetime.datetime) -> ViolationQuery:
    """`policy`, `namespace`, `action` (deny|warn|audit), `source` (admission|scan), `since` and `until` (RFC 3339
    or a duration before `now`), `limit` (1..500; larger is cut to 500) and `offset` (0..10,000,000) into a
    ViolationQuery.
    Raises QueryError with a message fit for a 400 answer."""
    since_text = params.get("since", "").strip()
    until_text = params.get("until", "").strip()
    since = parse_time(since_text, now, "since") if since_text else None
    until = parse_time(until_text, now, "until") if until_text else None
    if since is not None and until is not None and until <= since:
        raise QueryError("until: must be later than since")
    return ViolationQuery(
        policy=params.get("policy", "").strip(),
        namespace=params.get("namespace", "").strip(),
        action=_choice(params, "action", ACTIONS),
        source=_choice(params, "source", SOURCES),
        since=since,
        until=until,
        limit=min(_integer(params, "limit", DEFAULT_LIMIT, 1), MAX_LIMIT),
        offset=_integer(params, "offset", 0, 0, MAX_OFFSET),
    )
