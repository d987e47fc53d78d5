"""Collects the conformance pass counts and prints them at the end of the pytest run."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

TALLY: dict[str, Counter[str]] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    terminalreporter.section("Kyverno conformance (rows passed / rows)")
    total_passed = total = 0
    for group in sorted(TALLY):
        counter = TALLY[group]
        rows = counter["passed"] + counter["failed"]
        total_passed += counter["passed"]
        total += rows
        terminalreporter.write_line(f"{group:<60} {counter['passed']:>5} / {rows:<5}")
    share = 100.0 * total_passed / total if total else 0.0
    terminalreporter.write_line(f"{'total':<60} {total_passed:>5} / {total:<5} ({share:.1f}%)")


@pytest.fixture(scope="session")
def tally() -> dict[str, Counter[str]]:
    return TALLY
