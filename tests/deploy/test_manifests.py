"""The manifests under deploy/ are valid Kubernetes objects and cover what celvern reads and writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from engine.model import EXCEPTION_KIND, GENERATING_KINDS, MUTATING_KINDS, VALIDATING_KINDS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        found.extend(document for document in yaml.safe_load_all(path.read_text()) if document)
    return found


@pytest.mark.parametrize("document", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, "1.32", strict=True)


def test_crds_cover_every_kind_the_engine_loads() -> None:
    kinds = {d["spec"]["names"]["kind"] for d in documents() if d["kind"] == "CustomResourceDefinition"}
    assert kinds == {*VALIDATING_KINDS, *MUTATING_KINDS, *GENERATING_KINDS, EXCEPTION_KIND}


def test_crds_file_is_what_the_renderer_writes(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_crds", DEPLOY / "render_crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = [module.crd(*kind) for kind in module.KINDS]
    committed = [d for d in yaml.safe_load_all((DEPLOY / "crds.yaml").read_text()) if d]
    assert committed == rendered, "deploy/crds.yaml is stale: run python deploy/render_crds.py"


def test_controller_may_hold_its_lease() -> None:
    roles = [d for d in documents() if d["kind"] == "Role"]
    assert any(
        "leases" in rule["resources"] and {"get", "create", "update"} <= set(rule["verbs"])
        for role in roles
        for rule in role["rules"]
    )
