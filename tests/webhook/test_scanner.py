"""Background scans (`webhook.scanner`) against `InMemoryCluster` at the seam, and once through the real client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.loader import parse_text
from engine.policy_set import PolicySet, build_policy_set
from engine.resources import DEFAULT_MAPPER, ResourceType
from engine.results import Status
from tests.webhook.fake_apiserver import FakeApiServer, custom_resources
from webhook.cluster import Gone, InMemoryCluster, ObjectList, list_all_pages, list_pages
from webhook.kubernetes_cluster import KubernetesCluster
from webhook.scanner import NAMESPACES, ResourceResult, Scanner, background_policies, scan_plan

PODS = DEFAULT_MAPPER.for_kind("v1", "Pod")
CONFIGMAPS = DEFAULT_MAPPER.for_kind("v1", "ConfigMap")
DEPLOYMENTS = DEFAULT_MAPPER.for_kind("apps/v1", "Deployment")
NODES = DEFAULT_MAPPER.for_kind("v1", "Node")


def policy(
    name: str,
    *,
    resources: tuple[str, ...] = ("pods",),
    group: str = "",
    version: str = "v1",
    expression: str = "has(object.metadata.labels) && 'app' in object.metadata.labels",
    background: bool | None = None,
    namespace_selector: dict[str, Any] | None = None,
    kind: str = "ValidatingPolicy",
) -> dict[str, Any]:
    constraints: dict[str, Any] = {
        "resourceRules": [
            {"apiGroups": [group], "apiVersions": [version], "operations": ["CREATE"], "resources": list(resources)}
        ]
    }
    if namespace_selector is not None:
        constraints["namespaceSelector"] = namespace_selector
    spec: dict[str, Any] = {
        "validationActions": ["Audit"],
        "matchConstraints": constraints,
        "validations": [{"expression": expression, "message": f"{name} failed"}],
    }
    if background is not None:
        spec["evaluation"] = {"background": {"enabled": background}}
    return {"apiVersion": "policies.kyverno.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def policy_set(*documents: dict[str, Any]) -> PolicySet:
    return build_policy_set(parse_text(yaml.safe_dump_all(documents), "policies.yaml"))


def pod(namespace: str, name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]},
    }


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


@pytest.fixture
def cluster() -> InMemoryCluster:
    memory = InMemoryCluster()
    for name, team in (("shop", "red"), ("bank", "blue")):
        memory.create(NAMESPACES, namespace(name, team=team))
    return memory


def statuses(results: list[ResourceResult]) -> dict[str, list[str]]:
    return {
        result.key.path(): [rule.status.value for response in result.responses for rule in response.rules]
        for result in results
    }


# --- pagination at the seam -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "page_size", "pages"),
    [
        pytest.param(0, 3, 1, id="empty: one page"),
        pytest.param(3, 3, 1, id="exactly one page"),
        pytest.param(7, 3, 3, id="more objects than the page size"),
        pytest.param(7, 500, 1, id="page bigger than the list"),
    ],
)
def test_list_pages_reads_every_object_in_pages(count: int, page_size: int, pages: int) -> None:
    memory = InMemoryCluster()
    for index in range(count):
        memory.create(CONFIGMAPS, {"metadata": {"namespace": "a", "name": f"cm-{index:02d}"}})
    memory.calls.clear()
    listed = list(list_pages(memory, CONFIGMAPS, page_size=page_size))
    assert [len(page) for page in listed][:-1] == [page_size] * (pages - 1)
    assert [o["metadata"]["name"] for page in listed for o in page] == [f"cm-{i:02d}" for i in range(count)]
    assert memory.calls == [("list", "configmaps")] * pages


def test_continue_tokens_are_stable_when_objects_change_between_pages() -> None:
    memory = InMemoryCluster()
    for index in range(4):
        memory.create(CONFIGMAPS, {"metadata": {"namespace": "a", "name": f"cm-{index}"}})
    first = memory.list(CONFIGMAPS, limit=2)
    memory.delete(CONFIGMAPS, "a", "cm-0")  # an object before the token does not shift the next page
    second = memory.list(CONFIGMAPS, limit=2, continue_token=first.continue_token)
    assert [o["metadata"]["name"] for o in second.items] == ["cm-2", "cm-3"]
    assert second.continue_token == ""


def test_list_without_limit_is_unchanged() -> None:
    memory = InMemoryCluster()
    memory.create(CONFIGMAPS, {"metadata": {"namespace": "a", "name": "one"}})
    listed = memory.list(CONFIGMAPS)
    assert [o["metadata"]["name"] for o in listed.items] == ["one"] and listed.continue_token == ""


class ExpiringTokens(InMemoryCluster):
    """The second page's continue token has expired, once."""

    expired = False

    def list(
        self,
        resource: ResourceType,
        namespace: str = "",
        label_selector: str = "",
        *,
        limit: int = 0,
        continue_token: str = "",
    ) -> ObjectList:
        if continue_token and not self.expired:
            self.expired = True
            raise Gone("the provided continue parameter is too old")
        return super().list(resource, namespace, label_selector, limit=limit, continue_token=continue_token)


