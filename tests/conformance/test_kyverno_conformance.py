"""Kyverno's own offline CLI suites, run through `celvern test` and gated per policy kind (see GATES).

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

# The suites each issue named, per policy kind, with the share of rows that must pass.
GATES = {"ValidatingPolicy": 0.95, "MutatingPolicy": 0.90, "GeneratingPolicy": 0.90}
GROUPS: dict[str, tuple[str, list[str]]] = {
    "kyverno-cli/test-validating-policy": ("ValidatingPolicy", ["kyverno-cli/test-validating-policy"]),
    "kyverno-cli/test-context-*-vpol": (
        "ValidatingPolicy",
        ["kyverno-cli/test-context-apicall-vpol", "kyverno-cli/test-context-configmap-vpol"],
    ),
    "kyverno-cli/test-ruleless-policy": ("ValidatingPolicy", ["kyverno-cli/test-ruleless-policy"]),
    "kyverno-cli/test/cel-http-*": (
        "ValidatingPolicy",
        [
            "kyverno-cli/test/cel-http-get-mock",
            "kyverno-cli/test/cel-http-post-mock",
            "kyverno-cli/test/cel-http-post-mock-deny",
        ],
    ),
    "kyverno-policies/pod-security-vpol": ("ValidatingPolicy", ["kyverno-policies/pod-security-vpol"]),
    "kyverno-policies/best-practices-vpol": ("ValidatingPolicy", ["kyverno-policies/best-practices-vpol"]),
    "kyverno-cli/test-mutating-policy": ("MutatingPolicy", ["kyverno-cli/test-mutating-policy"]),
    "kyverno-cli/test-context-*-mpol": (
        "MutatingPolicy",
        ["kyverno-cli/test-context-apicall-mpol", "kyverno-cli/test-context-configmap-mpol"],
    ),
    "kyverno-policies/*-mpol": (
        "MutatingPolicy",
        [
            "kyverno-policies/best-practices-mpol",
            "kyverno-policies/karpenter-mpol",
            "kyverno-policies/psa-mpol",
            "kyverno-policies/psp-migration-mpol",
            "kyverno-policies/other-mpol",
        ],
    ),
    "kyverno-cli/test-generating-policy": ("GeneratingPolicy", ["kyverno-cli/test-generating-policy"]),
    "kyverno-cli/test-context-*-gpol": (
        "GeneratingPolicy",
        ["kyverno-cli/test-context-apicall-gpol", "kyverno-cli/test-context-configmap-gpol"],
    ),
    "kyverno-policies/*-gpol": (
        "GeneratingPolicy",
        ["kyverno-policies/best-practices-gpol", "kyverno-policies/other-gpol"],
    ),
}


def _skip_patterns() -> list[str]:
    lines = (Path(__file__).parent / "skipped.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _test_folders() -> list[tuple[str, Path]]:
    skips = _skip_patterns()
    folders: list[tuple[str, Path]] = []
    for group, (_, roots) in GROUPS.items():
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
    assert len(FOLDERS) >= 60, f"expected the ValidatingPolicy and MutatingPolicy suites, found {len(FOLDERS)} folders"


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


@pytest.mark.parametrize("kind", sorted(GATES))
def test_conformance_gate(kind: str, tally: dict[str, Counter[str]]) -> None:
    """Per policy kind, the share of rows that pass meets its gate (runs after the folders: pytest keeps file
    order)."""
    groups = [group for group, (group_kind, _) in GROUPS.items() if group_kind == kind]
    if any(group not in tally for group in groups):
        pytest.fail("the conformance folders did not all run before the gate (run the whole module)")
    passed = sum(tally[group]["passed"] for group in groups)
    total = passed + sum(tally[group]["failed"] for group in groups)
    share = passed / total
    # Shown in the run's closing "Kyverno conformance" section, next to the per-folder groups.
    tally[f"{kind} (gate {100 * GATES[kind]:.0f}%)"] = Counter(passed=passed, failed=total - passed)
    assert share >= GATES[kind], f"{kind} conformance {100 * share:.1f}% is below the {100 * GATES[kind]:.0f}% gate"
