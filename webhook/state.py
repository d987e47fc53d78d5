"""What the admission server reads on every request, behind two small interfaces.

The server never loads policies or asks the API server for namespaces on the request path itself: it reads the
current compiled `Snapshot` from a `PolicySource` (a directory with hot reload, or the cluster's
policies.kyverno.io objects — `webhook.snapshot`) and namespace labels from a `NamespaceResolver` (a watched
cache with a live GET on miss — `webhook.namespaces`). The static implementations here serve tests and
one-shot uses.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.matching import UNKNOWN_NAMESPACE, NamespaceLabels
from engine.policy_set import PolicySet


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable compiled policy set, as served until the next successful reload."""

    policy_set: PolicySet
    version: str
    """Content hash (directory) or resourceVersions (cluster) the snapshot was built from."""
    loaded_at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    errors: tuple[str, ...] = ()
    """Problems of the latest reload attempt that were not applied (the previous good snapshot is kept)."""


class PolicySource(Protocol):
    def current(self) -> Snapshot | None:
        """The snapshot to evaluate with, or None before the first one is compiled (not ready)."""


class NamespaceResolver(Protocol):
    def lookup(self, name: str) -> tuple[NamespaceLabels, Mapping[str, Any] | None]:
        """Labels and object of a namespace; labels with `known=False` when no source could tell."""


@dataclass(frozen=True, slots=True)
class StaticPolicySource:
    snapshot: Snapshot | None

    def current(self) -> Snapshot | None:
        return self.snapshot


@dataclass(frozen=True, slots=True)
class StaticNamespaces:
    """Namespaces known up front (name -> Namespace object); any other name is unknown, never "no labels"."""

    objects: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def lookup(self, name: str) -> tuple[NamespaceLabels, Mapping[str, Any] | None]:
        namespace = self.objects.get(name)
        if namespace is None:
            return UNKNOWN_NAMESPACE, None
        labels = (namespace.get("metadata") or {}).get("labels") or {}
        return NamespaceLabels(dict(labels)), namespace