def test_an_expired_continue_token_restarts_the_list_and_the_scan_sees_each_object_once() -> None:
    memory = ExpiringTokens()
    for index in range(3):
        memory.create(PODS, pod("shop", f"p{index}"))
    assert len(list(list_all_pages(memory, PODS, page_size=2))) == 5  # first page twice: callers dedupe
    memory.expired = False
    results = list(Scanner(memory, policy_set(policy("needs-app")), page_size=2, list_workers=1).scan())
    assert sorted(r.key.name for r in results) == ["p0", "p1", "p2"]


@pytest.mark.parametrize(
    ("lifetime", "resume", "outcome"),
    [
        pytest.param(0, True, "every object once", id="tokens never expire"),
        pytest.param(3, True, "every object once", id="expired tokens resume from the 410's continue token"),
        pytest.param(3, False, "gone", id="no resume token and no progress: gives up"),
    ],
)
def test_continue_tokens_that_keep_expiring(lifetime: int, resume: bool, outcome: str) -> None:
    """Tokens expire while a slow consumer evaluates (etcd compaction): a list of 20 pages must still finish."""
    memory = InMemoryCluster()
    for index in range(40):
        memory.create(CONFIGMAPS, {"metadata": {"namespace": "a", "name": f"cm-{index:02d}"}})
    memory.continue_lifetime, memory.resume_expired = lifetime, resume
    if outcome == "gone":
        with pytest.raises(Gone):
            list(list_all_pages(memory, CONFIGMAPS, page_size=2))
        return
    names = [o["metadata"]["name"] for o in list_all_pages(memory, CONFIGMAPS, page_size=2)]
    assert names == [f"cm-{index:02d}" for index in range(40)]


def test_a_scan_finishes_although_its_continue_tokens_keep_expiring() -> None:
    memory = InMemoryCluster()
    memory.create(NAMESPACES, namespace("shop"))
    for index in range(60):
        memory.create(PODS, pod("shop", f"p{index:02d}"))
    memory.continue_lifetime = 2  # every list's token dies after 2 pages: restarting once is not enough
    scan = Scanner(memory, policy_set(policy("needs-app")), page_size=5, list_workers=1).scan()
    results = list(scan)
    assert scan.complete, [error.message for error in scan.errors]
    assert sorted(r.key.name for r in results) == [f"p{index:02d}" for index in range(60)]


def test_an_expired_token_without_resume_restarts_while_each_attempt_gets_further() -> None:
    class ExpiresAtPageThree(InMemoryCluster):
        """The third page's token expires once per position: each restart gets one page further."""

        def __init__(self) -> None:
            super().__init__()
            self.expired: set[str] = set()

        def list(
            self,
            resource: ResourceType,
            namespace: str = "",
            label_selector: str = "",
            *,
            limit: int = 0,
            continue_token: str = "",
        ) -> ObjectList:
            if continue_token and continue_token not in self.expired and len(self.expired) < 3:
                self.expired.add(continue_token)
                raise Gone("the provided continue parameter is too old")
            return super().list(resource, namespace, label_selector, limit=limit, continue_token=continue_token)

    memory = ExpiresAtPageThree()
    for index in range(8):
        memory.create(CONFIGMAPS, {"metadata": {"namespace": "a", "name": f"cm-{index}"}})
    names = {o["metadata"]["name"] for o in list_all_pages(memory, CONFIGMAPS, page_size=2)}
    assert names == {f"cm-{index}" for index in range(8)}


