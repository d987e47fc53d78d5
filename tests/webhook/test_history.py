"""The decision history: both stores (SQLite file, real PostgreSQL) answer the same queries the same way, the rollup
agrees with a brute-force count over the rows, and the recorder never makes admission wait.

Counting tests compare each store against `expected_daily` / `expected_policies`, which count a fixed data set in
plain Python, over windows chosen to hit every path of the rollup (whole days, partial edges counted directly or as
the day's rollup minus the rows outside, one-day windows, empty windows).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from webhook.history import (
    ACTIONS,
    MAX_MESSAGE,
    DailyCount,
    Decision,
    DecisionRecorder,
    DecisionStore,
    Page,
    PolicyCount,
    PolicyScan,
    PostgresStore,
    RecordError,
    ScanSummary,
    SqliteStore,
    StoreError,
    ViolationQuery,
    default_store_url,
    open_store,
    redact_url,
    sqlite_path,
    storable,
)

UTC = datetime.UTC
PLUS_FIVE = datetime.timezone(datetime.timedelta(hours=5))
BASE = datetime.datetime(2024, 3, 10, tzinfo=UTC)
"""Midnight (UTC) of the data set's first day."""


def at(days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0) -> datetime.datetime:
    return BASE + datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def decision(
    when: datetime.datetime,
    *,
    policy: str = "require-labels",
    action: str = "deny",
    source: str = "admission",
    namespace: str = "team-a",
    name: str = "web",
    severity: str = "medium",
    category: str = "Best Practices",
    message: str = "label app is required",
) -> Decision:
    return Decision(
        time=when,
        source=source,
        policy=policy,
        action=action,
        kind="Pod",
        namespace=namespace,
        name=name,
        message=message,
        severity=severity,
        category=category,
        user="alice" if source == "admission" else "",
        operation="CREATE" if source == "admission" else "",
    )


def dataset() -> list[Decision]:
    """~160 decisions over four days, every 37 minutes (never two at one instant), five policies, both sources,
    three actions; `policy-1` changes severity half-way; some times carry a +05:00 offset; and a few sit exactly
    on, or a microsecond before, a UTC midnight."""
    decisions = []
    for index in range(156):
        when = at(minutes=37 * index, seconds=index % 7)
        policy = f"policy-{index % 5}"
        severity = (
            ("high" if index >= 80 else "medium") if policy == "policy-1" else ("low", "medium", "high")[index % 3]
        )
        decisions.append(
            decision(
                when.astimezone(PLUS_FIVE) if index % 2 else when,
                policy=policy,
                action=ACTIONS[index % 3],
                source="scan" if index % 4 == 0 else "admission",
                namespace=f"ns-{index % 3}",
                name=f"pod-{index}",
                severity=severity,
                category=f"category-{index % 5}",
            )
        )
    decisions.append(decision(at(days=1), policy="policy-2", severity="low", category="category-2"))
    decisions.append(
        decision(at(days=2) - datetime.timedelta(microseconds=1), policy="policy-3", severity="low", category="x")
    )
    return decisions


def in_window(item: Decision, since: datetime.datetime, until: datetime.datetime | None) -> bool:
    return since <= item.time and (until is None or item.time < until)


def expected_daily(data: Sequence[Decision], since: datetime.datetime, until: datetime.datetime) -> list[DailyCount]:
    counts: dict[tuple[datetime.date, str, str], int] = {}
    for item in data:
        if in_window(item, since, until):
            key = (item.time.astimezone(UTC).date(), item.source, item.action)
            counts[key] = counts.get(key, 0) + 1
    return [DailyCount(day, source, action, count) for (day, source, action), count in sorted(counts.items())]


def expected_policies(
    data: Sequence[Decision], since: datetime.datetime, source: str = "", limit: int = 0
) -> list[PolicyCount]:
    chosen = [item for item in data if in_window(item, since, None) and (not source or item.source == source)]
    counts: dict[str, PolicyCount] = {}
    for item in sorted(chosen, key=lambda item: item.time):
        known = counts.get(item.policy) or PolicyCount(item.policy, "", "", 0, 0, 0)
        counts[item.policy] = dataclasses.replace(
            known,
            severity=item.severity,  # the latest one wins: items are in time order
            category=item.category,
            **{item.action: getattr(known, item.action) + 1},
        )
    ordered = sorted(counts.values(), key=lambda count: (-count.total, count.policy))
    return ordered[:limit] if limit else ordered


# --- stores -----------------------------------------------------------------------------------------------------


def _postgres_store(url: str) -> Iterator[PostgresStore]:
    """A PostgresStore in a schema of its own (dropped afterwards): every test starts from an empty database."""
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    store = PostgresStore(f"{url}?options=-csearch_path%3D{schema}")
    try:
        yield store
    finally:
        store.close()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DecisionStore]:
    if request.param == "sqlite":
        sqlite = SqliteStore(str(tmp_path / "history.db"))
        yield sqlite
        sqlite.close()
    else:
        yield from _postgres_store(request.getfixturevalue("postgres_url"))


@pytest.fixture
def filled(store: DecisionStore) -> DecisionStore:
    store.write(dataset())
    return store


