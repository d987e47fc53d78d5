"""Kyverno's own offline CLI suites for ValidatingPolicy, run through `celvern test`, gated at 95% of rows.

The suites live in ../shared/conformance (never copied into this repository). Each test folder runs in a
subprocess of the real command line (`python -m cli.main test DIR -o json`), exactly as a CI pipeline would, and
contributes its rows to the per-group counts printed at the end of the run. The gate compares the rows that
pass against all rows, after the explicit skip list in skipped.txt.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
SHARED = REPOSITORY.parent / "shared" / "conformance"
GATE = 0.95

# The ValidatingPolicy parts named by the core-engine issue.
GROUPS = {
    "kyverno-cli/test-validating-policy": ["kyverno-cli/test-validating-policy"],
    "kyverno-cli/test-context-*-vpol": [
        "kyverno-cli/test-context-apicall-vpol",
        "kyverno-cli/test-context-configmap-vpol",
    ],
    "kyverno-cli/test-ruleless-policy": ["kyverno-cli/test-ruleless-policy"],
    "kyverno-cli/test/cel-http-*": [
        "kyverno-cli/test/cel-http-get-mock",
        "kyverno-cli/test/cel-http-post-mock",
        "kyverno-cli/test/cel-http-post-mock-deny",
    ],
    "kyverno-policies/pod-security-vpol": ["kyverno-policies/pod-security-vpol"],
    "kyverno-policies/best-practices-vpol": ["kyverno-policies/best-practices-vpol"],
}


def _skip_patterns() -> list[str]:
    lines = (Path(__file__).parent / "skipped.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _test_folders() -> list[tuple[str, Path]]:
    skips = _skip_patterns()
    folders: list[tuple[str, Path]] = []
    for group, roots in GROUPS.items():
        for root in roots:
            for test_file in sorted((SHARED / root).rglob("kyverno-test.yaml")):
                folder = test_file.parent
                relative = folder.relative_to(SHARED).as_posix()
                if any(
                    fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, pattern + "/*") for pattern in skips
                ):
                    continue
                folders.append((group, folder))
    return folders


FOLDERS = _test_folders() if SHARED.is_dir() else []


def _run(folder: Path) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-m", "cli.main", "test", str(folder), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPOSITORY,
        check=False,
    )
    assert completed.returncode in (0, 1), f"celvern test crashed on {folder}:\n{completed.stderr[-3000:]}"
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    report: dict[str, object] = json.loads(completed.stdout)
    return report


def test_shared_conformance_suites_are_present() -> None:
    assert SHARED.is_dir(), f"conformance suites not found at {SHARED} (the shared folder sits beside the checkout)"
    assert len(FOLDERS) >= 40, f"expected the ValidatingPolicy suites, found only {len(FOLDERS)} test folders"


@pytest.mark.parametrize(("group", "folder"), FOLDERS, ids=[f.relative_to(SHARED).as_posix() for _, f in FOLDERS])
def test_conformance_folder(group: str, folder: Path, tally: dict[str, Counter[str]]) -> None:
    report = _run(folder)
    summary = report["summary"]
    assert isinstance(summary, dict)
    passed, failed = int(summary["passed"]), int(summary["failed"])
    assert passed + failed > 0, f"{folder} produced no rows"
    counter = tally.setdefault(group, Counter())
    counter["passed"] += passed
    counter["failed"] += failed
    # Individual folders may fail rows; the gate below is what CI enforces. Failed rows are listed for triage.
    if failed:
        rows = report.get("results", [])
        assert isinstance(rows, list)
        for row in rows:
            if not row.get("ok"):
                print(
                    f"conformance row failed: {folder.relative_to(SHARED)} {row.get('policy')} "
                    f"{row.get('resource')}: {row.get('reason')}"
                )


def test_conformance_gate(tally: dict[str, Counter[str]]) -> None:
    """At least 95% of all rows pass (runs after the folders: pytest keeps file order)."""
    if len(tally) < len(GROUPS):
        pytest.fail("the conformance folders did not all run before the gate (run the whole module)")
    passed = sum(counter["passed"] for counter in tally.values())
    total = passed + sum(counter["failed"] for counter in tally.values())
    share = passed / total
    print(f"Kyverno ValidatingPolicy conformance: {passed}/{total} rows pass ({100 * share:.1f}%)")
    assert share >= GATE, f"conformance {100 * share:.1f}% is below the {100 * GATE:.0f}% gate"
