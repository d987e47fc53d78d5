"""The background generator against the in-memory cluster: the synchronize matrix, generateExisting, restarts,
watch expiry, retries with backoff, metrics. Everything is stepped by hand with a fake clock: no sleeps, no threads.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from engine.generating import POLICY_NAME, TRIGGER_KIND, TRIGGER_NAME, TRIGGER_NAMESPACE, TRIGGER_UID
from engine.loader import load_paths, parse_text
from engine.policy_set import PolicySet, build_policy_set
from engine.request import request_for_resource
from engine.resources import DEFAULT_MAPPER, ResourceType
from webhook.cluster import Conflict, InMemoryCluster
from webhook.generator import (
    NAMESPACES,
    ClusterResourceLookup,
    Generator,
    GeneratorMetrics,
    PolicyCleanupKey,
    TriggerKey,
    drifted,
    should_generate,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policies" / "default-deny-network-policy.yaml"
NETWORK_POLICIES = DEFAULT_MAPPER.for_kind("networking.k8s.io/v1", "NetworkPolicy")
CONFIGMAPS = DEFAULT_MAPPER.for_kind("v1", "ConfigMap")
BOTH = ("Ingress", "Egress")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def policy(
    name: str = "gen",
    *,
    sync: bool = True,
    existing: bool = False,
    orphan: bool = False,
    types: tuple[str, ...] = BOTH,
) -> str:
    """A GeneratingPolicy giving every namespace (not labelled generate=off) a NetworkPolicy `default-deny`."""
    listed = ", ".join(f"'{t}'" for t in types)
    return f"""\
apiVersion: policies.kyverno.io/v1
kind: GeneratingPolicy
metadata:
  name: {name}
spec:
  evaluation:
    synchronize: {{enabled: {str(sync).lower()}}}
    generateExisting: {{enabled: {str(existing).lower()}}}
    orphanDownstreamOnPolicyDelete: {{enabled: {str(orphan).lower()}}}
  matchConstraints:
    objectSelector:
      matchExpressions:
      - {{key: generate, operator: NotIn, values: ["off"]}}
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [namespaces]
  generate:
  - expression: >-
      generator.Apply(object.metadata.name, [{{
        "apiVersion": dyn("networking.k8s.io/v1"), "kind": dyn("NetworkPolicy"),
        "metadata": dyn({{"name": "default-deny"}}),
        "spec": dyn({{"podSelector": {{}}, "policyTypes": [{listed}]}})}}])
"""


def clone_policy(*, sync: bool) -> str:
    """Copies ConfigMap default/source into every namespace (a clone source read with resource.Get)."""
    return f"""\
apiVersion: policies.kyverno.io/v1
kind: GeneratingPolicy
metadata:
  name: clone
spec:
  evaluation:
    synchronize: {{enabled: {str(sync).lower()}}}
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [namespaces]
  generate:
  - expression: >-
      generator.Apply(object.metadata.name, [resource.Get("v1", "configmaps", "default", "source")])