def test_round_trip_keeps_every_field_and_returns_utc(store: DecisionStore) -> None:
    written = decision(datetime.datetime(2024, 3, 10, 12, 30, 15, 123456, tzinfo=PLUS_FIVE))
    written = dataclasses.replace(written, result="error", operation="UPDATE", user="system:serviceaccount:x:y")
    store.write([written])
    page = store.violations(ViolationQuery())
    assert page.items == (written,)
    assert page.items[0].time.utcoffset() == datetime.timedelta(0)
    assert page.items[0].time == datetime.datetime(2024, 3, 10, 7, 30, 15, 123456, tzinfo=UTC)


def test_empty_store_answers_every_query(store: DecisionStore) -> None:
    assert store.violations(ViolationQuery()).total == 0
    assert store.daily_counts(at(), at(days=7)) == []
    assert store.policy_counts(at()) == []
    assert store.last_scan() is None
    assert store.purge(at(days=1)) == 0


FILTERS = [
    pytest.param(ViolationQuery(policy="policy-1"), lambda d: d.policy == "policy-1", id="policy"),
    pytest.param(ViolationQuery(namespace="ns-2"), lambda d: d.namespace == "ns-2", id="namespace"),
    pytest.param(ViolationQuery(action="warn"), lambda d: d.action == "warn", id="action"),
    pytest.param(ViolationQuery(source="scan"), lambda d: d.source == "scan", id="source"),
    pytest.param(ViolationQuery(since=at(days=2)), lambda d: d.time >= at(days=2), id="since"),
    pytest.param(ViolationQuery(until=at(days=1)), lambda d: d.time < at(days=1), id="until-exclusive"),
    pytest.param(
        ViolationQuery(since=at(days=1, hours=3).astimezone(PLUS_FIVE), until=at(days=1, hours=9)),
        lambda d: at(days=1, hours=3) <= d.time < at(days=1, hours=9),
        id="since-and-until-any-offset",
    ),
    pytest.param(
        ViolationQuery(policy="policy-0", action="deny", source="scan", namespace="ns-0"),
        lambda d: (d.policy, d.action, d.source, d.namespace) == ("policy-0", "deny", "scan", "ns-0"),
        id="combined",
    ),
    pytest.param(ViolationQuery(policy="no-such-policy"), lambda d: False, id="no-match"),
]


@pytest.mark.parametrize(("query", "matches"), FILTERS)
def test_violations_filters(filled: DecisionStore, query: ViolationQuery, matches: Callable[[Decision], bool]) -> None:
    expected = sorted((item for item in dataset() if matches(item)), key=lambda item: item.time, reverse=True)
    page = filled.violations(dataclasses.replace(query, limit=1000))
    assert page.total == len(expected)
    assert [item.name for item in page.items] == [item.name for item in expected]


@pytest.mark.parametrize(
    ("limit", "offset", "names"),
    [
        pytest.param(2, 0, ["tie-2", "tie-1"], id="first-page-newest-first-ties-by-insertion"),
        pytest.param(2, 2, ["tie-0", "older"], id="second-page"),
        pytest.param(2, 4, [], id="past-the-end"),
        pytest.param(0, 0, [], id="limit-zero-still-counts"),
    ],
)
def test_violations_paging(store: DecisionStore, limit: int, offset: int, names: list[str]) -> None:
    store.write([decision(at(hours=1), name="older")])
    store.write([decision(at(hours=2), name=f"tie-{n}") for n in range(3)])
    page = store.violations(ViolationQuery(limit=limit, offset=offset))
    assert (page.total, page.limit, page.offset) == (4, limit, offset)
    assert [item.name for item in page.items] == names


WINDOWS = [
    pytest.param(at(), at(days=4), id="whole-days"),
    pytest.param(at(days=-5), at(days=10), id="beyond-the-data"),
    pytest.param(at(hours=6), at(days=2, hours=18), id="partial-edges"),
    pytest.param(at(seconds=1), at(days=3, hours=23, minutes=59), id="edges-from-rollup-minus-outside"),
    pytest.param(at(hours=23), at(days=2, hours=1), id="edges-counted-directly"),
    pytest.param(at(days=1, hours=2), at(days=1, hours=20), id="within-one-day"),
    pytest.param(at(days=1), at(days=2), id="exactly-one-day"),
    pytest.param(at(days=2) - datetime.timedelta(microseconds=1), at(days=2), id="one-microsecond"),
    pytest.param(at(days=1, hours=5).astimezone(PLUS_FIVE), at(days=3).astimezone(PLUS_FIVE), id="offset-times"),
    pytest.param(at(days=2), at(days=2), id="empty"),
    pytest.param(at(days=3), at(days=1), id="reversed"),
]


@pytest.mark.parametrize(("since", "until"), WINDOWS)
def test_daily_counts_match_a_brute_force_count(
    filled: DecisionStore, since: datetime.datetime, until: datetime.datetime
) -> None:
    assert filled.daily_counts(since, until) == expected_daily(dataset(), since, until)