# --- what is scanned ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("documents", "types", "note"),
    [
        pytest.param([policy("p")], {"pods"}, "", id="explicit resource"),
        pytest.param([policy("p", resources=("deployments",), group="apps")], {"deployments"}, "", id="explicit group"),
        pytest.param(
            [policy("p", resources=("*",))], set(), "matches resources '*': not scanned", id="wildcard resource"
        ),
        pytest.param([policy("p", resources=("pods/status",))], set(), "subresource 'pods/status'", id="subresource"),
        pytest.param([policy("p", background=False)], set(), "", id="background disabled"),
        pytest.param(
            [policy("p", resources=("deployments",), group="*", version="*")],
            {"deployments"},
            "",
            id="group and version wildcards resolved",
        ),
    ],
)
def test_scan_plan(documents: list[dict[str, Any]], types: set[str], note: str) -> None:
    plan = scan_plan(background_policies(policy_set(*documents)))
    assert {t.resource for t in plan.types} >= types
    if not types:
        assert not plan.types
    if note:
        assert any(note in text for text in plan.notes), plan.notes


def test_autogen_variants_add_the_pod_controllers() -> None:
    plan = scan_plan(background_policies(policy_set(policy("p"))))
    assert {"pods", "deployments", "cronjobs"} <= {t.resource for t in plan.types}


# --- scanning ---------------------------------------------------------------------------------------------------


def test_scan_lists_in_pages_and_never_gets_objects(cluster: InMemoryCluster) -> None:
    for index in range(7):
        cluster.create(PODS, pod("shop", f"p{index}", **({"app": "web"} if index % 2 else {})))
    cluster.calls.clear()
    scanner = Scanner(cluster, policy_set(policy("needs-app", resources=("pods",))), page_size=3)
    progress: list[tuple[int, int]] = []
    scan = scanner.scan(progress=lambda done, total: progress.append((done, total)))
    results = [r for r in scan if r.resource == PODS]
    assert scan.complete and scan.scanned == 7
    assert statuses(results) == {f"shop/Pod/p{i}": ["pass" if i % 2 else "fail"] for i in range(7)}
    verbs = {verb for verb, _ in cluster.calls}
    assert verbs == {"list"}, cluster.calls
    assert cluster.calls.count(("list", "pods")) == 3  # 7 pods, pages of 3
    assert cluster.calls.count(("list", "namespaces")) == 1
    assert progress[-1] == (7, 7) and progress[0] == (1, 3)  # the total grows page by page


def test_namespace_selector_labels_come_from_the_one_namespace_list(cluster: InMemoryCluster) -> None:
    cluster.create(PODS, pod("shop", "in-red"))
    cluster.create(PODS, pod("bank", "in-blue"))
    selector = {"matchLabels": {"team": "red"}}
    scanner = Scanner(cluster, policy_set(policy("red-needs-app", namespace_selector=selector)))
    cluster.calls.clear()
    results = list(scanner.scan())
    assert statuses(results) == {"shop/Pod/in-red": ["fail"], "bank/Pod/in-blue": []}
    assert ("get", "namespaces") not in cluster.calls and cluster.calls.count(("list", "namespaces")) == 1


def test_a_namespace_the_list_did_not_show_has_unknown_labels(cluster: InMemoryCluster) -> None:
    cluster.create(PODS, pod("ghost", "p"))  # no such Namespace object
    selector = {"matchLabels": {"team": "red"}}
    results = list(Scanner(cluster, policy_set(policy("red", namespace_selector=selector))).scan())
    assert statuses(results) == {"ghost/Pod/p": ["error"]}