"""


def policies(*texts: str) -> PolicySet:
    return build_policy_set([d for text in texts for d in parse_text(text, "<test>")])


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@dataclass
class Harness:
    cluster: InMemoryCluster
    clock: Clock
    registry: CollectorRegistry
    generator: Generator

    def settle(self, rounds: int = 4) -> None:
        for _ in range(rounds):
            self.generator.sync_once()

    def deny(self, ns: str) -> dict[str, Any] | None:
        return self.cluster.get(NETWORK_POLICIES, ns, "default-deny")

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def harness(
    policy_set: PolicySet, cluster: InMemoryCluster | None = None, *, max_attempts: int = 5, **kwargs: Any
) -> Harness:
    cluster = cluster if cluster is not None else InMemoryCluster()
    clock, registry = Clock(), CollectorRegistry()
    generator = Generator(
        cluster,
        policy_set,
        metrics=GeneratorMetrics(registry),
        clock=clock,
        jitter=lambda: 1.0,
        max_attempts=max_attempts,
        **kwargs,
    )
    return Harness(cluster, clock, registry, generator)


# --- the headline case ------------------------------------------------------------------------------------------------


def test_default_deny_example_lifecycle_and_restart() -> None:
    example = build_policy_set(load_paths([EXAMPLE]))
    h = harness(example)
    h.settle()
    assert [r.resource for r in h.generator.trigger_resources] == ["namespaces"]

    h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    deny = h.deny("shop")
    assert deny is not None
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    labels = deny["metadata"]["labels"]
    shop = h.cluster.get(NAMESPACES, "", "shop")
    assert shop is not None
    assert labels[POLICY_NAME] == "default-deny-network-policy"
    assert (labels[TRIGGER_KIND], labels[TRIGGER_NAMESPACE], labels[TRIGGER_NAME]) == ("Namespace", "", "shop")
    assert labels[TRIGGER_UID] == shop["metadata"]["uid"]

    h.cluster.delete(NETWORK_POLICIES, "shop", "default-deny")
    h.settle()
    recreated = h.deny("shop")
    assert recreated is not None and recreated["metadata"]["uid"] != deny["metadata"]["uid"]

    # a new controller over the same cluster: no duplicates, no writes, and it still keeps the object in sync
    restarted = harness(example, h.cluster)
    before = len(h.cluster.calls)
    restarted.settle()
    assert [verb for verb, _ in h.cluster.calls[before:] if verb in ("create", "update", "delete")] == []
    assert len(h.cluster.list(NETWORK_POLICIES).items) == 1
    h.cluster.delete(NETWORK_POLICIES, "shop", "default-deny")
    restarted.settle()
    assert restarted.deny("shop") is not None
    assert len(h.cluster.list(NETWORK_POLICIES).items) == 1

    h.cluster.delete(NAMESPACES, "", "shop")
    restarted.settle()
    assert h.cluster.list(NETWORK_POLICIES).items == []
    assert restarted.generator.pending == []


def test_restart_cleans_up_after_a_trigger_deleted_while_down() -> None:
    h = harness(policies(policy()))
    for name in ("a", "b"):
        h.cluster.create(NAMESPACES, namespace(name))
    h.settle()
    assert (h.deny("a"), h.deny("b")) == (None, None), "existed before the controller started"
    for name in ("c", "d"):
        h.cluster.create(NAMESPACES, namespace(name))
    h.settle()
    h.cluster.delete(NAMESPACES, "", "d")  # while no controller runs
    restarted = harness(policies(policy()), h.cluster)
    restarted.settle()
    assert [o["metadata"]["namespace"] for o in h.cluster.list(NETWORK_POLICIES).items] == ["c"]


def test_periodic_resync_requeues_every_trigger() -> None:
    h = harness(policies(policy()), resync_period=30.0)
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    h.generator.poll()
    assert h.generator.pending == []
    h.clock.advance(31)
    h.generator.poll()
    assert h.generator.pending == [shop_key()]
    h.settle()
    assert h.deny("shop") is None, "a resync is not a change: generateExisting is off"
    assert h.generator.pending == []


# --- the synchronize matrix (ecosystem.md 6, data source) -------------------------------------------------------------

Action = Callable[[Harness], None]


def delete_downstream(h: Harness) -> None:
    h.cluster.delete(NETWORK_POLICIES, "shop", "default-deny")


def delete_policy(h: Harness) -> None:
    h.generator.remove_policy("gen")


def delete_trigger(h: Harness) -> None:
    h.cluster.delete(NAMESPACES, "", "shop")


def modify_downstream(h: Harness) -> None:
    live = h.deny("shop")
    assert live is not None
    live["spec"]["policyTypes"] = ["Ingress"]
    h.cluster.update(NETWORK_POLICIES, live)


def modify_policy(sync: bool) -> Action:
    def action(h: Harness) -> None:
        h.generator.replace_policies(policies(policy(sync=sync, types=("Egress",))))

    return action


def stop_matching(h: Harness) -> None:
    live = h.cluster.get(NAMESPACES, "", "shop")
    assert live is not None
    live["metadata"]["labels"] = {"generate": "off"}
    h.cluster.update(NAMESPACES, live)


ORIGINAL, MODIFIED, UPDATED, ABSENT = ["Ingress", "Egress"], ["Ingress"], ["Egress"], None

MATRIX = [
    pytest.param(True, False, delete_downstream, ORIGINAL, id="delete-downstream/sync/recreated"),
    pytest.param(False, False, delete_downstream, ABSENT, id="delete-downstream/no-sync/stays-gone"),
    pytest.param(True, False, delete_policy, ABSENT, id="delete-policy/sync/deleted"),
    pytest.param(True, True, delete_policy, ORIGINAL, id="delete-policy/sync+orphan/retained"),
    pytest.param(False, False, delete_policy, ORIGINAL, id="delete-policy/no-sync/retained"),
    pytest.param(True, False, delete_trigger, ABSENT, id="delete-trigger/sync/deleted"),
    pytest.param(False, False, delete_trigger, ORIGINAL, id="delete-trigger/no-sync/none"),
    pytest.param(True, False, modify_downstream, ORIGINAL, id="modify-downstream/sync/reverted"),
    pytest.param(False, False, modify_downstream, MODIFIED, id="modify-downstream/no-sync/kept"),
    pytest.param(True, False, modify_policy(True), UPDATED, id="modify-policy/sync/updated"),
    pytest.param(False, False, modify_policy(False), ORIGINAL, id="modify-policy/no-sync/unmodified"),
    pytest.param(True, False, stop_matching, ABSENT, id="trigger-no-longer-matching/sync/deleted"),
    pytest.param(False, False, stop_matching, ORIGINAL, id="trigger-no-longer-matching/no-sync/none"),
]


@pytest.mark.parametrize(("sync", "orphan", "action", "expected"), MATRIX)
def test_synchronize_matrix(sync: bool, orphan: bool, action: Action, expected: list[str] | None) -> None:
    h = harness(policies(policy(sync=sync, orphan=orphan)))
    h.settle()
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    assert h.deny("shop") is not None

    action(h)
    h.settle()

    found = h.deny("shop")
    assert (found["spec"]["policyTypes"] if found is not None else None) == expected
    assert len(h.cluster.list(NETWORK_POLICIES).items) == (0 if expected is None else 1)
    assert h.generator.pending == []


def test_downstream_of_a_recreated_trigger_follows_the_new_uid() -> None:
    h = harness(policies(policy(sync=True)))
    h.settle()
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    h.cluster.delete(NAMESPACES, "", "shop")
    new = h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    deny = h.deny("shop")
    assert deny is not None and deny["metadata"]["labels"][TRIGGER_UID] == new["metadata"]["uid"]


def test_no_sync_generates_once_per_trigger_and_ignores_later_changes() -> None:
    h = harness(policies(policy(sync=False)))
    h.settle()
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    delete_downstream(h)
    h.settle()
    live = h.cluster.get(NAMESPACES, "", "shop")
    assert live is not None
    live["metadata"]["labels"] = {"team": "a"}
    h.cluster.update(NAMESPACES, live)  # a changed trigger is not a reason to recreate what a user deleted
    h.settle()
    assert h.deny("shop") is None
    assert h.metric("celvern_generate_objects_created_total", policy="gen", kind="NetworkPolicy") == 1


# --- clone sources ----------------------------------------------------------------------------------------------------


def source(data: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "source", "namespace": "default"},
        "data": data,
    }


@pytest.mark.parametrize(
    ("sync", "expected"),
    [
        pytest.param(True, {"mode": "strict"}, id="modify-source/sync/synced"),
        pytest.param(False, {"mode": "open"}, id="modify-source/no-sync/unmodified"),
    ],
)
def test_clone_source_changes(sync: bool, expected: dict[str, str]) -> None:
    h = harness(policies(clone_policy(sync=sync)))
    h.cluster.create(CONFIGMAPS, source({"mode": "open"}))
    h.settle()
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    clone = h.cluster.get(CONFIGMAPS, "shop", "source")
    assert clone is not None and clone["data"] == {"mode": "open"}
    assert clone["metadata"]["labels"][POLICY_NAME] == "clone"

    live = h.cluster.get(CONFIGMAPS, "default", "source")
    assert live is not None
    live["data"] = {"mode": "strict"}
    h.cluster.update(CONFIGMAPS, live)
    h.settle()
    clone = h.cluster.get(CONFIGMAPS, "shop", "source")
    assert clone is not None and clone["data"] == expected
    assert h.generator.pending == []


def test_clone_downstream_deleted_with_sync_is_recreated() -> None:
    h = harness(policies(clone_policy(sync=True)))
    h.cluster.create(CONFIGMAPS, source({"mode": "open"}))
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    assert h.cluster.get(CONFIGMAPS, "shop", "source") is None, "generateExisting is off"
    h.cluster.create(NAMESPACES, namespace("web"))
    h.settle()
    h.cluster.delete(CONFIGMAPS, "web", "source")
    h.settle()
    clone = h.cluster.get(CONFIGMAPS, "web", "source")
    assert clone is not None and clone["data"] == {"mode": "open"}


def test_cluster_resource_lookup_serves_get_and_list() -> None:
    cluster = InMemoryCluster()
    cluster.create(CONFIGMAPS, source({"a": "1"}))
    labelled = source({})
    labelled["metadata"] = {"name": "other", "namespace": "default", "labels": {"app": "web"}}
    cluster.create(CONFIGMAPS, labelled)
    lookup = ClusterResourceLookup(cluster)
    found = lookup.get("v1", "configmaps", "default", "source")
    assert found is not None and found["data"] == {"a": "1"}
    assert lookup.get("v1", "configmaps", "default", "missing") is None
    assert [o["metadata"]["name"] for o in lookup.list("v1", "configmaps", "default", {"app": "web"})] == ["other"]
    assert (lookup.kind_for("v1", "configmaps"), lookup.resource_for("v1", "ConfigMap")) == ("ConfigMap", "configmaps")
    assert lookup.reads == {CONFIGMAPS}


# --- generateExisting -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("existing", "expected"), [(True, True), (False, False)], ids=["on-backfills", "off-skips"])
def test_generate_existing(existing: bool, expected: bool) -> None:
    cluster = InMemoryCluster()
    cluster.create(NAMESPACES, namespace("old"))
    h = harness(policies(policy(existing=existing)), cluster)
    h.settle()
    assert (h.deny("old") is not None) is expected
    h.cluster.create(NAMESPACES, namespace("new"))
    h.settle()
    assert h.deny("new") is not None, "new triggers are always handled"


def test_existing_trigger_is_handled_once_it_changes() -> None:
    cluster = InMemoryCluster()
    cluster.create(NAMESPACES, namespace("old"))
    h = harness(policies(policy(existing=False)), cluster)
    h.settle()
    assert h.deny("old") is None
    live = cluster.get(NAMESPACES, "", "old")
    assert live is not None
    live["metadata"]["labels"] = {"team": "a"}
    cluster.update(NAMESPACES, live)
    h.settle()
    assert h.deny("old") is not None


def test_added_policy_backfills_only_with_generate_existing() -> None:
    cluster = InMemoryCluster()
    cluster.create(NAMESPACES, namespace("old"))
    h = harness(policies(policy("first", existing=False)), cluster)
    h.settle()
    h.generator.replace_policies(policies(policy("first"), policy("second", existing=True)))
    h.settle()
    deny = h.deny("old")
    assert deny is not None and deny["metadata"]["labels"][POLICY_NAME] == "second"


# --- watch expiry -----------------------------------------------------------------------------------------------------


def test_gone_watch_relists_and_catches_up() -> None:
    h = harness(policies(policy()))
    h.cluster.create(NAMESPACES, namespace("doomed"))
    h.settle()
    h.cluster.create(NAMESPACES, namespace("doomed-too"))
    h.settle()
    assert h.deny("doomed-too") is not None
    lists = h.cluster.calls.count(("list", "namespaces"))

    h.cluster.create(NAMESPACES, namespace("shop"))
    h.cluster.delete(NAMESPACES, "", "doomed-too")
    h.cluster.compact()  # the watch's resourceVersion is now too old: 410 Gone
    h.settle()
    assert h.cluster.calls.count(("list", "namespaces")) == lists + 1
    assert h.deny("shop") is not None, "created while the watch was gone"
    assert h.deny("doomed-too") is None, "deleted while the watch was gone"
    assert h.metric("celvern_generate_errors_total", reason="watch") == 0


# --- faults -----------------------------------------------------------------------------------------------------------


def shop_key() -> TriggerKey:
    return TriggerKey(NAMESPACES, "", "shop")


def test_retry_with_backoff_then_success() -> None:
    h = harness(policies(policy()), backoff_base=0.2)
    h.settle()
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.generator.poll()
    assert h.generator.pending == [shop_key()]
    h.cluster.fail_next(2, status=503)

    assert h.generator.process() == 1  # fails: retry in 0.2 s
    assert h.generator.pending == [shop_key()]
    h.clock.advance(0.19)
    assert h.generator.process() == 0, "not due yet"
    h.clock.advance(0.01)
    assert h.generator.process() == 1  # fails again: retry in 0.4 s
    h.clock.advance(0.39)
    assert h.generator.process() == 0
    h.clock.advance(0.01)
    assert h.generator.process() == 1
    assert h.deny("shop") is not None
    assert h.generator.pending == []
    assert h.metric("celvern_generate_errors_total", reason="retry") == 2
    assert h.metric("celvern_generate_errors_total", reason="dropped") == 0


def test_drop_after_max_attempts(caplog: pytest.LogCaptureFixture) -> None:
    h = harness(policies(policy()), max_attempts=3)
    h.settle()
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.generator.poll()
    h.cluster.fail_next(3, status=500)
    with caplog.at_level(logging.INFO, logger="celvern.generator"):
        for _ in range(3):
            h.generator.process()
            h.clock.advance(60)
    assert h.generator.pending == []
    assert h.deny("shop") is None
    assert h.metric("celvern_generate_errors_total", reason="retry") == 2
    assert h.metric("celvern_generate_errors_total", reason="dropped") == 1
    [dropped] = [r for r in caplog.records if getattr(r, "event", None) == "dropped"]
    assert (dropped.name, dropped.levelno) == ("celvern.generator", logging.WARNING)
    assert (getattr(dropped, "key", None), getattr(dropped, "attempts", None)) == ("namespaces/shop", 3)

    h.cluster.create(NAMESPACES, namespace("web"))  # the controller carries on
    h.settle()
    assert h.deny("web") is not None


def test_non_retryable_error_drops_at_once() -> None:
    h = harness(policies(policy()))
    h.settle()
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.generator.poll()
    h.cluster.fail_next(1, status=403)
    h.generator.process()
    assert h.generator.pending == []
    assert h.metric("celvern_generate_errors_total", reason="dropped") == 1


def test_conflict_on_update_is_requeued() -> None:
    class Racing(InMemoryCluster):
        conflicts = 0

        def update(self, resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
            if resource == NETWORK_POLICIES and self.conflicts:
                self.conflicts -= 1
                raise Conflict("networkpolicies 'default-deny' was modified")
            return super().update(resource, obj)

    racing = Racing()
    h = harness(policies(policy()), racing)
    h.settle()
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    modify_downstream(h)
    racing.conflicts = 1  # the generator's revert races with another writer
    h.settle()
    assert h.generator.pending == [shop_key()]
    h.clock.advance(1)
    h.settle()
    deny = h.deny("shop")
    assert deny is not None and deny["spec"]["policyTypes"] == ORIGINAL
    assert h.metric("celvern_generate_errors_total", reason="retry") == 1


def test_trigger_deleted_mid_work_is_not_an_error() -> None:
    h = harness(policies(policy()))
    h.settle()
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.generator.poll()
    h.cluster.delete(NAMESPACES, "", "shop")
    h.generator.process()
    h.generator.enqueue(TriggerKey(NAMESPACES, "", "never-existed"))
    h.settle()
    assert h.cluster.list(NETWORK_POLICIES).items == []
    assert h.generator.pending == []
    assert h.registry.get_sample_value("celvern_generate_errors_total", {"reason": "dropped"}) is None


def test_sync_once_survives_watch_failures() -> None:
    h = harness(policies(policy()))
    h.settle()
    h.cluster.fail_next(1, status=500)
    assert h.generator.sync_once() == 0
    assert h.metric("celvern_generate_errors_total", reason="watch") == 1
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    assert h.deny("shop") is not None


def test_backoff_is_exponential_capped_and_jittered() -> None:
    generator = Generator(InMemoryCluster(), PolicySet(), jitter=lambda: 0.0, backoff_base=0.5, backoff_cap=3.0)
    assert [generator.backoff(n) for n in (1, 2, 3, 4, 10)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    generator = Generator(InMemoryCluster(), PolicySet(), jitter=lambda: 1.0, backoff_base=0.5, backoff_cap=3.0)
    assert [generator.backoff(n) for n in (1, 2, 3, 4, 10)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_run_forever_stops_when_asked() -> None:
    class StopAfter(threading.Event):
        def __init__(self, steps: int) -> None:
            super().__init__()
            self.steps = steps

        def is_set(self) -> bool:
            self.steps -= 1
            return self.steps < 0

    h = harness(policies(policy()))
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.generator.run_forever(StopAfter(3), timeout_seconds=0, idle=0.0)
    assert h.cluster.list(NETWORK_POLICIES).items == []  # generateExisting is off
    h.cluster.create(NAMESPACES, namespace("web"))
    h.generator.run_forever(StopAfter(2), timeout_seconds=0, idle=0.0)
    assert h.deny("web") is not None


# --- policies and triggers --------------------------------------------------------------------------------------------


def test_wildcard_resources_are_not_watched(caplog: pytest.LogCaptureFixture) -> None:
    text = policy().replace("resources: [namespaces]", 'resources: ["*"]')
    with caplog.at_level(logging.WARNING, logger="celvern.generator"):
        h = harness(policies(text))
    assert h.generator.trigger_resources == []
    assert any(getattr(r, "event", None) == "wildcard-trigger" for r in caplog.records)


def test_removed_policy_cleanup_is_a_queue_item() -> None:
    h = harness(policies(policy("a"), policy("b", existing=True)))
    h.settle()
    h.cluster.create(NAMESPACES, namespace("shop"))
    h.settle()
    h.generator.remove_policy("a")
    assert PolicyCleanupKey("", "a") in h.generator.pending
    h.settle()
    deny = h.deny("shop")  # both policies generate the same object; "b" now owns it
    assert deny is not None


def test_namespaced_trigger_uses_namespace_labels() -> None:
    text = """\
