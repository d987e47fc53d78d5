"""Every built-in policy's Kyverno test suite passes under `celvern test`.

The library under policies/ ships each policy with its `kyverno-test.yaml`; this module discovers them all, so a new
policy brings its tests into CI without touching this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import celvern

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted((ROOT / "policies").rglob("kyverno-test.yaml"))


def test_the_library_has_suites() -> None:
    assert SUITES, "no kyverno-test.yaml found under policies/"


@pytest.mark.parametrize("suite", SUITES, ids=lambda path: str(path.parent.relative_to(ROOT)))
def test_suite_passes(suite: Path) -> None:
    result = CliRunner().invoke(celvern, ["test", str(suite.parent), "-o", "json"])
    report = json.loads(result.stdout)
    failed = [row for row in report["results"] if not row["ok"]]
    assert not failed, json.dumps(failed, indent=2)
    assert report["results"], f"{suite} scored no rows"
    assert result.exit_code == 0, result.output
