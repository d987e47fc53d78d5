"""Mutations and generation through the command line: patchedResources in `celvern test`, mutated and generated
files from `celvern apply`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli.main import celvern

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy)
    return copy


def rows(directory: Path) -> list[dict[str, object]]:
    result = CliRunner().invoke(celvern, ["test", str(directory), "-o", "json"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    found: list[dict[str, object]] = report["results"]
    return found


def test_examples_patched_resources_pass(examples: Path) -> None:
    mutating = [
        row for row in rows(examples / "tests") if row["policy"] in {"always-pull-images", "default-run-as-non-root"}
    ]
    assert len(mutating) == 4
    assert all(row["ok"] for row in mutating), mutating


def test_patched_resource_difference_fails_the_row(examples: Path) -> None:
    expected = examples / "tests" / "patched" / "final.yaml"
    documents = list(yaml.safe_load_all(expected.read_text()))
    documents[1]["spec"]["securityContext"]["runAsNonRoot"] = True  # a wrong expectation: explicit false is kept
    expected.write_text(yaml.safe_dump_all(documents))
    [row] = [r for r in rows(examples / "tests") if r["policy"] == "default-run-as-non-root" and not r["ok"]]
    assert row["resource"] == "v1/Pod/shop/debug-shell"
    assert row["reason"] == "Resource diff"


def test_apply_writes_mutated_resources(examples: Path, tmp_path: Path) -> None:
    out = tmp_path / "mutated"
    result = CliRunner().invoke(
        celvern,
        ["apply", str(examples / "policies"), "-r", str(examples / "resources"), "--output-dir", str(out)],
    )
    assert result.exit_code == 1, result.output  # the demo resources include violations on purpose
    written = sorted(path.name for path in out.iterdir())
    assert written == [
        "api-mutated.yaml",
        "debug-shell-mutated.yaml",
        "default-deny-network-policy-generated.yaml",
        "unlabelled-mutated.yaml",
        "web-mutated.yaml",
    ]
    [network_policy] = yaml.safe_load_all((out / "default-deny-network-policy-generated.yaml").read_text())
    assert (network_policy["kind"], network_policy["metadata"]["namespace"]) == ("NetworkPolicy", "shop")
    web = yaml.safe_load((out / "web-mutated.yaml").read_text())
    assert web["spec"]["securityContext"] == {"runAsNonRoot": True}
    assert web["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    unlabelled = yaml.safe_load((out / "unlabelled-mutated.yaml").read_text())
    assert "namespace" not in unlabelled["metadata"], "a resource is written as given, without the defaulted namespace"