apiVersion: policies.kyverno.io/v1
kind: GeneratingPolicy
metadata:
  name: per-configmap
spec:
  evaluation:
    synchronize: {enabled: true}
  matchConstraints:
    namespaceSelector:
      matchLabels: {team: a}
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [configmaps]
  generate:
  - expression: >-
      generator.Apply(object.metadata.namespace, [{"apiVersion": dyn("v1"), "kind": dyn("Secret"),
        "metadata": dyn({"name": object.metadata.name + "-copy"}), "data": dyn({})}])
"""
    h = harness(policies(text))
    h.cluster.create(NAMESPACES, namespace("a", team="a"))
    h.cluster.create(NAMESPACES, namespace("b", team="b"))
    h.settle()
    for ns in ("a", "b"):
        h.cluster.create(
            CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": ns}}
        )
    h.settle()
    secrets = DEFAULT_MAPPER.for_kind("v1", "Secret")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in h.cluster.list(secrets).items] == [
        ("a", "x-copy")
    ]
    h.cluster.delete(CONFIGMAPS, "a", "x")
    h.settle()
    assert h.cluster.list(secrets).items == []


# --- metrics ----------------------------------------------------------------------------------------------------------


def test_metrics() -> None:
    h = harness(policies(policy()))
    h.settle()
    for name in ("a", "b"):
        h.cluster.create(NAMESPACES, namespace(name))
    h.generator.poll()
    assert h.metric("celvern_generate_queue_depth") == 2
    h.generator.process()
    assert h.metric("celvern_generate_queue_depth") == 0
    h.settle()
    live = h.deny("a")
    assert live is not None
    live["spec"]["policyTypes"] = ["Ingress"]
    h.cluster.update(NETWORK_POLICIES, live)
    h.cluster.delete(NAMESPACES, "", "b")
    h.settle()
    labels = {"policy": "gen", "kind": "NetworkPolicy"}
    assert h.metric("celvern_generate_objects_created_total", **labels) == 2
    assert h.metric("celvern_generate_objects_updated_total", **labels) == 1
    assert h.metric("celvern_generate_objects_deleted_total", **labels) == 1
    assert h.metric("celvern_generate_errors_total", reason="retry") == 0
    assert h.metric("celvern_generate_reconcile_duration_seconds_count") >= 4


# --- pure helpers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "dry_run", "expected"),
    [
        ("CREATE", False, True),
        ("UPDATE", False, True),
        ("CREATE", True, False),
        ("UPDATE", True, False),
        ("DELETE", False, False),
        ("CONNECT", False, False),
    ],
    ids=["create", "update", "create-dry-run", "update-dry-run", "delete", "connect"],
)
def test_should_generate(operation: str, dry_run: bool, expected: bool) -> None:
    request = dataclasses.replace(request_for_resource(namespace("shop"), operation=operation), dry_run=dry_run)
    assert should_generate(request) is expected


@pytest.mark.parametrize(
    ("live", "expected"),
    [
        ({"spec": {"a": 1, "b": [1, 2]}}, False),
        ({"spec": {"a": 1, "b": [1, 2], "defaulted": True}, "status": {}}, False),
        ({"spec": {"a": 2, "b": [1, 2]}}, True),
        ({"spec": {"a": 1, "b": [1]}}, True),
        ({"spec": {"b": [1, 2]}}, True),
    ],
    ids=["equal", "server-extras-ignored", "changed-value", "changed-list", "missing-field"],
)
def test_drifted(live: dict[str, Any], expected: bool) -> None:
    desired = {
        "apiVersion": "v1",
        "kind": "X",
        "metadata": {"name": "n", "uid": "ignored"},
        "spec": {"a": 1, "b": [1, 2]},
    }
    full = {"apiVersion": "v1", "kind": "X", "metadata": {"name": "n", "resourceVersion": "7"}, **live}
    assert drifted(desired, full) is expected
