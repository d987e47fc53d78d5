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
    kinds = sorted(name for name in TALLY if "(gate" in name)
    for name in [*sorted(name for name in TALLY if name not in kinds), *kinds]:
        counter = TALLY[name]
        rows = counter["passed"] + counter["failed"]
        share = f"({100.0 * counter['passed'] / rows:.1f}%)" if rows and name in kinds else ""
        terminalreporter.write_line(f"{name:<60} {counter['passed']:>5} / {rows:<5} {share}")


@pytest.fixture(scope="session")
def tally() -> dict[str, Counter[str]]:
    return TALLY
