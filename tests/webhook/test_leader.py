"""Leader election on a Lease: one leader among replicas, hand-over when the leader stops renewing."""

from __future__ import annotations

import datetime

import pytest

from webhook.cluster import InMemoryCluster
from webhook.leader import LEASES, LeaderElector


class Clock:
    def __init__(self) -> None:
        self.moment = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += datetime.timedelta(seconds=seconds)


def elector(cluster: InMemoryCluster, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(cluster, namespace="celvern", name="generator", identity=identity, now=clock)


def test_first_replica_leads_and_second_follows() -> None:
    cluster, clock = InMemoryCluster(), Clock()
    a, b = elector(cluster, clock, "a"), elector(cluster, clock, "b")
    assert a.step() is True
    assert b.step() is False
    clock.advance(2)
    assert a.step() is True and b.step() is False
    lease = cluster.get(LEASES, "celvern", "generator")
    assert lease is not None and lease["spec"]["holderIdentity"] == "a"


def test_follower_takes_over_when_leader_dies() -> None:
    cluster, clock = InMemoryCluster(), Clock()
    a, b = elector(cluster, clock, "a"), elector(cluster, clock, "b")
    a.step()
    clock.advance(11)  # a stops renewing (died); the lease is not yet expired
    assert b.step() is False
    clock.advance(1)  # 12 s after the last renewal: expired
    assert b.step() is True
    lease = cluster.get(LEASES, "celvern", "generator")
    assert lease is not None
    assert (lease["spec"]["holderIdentity"], lease["spec"]["leaseTransitions"]) == ("b", 1)


def test_leader_steps_down_when_it_cannot_renew() -> None:
    cluster, clock = InMemoryCluster(), Clock()
    a = elector(cluster, clock, "a")
    assert a.step()
    cluster.fail_next(10, status=503)
    for _ in range(4):
        clock.advance(2)
        assert a.step() is True, "still within the renew deadline"
    clock.advance(2)
    assert a.step() is False, "10 s without a renewal: step down"


def test_release_hands_over_at_once() -> None:
    cluster, clock = InMemoryCluster(), Clock()
    a, b = elector(cluster, clock, "a"), elector(cluster, clock, "b")
    a.step()
    a.release()
    clock.advance(1)
    assert b.step() is True


def test_racing_replicas_cannot_both_win() -> None:
    cluster, clock = InMemoryCluster(), Clock()
    a, b = elector(cluster, clock, "a"), elector(cluster, clock, "b")
    a.step()
    clock.advance(13)
    stale = cluster.get(LEASES, "celvern", "generator")
    assert b.step() is True
    assert stale is not None
    stale["spec"]["holderIdentity"] = "c"  # a third replica writes with the resourceVersion it read earlier
    with pytest.raises(Exception, match="modified"):
        cluster.update(LEASES, stale)


def test_timings_are_checked() -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaderElector(InMemoryCluster(), namespace="n", name="l", identity="a", renew_deadline=20)
