"""Decision history: every admission decision that denied, warned or audited, and every background-scan failure.

Why it exists: security teams need to see what policies did over the last days (the governance overview, the
violations list), not only what they do now. Admission must never wait for that bookkeeping, so decisions go into a
bounded in-memory queue (`DecisionRecorder.submit` never blocks) that a background thread writes in batches to a
`DecisionStore`: an embedded SQLite file by default, PostgreSQL when several replicas share one history. If the
store is down or the queue is full, admission carries on and the loss is counted in a metric.

The data: `Decision`, `ScanSummary`, `PolicyScan`, `ViolationQuery`, `Page`, `DailyCount`, `PolicyCount`.
`DecisionStore` is the protocol both stores (`SqliteStore`, `PostgresStore`) implement; `open_store(url)` picks one.

Store URLs (`open_store`):

- `sqlite:///var/lib/celvern/history.db` -> the file `/var/lib/celvern/history.db` (an empty `//` authority is
  dropped and the rest is the path, so three slashes mean an absolute path; there is no four-slash rule);
- `sqlite:history.db` -> the relative path `history.db`; `sqlite::memory:` or `:memory:` -> a private in-memory
  database (tests);
- anything without a `scheme://` -> a filesystem path to a SQLite file;
- `postgresql://user:password@host:port/db?...` or `postgres://...` -> PostgreSQL (any libpq URL parameter works,
  for example `?sslmode=require` or `?options=-csearch_path%3Dcelvern`).

Passwords never appear in error messages (`redact_url`).

Schema (version 1, the same in both stores; SQLite keeps times as integer microseconds since the epoch, PostgreSQL
as TIMESTAMPTZ):

- `decisions`: one row per decision, indexed on `time`, `(policy, time)` and `(namespace, time)`;
- `decision_days`: a rollup, the number of decisions per UTC day (days since 1970-01-01), source, action and policy.
  It is updated in the same transaction as the inserts and each chunk of a purge, so `daily_counts` and
  `policy_counts` sum a few thousand rollup rows instead of grouping every decision (grouping 200,000 rows takes
  SQLite longer than the overview's 200 ms budget). Only the partial days at the edges of a window are counted
  from `decisions`, from whichever side of the window's edge holds fewer rows. A policy's severity and category
  are those of its latest decision, looked up (index on `(policy, time)`) only for the policies a query returns;
- `scans` and `scan_policies`: background-scan summaries, one row per scan and one per policy in it;
- `schema_version`: the schema's version; a newer version than this code knows is refused.

`DecisionRecorder` queues and batches writes, re-opens a failing store with capped exponential backoff and enforces
retention (`DEFAULT_RETENTION`) by purging at start and then periodically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("celvern.history")

SOURCES = ("admission", "scan")
"""Where a decision came from."""
ACTIONS = ("deny", "warn", "audit")
"""What was done: admission denied the request, warned the client, or only audited. A scan failure carries the
action its policy would take at admission (the policy's first validationAction, lower-cased)."""
RESULTS = ("fail", "error")
MAX_MESSAGE = 4096
"""Messages are cut to this many characters before they are stored."""
DEFAULT_RETENTION = datetime.timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Decision:
    """One recorded decision. `time` is timezone-aware (UTC)."""

    time: datetime.datetime
    source: str
    """"admission" or "scan"."""
    policy: str
    """The policy key: `name`, or `namespace/name` for namespaced policies."""
    action: str
    """"deny", "warn" or "audit"."""
    kind: str
    namespace: str
    name: str
    message: str
    severity: str = ""
    category: str = ""
    user: str = ""
    """The requesting user (admission); "" for scans."""
    result: str = "fail"
    """"fail" or "error"."""
    operation: str = ""
    """CREATE, UPDATE, DELETE, CONNECT (admission); "" for scans."""


@dataclass(frozen=True, slots=True)
class PolicyScan:
    """One policy's result counts in a background scan."""

    policy: str
    passed: int = 0
    failed: int = 0
    warned: int = 0
    errored: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class ScanSummary:
    """The result counts of one complete background scan, per policy."""

    time: datetime.datetime
    policies: tuple[PolicyScan, ...]


@dataclass(frozen=True, slots=True)
class ViolationQuery:
    """A filtered, paged query over the decisions, newest first. Empty strings and None mean "any"."""

    policy: str = ""
    namespace: str = ""
    action: str = ""
    source: str = ""
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple[Decision, ...]
    total: int
    """How many decisions match the query's filters (all pages)."""
    offset: int
    limit: int


@dataclass(frozen=True, slots=True)
class DailyCount:
    """Decisions of one UTC day, one source and one action."""

    day: datetime.date
    source: str
    action: str
    count: int


@dataclass(frozen=True, slots=True)
class PolicyCount:
    """Decisions of one policy since a time, by action (severity and category as last recorded)."""

    policy: str
    severity: str
    category: str
    deny: int
    warn: int
    audit: int

    @property
    def total(self) -> int:
        return self.deny + self.warn + self.audit


class DecisionStore(Protocol):
    """Where decisions live. Methods may raise `StoreError` (the recorder counts and drops)."""

    def write(self, decisions: Sequence[Decision]) -> None:
        """Append decisions (one transaction)."""

    def record_scan(self, summary: ScanSummary) -> None:
        """Remember a complete scan's counts (the latest one is what `last_scan` returns)."""

    def last_scan(self) -> ScanSummary | None:
        """The most recent scan summary, or None when no scan was recorded."""

    def purge(self, before: datetime.datetime) -> int:
        """Delete decisions (and scan summaries) older than `before`, in bounded transactions (a backlog must not
        lock other writers out for long); returns how many decisions went."""

    def daily_counts(self, since: datetime.datetime, until: datetime.datetime) -> list[DailyCount]:
        """Counts per UTC day, source and action of decisions with since <= time < until."""

    def policy_counts(
        self, since: datetime.datetime, *, source: str = "", limit: int = 0, labels: bool = True
    ) -> list[PolicyCount]:
        """Per-policy counts since `since` (optionally one source), most decisions first; limit 0 means all.
        With `labels` False, severity and category are left empty (they cost a lookup per policy)."""

    def violations(self, query: ViolationQuery) -> Page:
        """Decisions matching the query, newest first, one page."""

    def close(self) -> None: ...


class StoreError(Exception):
    """The store cannot be opened or written (connection refused, disk full, bad URL)."""


class RecordError(StoreError):
    """The store refused the records themselves (a value it cannot hold, such as a NUL character for PostgreSQL or
    a lone surrogate), not because it is down: written one by one, only the bad records are lost."""


# --- time -------------------------------------------------------------------------------------------------------

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_DAY = datetime.timedelta(days=1)
_T = TypeVar("_T")


def _utc(moment: datetime.datetime) -> datetime.datetime:
    """`moment` in UTC; a naive time is taken to be UTC already (the contract asks for aware times)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def _day_of(moment: datetime.datetime) -> int:
    """The UTC day holding `moment`, as days since 1970-01-01 (the rollup's key)."""
    return (_utc(moment) - _EPOCH) // _DAY


def _midnight(day: int) -> datetime.datetime:
    return _EPOCH + day * _DAY


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _truncated(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE]


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""What no store can hold in text: NUL (PostgreSQL refuses it) and surrogate code points (not encodable in UTF-8;
`json.loads` makes them from a lone `\\ud800` escape in a user's resource)."""
_TEXT_FIELDS = ("policy", "kind", "namespace", "name", "message", "severity", "category", "user", "operation")


def storable(decision: Decision) -> Decision:
    """`decision` with its message cut to `MAX_MESSAGE` characters and NUL characters and surrogates in its text
    replaced by U+FFFD, so that one odd resource cannot make a store refuse a batch."""
    changes: dict[str, Any] = {}
    if len(decision.message) > MAX_MESSAGE:
        changes["message"] = decision.message[:MAX_MESSAGE]
    for field in _TEXT_FIELDS:
        value = changes.get(field, getattr(decision, field))
        if _UNSTORABLE.search(value) is not None:
            changes[field] = _UNSTORABLE.sub("\ufffd", value)
    return dataclasses.replace(decision, **changes) if changes else decision


# --- URLs -------------------------------------------------------------------------------------------------------

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def redact_url(url: str) -> str:
    """`url` fit for a log line or an error message: the password (in the authority or a `password=` parameter) is
    replaced by `***`."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, colon, _password = credentials.partition(":")
        netloc = f"{user}:***@{host}" if colon else netloc
    query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", parts.query, flags=re.IGNORECASE)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def sqlite_path(url: str) -> str | None:
    """The SQLite file a URL names (see the module docstring), or None when `url` is not a SQLite URL or path.

    Raises `StoreError` for a `sqlite:` URL with a host (`sqlite://host/x`), which has no meaning here.
    """
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        if rest.startswith("//"):
            rest = rest[2:]
            if not rest.startswith("/") and rest != ":memory:":
                raise StoreError(
                    f"invalid history store URL {redact_url(url)!r}: a sqlite URL takes no host; use "
                    "sqlite:///absolute/path.db, sqlite:relative/path.db or a plain path"
                )
        if not rest:
            raise StoreError(f"invalid history store URL {url!r}: no file path after 'sqlite:'")
        return rest
    if _SCHEME.match(url):
        return None
    return url


def open_store(url: str) -> DecisionStore:
    """The store a URL names: SQLite for `sqlite:` URLs and plain paths, PostgreSQL for `postgresql://` and
    `postgres://` URLs (forms in the module docstring). Raises `StoreError` for anything else or when the store
    cannot be opened; the message names the URL without its password."""
    url = url.strip()
    if not url:
        raise StoreError("invalid history store URL '': expected a path, sqlite:///path or postgresql://...")
    scheme = _SCHEME.match(url)
    if scheme is not None and scheme.group(1).lower() in ("postgresql", "postgres"):
        return PostgresStore(url)
    path = sqlite_path(url)
    if path is None:
        raise StoreError(
            f"unsupported history store URL {redact_url(url)!r}: expected a path, sqlite:///path or postgresql://..."
        )
    return SqliteStore(path)


def default_store_url() -> str:
    """Where the history lives when nothing is configured: `$CELVERN_HISTORY` (a path, or any URL `open_store`
    accepts) if set, else `$XDG_STATE_HOME/celvern/history.db` (`~/.local/state/celvern/history.db`). The directory
    of a SQLite file is created."""
    configured = os.environ.get("CELVERN_HISTORY", "").strip()
    if configured:
        path = sqlite_path(configured)
        if path is None:
            return configured
        if path == ":memory:":
            return "sqlite::memory:"
        file = Path(path).expanduser().absolute()
    else:
        state = os.environ.get("XDG_STATE_HOME", "").strip() or str(Path.home() / ".local" / "state")
        file = Path(state).expanduser().absolute() / "celvern" / "history.db"
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite://{file}"


# --- the SQL shared by both stores ------------------------------------------------------------------------------

SCHEMA_VERSION = 1
"""The schema this code writes. A database with a newer version is refused rather than misread."""

_COLUMNS = (
    "time",
    "source",
    "policy",
    "action",
    "result",
    "severity",
    "category",
    "kind",
    "namespace",
    "name",
    "username",
    "operation",
    "message",
)
_SELECT_DECISION = f"SELECT {', '.join(_COLUMNS)} FROM decisions"

_UPSERT_DAY = """
INSERT INTO decision_days (day, source, action, policy, count) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (day, source, action, policy) DO UPDATE SET count = decision_days.count + excluded.count
"""


def _schema(*, time_type: str, id_type: str) -> tuple[str, ...]:
    """Version 1 of the schema in either dialect (they differ only in the time and id column types)."""
    return (
        f"""CREATE TABLE decisions (
            id {id_type},
            time {time_type} NOT NULL,
            source TEXT NOT NULL, policy TEXT NOT NULL, action TEXT NOT NULL, result TEXT NOT NULL,
            severity TEXT NOT NULL, category TEXT NOT NULL,
            kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
            username TEXT NOT NULL, operation TEXT NOT NULL, message TEXT NOT NULL)""",
        "CREATE INDEX decisions_time ON decisions (time)",
        "CREATE INDEX decisions_policy_time ON decisions (policy, time)",
        "CREATE INDEX decisions_namespace_time ON decisions (namespace, time)",
        """CREATE TABLE decision_days (
            day INTEGER NOT NULL, source TEXT NOT NULL, action TEXT NOT NULL, policy TEXT NOT NULL,
            count BIGINT NOT NULL, PRIMARY KEY (day, source, action, policy))""",
        f"CREATE TABLE scans (id {id_type}, time {time_type} NOT NULL)",
        "CREATE INDEX scans_time ON scans (time)",
        """CREATE TABLE scan_policies (
            scan BIGINT NOT NULL, policy TEXT NOT NULL,
            passed BIGINT NOT NULL, failed BIGINT NOT NULL, warned BIGINT NOT NULL,
            errored BIGINT NOT NULL, skipped BIGINT NOT NULL,
            PRIMARY KEY (scan, policy))""",
    )


class _Cursor(Protocol):
    """The little each dialect provides: `?` placeholders everywhere, whatever the driver wants underneath."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; returns the affected row count."""

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None: ...

    def insert_decisions(self, rows: Sequence[Sequence[object]]) -> None:
        """Append rows of `_COLUMNS` to `decisions` as fast as the driver allows."""


class _SqlStore:
    """Everything both stores share: the queries, the rollup and the retention, over a `_Cursor`.

    Subclasses provide `_run` (one transaction, with the store's locking and error mapping) and the time encoding.
    """

    _name = "''"
    """The store's path or redacted URL, quoted, for error messages."""

    _HAS_SCHEMA_VERSION = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"

    def _run(self, work: Callable[[_Cursor], _T], *, write: bool) -> _T:
        raise NotImplementedError

    def _encode_time(self, moment: datetime.datetime) -> Any:
        raise NotImplementedError

    def _decode_time(self, value: Any) -> datetime.datetime:
        raise NotImplementedError

    # -- schema

    def _create_schema(self, cursor: _Cursor, statements: Sequence[str], *, url: str) -> None:
        """Create version 1 on an empty database; refuse a newer one. Runs inside the caller's write transaction,
        which keeps two processes opening one new database from both creating it."""
        found = cursor.rows(self._HAS_SCHEMA_VERSION)
        if found[0][0]:
            version = cursor.rows("SELECT max(version) FROM schema_version")[0][0] or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"history store {url!r} has schema version {version}, newer than this celvern knows"
                    f" ({SCHEMA_VERSION}); upgrade celvern"
                )
            if version == SCHEMA_VERSION:
                return
        else:
            cursor.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in statements:
            cursor.execute(statement)
        cursor.execute("DELETE FROM schema_version")
        cursor.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    # -- writes

    def write(self, decisions: Sequence[Decision]) -> None:
        """Append decisions and bump the rollup, in one transaction (so counts never disagree with the rows)."""
        if not decisions:
            return
        rows: list[tuple[object, ...]] = []
        days: dict[tuple[int, str, str, str], int] = {}
        for decision in decisions:
            moment = _utc(decision.time)
            rows.append(
                (
                    self._encode_time(moment),
                    decision.source,
                    decision.policy,
                    decision.action,
                    decision.result,
                    decision.severity,
                    decision.category,
                    decision.kind,
                    decision.namespace,
                    decision.name,
                    decision.user,
                    decision.operation,
                    _truncated(decision.message),
                )
            )
            key = (_day_of(moment), decision.source, decision.action, decision.policy)
            days[key] = days.get(key, 0) + 1
        # Sorted keys: two replicas upserting overlapping rollup rows lock them in the same order (no deadlock).
        upserts = [(*key, count) for key, count in sorted(days.items())]

        def work(cursor: _Cursor) -> None:
            cursor.insert_decisions(rows)
            cursor.execute_many(_UPSERT_DAY, upserts)

        try:
            self._run(work, write=True)
        except (UnicodeError, ValueError, OverflowError) as error:
            # The driver could not encode a value (a surrogate, an out-of-range number): the rows are at fault.
            raise RecordError(f"history store {self._name}: cannot store a decision: {error}") from error

    def record_scan(self, summary: ScanSummary) -> None:
        def work(cursor: _Cursor) -> None:
            scan = cursor.rows("INSERT INTO scans (time) VALUES (?) RETURNING id", (self._encode_time(summary.time),))
            cursor.execute_many(
                "INSERT INTO scan_policies (scan, policy, passed, failed, warned, errored, skipped)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(scan[0][0], p.policy, p.passed, p.failed, p.warned, p.errored, p.skipped) for p in summary.policies],
            )

        self._run(work, write=True)

    PURGE_CHUNK = 10_000
    """Decisions deleted per transaction by `purge`: a backlog (retention shortened, a store down for days) goes in
    many short transactions, so other processes writing to the store wait for one chunk, never the whole purge."""

    def purge(self, before: datetime.datetime) -> int:
        """Delete what is older than `before`, oldest first, `PURGE_CHUNK` decisions per transaction; each
        transaction takes from the rollup exactly the rows it deleted (so counts agree with the rows after every
        chunk, and two processes purging at once delete each row once). Scan summaries go in a last transaction."""
        before = _utc(before)
        encoded = self._encode_time(before)
        chunk = max(int(self.PURGE_CHUNK), 1)
        deleted = 0
        while True:
            started = time.monotonic()
            gone = self._run(lambda cursor: self._purge_chunk(cursor, encoded, chunk), write=True)
            deleted += gone
            if gone < chunk:
                break
            self._between_chunks(time.monotonic() - started)

        def rest(cursor: _Cursor) -> None:
            # Rollup rows of days wholly before the cutoff have no decisions left (a safety net, normally none).
            cursor.execute("DELETE FROM decision_days WHERE day < ?", (_day_of(before),))
            cursor.execute("DELETE FROM scan_policies WHERE scan IN (SELECT id FROM scans WHERE time < ?)", (encoded,))
            cursor.execute("DELETE FROM scans WHERE time < ?", (encoded,))

        self._run(rest, write=True)
        return deleted

    def _purge_chunk(self, cursor: _Cursor, before: Any, limit: int) -> int:
        gone = cursor.rows(
            "DELETE FROM decisions WHERE id IN (SELECT id FROM decisions WHERE time < ? ORDER BY time LIMIT ?)"
            " RETURNING time, source, action, policy",
            (before, limit),
        )
        decrements: dict[tuple[int, str, str, str], int] = {}
        for moment, source, action, policy in gone:
            key = (self._day_of_stored(moment), source, action, policy)
            decrements[key] = decrements.get(key, 0) + 1
        # Sorted keys: two processes purging at once lock rollup rows in the same order (no deadlock).
        cursor.execute_many(
            "UPDATE decision_days SET count = count - ? WHERE day = ? AND source = ? AND action = ? AND policy = ?",
            [(n, *key) for key, n in sorted(decrements.items())],
        )
        cursor.execute_many(
            "DELETE FROM decision_days WHERE day = ? AND count <= 0",
            [(day,) for day in sorted({k[0] for k in decrements})],
        )
        return len(gone)

    def _day_of_stored(self, value: Any) -> int:
        """The rollup day of a stored `time` value."""
        return _day_of(self._decode_time(value))

    def _between_chunks(self, elapsed: float) -> None:
        """Called between two purge transactions (`elapsed`: how long the last one took)."""

    # -- reads

    def last_scan(self) -> ScanSummary | None:
        def work(cursor: _Cursor) -> ScanSummary | None:
            latest = cursor.rows("SELECT id, time FROM scans ORDER BY time DESC, id DESC LIMIT 1")
            if not latest:
                return None
            scan, moment = latest[0]
            policies = cursor.rows(
                "SELECT policy, passed, failed, warned, errored, skipped FROM scan_policies WHERE scan = ?"
                " ORDER BY policy",
                (scan,),
            )
            return ScanSummary(self._decode_time(moment), tuple(PolicyScan(*row) for row in policies))

        return self._run(work, write=False)

    def violations(self, query: ViolationQuery) -> Page:
        conditions: list[str] = []
        params: list[object] = []
        for column, value in (
            ("policy", query.policy),
            ("namespace", query.namespace),
            ("action", query.action),
            ("source", query.source),
        ):
            if value:
                conditions.append(f"{column} = ?")
                params.append(value)
        if query.since is not None:
            conditions.append("time >= ?")
            params.append(self._encode_time(_utc(query.since)))
        if query.until is not None:
            conditions.append("time < ?")
            params.append(self._encode_time(_utc(query.until)))
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        limit = max(query.limit, 0)
        offset = max(query.offset, 0)

        def work(cursor: _Cursor) -> Page:
            total = cursor.rows(f"SELECT count(*) FROM decisions{where}", params)[0][0]
            rows = cursor.rows(
                f"{_SELECT_DECISION}{where} ORDER BY time DESC, id DESC LIMIT ? OFFSET ?", [*params, limit, offset]
            )
            items = tuple(
                Decision(
                    time=self._decode_time(row[0]),
                    source=row[1],
                    policy=row[2],
                    action=row[3],
                    result=row[4],
                    severity=row[5],
                    category=row[6],
                    kind=row[7],
                    namespace=row[8],
                    name=row[9],
                    user=row[10],
                    operation=row[11],
                    message=row[12],
                )
                for row in rows
            )
            return Page(items=items, total=int(total), offset=offset, limit=limit)

        return self._run(work, write=False)

    def daily_counts(self, since: datetime.datetime, until: datetime.datetime) -> list[DailyCount]:
        counts = self._run(lambda cursor: self._counts(cursor, _utc(since), _utc(until), "", by_day=True), write=False)
        return [
            DailyCount(_midnight(day).date(), source, action, count)
            for (day, source, action), count in sorted(counts.items())
            if count > 0
        ]

    def policy_counts(
        self, since: datetime.datetime, *, source: str = "", limit: int = 0, labels: bool = True
    ) -> list[PolicyCount]:
        since = _utc(since)

        def work(cursor: _Cursor) -> list[PolicyCount]:
            per_policy: dict[str, dict[str, int]] = {}
            for (policy, action), count in self._counts(cursor, since, None, source, by_day=False).items():
                if count > 0:
                    actions = per_policy.setdefault(policy, {})
                    actions[action] = actions.get(action, 0) + count
            ranked = sorted(per_policy.items(), key=lambda item: (-sum(item[1].values()), item[0]))
            if limit > 0:
                ranked = ranked[:limit]
            # Severity and category are those of the policy's latest decision: looked up only for the policies
            # returned (the overview's top ten), one index probe each.
            found = self._latest_labels(cursor, [policy for policy, _ in ranked], since, source) if labels else {}
            return [
                PolicyCount(
                    policy=policy,
                    severity=found.get(policy, ("", ""))[0],
                    category=found.get(policy, ("", ""))[1],
                    deny=actions.get("deny", 0),
                    warn=actions.get("warn", 0),
                    audit=actions.get("audit", 0),
                )
                for policy, actions in ranked
            ]

        return self._run(work, write=False)

    def _latest_labels(
        self, cursor: _Cursor, policies: Sequence[str], since: datetime.datetime, source: str
    ) -> dict[str, tuple[str, str]]:
        """(severity, category) of each policy's latest decision since `since` (of `source`, if given)."""
        sql = "SELECT severity, category FROM decisions WHERE policy = ? AND time >= ?"
        if source:
            sql += " AND source = ?"
        sql += " ORDER BY time DESC, id DESC LIMIT 1"
        labels: dict[str, tuple[str, str]] = {}
        for policy in policies:
            params: list[object] = [policy, self._encode_time(since)]
            if source:
                params.append(source)
            found = cursor.rows(sql, params)
            if found:
                labels[policy] = (found[0][0], found[0][1])
        return labels

    def _counts(
        self,
        cursor: _Cursor,
        since: datetime.datetime,
        until: datetime.datetime | None,
        source: str,
        *,
        by_day: bool,
    ) -> dict[tuple[Any, ...], int]:
        """Decisions with since <= time < until (no upper bound for None), of `source` if given, counted per
        (day, source, action) when `by_day`, else per (policy, action).

        Whole days come from the rollup. A partial day at either edge is counted from `decisions`: the part inside
        the window, or, when that holds more rows, the day's rollup minus the rows outside it. The usual windows
        ("the last 7 days, until now") then touch few rows: nothing is newer than now, and retention has already
        removed most of what precedes the oldest edge. Counts may come out as 0 (callers drop them).
        """
        counts: dict[tuple[Any, ...], int] = {}
        if until is not None and until <= since:
            return counts
        columns = "source, action" if by_day else "policy, action"
        first_day = _day_of(since)
        partial: list[tuple[int, datetime.datetime, datetime.datetime]] = []
        whole_from: int = first_day
        whole_to: int | None = first_day  # empty unless changed below
        if until is None or _day_of(until) != first_day:
            if since > _midnight(first_day):
                partial.append((first_day, since, _midnight(first_day + 1)))
                whole_from = first_day + 1
            whole_to = None
            if until is not None:
                whole_to = _day_of(until)
                if until > _midnight(whole_to):
                    partial.append((whole_to, _midnight(whole_to), until))
        else:
            partial.append((first_day, since, until))
        if whole_to is None or whole_from < whole_to:
            self._add_rollup(cursor, counts, columns, whole_from, whole_to, source, by_day=by_day)
        for day, low, high in partial:
            start, end = _midnight(day), _midnight(day + 1)
            outside = [(a, b) for a, b in ((start, low), (high, end)) if a < b]
            outside_rows = sum(self._count(cursor, a, b) for a, b in outside)
            day_rows = cursor.rows("SELECT coalesce(sum(count), 0) FROM decision_days WHERE day = ?", (day,))
            if day_rows[0][0] - outside_rows <= outside_rows:
                self._add_raw(cursor, counts, columns, day, low, high, source, sign=1, by_day=by_day)
            else:
                self._add_rollup(cursor, counts, columns, day, day + 1, source, by_day=by_day)
                for a, b in outside:
                    self._add_raw(cursor, counts, columns, day, a, b, source, sign=-1, by_day=by_day)
        return counts

    def _count(self, cursor: _Cursor, low: datetime.datetime, high: datetime.datetime) -> int:
        """Rows in [low, high): a range count on the time index, cheap next to grouping them."""
        found = cursor.rows(
            "SELECT count(*) FROM decisions WHERE time >= ? AND time < ?",
            (self._encode_time(low), self._encode_time(high)),
        )
        return int(found[0][0])

    @staticmethod
    def _add_rollup(
        cursor: _Cursor,
        counts: dict[tuple[Any, ...], int],
        columns: str,
        first: int,
        end: int | None,
        source: str,
        *,
        by_day: bool,
    ) -> None:
        selected = f"day, {columns}" if by_day else columns
        sql = f"SELECT {selected}, sum(count) FROM decision_days WHERE day >= ?"
        params: list[object] = [first]
        if end is not None:
            sql += " AND day < ?"
            params.append(end)
        if source:
            sql += " AND source = ?"
            params.append(source)
        for *key, count in cursor.rows(f"{sql} GROUP BY {selected}", params):
            counts[tuple(key)] = counts.get(tuple(key), 0) + int(count)

    def _add_raw(
        self,
        cursor: _Cursor,
        counts: dict[tuple[Any, ...], int],
        columns: str,
        day: int,
        low: datetime.datetime,
        high: datetime.datetime,
        source: str,
        *,
        sign: int,
        by_day: bool,
    ) -> None:
        sql = f"SELECT {columns}, count(*) FROM decisions WHERE time >= ? AND time < ?"
        params: list[object] = [self._encode_time(low), self._encode_time(high)]
        if source:
            sql += " AND source = ?"
            params.append(source)
        prefix = (day,) if by_day else ()
        for *values, count in cursor.rows(f"{sql} GROUP BY {columns}", params):
            key = (*prefix, *values)
            counts[key] = counts.get(key, 0) + sign * int(count)


# --- SQLite -----------------------------------------------------------------------------------------------------


class _SqliteCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._cursor.execute(sql, params).rowcount

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._cursor.execute(sql, params).fetchall()

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            self._cursor.executemany(sql, rows)

    def insert_decisions(self, rows: Sequence[Sequence[object]]) -> None:
        placeholders = ", ".join("?" * len(_COLUMNS))
        self.execute_many(f"INSERT INTO decisions ({', '.join(_COLUMNS)}) VALUES ({placeholders})", rows)


class SqliteStore(_SqlStore):
    """The embedded store: one SQLite file (or ":memory:"), shared safely by several processes.

    WAL mode lets readers (the dashboard) run while a webhook worker writes; `busy_timeout` makes a writer wait
    for another process's transaction instead of failing at once; every write transaction is `BEGIN IMMEDIATE`
    so two writers queue up at the start instead of deadlocking on a lock upgrade. One connection per instance,
    shared by threads under a lock. Times are integer microseconds since the epoch (UTC).
    """

    BUSY_TIMEOUT_MS = 10_000
    PURGE_PAUSE = 0.1
    """Longest pause between two purge transactions. A process waiting for the write lock polls it (SQLite's busy
    handler sleeps up to 100 ms between tries), so the purge leaves the lock free for as long as it held it, up to
    this, or a backlog's purge would take the lock back before the waiting writer looks again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._name = repr(path)
        self._lock = threading.Lock()
        try:
            if path != ":memory:":
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                path if path == ":memory:" else str(Path(path).expanduser()),
                isolation_level=None,
                check_same_thread=False,
                timeout=self.BUSY_TIMEOUT_MS / 1000,
            )
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open the history store {path!r}: {error}") from error
        self._connection: sqlite3.Connection | None = connection
        try:
            connection.execute(f"PRAGMA busy_timeout = {self.BUSY_TIMEOUT_MS}")
            if path != ":memory:":
                connection.execute("PRAGMA journal_mode = WAL").fetchall()
                connection.execute("PRAGMA synchronous = NORMAL")  # durable across crashes of the process in WAL
            schema = _schema(time_type="INTEGER", id_type="INTEGER PRIMARY KEY")
            self._run(lambda cursor: self._create_schema(cursor, schema, url=path), write=True)
        except BaseException:
            self.close()
            raise

    def _encode_time(self, moment: datetime.datetime) -> int:
        return (_utc(moment) - _EPOCH) // datetime.timedelta(microseconds=1)

    def _decode_time(self, value: Any) -> datetime.datetime:
        return _EPOCH + datetime.timedelta(microseconds=int(value))

    def _day_of_stored(self, value: Any) -> int:
        return int(value) // 86_400_000_000

    def _between_chunks(self, elapsed: float) -> None:
        time.sleep(min(max(elapsed, 0.001), self.PURGE_PAUSE))

    def _run(self, work: Callable[[_Cursor], _T], *, write: bool) -> _T:
        with self._lock:
            connection = self._connection
            if connection is None:
                raise StoreError(f"the history store {self.path!r} is closed")
            cursor = connection.cursor()
            try:
                # A read is one transaction too, so a page and its total agree.
                cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = work(_SqliteCursor(cursor))
                cursor.execute("COMMIT")
                return result
            except sqlite3.Error as error:
                self._rollback(connection)
                # A value the database refuses (a constraint, a type) is the records' fault, not the store's.
                refused = isinstance(error, (sqlite3.DataError, sqlite3.IntegrityError, sqlite3.InterfaceError))
                raise (RecordError if refused else StoreError)(f"history store {self.path!r}: {error}") from error
            except BaseException:
                self._rollback(connection)
                raise
            finally:
                cursor.close()

    @staticmethod
    def _rollback(connection: sqlite3.Connection) -> None:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


# --- PostgreSQL -------------------------------------------------------------------------------------------------


class _PostgresCursor:
    def __init__(self, cursor: psycopg.Cursor[tuple[Any, ...]]) -> None:
        self._cursor = cursor

    @staticmethod
    def _sql(sql: str) -> bytes:
        # Our statements use `?`; psycopg wants `%s`. No statement has a literal `?` or `%`; values never get here.
        return sql.replace("?", "%s").encode()

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        self._cursor.execute(self._sql(sql), params)
        return self._cursor.rowcount

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(self._sql(sql), params)
        return self._cursor.fetchall()

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            self._cursor.executemany(self._sql(sql), rows)

    def insert_decisions(self, rows: Sequence[Sequence[object]]) -> None:
        with self._cursor.copy(f"COPY decisions ({', '.join(_COLUMNS)}) FROM STDIN".encode()) as copy:
            for row in rows:
                copy.write_row(row)


class PostgresStore(_SqlStore):
    """The shared store: one PostgreSQL database for every replica.

    One connection per instance, used under a lock (the recorder writes from one thread; reads are the
    dashboard's, a few per page view). A broken connection is dropped and the next call connects again; a read
    that fails on a connection that had worked is retried once on a new one (the server restarted), a write is
    not (its commit may have happened) and raises `StoreError` for the recorder to count. Batches go in with
    COPY. psycopg is imported here, on first use, so that importing this module stays fast.
    """

    CONNECT_TIMEOUT = 5
    _HAS_SCHEMA_VERSION = (
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
        " AND table_schema = current_schema()"
    )

    def __init__(self, url: str) -> None:
        self._url = url
        self.url = redact_url(url)
        self._name = repr(self.url)
        self._lock = threading.Lock()
        self._connection: psycopg.Connection[tuple[Any, ...]] | None = None
        self._closed = False
        try:
            import psycopg
        except ImportError as error:  # pragma: no cover - psycopg is a dependency
            raise StoreError(f"cannot open the history store {self.url!r}: psycopg is not installed") from error
        self._psycopg = psycopg
        try:
            parameters = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as error:
            raise StoreError(f"invalid history store URL {self.url!r}: {_without(str(error), url)}") from None
        # A URL's own connect_timeout wins; otherwise a dead host must not hang the recorder's thread for minutes.
        self._connect_options: dict[str, Any] = (
            {} if "connect_timeout" in parameters else {"connect_timeout": self.CONNECT_TIMEOUT}
        )
        schema = _schema(time_type="TIMESTAMPTZ", id_type="BIGSERIAL PRIMARY KEY")

        def create(cursor: _Cursor) -> None:
            # Replicas starting together must not both create the tables: serialise them on an advisory lock.
            cursor.execute("SELECT pg_advisory_xact_lock(7236818140101)")
            self._create_schema(cursor, schema, url=self.url)

        try:
            self._run(create, write=True)
        except BaseException:
            self.close()
            raise

    def _encode_time(self, moment: datetime.datetime) -> datetime.datetime:
        return _utc(moment)

    def _latest_labels(
        self, cursor: _Cursor, policies: Sequence[str], since: datetime.datetime, source: str
    ) -> dict[str, tuple[str, str]]:
        """One round trip for all policies (a server may be far away): a LATERAL index probe per policy."""
        if not policies:
            return {}
        condition = " AND d.source = ?" if source else ""
        params: list[object] = [list(policies), since]
        if source:
            params.append(source)
        rows = cursor.rows(
            "SELECT p.policy, l.severity, l.category FROM unnest(?::text[]) AS p(policy) CROSS JOIN LATERAL"
            " (SELECT d.severity, d.category FROM decisions d WHERE d.policy = p.policy AND d.time >= ?"
            f"{condition} ORDER BY d.time DESC, d.id DESC LIMIT 1) AS l",
            params,
        )
        return {policy: (severity, category) for policy, severity, category in rows}

    def _decode_time(self, value: Any) -> datetime.datetime:
        moment: datetime.datetime = value
        return moment.astimezone(datetime.UTC)

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        connection = None
        try:
            connection = self._psycopg.connect(self._url, autocommit=True, **self._connect_options)
            connection.execute("SET TIME ZONE 'UTC'")
        except self._psycopg.Error as error:
            if connection is not None:
                connection.close()
            message = _without(str(error), self._url)
            raise StoreError(f"cannot connect to the history store {self.url!r}: {message}") from None
        self._connection = connection
        return connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    def _run(self, work: Callable[[_Cursor], _T], *, write: bool) -> _T:
        psycopg = self._psycopg
        with self._lock:
            if self._closed:
                raise StoreError(f"the history store {self.url!r} is closed")
            for attempt in (1, 2):
                fresh = self._connection is None or self._connection.closed
                connection = self._connect() if fresh else self._connection
                assert connection is not None
                try:
                    with connection.transaction(), connection.cursor() as cursor:
                        return work(_PostgresCursor(cursor))
                except psycopg.OperationalError as error:
                    self._drop_connection()
                    if fresh or write or attempt == 2:
                        message = _without(str(error), self._url)
                        raise StoreError(f"history store {self.url!r}: {message}") from None
                    log.info("history store connection lost, reconnecting", extra={"store": self.url})
                except psycopg.Error as error:
                    if connection.broken:
                        self._drop_connection()
                    # A value the server refuses (NUL in text, a constraint) is the records' fault, not the store's.
                    refused = isinstance(error, (psycopg.DataError, psycopg.IntegrityError)) and not connection.broken
                    message = f"history store {self.url!r}: {_without(str(error), self._url)}"
                    raise (RecordError if refused else StoreError)(message) from None
            raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_connection()


def _without(message: str, url: str) -> str:
    """`message` with the URL's password (if any) masked: driver errors can echo connection strings."""
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return message
    return message.replace(password, "***") if password else message


# --- the recorder -----------------------------------------------------------------------------------------------

_Record = Decision | ScanSummary
_Item = Decision | ScanSummary | threading.Event
"""What the queue holds: records to write, and `flush` markers (set once everything before them is handled)."""


class DecisionRecorder:
    """Takes decisions from admission (and scan summaries from the scanner) without ever making them wait.

    `submit` appends to a bounded deque and returns; when the deque is full the decision is dropped and counted.
    One daemon thread ("celvern-history") opens the store lazily through `open` and writes what is queued in batches
    of at most `batch_size`: one batch every `flush_interval` seconds, more at once only while full batches wait (or
    a `flush` asks), so that a steady trickle still makes batches. Between batches it purges decisions older than
    `retention` when due: at start, then every `purge_interval` seconds. A failing purge is counted and retried
    later (backoff up to `purge_interval`); it never holds up the writes. A failing store is closed, its batch
    dropped and counted, and re-opened after a capped exponential backoff (`backoff` = first and longest delay,
    seconds); decisions submitted meanwhile wait in the queue (which stays bounded). A batch the store refuses
    because of its values (`RecordError`, or an error other than `StoreError`) is written again one record at a
    time, and only the records refused alone are dropped. Memory is bounded by `capacity` decisions of at most
    `MAX_MESSAGE` characters of message each.

    The thread survives its own bugs: an unexpected error in a cycle is logged with its traceback, sets store_up to
    0 and backs off like a store failure; and should the thread die anyway, `submit`, `flush` and `start` start a
    new one (until `stop`).

    Metrics (in `registry`, or a private one; safe in prometheus_client multiprocess mode):

    - `celvern_history_written_total{record}`: decisions (`record="decision"`) and scan summaries (`"scan"`)
      written to the store;
    - `celvern_history_dropped_total{record, reason}`: records lost, `reason="queue_full"` (the queue was at
      `capacity`), `"store_error"` (the store failed their batch, or could not be opened when stopping),
      `"rejected"` (the store refused that record itself, for instance a value it cannot hold) or `"stopped"`
      (submitted after `stop`);
    - `celvern_history_store_errors_total{operation}`: failures to `open`, `write` or `purge`;
    - `celvern_history_purged_total`: decisions deleted by retention;
    - `celvern_history_queue_depth` (gauge, summed over live processes): records waiting, updated by the thread;
    - `celvern_history_store_up` (gauge, minimum over live processes): 1 while the store opens, writes and purges,
      0 after a failure to open or write (or a bug in the writer) until a write or purge works again; a failed
      purge alone leaves it as it was. With several workers it is 1 only if all are up.

    `clock` gives the wall-clock time retention counts from; `monotonic` the clock of the flush, purge and backoff
    schedule (both injectable for tests).
    """

    def __init__(
        self,
        open: Callable[[], DecisionStore],
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        retention: datetime.timedelta = DEFAULT_RETENTION,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], datetime.datetime] = _utc_now,
        purge_interval: float = 600.0,
        backoff: tuple[float, float] = (0.5, 30.0),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open = open
        self._capacity = max(capacity, 1)
        self._batch_size = max(batch_size, 1)
        self._flush_interval = flush_interval
        self._retention = retention
        self._clock = clock
        self._monotonic = monotonic
        self._purge_interval = purge_interval
        self._backoff = backoff
        self._queue: deque[_Item] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._store: DecisionStore | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._next_purge = 0.0
        self._purge_failures = 0

        registry = registry if registry is not None else CollectorRegistry()
        written = Counter(
            "celvern_history_written",
            "Decisions and scan summaries written to the decision history store.",
            ["record"],
            registry=registry,
        )
        dropped = Counter(
            "celvern_history_dropped",
            "Decisions and scan summaries lost by the decision history, by reason: queue_full, store_error, rejected,"
            " stopped.",
            ["record", "reason"],
            registry=registry,
        )
        errors = Counter(
            "celvern_history_store_errors",
            "Failed decision history store operations: open, write, purge.",
            ["operation"],
            registry=registry,
        )
        self._purged = Counter(
            "celvern_history_purged", "Decisions deleted by the history's retention.", registry=registry
        )
        self._queue_depth = Gauge(
            "celvern_history_queue_depth",
            "Records waiting to be written to the decision history store.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._store_up = Gauge(
            "celvern_history_store_up",
            "1 while the decision history store works, 0 after a failure until it recovers.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        # Children looked up once: submit is on the admission path.
        self._written = {record: written.labels(record) for record in ("decision", "scan")}
        self._dropped = {
            (record, reason): dropped.labels(record, reason)
            for record in ("decision", "scan")
            for reason in ("queue_full", "store_error", "rejected", "stopped")
        }
        self._errors = {operation: errors.labels(operation) for operation in ("open", "write", "purge")}

    # -- the admission side

    def submit(self, decision: Decision) -> None:
        """Queue a decision for the store (its text made `storable`). Never blocks and never raises for a full
        queue or a failing store."""
        self._enqueue(storable(decision), "decision")

    def record_scan(self, summary: ScanSummary) -> None:
        """Queue a complete scan's summary; it is written in order with the decisions."""
        self._enqueue(summary, "scan")

    def _enqueue(self, record: _Record, kind: str) -> None:
        # deque.append and len are atomic under the GIL; concurrent submitters can overshoot `capacity` by at most
        # their number, which keeps the bound without a lock on the admission path.
        if self._stopped:
            self._dropped[(kind, "stopped")].inc()
            return
        self._revive()
        queue = self._queue
        if len(queue) >= self._capacity:
            self._dropped[(kind, "queue_full")].inc()
            return
        queue.append(record)
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    # -- lifecycle

    def start(self) -> None:
        """Start the writer thread (it opens the store and purges at once); a no-op while it runs."""
        with self._thread_lock:
            if self._thread is None:
                self._spawn()
                return
        self._revive()

    def _spawn(self) -> None:
        """Start a writer thread (under `_thread_lock`)."""
        thread = threading.Thread(target=self._run, name="celvern-history", daemon=True)
        self._thread = thread
        thread.start()

    def _revive(self) -> None:
        """Start the writer thread again if it died (it should not: this is the last line of defence). Never
        blocks: when another thread is already at it, it returns."""
        thread = self._thread
        if thread is None or thread.is_alive() or self._stopping.is_set():
            return
        if not self._thread_lock.acquire(blocking=False):
            return
        try:
            if self._thread is thread and not self._stopping.is_set():
                log.error("the decision history writer thread died; starting a new one")
                self._spawn()
        finally:
            self._thread_lock.release()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued before this call is written or dropped; False on timeout (the store hangs
        or is backing off) or when the thread is not running (not started, or stopped)."""
        if self._thread is None:
            return not self._queue
        self._revive()
        thread = self._thread
        if not thread.is_alive():
            return not self._queue
        marker = threading.Event()
        self._queue.append(marker)
        self._wake.set()
        return marker.wait(timeout)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop taking decisions, write what is queued (one attempt, even while backing off, and without purging;
        what cannot be written is dropped and counted) and close the store. False if the thread did not finish in
        `timeout` (a hung store); it is a daemon and dies with the process."""
        self._stopped = True
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> DecisionRecorder:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the writer thread

    def _run(self) -> None:
        try:
            first = True
            while True:
                final = False
                try:
                    if not first:
                        self._wait()
                    first = False
                    final = self._stopping.is_set()
                    self._cycle(final=final)
                except Exception:
                    # A bug (or a metric that cannot be written): the thread must outlive it.
                    log.exception("the decision history writer failed; carrying on")
                    self._crashed()
                    if final:
                        with contextlib.suppress(Exception):
                            self._drop_all("store_error")
                if final:
                    return
        finally:
            self._close_store()
            with contextlib.suppress(Exception):
                self._queue_depth.set(len(self._queue))

    def _wait(self) -> None:
        """Until a cycle is due: a full batch, a flush, a stop, `flush_interval` or a due purge; while backing off
        after a failure, only the end of the backoff or a stop (submits do not wake it)."""
        while not self._stopping.is_set():
            delay = self._retry_at - self._monotonic()
            if delay > 0:
                self._stopping.wait(delay)
                continue
            self._wake.wait(max(0.0, min(self._flush_interval, self._next_purge - self._monotonic())))
            self._wake.clear()
            return

    def _cycle(self, *, final: bool) -> None:
        """Open the store if needed; write one batch, and more while full batches wait or a flush marker was met;
        before each batch, purge if due (never when stopping). Stops at the first store failure."""
        marker: threading.Event | None = None
        try:
            store = self._ensure_store()
            if store is None:
                return
            while True:
                if not final and not self._stopping.is_set() and self._monotonic() >= self._next_purge:
                    self._purge(store)
                records, marker = self._take()
                if records and not self._write(store, records):
                    return
                if marker is not None:
                    marker.set()
                    marker = None
                    continue  # a flush waits: go on until the queue holds less than a batch
                if len(records) < self._batch_size:
                    return
        finally:
            if marker is not None:
                marker.set()
            if final:
                self._drop_all("store_error")
            self._queue_depth.set(len(self._queue))

    def _ensure_store(self) -> DecisionStore | None:
        if self._store is not None:
            return self._store
        try:
            self._store = self._open()
        except Exception as error:
            self._failed("open", error)
            return None
        return self._store

    def _take(self) -> tuple[list[_Record], threading.Event | None]:
        """Up to `batch_size` records from the head of the queue, stopping at (and returning) a flush marker."""
        records: list[_Record] = []
        queue = self._queue
        while queue and len(records) < self._batch_size:
            item = queue.popleft()
            if isinstance(item, threading.Event):
                return records, item
            records.append(item)
        return records, None

    def _write(self, store: DecisionStore, records: list[_Record]) -> bool:
        """Write a batch (runs of decisions in one transaction each, scans one by one). A run the store refuses
        for its values is written again one decision at a time, dropping only those refused alone. On any other
        failure drop what is left of the batch, count it, and back off."""
        position = 0
        try:
            while position < len(records):
                record = records[position]
                if isinstance(record, ScanSummary):
                    try:
                        store.record_scan(record)
                    except Exception as error:
                        if not _refused(error):
                            raise
                        self._rejected("scan", error)
                    else:
                        self._written["scan"].inc()
                    position += 1
                    continue
                end = position
                while end < len(records) and isinstance(records[end], Decision):
                    end += 1
                run = [r for r in records[position:end] if isinstance(r, Decision)]
                try:
                    store.write(run)
                except Exception as error:
                    if not _refused(error):
                        raise
                    if len(run) == 1:
                        self._rejected("decision", error)
                        position += 1
                        continue
                    log.info("the decision history store refused a batch, writing it one by one: %s", error)
                    for single in run:
                        try:
                            store.write([single])
                        except Exception as alone:
                            if not _refused(alone):
                                raise
                            self._rejected("decision", alone)
                        else:
                            self._written["decision"].inc()
                        position += 1
                    continue
                self._written["decision"].inc(len(run))
                position = end
        except Exception as error:
            for record in records[position:]:
                self._dropped[("scan" if isinstance(record, ScanSummary) else "decision", "store_error")].inc()
            self._failed("write", error)
            return False
        self._succeeded()
        return True

    def _rejected(self, kind: str, error: Exception) -> None:
        self._dropped[(kind, "rejected")].inc()
        log.warning("the decision history store refused a %s, dropped it: %s", kind, error)

    def _purge(self, store: DecisionStore) -> None:
        """Purge now; on failure count it and try again after a backoff (the writes go on meanwhile)."""
        try:
            purged = store.purge(self._clock() - self._retention)
        except Exception as error:
            self._errors["purge"].inc()
            self._purge_failures += 1
            # From the longest write backoff up, doubling, to one purge interval: a purge that timed out waiting
            # for a lock may well do so again, and each try holds up this process's writes meanwhile.
            longest = self._backoff[1]
            delay = min(self._purge_interval, longest * 2 ** min(self._purge_failures - 1, 30))
            self._next_purge = self._monotonic() + delay
            (log.warning if self._purge_failures == 1 else log.debug)(
                "decision history purge failed: %s (retrying in %.1fs)", error, delay
            )
            return
        if self._purge_failures:
            log.info("decision history purge works again", extra={"failures": self._purge_failures})
        self._purge_failures = 0
        self._purged.inc(purged)
        self._next_purge = self._monotonic() + self._purge_interval
        self._succeeded()

    def _delay(self) -> float:
        first, longest = self._backoff
        return float(min(longest, first * 2 ** min(self._failures - 1, 30)))

    def _succeeded(self) -> None:
        if self._failures:
            log.info("decision history store recovered", extra={"failures": self._failures})
        self._failures = 0
        self._retry_at = 0.0
        self._store_up.set(1)

    def _failed(self, operation: str, error: Exception) -> None:
        self._errors[operation].inc()
        self._store_up.set(0)
        self._failures += 1
        delay = self._delay()
        self._retry_at = self._monotonic() + delay
        # Log the first failure of an outage loudly, the rest quietly: a down store fails every few seconds.
        (log.warning if self._failures == 1 else log.debug)(
            "decision history store %s failed: %s (retrying in %.1fs)", operation, error, delay
        )
        self._close_store()

    def _crashed(self) -> None:
        """After an unexpected error in a cycle: report the store as not working and back off (the store is kept:
        nothing says it is at fault)."""
        with contextlib.suppress(Exception):
            self._store_up.set(0)
        self._failures += 1
        self._retry_at = self._monotonic() + self._delay()

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception:
                log.debug("closing the decision history store failed", exc_info=True)

    def _drop_all(self, reason: str) -> None:
        queue = self._queue
        while queue:
            item = queue.popleft()
            if isinstance(item, threading.Event):
                item.set()
            else:
                self._dropped[("scan" if isinstance(item, ScanSummary) else "decision", reason)].inc()


def _refused(error: Exception) -> bool:
    """Whether a write failed because of the records (worth writing them one by one) rather than the store: a
    `RecordError`, or anything that is not a `StoreError` (an encoding error in a driver, say)."""
    return isinstance(error, RecordError) or not isinstance(error, StoreError)
