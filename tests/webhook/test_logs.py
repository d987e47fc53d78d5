"""JSON log lines carry the message, level, logger and extra fields."""

from __future__ import annotations

import logging

import orjson

from webhook.logs import JsonFormatter


def test_json_line_with_extra_fields() -> None:
    record = logging.LogRecord("celvern.generator", logging.WARNING, __file__, 1, "dropped %s", ("ns/a",), None)
    record.attempts = 5
    entry = orjson.loads(JsonFormatter().format(record))
    assert (entry["level"], entry["logger"], entry["message"], entry["attempts"]) == (
        "warning",
        "celvern.generator",
        "dropped ns/a",
        5,
    )
    assert entry["time"].endswith("+00:00")