def test_daily_counts_bucket_by_utc_day(store: DecisionStore) -> None:
    late = datetime.datetime(2024, 3, 11, 4, 30, tzinfo=PLUS_FIVE)  # 23:30 UTC on the 10th
    store.write([decision(late), decision(at(days=1)), decision(at(days=1, minutes=1), action="warn")])
    assert store.daily_counts(at(days=-1), at(days=3)) == [
        DailyCount(datetime.date(2024, 3, 10), "admission", "deny", 1),
        DailyCount(datetime.date(2024, 3, 11), "admission", "deny", 1),
        DailyCount(datetime.date(2024, 3, 11), "admission", "warn", 1),
    ]


@pytest.mark.parametrize(
    ("since", "source", "limit"),
    [
        pytest.param(at(), "", 0, id="everything"),
        pytest.param(at(), "", 3, id="limit"),
        pytest.param(at(), "scan", 0, id="scans-only"),
        pytest.param(at(), "admission", 2, id="admission-limit"),
        pytest.param(at(days=1, hours=13), "", 0, id="since-mid-day"),
        pytest.param(at(days=1, seconds=1), "", 0, id="since-just-after-midnight"),
        pytest.param(at(days=3, hours=23), "", 0, id="since-late-last-day"),
        pytest.param(at(days=9), "", 0, id="since-after-everything"),
    ],
)
def test_policy_counts_match_a_brute_force_count(
    filled: DecisionStore, since: datetime.datetime, source: str, limit: int
) -> None:
    assert filled.policy_counts(since, source=source, limit=limit) == expected_policies(dataset(), since, source, limit)


def test_policy_counts_order_by_total_then_name_and_keep_the_latest_severity(store: DecisionStore) -> None:
    store.write(
        [
            decision(at(hours=1), policy="b", severity="low", category="old"),
            decision(at(hours=3), policy="b", action="warn", severity="high", category="new"),
            decision(at(hours=2), policy="b", action="audit", severity="medium", category="middle"),
            decision(at(hours=1), policy="a"),
            decision(at(hours=2), policy="c", action="audit"),
            decision(at(hours=3), policy="c"),
        ]
    )
    counts = store.policy_counts(at())
    assert counts == [
        PolicyCount("b", "high", "new", deny=1, warn=1, audit=1),
        PolicyCount("c", "medium", "Best Practices", deny=1, warn=0, audit=1),
        PolicyCount("a", "medium", "Best Practices", deny=1, warn=0, audit=0),
    ]
    assert counts[0].total == 3
    without = store.policy_counts(at(), labels=False)  # the same counts, without the per-policy label lookups
    assert [(c.policy, c.deny, c.warn, c.audit, c.severity, c.category) for c in without] == [
        (c.policy, c.deny, c.warn, c.audit, "", "") for c in counts
    ]


def test_last_scan_is_the_latest_by_time(store: DecisionStore) -> None:
    newer = ScanSummary(at(hours=2), (PolicyScan("b", passed=3, failed=1), PolicyScan("a", warned=2, skipped=4)))
    store.record_scan(newer)
    store.record_scan(ScanSummary(at(hours=1), (PolicyScan("a", errored=9),)))  # recorded later, but older
    found = store.last_scan()
    assert found == ScanSummary(
        at(hours=2), (PolicyScan("a", warned=2, skipped=4), PolicyScan("b", passed=3, failed=1))
    )
    assert found is not None and found.time.utcoffset() == datetime.timedelta(0)


@pytest.mark.parametrize(
    "cutoff",
    [
        pytest.param(at(days=2), id="at-midnight"),
        pytest.param(at(days=1, hours=13, minutes=5), id="mid-day"),
        pytest.param(at(days=2) - datetime.timedelta(microseconds=1), id="just-before-midnight"),
        pytest.param(at(days=-1), id="nothing-old"),
        pytest.param(at(days=30), id="everything"),
    ],
)
def test_purge_removes_old_rows_and_keeps_counts_consistent(filled: DecisionStore, cutoff: datetime.datetime) -> None:
    filled.record_scan(ScanSummary(at(days=1), (PolicyScan("a", failed=1),)))
    data = dataset()
    kept = [item for item in data if item.time >= cutoff]
    assert filled.purge(cutoff) == len(data) - len(kept)
    assert filled.violations(ViolationQuery(limit=0)).total == len(kept)
    assert filled.daily_counts(at(days=-1), at(days=9)) == expected_daily(kept, at(days=-1), at(days=9))
    assert filled.daily_counts(at(days=1, hours=7), at(days=3, hours=2)) == expected_daily(
        kept, at(days=1, hours=7), at(days=3, hours=2)
    )
    assert filled.policy_counts(at(days=-1)) == expected_policies(kept, at(days=-1))
    assert (filled.last_scan() is None) == (cutoff > at(days=1))
    assert filled.purge(cutoff) == 0  # idempotent


def test_messages_are_cut_to_max_message(store: DecisionStore) -> None:
    store.write([decision(at(), message="x" * (MAX_MESSAGE + 100))])
    assert store.violations(ViolationQuery()).items[0].message == "x" * MAX_MESSAGE


HOSTILE = [
    "x'; DROP TABLE decisions; --",
    'policy" OR 1=1 --',
    "%s %(name)s ? ?1 :name $1",
    "ns\\'\x01;",
    "ünïcødé 🚨",
]


