"""The decision-history options shared by `celvern serve`, `celvern controller` and `celvern scan`.

Why it exists: the three commands write to the same history (`webhook.history`), and an operator should configure
it the same way everywhere: `--history URL` (a SQLite file, or PostgreSQL shared by replicas), `--no-history`, and
`--history-retention`. The URL is checked by opening the store once at start, so that a wrong URL or an unwritable
file stops the command at once instead of silently losing every decision.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from webhook.history import DecisionRecorder

F = TypeVar("F", bound=Callable[..., Any])


def parse_duration(text: str, option: str) -> float:
    """Seconds in `7d`, `36h`, `90m` or `45s`; a usage error naming the option otherwise."""
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    number, unit = text[:-1], text[-1:]
    try:
        seconds = float(number) * units[unit]
    except (KeyError, ValueError):
        message = f"expected a duration such as 7d, 36h or 90m, got {text!r}"
        raise click.BadParameter(message, param_hint=option) from None
    if not 0 < seconds < float("inf"):
        raise click.BadParameter(f"must be a positive, finite duration, got {text!r}", param_hint=option)
    return seconds


def history_options(*, default_on: bool = True) -> Callable[[F], F]:
    """Add `--history URL`, `--no-history` (when the history is on by default) and `--history-retention`; the
    command receives `history_url`, `no_history` and `history_retention` (seconds)."""

    def decorate(command: F) -> F:
        default = "[default: $CELVERN_HISTORY, else $XDG_STATE_HOME/celvern/history.db]" if default_on else ""
        command = click.option(
            "--history-retention",
            default="7d",
            show_default=True,
            callback=lambda _ctx, _param, value: parse_duration(value, "--history-retention"),
            help="How long decisions are kept (e.g. 7d, 36h); older ones are deleted.",
        )(command)
        command = click.option(
            "--no-history",
            is_flag=True,
            hidden=not default_on,
            help="Record no decisions.",
        )(command)
        return click.option(
            "--history",
            "history_url",
            default=None,
            metavar="URL",
            help="Decision history: a SQLite file (path or sqlite:///path) or postgresql://... shared by replicas "
            + default,
        )(command)

    return decorate


def resolve_history(url: str | None, no_history: bool, *, default_on: bool = True) -> str | None:
    """The history URL to use, or None for none; raises a usage error for contradictory options and a
    ClickException (exit 2) for a store that cannot be opened."""
    from webhook.history import StoreError, default_store_url, open_store

    if no_history and url:
        raise click.UsageError("give either --history or --no-history")
    if no_history or (url is None and not default_on):
        return None
    chosen = url or default_store_url()
    try:
        open_store(chosen).close()
    except StoreError as error:
        raise HistoryError(f"cannot open the decision history: {error}") from None
    return chosen


class HistoryError(click.ClickException):
    exit_code = 2


def recorder(url: str, retention: float, registry: CollectorRegistry | None = None) -> DecisionRecorder:
    """A started-later `DecisionRecorder` writing to `url` (a fresh store per (re)connection)."""
    from webhook.history import DecisionRecorder, open_store

    return DecisionRecorder(lambda: open_store(url), retention=datetime.timedelta(seconds=retention), registry=registry)
