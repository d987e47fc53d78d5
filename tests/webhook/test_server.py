"""The webhook app in process, through httpx's ASGI transport: every route and every branch of the request path."""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from engine.matching import NamespaceLabels
from tests.webhook.test_admission import (
    ADD_TEAM,
    REQUIRE_APP,
    body,
    mutating,
    pod,
    policy_set,
    review,
    validating,
)
from webhook.logs import JsonFormatter
from webhook.server import create_app
from webhook.state import Snapshot, StaticNamespaces, StaticPolicySource

NAMESPACES = StaticNamespaces(
    {"default": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": {"env": "dev"}}}}
)


def make_app(*documents: str, registry: CollectorRegistry | None = None, max_body: int = 3 * 1024 * 1024) -> Starlette:
    snapshot = Snapshot(policy_set(*documents), version="test")
    return create_app(StaticPolicySource(snapshot), NAMESPACES, registry=registry, max_body=max_body)


async def _send(app: Starlette, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://celvern") as client:
        return await client.request(method, path, **kwargs)


def call(app: Starlette, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return asyncio.run(_send(app, method, path, **kwargs))


def post_review(app: Starlette, document: Any, path: str = "/validate") -> httpx.Response:
    return call(app, "POST", path, content=body(document), headers={"content-type": "application/json"})


def answer(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    document = response.json()
    assert (document["apiVersion"], document["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    result: dict[str, Any] = document["response"]
    return result


# --- /validate -------------------------------------------------------------------------------------------------


def test_validate_allows() -> None:
    response = answer(post_review(make_app(REQUIRE_APP), review(pod(labels={"app": "web"}), uid="u-allow")))
    assert response == {"uid": "u-allow", "allowed": True}


def test_validate_denies_with_403_status_and_same_uid() -> None:
    response = answer(post_review(make_app(REQUIRE_APP), review(uid="u-deny")))
    assert response["uid"] == "u-deny" and response["allowed"] is False
    assert response["status"] == {
        "status": "Failure",
        "code": 403,
        "reason": "Forbidden",
        "message": "policy require-labels: label app is required",
    }


def test_validate_warns_and_audits() -> None:
    warn = validating("warn-app", "false", "label app is advised", actions="Warn")
    audit = validating("audit-app", "false", "label app missing", actions="Audit")
    response = answer(post_review(make_app(warn, audit), review()))
    assert response["allowed"] is True
    assert response["warnings"] == ["policy warn-app: label app is advised"]
    assert response["auditAnnotations"] == {"audit-app": "label app missing"}


def test_unknown_namespace_with_namespace_selector_denies_under_fail() -> None:
    selector = "    namespaceSelector:\n      matchLabels:\n        env: prod\n"
    prod_only = validating("prod-only", "false", "not in prod", namespace_selector=selector)
    app = make_app(prod_only)
    response = answer(post_review(app, review(pod(namespace="ghost"), namespace="ghost")))
    assert response["allowed"] is False and response["status"]["code"] == 500
    assert "ghost" in response["status"]["message"]
    assert answer(post_review(app, review()))["allowed"] is True  # known namespace, labels env=dev: no match
    ignore = validating("prod-only", "false", failure_policy="Ignore", namespace_selector=selector)
    assert answer(post_review(make_app(ignore), review(pod(namespace="ghost"), namespace="ghost")))["allowed"]


def test_validate_runs_only_validating_policies() -> None:
    broken_mutation = mutating("bad", "[JSONPatch{op: 'remove', path: '/spec/nothing'}]")
    assert answer(post_review(make_app(broken_mutation), review()))["allowed"] is True


def test_dry_run_is_evaluated() -> None:
    assert answer(post_review(make_app(REQUIRE_APP), review(dry_run=True)))["allowed"] is False


# --- /mutate ---------------------------------------------------------------------------------------------------


def test_mutate_returns_a_json_patch_that_applies() -> None:
    original = pod()
    response = answer(post_review(make_app(ADD_TEAM, REQUIRE_APP), review(original, uid="m-1"), "/mutate"))
    assert response["uid"] == "m-1" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(copy.deepcopy(original), orjson.loads(base64.b64decode(response["patch"])))
    assert patched["metadata"]["labels"] == {"team": "blue"}


def test_mutate_error_under_fail_denies() -> None:
    bad = mutating("bad", "[JSONPatch{op: 'remove', path: '/spec/nothing'}]")
    response = answer(post_review(make_app(bad), review(), "/mutate"))
    assert response["allowed"] is False and response["status"]["code"] == 500 and "patch" not in response


# --- malformed, oversized, failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}', "expected apiVersion"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "request is required"),
        (body(review(uid="")), "request.uid must not be empty"),
        (body(review() | {"request": review()["request"] | {"object": "x"}}), "request.object must be an object"),
    ],
    ids=["not-json", "array", "wrong-version", "no-request", "no-uid", "object-not-map"],
)
@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_malformed_requests_get_400_json(path: str, content: bytes, expected: str) -> None:
    response = call(make_app(REQUIRE_APP), "POST", path, content=content)
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    assert expected in response.json()["error"]


def test_oversized_body_announced_by_content_length_gets_413() -> None:
    content = body(review(pod() | {"data": "x" * 2048}))
    response = call(make_app(REQUIRE_APP, max_body=1024), "POST", "/validate", content=content)
    assert response.status_code == 413 and "larger than 1024 bytes" in response.json()["error"]


def test_oversized_streamed_body_gets_413() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 200

    response = call(make_app(REQUIRE_APP, max_body=1024), "POST", "/validate", content=chunks())
    assert response.status_code == 413


def test_default_limit_is_3_mib() -> None:
    padding = "x" * (3 * 1024 * 1024)
    response = call(make_app(REQUIRE_APP), "POST", "/validate", content=body(review(pod() | {"data": padding})))
    assert response.status_code == 413
    assert answer(post_review(make_app(REQUIRE_APP), review(pod() | {"data": "x" * 1024 * 1024})))["allowed"] is False


@pytest.mark.parametrize(("depth", "status"), [(1000, 200), (1100, 400)], ids=["deep", "too-deep"])
def test_deeply_nested_objects(depth: int, status: int) -> None:
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    content = body(review()).replace(b'"spec":{', b'"spec":{"deep":' + nested + b",", 1)
    for path in ("/validate", "/mutate"):
        response = call(make_app(REQUIRE_APP, ADD_TEAM), "POST", path, content=content)
        assert response.status_code == status


def test_invalid_content_length_gets_400() -> None:
    response = call(make_app(), "POST", "/validate", content=b"{}", headers={"content-length": "nope"})
    assert response.status_code == 400


def test_wrong_method_is_405() -> None:
    assert call(make_app(), "GET", "/validate").status_code == 405


class _ExplodingNamespaces:
    def lookup(self, name: str) -> tuple[NamespaceLabels, Mapping[str, Any] | None]:
        raise RuntimeError("cache is gone")


class _ExplodingPolicies:
    def __init__(self) -> None:
        self.calls = 0

    def current(self) -> Snapshot | None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("boom")
        return Snapshot(policy_set(REQUIRE_APP), version="v")


def test_failing_namespace_lookup_is_an_unknown_namespace(caplog: pytest.LogCaptureFixture) -> None:
    selector = "    namespaceSelector:\n      matchLabels:\n        env: prod\n"
    snapshot = Snapshot(policy_set(validating("p", "true", namespace_selector=selector)), version="v")
    app = create_app(StaticPolicySource(snapshot), _ExplodingNamespaces())
    with caplog.at_level(logging.ERROR, "celvern.webhook"):
        response = answer(post_review(app, review()))
    assert response["allowed"] is False
    assert "namespace lookup failed" in caplog.text


def test_unexpected_exception_is_a_500_json_error_and_the_app_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(_ExplodingPolicies(), NAMESPACES)
    with caplog.at_level(logging.ERROR, "celvern.webhook"):
        first = post_review(app, review())
    assert first.status_code == 500 and first.json() == {"error": "internal error while evaluating the request"}
    assert "unexpected error" in caplog.text and "boom" in caplog.text
    assert answer(post_review(app, review()))["allowed"] is False


# --- health, readiness, metrics, audit log ----------------------------------------------------------------------


def test_healthz_is_always_ok() -> None:
    assert call(create_app(StaticPolicySource(None), NAMESPACES), "GET", "/healthz").status_code == 200


def test_readyz_waits_for_the_first_snapshot() -> None:
    source = StaticPolicySource(None)
    app = create_app(source, NAMESPACES)
    not_ready = call(app, "GET", "/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["status"] == "not ready"
    assert post_review(app, review()).status_code == 503
    ready = call(make_app(REQUIRE_APP), "GET", "/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "version": "test"}


def test_metrics_after_requests() -> None:
    registry = CollectorRegistry()
    app = make_app(REQUIRE_APP, ADD_TEAM, registry=registry)
    post_review(app, review())
    post_review(app, review(pod(labels={"app": "x"})))
    post_review(app, review(), "/mutate")
    call(app, "POST", "/validate", content=b"nope")
    text = call(app, "GET", "/metrics").text

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("celvern_admission_requests_total", operation="create", allowed="false", path="/validate") == 1
    assert value("celvern_admission_requests_total", operation="create", allowed="true", path="/validate") == 1
    assert value("celvern_admission_requests_total", operation="create", allowed="true", path="/mutate") == 1
    assert (
        value("celvern_admission_review_duration_seconds_count", operation="create", allowed="false", path="/validate")
        == 1
    )
    results = {"policy": "require-labels", "kind": "Pod", "operation": "create"}
    assert value("celvern_policy_results_total", result="fail", action="Deny", **results) == 1
    assert value("celvern_policy_results_total", result="pass", action="None", **results) == 1
    assert (
        value(
            "celvern_policy_results_total",
            policy="add-team",
            result="pass",
            kind="Pod",
            operation="create",
            action="Mutate",
        )
        == 1
    )
    assert value("celvern_http_requests_total", path="/validate", code="400") == 1
    assert "# TYPE celvern_admission_review_duration_seconds histogram" in text
    assert (
        'celvern_policy_results_total{action="Deny",kind="Pod",operation="create",'
        'policy="require-labels",result="fail"} 1.0' in text
    )


def test_default_registry_has_process_metrics() -> None:
    text = call(make_app(), "GET", "/metrics").text
    assert "process_" in text or "python_info" in text


def _metric_worker(directory: Path, denied: int, allowed: int, *, scrape: bool = False) -> str:
    """`metrics_worker.py` in a new process: prometheus_client reads PROMETHEUS_MULTIPROC_DIR when imported."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.webhook.metrics_worker", str(denied), str(allowed), *(["--scrape"] * scrape)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((2, 1), (1, 3)),  # (denied, allowed) reviews of each worker: the same label sets in both
        ((0, 2), (3, 0)),  # label sets that only one worker has seen
    ],
)
def test_multiprocess_metrics_are_summed_over_workers(
    tmp_path: Path, first: tuple[int, int], second: tuple[int, int]
) -> None:
    _metric_worker(tmp_path, *first)  # a worker that has answered and is gone
    text = _metric_worker(tmp_path, *second, scrape=True)  # the worker that answers the scrape
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    denied, allowed = first[0] + second[0], first[1] + second[1]
    decision = {"operation": "create", "path": "/validate"}
    assert value("celvern_admission_requests_total", allowed="false", **decision) == denied
    assert value("celvern_admission_requests_total", allowed="true", **decision) == allowed
    assert value("celvern_admission_review_duration_seconds_count", allowed="false", **decision) == denied
    assert value("celvern_admission_review_duration_seconds_count", allowed="true", **decision) == allowed
    results = {"policy": "require-labels", "kind": "Pod", "operation": "create"}
    assert value("celvern_policy_results_total", result="fail", action="Deny", **results) == denied
    assert value("celvern_policy_results_total", result="pass", action="None", **results) == allowed
    assert value("celvern_http_requests_total", path="/validate", code="200") == denied + allowed
    assert "# TYPE celvern_admission_review_duration_seconds histogram" in text
    assert not any(name.startswith(("process_", "python_")) for name, _ in samples)  # per-process: left out
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per worker


def test_multiprocess_dir_set_after_prometheus_client_was_imported_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # too late: metrics here would stay in memory
    with pytest.raises(RuntimeError, match="set after prometheus_client was imported"):
        make_app(REQUIRE_APP)


def test_one_json_audit_line_per_decision(caplog: pytest.LogCaptureFixture) -> None:
    warn = validating("warn-app", "false", "label app is advised", actions="Warn")
    with caplog.at_level(logging.INFO, "celvern.audit"):
        post_review(make_app(REQUIRE_APP, warn), review(dry_run=True))
    records = [r for r in caplog.records if r.name == "celvern.audit"]
    assert len(records) == 2
    lines = [orjson.loads(JsonFormatter().format(record)) for record in records]
    deny = lines[0]
    assert {k: deny[k] for k in ("policy", "action", "resource", "user", "message", "dry_run")} == {
        "policy": "require-labels",
        "action": "Deny",
        "resource": "default/Pod/web",
        "user": "alice",
        "message": "label app is required",
        "dry_run": True,
    }
    assert "time" in deny and lines[1]["action"] == "Warn"


def test_allowed_request_writes_no_audit_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "celvern.audit"):
        post_review(make_app(REQUIRE_APP), review(pod(labels={"app": "x"})))
    assert not [r for r in caplog.records if r.name == "celvern.audit"]