@pytest.mark.parametrize("value", HOSTILE, ids=["quote-drop", "double-quote-or", "placeholders", "escapes", "unicode"])
def test_injection_looking_values_are_just_values(store: DecisionStore, value: str) -> None:
    store.write([decision(at(), policy=value, namespace=value, name=value, message=value), decision(at(), policy="x")])
    page = store.violations(ViolationQuery(policy=value, namespace=value))
    assert page.total == 1
    assert (page.items[0].policy, page.items[0].namespace, page.items[0].message) == (value, value, value)
    assert [count.policy for count in store.policy_counts(at())] == sorted([value, "x"])
    assert store.violations(ViolationQuery()).total == 2


def test_store_methods_fail_with_store_error_after_close(store: DecisionStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.write([decision(at())])


# --- SQLite specifics -------------------------------------------------------------------------------------------


def test_two_sqlite_stores_on_one_file_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    stores = [SqliteStore(path), SqliteStore(path)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(store: SqliteStore, worker: int) -> None:
        try:
            start.wait()
            for batch in range(25):
                store.write(
                    [
                        decision(at(hours=worker, minutes=batch, seconds=n), name=f"{worker}-{batch}-{n}")
                        for n in range(8)
                    ]
                )
        except BaseException as error:  # reported below: a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(stores[n % 2], n)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        page = stores[0].violations(ViolationQuery(limit=1000))
        assert page.total == 800
        assert len({item.name for item in page.items}) == 800
        assert sum(count.count for count in stores[1].daily_counts(at(), at(days=1))) == 800
    finally:
        for store in stores:
            store.close()


def test_sqlite_reopens_existing_data_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "history.db")
    first = SqliteStore(path)
    first.write([decision(at())])
    first.close()
    second = SqliteStore(path)
    assert second.violations(ViolationQuery()).total == 1
    second.close()
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("UPDATE schema_version SET version = 99")
    connection.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore(path)


def test_sqlite_in_memory(tmp_path: Path) -> None:
    store = open_store("sqlite::memory:")
    try:
        store.write([decision(at())])
        assert store.violations(ViolationQuery()).total == 1
    finally:
        store.close()


def test_sqlite_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(str(tmp_path / "file" / "history.db"))


# --- PostgreSQL specifics ---------------------------------------------------------------------------------------


def test_postgres_reconnects_after_the_server_drops_the_connection(postgres_url: str) -> None:
    import psycopg

    for store in _postgres_store(postgres_url):
        store.write([decision(at())])
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert store.violations(ViolationQuery()).total == 1  # a read retries once on a new connection
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StoreError):
            store.write([decision(at(hours=1))])  # a write is not retried: its commit may have happened
        store.write([decision(at(hours=2))])
        assert store.violations(ViolationQuery()).total == 2


def test_postgres_unreachable_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError) as raised:
        open_store("postgresql://celvern:hunter2@127.0.0.1:1/history?connect_timeout=2")
    assert "hunter2" not in str(raised.value)
    assert "celvern:***@127.0.0.1:1/history" in str(raised.value)


def test_postgres_refuses_a_newer_schema(postgres_url: str) -> None:
    for store in _postgres_store(postgres_url):
        store._run(lambda cursor: cursor.execute("UPDATE schema_version SET version = 99"), write=True)
        url = store._url
        with pytest.raises(StoreError, match="schema version 99"):
            PostgresStore(url)


# --- URLs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        pytest.param("sqlite:///var/lib/celvern/history.db", "/var/lib/celvern/history.db", id="three-slashes"),
        pytest.param("sqlite:history.db", "history.db", id="relative"),
        pytest.param("sqlite:data/history.db", "data/history.db", id="relative-directory"),
        pytest.param("sqlite:/tmp/h.db", "/tmp/h.db", id="one-slash"),
        pytest.param("sqlite::memory:", ":memory:", id="memory"),
        pytest.param("sqlite://:memory:", ":memory:", id="memory-slashes"),
        pytest.param("/srv/history.db", "/srv/history.db", id="bare-absolute"),
        pytest.param("history.db", "history.db", id="bare-relative"),
        pytest.param("postgresql://h/db", None, id="postgres"),
        pytest.param("mysql://h/db", None, id="other-scheme"),
    ],
)
def test_sqlite_path(url: str, path: str | None) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("", "invalid history store URL ''", id="empty"),
        pytest.param("mysql://root:hunter2@db/x", "unsupported history store URL 'mysql://root:***@db/x'", id="scheme"),
        pytest.param("sqlite://host/x.db", "takes no host", id="sqlite-host"),
        pytest.param("sqlite:", "no file path", id="sqlite-no-path"),
        pytest.param("postgresql://u:hunter2@h/db?nosuch=1", "invalid history store URL", id="bad-postgres"),
    ],
)
def test_open_store_rejects_bad_urls_without_passwords(url: str, message: str) -> None:
    with pytest.raises(StoreError, match="history store") as raised:
        open_store(url)
    assert message in str(raised.value)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        pytest.param("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db", id="authority"),
        pytest.param("postgresql://u@h/db", "postgresql://u@h/db", id="no-password"),
        pytest.param(
            "postgresql://h/db?sslmode=require&PASSWORD=secret",
            "postgresql://h/db?sslmode=require&PASSWORD=***",
            id="query",
        ),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize("form", ["sqlite:///{path}", "{path}"], ids=["sqlite-url", "bare-path"])
