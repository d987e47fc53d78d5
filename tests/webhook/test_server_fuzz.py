"""Fuzzing the webhook app: whatever arrives, the answer is an AdmissionReview for the same uid or a 4xx JSON error.

Random JSON, random bytes and valid AdmissionReviews with random parts replaced, removed or added are sent to both
admission routes of an app loaded with policies that read deep into the object (so that odd shapes reach CEL).
Never a 5xx, never an exception out of the app.
"""

from __future__ import annotations

import asyncio
import copy
import functools
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from tests.webhook.test_admission import ADD_TEAM, REQUIRE_APP, pod, policy_set, review, validating
from webhook.server import create_app
from webhook.state import Snapshot, StaticNamespaces, StaticPolicySource

EVERYTHING = """\
  matchConstraints:
    resourceRules:
    - apiGroups: ["*"]
      apiVersions: ["*"]
      operations: [CREATE, UPDATE, DELETE, CONNECT]
      resources: ["*"]
"""
SELECTOR = "    namespaceSelector:\n      matchLabels:\n        env: prod\n"
POLICIES = (
    REQUIRE_APP,
    ADD_TEAM,
    validating(
        "images",
        "object.spec.containers.all(c, c.image.startsWith('registry.example.com/'))",
        actions="Warn",
        rules=EVERYTHING,
    ),
    validating(
        "names",
        "object.metadata.name.size() < 20 && request.userInfo.username != 'mallory'",
        "bad name",
        actions="Audit",
        failure_policy="Ignore",
        rules=EVERYTHING,
    ),
    validating("prod", "oldObject == null || has(oldObject.metadata)", rules=EVERYTHING, namespace_selector=SELECTOR),
)
NAMESPACES = StaticNamespaces(
    {"default": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": {"env": "prod"}}}}
)
SETTINGS = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def app() -> Starlette:
    return create_app(StaticPolicySource(Snapshot(policy_set(*POLICIES), version="fuzz")), NAMESPACES)


async def _post_both(content: bytes) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app(), raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://celvern") as client:
        return [await client.post(path, content=content) for path in ("/validate", "/mutate")]


def check(content: bytes, sent: Any) -> None:
    """Both routes answer `content` with a review for its uid, or a 4xx JSON error."""
    for response in asyncio.run(_post_both(content)):
        assert response.headers["content-type"] == "application/json"
        document = orjson.loads(response.content)
        if response.status_code == 200:
            assert (document["apiVersion"], document["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
            answer = document["response"]
            assert answer["uid"] == sent["request"]["uid"]
            assert isinstance(answer["allowed"], bool)
            assert answer["allowed"] or answer["status"]["code"] in (403, 500)
        else:
            assert 400 <= response.status_code < 500, (response.status_code, document)
            assert isinstance(document["error"], str)


KEYS = st.sampled_from(
    [
        "apiVersion",
        "kind",
        "request",
        "uid",
        "operation",
        "object",
        "oldObject",
        "metadata",
        "labels",
        "annotations",
        "name",
        "namespace",
        "spec",
        "containers",
        "image",
        "userInfo",
        "username",
        "groups",
        "extra",
        "dryRun",
        "resource",
        "subResource",
        "options",
        "group",
        "version",
    ]
) | st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT", "v1", "Pod", "pods", "admission.k8s.io/v1", ""])
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=16,
)


@SETTINGS
@given(JSON)
def test_random_json(value: Any) -> None:
    check(orjson.dumps(value), {"request": {"uid": None}})


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes(content: bytes) -> None:
    check(content, {"request": {"uid": None}})


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            paths.extend(_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths.extend(_paths(child, (*prefix, index)))
    return paths


def _mutate(document: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(_paths(document)[1:]), label="path")
        parent: Any = document
        for part in path[:-1]:
            parent = parent[part]
        how = data.draw(st.sampled_from(["replace", "remove", "add"]), label="how")
        if how == "replace":
            parent[path[-1]] = data.draw(JSON, label="value")
        elif how == "remove" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(KEYS, label="key")] = data.draw(JSON, label="value")
        else:
            parent.append(data.draw(JSON, label="value"))
    return document


BASES = [
    review(),
    review(pod(labels={"app": "web"}), operation="UPDATE", old=pod()),
    review(operation="DELETE", old=pod(labels={"app": "x"})),
    review(pod(namespace="ghost"), namespace="ghost", dry_run=True),
]


@SETTINGS
@given(st.sampled_from(BASES), st.data())
def test_mutated_reviews(base: dict[str, Any], data: st.DataObject) -> None:
    document = _mutate(copy.deepcopy(base), data)
    content = orjson.dumps(document)
    request = document.get("request")
    uid = request.get("uid") if isinstance(request, dict) else None
    check(content, {"request": {"uid": uid}})


@SETTINGS
@given(st.sampled_from(BASES))
def test_valid_reviews_always_get_a_review(base: dict[str, Any]) -> None:
    for response in asyncio.run(_post_both(orjson.dumps(base))):
        assert response.status_code == 200
        assert response.json()["response"]["uid"] == base["request"]["uid"]
