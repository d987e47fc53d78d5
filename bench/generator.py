"""Background generator throughput: 1,000 namespace events end to end against the in-memory cluster.

Namespaces are created one by one while the controller runs; each must end with its default-deny
NetworkPolicy. The figure is wall time from the first event to the last NetworkPolicy (median of runs).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from engine.loader import load_paths
from engine.policy_set import build_policy_set, split_documents
from engine.resources import DEFAULT_MAPPER
from webhook.cluster import InMemoryCluster
from webhook.generator import NAMESPACES, Generator

REPOSITORY = Path(__file__).resolve().parents[1]
POLICY = REPOSITORY / "examples" / "policies" / "default-deny-network-policy.yaml"
NETWORK_POLICIES = DEFAULT_MAPPER.for_kind("networking.k8s.io/v1", "NetworkPolicy")


def one_run(events: int) -> float:
    policy_set = build_policy_set(split_documents(load_paths([POLICY]))[0])
    cluster = InMemoryCluster(history=events * 4)
    generator = Generator(cluster, policy_set)
    generator.start()
    begin = time.perf_counter()
    for index in range(events):
        cluster.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"team-{index}"}})
        if index % 50 == 49:
            generator.sync_once()
    for _ in range(100):  # bounded: drain what is left
        generator.sync_once()
        if not generator.pending:
            break
    elapsed = time.perf_counter() - begin
    generated = len(cluster.list(NETWORK_POLICIES).items)
    if generated != events:
        raise SystemExit(f"expected {events} NetworkPolicies, found {generated}")
    return elapsed


def bench_generator(events: int = 1000, runs: int = 3) -> dict[str, float]:
    one_run(50)  # warm-up
    samples = [one_run(events) for _ in range(runs)]
    return {
        "namespace events": float(events),
        "runs": float(runs),
        "median s": statistics.median(samples),
        "events per s": events / statistics.median(samples),
    }