def test_open_store_opens_sqlite_files(tmp_path: Path, form: str) -> None:
    path = tmp_path / "sub" / "history.db"
    store = open_store(form.format(path=path))
    try:
        assert isinstance(store, SqliteStore)
        assert path.exists()
    finally:
        store.close()


def test_default_store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELVERN_HISTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_store_url() == f"sqlite://{tmp_path}/state/celvern/history.db"
    assert (tmp_path / "state" / "celvern").is_dir()
    monkeypatch.setenv("CELVERN_HISTORY", str(tmp_path / "elsewhere" / "h.db"))
    assert default_store_url() == f"sqlite://{tmp_path}/elsewhere/h.db"
    assert (tmp_path / "elsewhere").is_dir()
    monkeypatch.setenv("CELVERN_HISTORY", "postgresql://h/db")
    assert default_store_url() == "postgresql://h/db"


# --- the recorder -----------------------------------------------------------------------------------------------


class FakeStore:
    """A `DecisionStore` that records calls and can hang (`hold`) or fail (`failures`) on write, refuse batches
    holding a decision named "bad..." (`refuse`, the error to raise), and fail every purge (`purge_error`)."""

    def __init__(
        self,
        *,
        failures: int = 0,
        hold: threading.Event | None = None,
        refuse: Callable[[], Exception] | None = None,
        purge_error: Exception | None = None,
    ) -> None:
        self.decisions: list[Decision] = []
        self.scans: list[ScanSummary] = []
        self.purges: list[datetime.datetime] = []
        self.calls: list[str] = []
        self.failures = failures
        self.hold = hold
        self.refuse = refuse
        self.purge_error = purge_error
        self.writing = threading.Event()
        self.purged_twice = threading.Event()
        self.closes = 0

    def write(self, decisions: Sequence[Decision]) -> None:
        self.calls.append("write")
        self.writing.set()
        if self.hold is not None:
            self.hold.wait()
        if self.failures:
            self.failures -= 1
            raise StoreError("disk full")
        if self.refuse is not None and any(item.name.startswith("bad") for item in decisions):
            raise self.refuse()
        self.decisions.extend(decisions)

    def record_scan(self, summary: ScanSummary) -> None:
        self.scans.append(summary)

    def last_scan(self) -> ScanSummary | None:
        return self.scans[-1] if self.scans else None

    def purge(self, before: datetime.datetime) -> int:
        self.calls.append("purge")
        self.purges.append(before)
        if len(self.purges) >= 2:
            self.purged_twice.set()
        if self.purge_error is not None:
            raise self.purge_error
        return 0

    def daily_counts(self, since: datetime.datetime, until: datetime.datetime) -> list[DailyCount]:
        return []

    def policy_counts(
        self, since: datetime.datetime, *, source: str = "", limit: int = 0, labels: bool = True
    ) -> list[PolicyCount]:
        return []

    def violations(self, query: ViolationQuery) -> Page:
        raise NotImplementedError

    def close(self) -> None:
        self.closes += 1


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def recorders() -> Iterator[Callable[..., DecisionRecorder]]:
    """Builds recorders and stops them all at the end, so no writer thread outlives its test."""
    made: list[DecisionRecorder] = []

    def make(open: Callable[[], DecisionStore], **options: object) -> DecisionRecorder:
        options.setdefault("flush_interval", 0.01)
        options.setdefault("backoff", (0.001, 0.01))
        recorder = DecisionRecorder(open, **options)  # type: ignore[arg-type]
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.stop(timeout=5)


def test_submit_never_blocks_on_a_hung_store_and_the_bound_drops(recorders: Callable[..., DecisionRecorder]) -> None:
    hold = threading.Event()
    store = FakeStore(hold=hold)
    registry = CollectorRegistry()
    recorder = recorders(lambda: store, capacity=5, batch_size=1, registry=registry)
    recorder.start()
    recorder.submit(decision(at(), name="first"))
    assert store.writing.wait(5)  # the writer thread is now stuck inside write()
    for n in range(8):
        recorder.submit(decision(at(), name=f"queued-{n}"))  # returns at once: this test would hang otherwise
    assert metric(registry, "celvern_history_dropped_total", record="decision", reason="queue_full") == 3
    assert not recorder.flush(timeout=0.01)
    hold.set()
    assert recorder.flush(timeout=5)
    assert [item.name for item in store.decisions] == ["first"] + [f"queued-{n}" for n in range(5)]
    assert metric(registry, "celvern_history_written_total", record="decision") == 6


def test_stop_gives_up_on_a_hung_store(recorders: Callable[..., DecisionRecorder]) -> None:
    hold = threading.Event()
    store = FakeStore(hold=hold)
    recorder = recorders(lambda: store)
    recorder.start()
    recorder.submit(decision(at()))
    assert store.writing.wait(5)
    assert recorder.stop(timeout=0.01) is False
    hold.set()
    assert recorder.stop(timeout=5) is True