@pytest.mark.parametrize(
    ("background", "runs"),
    [
        pytest.param(None, True, id="default: enabled"),
        pytest.param(True, True, id="enabled"),
        pytest.param(False, False, id="disabled: not run"),
    ],
)
def test_only_background_policies_run(cluster: InMemoryCluster, background: bool | None, runs: bool) -> None:
    cluster.create(PODS, pod("shop", "p"))
    results = list(Scanner(cluster, policy_set(policy("needs-app", background=background))).scan())
    assert statuses(results) == ({"shop/Pod/p": ["fail"]} if runs else {})


def test_namespace_option_limits_the_scan(cluster: InMemoryCluster) -> None:
    cluster.create(PODS, pod("shop", "a"))
    cluster.create(PODS, pod("bank", "b"))
    cluster.create(NODES, {"metadata": {"name": "node-1"}})
    documents = [policy("needs-app"), policy("nodes", resources=("nodes",))]
    scan = Scanner(cluster, policy_set(*documents)).scan("shop")
    assert {r.key.path() for r in scan} == {"shop/Pod/a"}
    assert NODES not in scan.types  # cluster-scoped types are not part of a one-namespace scan


def test_a_failing_list_is_recorded_and_the_scan_goes_on(cluster: InMemoryCluster) -> None:
    cluster.create(PODS, pod("shop", "p"))
    cluster.create(CONFIGMAPS, {"metadata": {"namespace": "shop", "name": "cm"}})
    scanner = Scanner(cluster, policy_set(policy("needs-app"), policy("cm", resources=("configmaps",))), list_workers=1)
    scan = scanner.scan()
    cluster.fail_next(1, 500)  # the namespace list is first
    results = list(scan)
    assert scan.finished and not scan.complete
    assert "cannot list namespaces" in scan.errors[0].message
    assert {r.key.path() for r in results} >= {"shop/Pod/p", "shop/ConfigMap/cm"}


def test_abandoning_a_scan_stops_its_listers(cluster: InMemoryCluster) -> None:
    for index in range(20):
        cluster.create(PODS, pod("shop", f"p{index:02d}"))
    scan = Scanner(cluster, policy_set(policy("needs-app")), page_size=2).scan()
    iterator = iter(scan)
    next(iterator)
    iterator.close()  # type: ignore[attr-defined]
    assert not scan.finished


# --- end to end through the real client -------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with custom_resources(PODS), FakeApiServer() as fake:
        yield fake


def test_scan_through_the_kubernetes_client(server: FakeApiServer, tmp_path: Path) -> None:
    memory = server.cluster
    memory.create(NAMESPACES, namespace("shop", team="red"))
    for index in range(5):
        memory.create(PODS, pod("shop", f"p{index}", **({"app": "x"} if index == 0 else {})))
    selector = {"matchLabels": {"team": "red"}}
    with KubernetesCluster.from_kubeconfig(server.write_kubeconfig(tmp_path), timeout=5) as kube:
        scanner = Scanner(kube, policy_set(policy("needs-app", namespace_selector=selector)), page_size=2)
        results = [r for r in scanner.scan() if r.resource == PODS]
    assert statuses(results) == {f"shop/Pod/p{i}": ["pass" if i == 0 else "fail"] for i in range(5)}
    assert all(r.key.uid for r in results)
    methods = {method for method, path, _ in server.requests if "/pods" in path or "/namespaces" in path}
    assert methods == {"GET"}
    pod_requests = [path for _, path, _ in server.requests if path == "/api/v1/pods"]
    assert len(pod_requests) == 3  # 5 pods in pages of 2, and no GET of any single object
    assert not [path for _, path, _ in server.requests if path.startswith("/api/v1/namespaces/")]


def test_results_carry_fail_status_objects() -> None:
    memory = InMemoryCluster()
    memory.create(PODS, pod("default", "p"))
    (result,) = [r for r in Scanner(memory, policy_set(policy("needs-app"))).scan() if r.resource == PODS]
    assert result.matched and result.responses[0].rules[0].status is Status.FAIL
