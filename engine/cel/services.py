"""Per-evaluation services that library functions may consult: cluster lookups, HTTP, the clock.

The CEL environment and every compiled program are shared and immutable, but some Kyverno functions
(`resource.Get`, `http.Get`, `image.GetMetadata`, `globalContext.Get`, `time.now`) need data that belongs to one
evaluation: the CLI serves them from a test's `context`/`clusterResources`/`apiCallResponses`, the webhook from
the live cluster. The evaluator installs a `Services` value for the duration of an evaluation with `use()`;
library functions read it with `current()`. A context variable keeps concurrent evaluations (threads, asyncio
tasks) apart.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol


class ResourceLookup(Protocol):
    """Read access to Kubernetes objects, by apiVersion and plural resource name."""

    def get(self, api_version: str, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""

    def list(
        self, api_version: str, resource: str, namespace: str, labels: Mapping[str, str] | None
    ) -> list[dict[str, Any]]:
        """Objects of that resource in the namespace ("" for all or cluster-scoped), filtered by labels."""


class HttpLookup(Protocol):
    """HTTP calls made by `http.Get`/`http.Post`; offline this is a table of mocked responses."""

    def request(self, method: str, url: str, body: Any, headers: Mapping[str, str] | None) -> Any:
        """The decoded response (Kyverno's CLI mocks answer `{body, statusCode}`)."""


class ServiceUnavailable(Exception):
    """Raised by library functions when the service they need is not configured for this evaluation."""


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True, slots=True)
class Services:
    """What one evaluation may look up. Every field is optional; a missing one makes its functions error."""

    resources: ResourceLookup | None = None
    http: HttpLookup | None = None
    image_data: Mapping[str, Any] = field(default_factory=dict)
    """`image.GetMetadata` answers, keyed by image reference (the CLI's Context `spec.images`)."""
    global_context: Mapping[str, Any] = field(default_factory=dict)
    """`globalContext.Get` answers, keyed by entry name."""
    policy_namespace: str | None = None
    """Namespace of a namespaced policy: `resource.*` calls without a namespace are scoped to it."""
    allow_http: bool = True
    now: Callable[[], datetime.datetime] = _utc_now


_NO_SERVICES = Services()
_current: ContextVar[Services] = ContextVar("celvern_services", default=_NO_SERVICES)


def current() -> Services:
    """The services of the evaluation running in this context (an empty set outside any evaluation)."""
    return _current.get()


@contextlib.contextmanager
def use(services: Services) -> Iterator[Services]:
    """Install `services` for the evaluations made inside the `with` block."""
    token = _current.set(services)
    try:
        yield services
    finally:
        _current.reset(token)