def test_a_failing_store_loses_its_batch_then_recovers(recorders: Callable[..., DecisionRecorder]) -> None:
    store = FakeStore(failures=1)
    opened: list[int] = []

    def open_fake() -> DecisionStore:
        opened.append(1)
        return store

    registry = CollectorRegistry()
    recorder = recorders(open_fake, registry=registry)
    for n in range(3):
        recorder.submit(decision(at(), name=f"lost-{n}"))
    recorder.start()
    assert recorder.flush(timeout=5)
    assert metric(registry, "celvern_history_dropped_total", record="decision", reason="store_error") == 3
    assert metric(registry, "celvern_history_store_errors_total", operation="write") == 1
    recorder.submit(decision(at(), name="kept"))
    assert recorder.flush(timeout=5)
    assert [item.name for item in store.decisions] == ["kept"]
    assert len(opened) == 2  # re-opened after the failure
    assert store.closes >= 1
    assert metric(registry, "celvern_history_store_up") == 1


def test_a_store_that_cannot_open_is_retried(recorders: Callable[..., DecisionRecorder]) -> None:
    store = FakeStore()
    attempts: list[int] = []

    def open_flaky() -> DecisionStore:
        attempts.append(1)
        if len(attempts) <= 2:
            raise StoreError("connection refused")
        return store

    registry = CollectorRegistry()
    recorder = recorders(open_flaky, registry=registry)
    recorder.start()
    recorder.submit(decision(at(), name="waited"))
    assert recorder.flush(timeout=5)
    assert [item.name for item in store.decisions] == ["waited"]  # queued, not lost, while the store was down
    assert metric(registry, "celvern_history_store_errors_total", operation="open") == 2


def test_stop_drains_the_queue_and_closes_the_store(recorders: Callable[..., DecisionRecorder]) -> None:
    store = FakeStore()
    registry = CollectorRegistry()
    recorder = recorders(lambda: store, flush_interval=3600, batch_size=7, registry=registry)
    recorder.start()
    for n in range(50):
        recorder.submit(decision(at(), name=str(n)))
    recorder.record_scan(ScanSummary(at(), (PolicyScan("a", failed=1),)))
    assert recorder.stop(timeout=5)
    assert [item.name for item in store.decisions] == [str(n) for n in range(50)]
    assert store.scans == [ScanSummary(at(), (PolicyScan("a", failed=1),))]
    assert store.closes == 1
    assert metric(registry, "celvern_history_queue_depth") == 0
    recorder.submit(decision(at()))
    assert metric(registry, "celvern_history_dropped_total", record="decision", reason="stopped") == 1


def test_stop_with_a_dead_store_counts_the_loss(recorders: Callable[..., DecisionRecorder]) -> None:
    def never() -> DecisionStore:
        raise StoreError("no route to host")

    registry = CollectorRegistry()
    recorder = recorders(never, backoff=(60, 60), registry=registry)
    recorder.start()
    recorder.submit(decision(at()))
    recorder.record_scan(ScanSummary(at(), ()))
    assert recorder.stop(timeout=5)
    assert metric(registry, "celvern_history_dropped_total", record="decision", reason="store_error") == 1
    assert metric(registry, "celvern_history_dropped_total", record="scan", reason="store_error") == 1
    assert metric(registry, "celvern_history_store_up") == 0


def test_messages_are_cut_on_submit(recorders: Callable[..., DecisionRecorder]) -> None:
    store = FakeStore()
    recorder = recorders(lambda: store)
    recorder.start()
    recorder.submit(decision(at(), message="y" * (MAX_MESSAGE * 3)))
    assert recorder.flush(timeout=5)
    assert len(store.decisions[0].message) == MAX_MESSAGE


def test_retention_purges_at_start_and_periodically(recorders: Callable[..., DecisionRecorder]) -> None:
    store = FakeStore()
    now = at(days=20)
    recorder = recorders(lambda: store, clock=lambda: now, retention=datetime.timedelta(days=3), purge_interval=0.01)
    recorder.start()
    assert store.purged_twice.wait(5)
    assert set(store.purges) == {at(days=17)}


def test_retention_on_a_real_store(tmp_path: Path, recorders: Callable[..., DecisionRecorder]) -> None:
    path = str(tmp_path / "history.db")
    seed = SqliteStore(path)
    seed.write([decision(at(days=1), name="expired"), decision(at(days=9), name="recent")])
    seed.close()
    registry = CollectorRegistry()
    recorder = recorders(lambda: SqliteStore(path), clock=lambda: at(days=10), registry=registry)
    recorder.start()
    recorder.submit(decision(at(days=10), name="new"))
    assert recorder.flush(timeout=5)
    assert metric(registry, "celvern_history_purged_total") == 1
    check = SqliteStore(path)
    try:
        assert [item.name for item in check.violations(ViolationQuery()).items] == ["new", "recent"]
    finally:
        check.close()


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(StoreError("database is locked"), id="store-error"),
        pytest.param(TimeoutError("statement timeout"), id="unexpected-error"),
    ],
)
def test_a_failing_purge_never_holds_up_the_writes(
    recorders: Callable[..., DecisionRecorder], error: Exception
) -> None:
    store = FakeStore(purge_error=error)
    opened: list[int] = []

    def open_fake() -> DecisionStore:
        opened.append(1)
        return store

    registry = CollectorRegistry()
    recorder = recorders(open_fake, registry=registry, purge_interval=0.01)
    recorder.start()
    for n in range(3):
        recorder.submit(decision(at(), name=f"kept-{n}"))
    assert recorder.flush(timeout=5)
    assert [item.name for item in store.decisions] == ["kept-0", "kept-1", "kept-2"]
    assert store.purged_twice.wait(5)  # tried again later
    assert metric(registry, "celvern_history_store_errors_total", operation="purge") >= 2
    assert metric(registry, "celvern_history_dropped_total", record="decision", reason="store_error") == 0
    assert len(opened) == 1  # the store was not closed and re-opened over a purge


