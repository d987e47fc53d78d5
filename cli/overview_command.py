"""`celvern overview`: the dashboard's governance overview in the terminal.

Why this module exists: the overview (`webhook.overview.overview`) is as useful from a shell or a CI job as in a
browser. `-o json` prints exactly the document `GET /api/v1/overview` serves; the table output shows the same
numbers with rich (colour only on a terminal). The data comes from the same function, so the two never disagree.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click
import orjson
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.dashboard_command import LIBRARY_OPTION, STORE_OPTION, load_infos, load_library_catalogue
from cli.output import console
from webhook.history import StoreError, open_store
from webhook.overview import overview

_SEVERITY_STYLE = {"high": "red", "medium": "yellow", "low": "green"}
_ACTION_STYLE = {"deny": "red", "warn": "yellow", "audit": "yellow"}
_MESSAGE_WIDTH = 80


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


clock: Callable[[], datetime.datetime] = _now
"""The current time (tests replace it)."""


def _table(title: str, *columns: str, numeric: Sequence[str] = ()) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left", overflow="fold")
    return table


def _cut(text: str, width: int = _MESSAGE_WIDTH) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def render(target: Console, data: Mapping[str, Any]) -> None:
    """The overview as tables: severities, the 7 days, top violated, safe to enforce, recent violations."""
    severities = _table("Policies by severity", "SEVERITY", "ENABLED", "LIBRARY", numeric=("ENABLED", "LIBRARY"))
    for row in data["policies"]["bySeverity"]:
        severities.add_row(
            Text(row["severity"], style=_SEVERITY_STYLE.get(row["severity"], "")),
            str(row["enabled"]),
            str(row["total"]),
        )
    target.print(severities)

    days = _table(
        "Last 7 days (UTC)",
        "DAY",
        "DENY",
        "WARN/AUDIT",
        "SCAN FAILURES",
        numeric=("DENY", "WARN/AUDIT", "SCAN FAILURES"),
    )
    for row in data["days"]:
        days.add_row(row["date"], str(row["deny"]), str(row["warnAudit"]), str(row["scanFailures"]))
    totals = data["totals"]
    days.add_row(
        Text("total", style="bold"), str(totals["deny"]), str(totals["warnAudit"]), str(totals["scanFailures"])
    )
    target.print(days)

    top = _table(
        "Top violated policies",
        "POLICY",
        "SEVERITY",
        "CATEGORY",
        "DENY",
        "WARN",
        "AUDIT",
        "TOTAL",
        numeric=("DENY", "WARN", "AUDIT", "TOTAL"),
    )
    for row in data["topViolated"]:
        top.add_row(
            row["policy"],
            Text(row["severity"], style=_SEVERITY_STYLE.get(row["severity"], "")),
            row["category"],
            str(row["deny"]),
            str(row["warn"]),
            str(row["audit"]),
            str(row["total"]),
        )
    target.print(top if data["topViolated"] else "No violations in the last 7 days.\n")

    scan = data["lastScan"]
    if scan is None:
        target.print("Safe to enforce: no background scan recorded yet.\n")
    else:
        safe = _table(
            f"Safe to enforce (not in Deny, no fail or error in the scan of {scan['time']}, no admission "
            "decision in 7 days)",
            "POLICY",
            "NOW",
            "SEVERITY",
            "PASSED",
            numeric=("PASSED",),
        )
        for row in data["safeToEnforce"]:
            safe.add_row(row["policy"], ", ".join(row["actions"]), row["severity"], str(row["passed"]))
        target.print(safe if data["safeToEnforce"] else "Safe to enforce: none.\n")

    recent = _table(
        f"Recent violations ({len(data['recent'])} of {data['recentTotal']})",
        "TIME",
        "SOURCE",
        "ACTION",
        "POLICY",
        "RESOURCE",
        "MESSAGE",
    )
    for item in data["recent"]:
        resource = f"{item['kind']} {item['namespace'] + '/' if item['namespace'] else ''}{item['name']}"
        recent.add_row(
            item["time"],
            item["source"],
            Text(item["action"], style=_ACTION_STYLE.get(item["action"], "")),
            item["policy"],
            resource,
            _cut(item["message"]),
        )
    target.print(recent if data["recent"] else "No violations recorded in the last 7 days.")


@click.command("overview")
@STORE_OPTION
@click.option(
    "-p",
    "--policies",
    "policy_paths",
    multiple=True,
    type=click.Path(exists=True),
    help="Loaded policies (repeatable).",
)
@LIBRARY_OPTION
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format."
)
def overview_command(store_url: str, policy_paths: tuple[str, ...], library_dir: str | None, output: str) -> None:
    """Print the governance overview: policies by severity, the last 7 days, top violated, safe to enforce."""
    infos = load_infos(list(policy_paths))
    totals, names = load_library_catalogue(library_dir)
    try:
        store = open_store(store_url)
    except StoreError as error:
        raise click.ClickException(str(error)) from None
    try:
        data = overview(store, infos, totals, clock(), library_names=names)
    except StoreError as error:
        raise click.ClickException(str(error)) from None
    finally:
        store.close()
    if output == "json":
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    render(console(), data)
