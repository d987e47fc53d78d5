"""Leader election on a `coordination.k8s.io/v1` Lease, so that several controller replicas run one worker.

The same algorithm as client-go's leaderelection, reduced to what celvern needs: a replica becomes leader by
writing its identity into the Lease when the Lease is free or expired (renewTime + leaseDurationSeconds in the
past), keeps leadership by renewing it every `retry_period`, and steps down when it could not renew for
`renew_deadline`. Writes use the Lease's resourceVersion, so two replicas racing for an expired Lease cannot
both win: the loser gets a Conflict and stays a follower. Kyverno's timings are the defaults (12 s lease, 10 s
renew deadline, 2 s retry). All Kubernetes access goes through the `webhook.cluster.Cluster` seam.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from typing import Any

from engine.resources import ResourceType
from webhook.cluster import ApiError, Cluster

LEASES = ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True)
log = logging.getLogger("celvern.leader")


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _format(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class LeaderElector:
    """One replica's view of a Lease. Call `step()` every `retry_period` seconds (or use `run`)."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 12.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        now: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._now = now
        self._leader = False
        self._last_renew: datetime.datetime | None = None

    @property
    def is_leader(self) -> bool:
        return self._leader

    def step(self) -> bool:
        """Try to acquire or renew the Lease once; returns whether this replica leads afterwards."""
        now = self._now()
        try:
            acquired = self._try(now)
        except ApiError as error:
            log.warning("lease %s/%s: %s", self.namespace, self.name, error)
            acquired = False
        if acquired:
            if not self._leader:
                log.info("lease %s/%s: %s became leader", self.namespace, self.name, self.identity)
            self._leader = True
            self._last_renew = now
        elif self._leader and (
            self._last_renew is None or (now - self._last_renew).total_seconds() >= self.renew_deadline
        ):
            log.warning("lease %s/%s: %s lost leadership", self.namespace, self.name, self.identity)
            self._leader = False
        return self._leader

    def release(self) -> None:
        """Give the Lease up at shutdown so that another replica takes over at once."""
        if not self._leader:
            return
        self._leader = False
        try:
            lease = self.cluster.get(LEASES, self.namespace, self.name)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                self.cluster.update(LEASES, lease)
        except ApiError as error:
            log.warning("lease %s/%s: release failed: %s", self.namespace, self.name, error)

    def run(self, stop: threading.Event, on_change: Callable[[bool], None] | None = None) -> None:
        """Step every retry period until `stop` is set, calling `on_change(is_leader)` on transitions."""
        leading = False
        while not stop.is_set():
            now_leading = self.step()
            if now_leading != leading and on_change is not None:
                on_change(now_leading)
            leading = now_leading
            stop.wait(self.retry_period)
        self.release()
        if leading and on_change is not None:
            on_change(False)

    def _try(self, now: datetime.datetime) -> bool:
        lease = self.cluster.get(LEASES, self.namespace, self.name)
        if lease is None:
            self.cluster.create(LEASES, self._lease(now, transitions=0, acquired=now))
            return True
        spec = dict(lease.get("spec") or {})
        holder = spec.get("holderIdentity") or ""
        renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        expired = renewed is None or (now - renewed).total_seconds() >= float(duration)
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = _parse(spec.get("acquireTime")) if holder == self.identity else now
        updated = self._lease(now, transitions=transitions, acquired=acquired or now)
        updated["metadata"]["resourceVersion"] = (lease.get("metadata") or {}).get("resourceVersion")
        self.cluster.update(LEASES, updated)
        return True

    def _lease(self, now: datetime.datetime, *, transitions: int, acquired: datetime.datetime) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": _format(acquired),
                "renewTime": _format(now),
                "leaseTransitions": transitions,
            },
        }