class RaisesOnce:
    """A stand-in for a prometheus child whose first `set` raises (a full multiprocess directory)."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.raised = threading.Event()

    def set(self, value: float) -> None:
        if not self.raised.is_set():
            self.raised.set()
            raise OSError(28, "No space left on device")
        self.real.set(value)  # type: ignore[attr-defined]


@pytest.mark.parametrize("gauge", ["_queue_depth", "_store_up"])
def test_the_writer_thread_survives_an_unexpected_error(
    recorders: Callable[..., DecisionRecorder], caplog: pytest.LogCaptureFixture, gauge: str
) -> None:
    store = FakeStore()
    registry = CollectorRegistry()
    recorder = recorders(lambda: store, registry=registry)
    flaky = RaisesOnce(getattr(recorder, gauge))
    setattr(recorder, gauge, flaky)
    with caplog.at_level("ERROR", logger="celvern.history"):
        recorder.start()
        assert flaky.raised.wait(5)
        recorder.submit(decision(at(), name="after"))
        assert recorder.flush(timeout=5)
    assert [item.name for item in store.decisions] == ["after"]
    assert recorder._thread is not None and recorder._thread.is_alive()
    assert any(record.exc_info for record in caplog.records)  # logged with its traceback
    assert metric(registry, "celvern_history_store_up") == 1  # recovered


@pytest.mark.parametrize("revived_by", ["submit", "flush"])
def test_a_dead_writer_thread_is_started_again(
    recorders: Callable[..., DecisionRecorder], monkeypatch: pytest.MonkeyPatch, revived_by: str
) -> None:
    store = FakeStore()
    recorder = recorders(lambda: store)
    real_run = recorder._run
    runs: list[int] = []

    def dies_once() -> None:
        runs.append(1)
        if len(runs) > 1:
            real_run()
        # else: the thread ends at once, as if something had killed it

    monkeypatch.setattr(recorder, "_run", dies_once)
    recorder.start()
    first = recorder._thread
    assert first is not None
    first.join(5)
    recorder.submit(decision(at(), name="revived"))
    if revived_by == "submit":
        assert store.writing.wait(5)
    else:
        assert recorder.flush(timeout=5)
    assert [item.name for item in store.decisions] == ["revived"]
    assert len(runs) == 2
    recorder.start()  # a running thread is left alone
    assert len(runs) == 2


def test_steady_load_still_purges_between_batches(recorders: Callable[..., DecisionRecorder]) -> None:
    """A decision arrives during every write: the writer must not drain forever and skip the purge."""
    ticks = [0.0]
    done = threading.Event()

    class Busy(FakeStore):
        def write(self, decisions: Sequence[Decision]) -> None:
            super().write(decisions)
            ticks[0] += 10  # each write lasts a purge interval
            if len(self.decisions) < 20:
                recorder.submit(decision(at(), name=str(len(self.decisions))))
            else:
                done.set()

    store = Busy()
    recorder = recorders(lambda: store, purge_interval=10, monotonic=lambda: ticks[0])
    recorder.start()
    recorder.submit(decision(at(), name="0"))
    assert done.wait(5)
    writes = [n for n, call in enumerate(store.calls) if call == "write"][:20]
    assert len(writes) == 20
    # Between any two writes, a purge (each write made one due).
    assert all("purge" in store.calls[a:b] for a, b in itertools.pairwise(writes))


def test_stop_writes_the_queue_without_purging(recorders: Callable[..., DecisionRecorder]) -> None:
    ticks = [0.0]
    hold = threading.Event()
    store = FakeStore(hold=hold)
    recorder = recorders(
        lambda: store, batch_size=1, flush_interval=3600, purge_interval=10, monotonic=lambda: ticks[0]
    )
    recorder.start()
    recorder.submit(decision(at(), name="first"))
    assert store.writing.wait(5)  # purged at start, now inside write()
    ticks[0] = 100  # a purge is due
    recorder.submit(decision(at(), name="second"))
    assert recorder.stop(timeout=0.01) is False
    hold.set()
    assert recorder.stop(timeout=5)
    assert [item.name for item in store.decisions] == ["first", "second"]
    assert len(store.purges) == 1


REFUSALS = [
    pytest.param(lambda: RecordError("NUL in text"), True, id="record-error"),
    pytest.param(lambda: UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), True, id="encoding"),
    pytest.param(lambda: StoreError("connection lost"), False, id="store-error"),
]


@pytest.mark.parametrize(("refusal", "one_by_one"), REFUSALS)
def test_a_refused_record_costs_only_itself(
    recorders: Callable[..., DecisionRecorder], refusal: Callable[[], Exception], one_by_one: bool
) -> None:
    store = FakeStore(refuse=refusal)
    opened: list[int] = []

    def open_fake() -> DecisionStore:
        opened.append(1)
        return store

    registry = CollectorRegistry()
    recorder = recorders(open_fake, registry=registry)
    names = ["a", "bad-1", "b", "bad-2", "c"]
    for name in names:
        recorder.submit(decision(at(), name=name))
    recorder.record_scan(ScanSummary(at(), ()))
    recorder.start()
    assert recorder.flush(timeout=5)

    def dropped(reason: str) -> float:
        return metric(registry, "celvern_history_dropped_total", record="decision", reason=reason)

    if one_by_one:
        assert [item.name for item in store.decisions] == ["a", "b", "c"]
        assert (dropped("rejected"), dropped("store_error")) == (2, 0)
        assert metric(registry, "celvern_history_store_errors_total", operation="write") == 0
        assert len(opened) == 1 and len(store.scans) == 1
    else:
        assert store.decisions == []
        assert (dropped("rejected"), dropped("store_error")) == (0, 5)
        assert metric(registry, "celvern_history_store_errors_total", operation="write") == 1
    recorder.submit(decision(at(), name="later"))
    assert recorder.flush(timeout=5)
    assert store.decisions[-1].name == "later"


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        pytest.param("plain", "plain", id="plain"),
        pytest.param("ünïcødé 🚨", "ünïcødé 🚨", id="unicode"),
        pytest.param("lone \ud800 surrogate", "lone \ufffd surrogate", id="lone-surrogate"),
        pytest.param("pair \ud83d\udea8 uncombined", "pair \ufffd\ufffd uncombined", id="uncombined-pair"),
        pytest.param("nul \x00 byte", "nul \ufffd byte", id="nul"),
    ],
)
def test_unstorable_text_is_replaced_on_submit(
    store: DecisionStore, recorders: Callable[..., DecisionRecorder], text: str, stored: str
) -> None:
    registry = CollectorRegistry()
    recorder = recorders(lambda: store, registry=registry)
    recorder.start()
    recorder.submit(decision(at(), name="before"))
    recorder.submit(dataclasses.replace(decision(at(hours=1), message=text, name=text), user=text))
    recorder.submit(decision(at(hours=2), name="after"))
    assert recorder.flush(timeout=5)
    items = store.violations(ViolationQuery()).items
    assert [item.name for item in items] == ["after", stored, "before"]
    assert (items[1].message, items[1].user) == (stored, stored)
    assert metric(registry, "celvern_history_written_total", record="decision") == 3
    assert storable(decision(at(), message=text)).message == stored


@pytest.mark.parametrize(
    ("value", "refused_by"),
    [
        pytest.param("lone \ud800", {"sqlite", "postgres"}, id="lone-surrogate"),
        pytest.param("nul \x00", {"postgres"}, id="nul"),
    ],
)
def test_a_value_a_store_cannot_hold_is_a_record_error(store: DecisionStore, value: str, refused_by: set[str]) -> None:
    kind = "postgres" if isinstance(store, PostgresStore) else "sqlite"
    bad = [decision(at(), name="good"), decision(at(), message=value)]
    if kind in refused_by:
        with pytest.raises(RecordError):
            store.write(bad)
        assert store.violations(ViolationQuery()).total == 0  # the whole transaction went
    else:
        store.write(bad)
    store.write([decision(at(hours=1), name="later")])  # the store still works
    assert store.violations(ViolationQuery()).items[0].name == "later"


@pytest.mark.parametrize(
    "cutoff",
    [
        pytest.param(at(days=2), id="at-midnight"),
        pytest.param(at(days=1, hours=13, minutes=5), id="mid-day"),
        pytest.param(at(days=30), id="everything"),
    ],
)
def test_purge_goes_in_chunks_each_consistent(
    filled: DecisionStore, monkeypatch: pytest.MonkeyPatch, cutoff: datetime.datetime
) -> None:
    """Every chunk is its own transaction, after which the rollup agrees with the rows left."""
    monkeypatch.setattr(filled, "PURGE_CHUNK", 7)
    seen: list[int] = []

    def between_chunks(elapsed: float) -> None:
        left = list(filled.violations(ViolationQuery(limit=1000)).items)
        seen.append(len(left))
        assert filled.daily_counts(at(days=-1), at(days=9)) == expected_daily(left, at(days=-1), at(days=9))
        assert filled.policy_counts(at(days=-1), labels=False) == [
            dataclasses.replace(count, severity="", category="") for count in expected_policies(left, at(days=-1))
        ]

    monkeypatch.setattr(filled, "_between_chunks", between_chunks)
    data = dataset()
    kept = [item for item in data if item.time >= cutoff]
    purged = len(data) - len(kept)
    assert filled.purge(cutoff) == purged
    assert len(seen) == purged // 7
    assert seen == [len(data) - 7 * n for n in range(1, len(seen) + 1)]  # oldest first, 7 at a time
    assert filled.daily_counts(at(days=-1), at(days=9)) == expected_daily(kept, at(days=-1), at(days=9))
    assert filled.violations(ViolationQuery(limit=0)).total == len(kept)
