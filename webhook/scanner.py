"""Background scans: evaluate the validating policies against every existing object they match.

Why this module exists: admission only sees objects as they change, so a policy created today says nothing about the
thousands of objects admitted last year. Kyverno's answer is the background scan (`evaluation.background.enabled`,
on by default): list what the policies match and evaluate it as if it were being created. `celvern scan --cluster`
prints the results like `celvern apply`, and the controller turns them into PolicyReports (`webhook.policy_reports`).

How it stays cheap on a big cluster:

- Only the resource types named by the background-enabled validating policies' `resourceRules` are listed (autogen
  variants add the pod controllers). A rule with a wildcard resource (`*`) is skipped with a note: listing every API
  resource would need discovery and read access to everything, Secrets included, for policies that rarely mean it.
- Every list is paginated (`limit`/`continue`); a small pool of threads lists the types, each into a bounded queue,
  while the calling thread evaluates, one page at a time, in a fixed order (so output is deterministic). Objects are
  not kept: results are streamed, and memory is bounded by a few pages whatever the cluster's size.
- Namespace labels, for namespaceSelectors, come from ONE paginated list of Namespaces, never from a GET per object.
  A namespace that list did not show (or a failed list) has unknown labels: the policy reports an error, never "no
  labels" (see ARCHITECTURE.md, Invariants).

Failures are data: a list that fails is recorded in `Scan.errors` (and its type in `Scan.failed`, so that the report
writer keeps, rather than deletes, the reports of objects it could not see) and the scan goes on with other types.
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from engine.cel.services import Services
from engine.compiler import CompiledValidatingPolicy
from engine.evaluation import EvaluationContext
from engine.matching import UNKNOWN_NAMESPACE, NamespaceLabels
from engine.policy_set import PolicySet, run
from engine.request import CREATE, request_for_resource
from engine.resources import DEFAULT_MAPPER, ResourceMapper, ResourceType
from engine.results import PolicyResponse, ResourceKey
from webhook.cluster import ApiError, Cluster, list_all_pages, list_pages

log = logging.getLogger("celvern.scanner")

NAMESPACES = ResourceType("", "v1", "Namespace", "namespaces", False)
DEFAULT_PAGE_SIZE = 500
DEFAULT_LIST_WORKERS = 4
_PAGES_AHEAD = 2
"""Pages a lister may hold ready per type before it waits for the evaluator (bounds memory)."""
_POLL = 0.1
"""Seconds between checks of whether a blocked lister should give up (the scan was abandoned)."""

Progress = Callable[[int, int], None]
"""`progress(done, total)`: objects evaluated so far and objects listed so far (the total grows page by page)."""


@dataclass(frozen=True, slots=True)
class ResourceResult:
    """What the background policies decided about one existing object."""

    resource: ResourceType
    key: ResourceKey
    """apiVersion, kind, namespace, name and uid of the object."""
    responses: tuple[PolicyResponse, ...]
    """Responses of the policies that matched (possibly none)."""
    resource_version: str = ""

    @property
    def matched(self) -> bool:
        return any(response.rules for response in self.responses)


@dataclass(frozen=True, slots=True)
class ScanError:
    """A type (or the Namespaces) that could not be listed, or an object that could not be evaluated."""

    resource: ResourceType
    namespace: str
    message: str
    status: int = 0


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """The types a policy set's background scan lists, and why some matched resources are not listed."""

    types: tuple[ResourceType, ...]
    notes: tuple[str, ...] = ()


def background_policies(policy_set: PolicySet) -> PolicySet:
    """The validating policies (autogen variants included) with `evaluation.background.enabled`, with every
    exception; mutating and generating policies do not take part in a background scan."""
    validating = tuple(policy for policy in policy_set.validating if policy.source.background_enabled)
    return PolicySet(validating=validating, exceptions=policy_set.exceptions)


def _policy_label(policy: CompiledValidatingPolicy) -> str:
    name = f"{policy.ref.namespace}/{policy.name}" if policy.ref.namespace else policy.name
    return f"{policy.source.kind} {name}" + (f" ({policy.variant})" if policy.variant else "")


def _candidates(group: str, version: str, plural: str, mapper: ResourceMapper) -> list[ResourceType]:
    """Resource types for one (apiGroup, apiVersion, resource) of a rule; wildcards resolved from the mapper."""
    known = [t for t in mapper.by_resource.values() if t.resource == plural and group in ("*", t.group)]
    if version != "*":
        known = [t for t in known if t.version == version]
        if not known and group != "*":
            api_version = f"{group}/{version}" if group else version
            kind = mapper.kind_for(api_version, plural) or ""
            known = [ResourceType(group, version, kind, plural, True)]
    chosen: dict[str, ResourceType] = {}
    for found in known:  # one version per group: the first the mapper lists (the preferred one)
        chosen.setdefault(found.group, found)
    return list(chosen.values())


def scan_plan(policy_set: PolicySet, mapper: ResourceMapper = DEFAULT_MAPPER) -> ScanPlan:
    """The resource types the policy set's validating policies name in `resourceRules` (explicit resources only)."""
    types: dict[tuple[str, str], ResourceType] = {}
    notes: list[str] = []
    for policy in policy_set.validating:
        constraints = policy.match_constraints
        if constraints is None or not constraints.resource_rules:
            if not policy.variant:
                notes.append(f"{_policy_label(policy)} has no resourceRules: nothing to scan")
            continue
        for rule in constraints.resource_rules:
            for plural in rule.resources:
                if "*" in plural:
                    notes.append(
                        f"{_policy_label(policy)} matches resources {plural!r}: not scanned; a background scan lists "
                        "only resources named explicitly, since a wildcard would need API discovery and read access "
                        "to every resource (Secrets included)"
                    )
                    continue
                if "/" in plural:
                    notes.append(f"{_policy_label(policy)} matches subresource {plural!r}: not scanned")
                    continue
                for group in rule.api_groups or ("",):
                    for version in rule.api_versions or ("*",):
                        found = _candidates(group, version, plural, mapper)
                        if not found:
                            notes.append(
                                f"{_policy_label(policy)} matches {plural!r} in group {group!r}, version "
                                f"{version!r}: no known API version to list, not scanned"
                            )
                        for resource_type in found:
                            types.setdefault((resource_type.group, resource_type.resource), resource_type)
    ordered = sorted(types.values(), key=lambda t: (t.group, t.resource, t.version))
    return ScanPlan(tuple(ordered), tuple(dict.fromkeys(notes)))


@dataclass(slots=True)
class _Page:
    items: list[dict[str, Any]]


@dataclass(slots=True)
class _Done:
    error: ApiError | None = None


_Item = _Page | _Done


class Scan:
    """One background scan; iterate it (once) for the results, then read `errors`, `failed`, `notes`, `scanned`.

    Iterating lists and evaluates lazily: stopping early (or `close()`) stops the listing threads.
    """

    def __init__(self, scanner: Scanner, namespace: str, progress: Progress | None) -> None:
        self.namespace = namespace
        self.types = tuple(t for t in scanner.plan.types if t.namespaced or not namespace)
        """The types listed (cluster-scoped types are left out of a one-namespace scan)."""
        self.notes: list[str] = list(scanner.plan.notes)
        self.errors: list[ScanError] = []
        self.failed: set[ResourceType] = set()
        """Types whose list did not complete: their objects' reports must be kept, not deleted."""
        self.scanned = 0
        self.listed = 0
        self.finished = False
        self.aborted = ""
        """Why the round consuming the scan failed ("" when it did not): the scan is not complete then."""
        self._scanner = scanner
        self._progress = progress
        self._stop = threading.Event()
        self._started = False

    @property
    def complete(self) -> bool:
        """Every type was listed and every object evaluated (and the round consuming it did not fail)."""
        return self.finished and not self.errors and not self.aborted

    def close(self) -> None:
        self._stop.set()

    def abort(self, reason: str) -> None:
        """The round consuming this scan failed: it is not complete, whatever was iterated."""
        self.aborted = reason or "aborted"
        self.close()

    def __iter__(self) -> Iterator[ResourceResult]:
        if self._started:
            raise RuntimeError("a Scan can be iterated only once")
        self._started = True
        scanner = self._scanner
        namespaces = self._namespaces() if any(t.namespaced for t in self.types) else {}
        queues: list[queue.Queue[_Item]] = [queue.Queue(maxsize=_PAGES_AHEAD) for _ in self.types]
        seen: set[str] = set()
        # Listers run in submission order, and the evaluator reads their queues in that same order: the type it
        # waits for has always started, so listers blocked on the full queues of later types cannot starve it.
        pool = ThreadPoolExecutor(max_workers=scanner.list_workers, thread_name_prefix="celvern-scan-list")
        try:
            for resource_type, pages in zip(self.types, queues, strict=True):
                pool.submit(self._list, resource_type, pages)
            for resource_type, pages in zip(self.types, queues, strict=True):
                while True:
                    item = pages.get()
                    if isinstance(item, _Done):
                        if item.error is not None:
                            self._list_failed(resource_type, item.error)
                        break
                    self.listed += len(item.items)
                    for obj in item.items:
                        result = self._evaluate(resource_type, obj, namespaces, seen)
                        if result is not None:
                            yield result
        finally:
            self._stop.set()  # listers blocked on a full queue give up (the scan was abandoned or is over)
            pool.shutdown(wait=True, cancel_futures=True)
        self.finished = True

    def _list(self, resource_type: ResourceType, pages: queue.Queue[_Item]) -> None:
        if self._stop.is_set():
            return
        done = _Done()
        try:
            for page in list_pages(
                self._scanner.cluster, resource_type, self.namespace, page_size=self._scanner.page_size
            ):
                if not self._put(pages, _Page(page)):
                    return
        except ApiError as error:
            done = _Done(error)
        except Exception as error:  # a bug must not hang the evaluator waiting for this type
            log.exception("listing %s failed", resource_type.resource)
            done = _Done(ApiError(0, f"{type(error).__name__}: {error}"))
        self._put(pages, done)

    def _put(self, pages: queue.Queue[_Item], item: _Item) -> bool:
        while not self._stop.is_set():
            try:
                pages.put(item, timeout=_POLL)
            except queue.Full:
                continue
            return True
        return False

    def _list_failed(self, resource_type: ResourceType, error: ApiError) -> None:
        label = f"{resource_type.resource}.{resource_type.group or 'core'}"
        if error.status == 404:  # not served by this cluster (an old API group, a CRD not installed)
            self.notes.append(f"{label} is not served by the cluster: not scanned")
            return
        self.failed.add(resource_type)
        self.errors.append(ScanError(resource_type, self.namespace, f"cannot list {label}: {error}", error.status))
        log.warning("background scan cannot list %s: %s", label, error)

    def _namespaces(self) -> dict[str, tuple[NamespaceLabels, Mapping[str, Any]]]:
        """Labels and object of every Namespace, from one paginated list (empty when it fails: labels unknown)."""
        found: dict[str, tuple[NamespaceLabels, Mapping[str, Any]]] = {}
        try:
            for obj in list_all_pages(self._scanner.cluster, NAMESPACES, page_size=self._scanner.page_size):
                metadata = obj.get("metadata") or {}
                raw = metadata.get("labels") or {}
                labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
                found[str(metadata.get("name") or "")] = (NamespaceLabels(labels, known=True), obj)
        except ApiError as error:
            self.errors.append(ScanError(NAMESPACES, "", f"cannot list namespaces: {error}", error.status))
            log.warning("background scan cannot list namespaces: %s", error)
            return {}
        return found

    def _evaluate(
        self,
        resource_type: ResourceType,
        obj: Mapping[str, Any],
        namespaces: Mapping[str, tuple[NamespaceLabels, Mapping[str, Any]]],
        seen: set[str],
    ) -> ResourceResult | None:
        scanner = self._scanner
        key = ResourceKey.of(obj)
        if key.uid:
            if key.uid in seen:  # listed again (an expired continue token restarts a list) or under another group
                return None
            seen.add(key.uid)
        self.scanned += 1
        try:
            request = request_for_resource(obj, operation=scanner.operation, mapper=scanner.mapper)
            if request.namespaced and request.namespace:
                labels, namespace_object = namespaces.get(request.namespace, (UNKNOWN_NAMESPACE, None))
            else:
                labels, namespace_object = NamespaceLabels({}), None
            context = EvaluationContext(
                request=request,
                namespace=labels,
                namespace_object=namespace_object,
                services=scanner.resolved_services,
                now=scanner.clock(),
                mapper=scanner.mapper,
            )
            responses = run(scanner.policy_set, context, unmatched=False).responses
        except Exception as error:  # evaluation does not raise for policy content; anything else is a bug
            log.exception("background scan cannot evaluate %s", key.path())
            self.errors.append(ScanError(resource_type, key.namespace, f"cannot evaluate {key.path()}: {error}"))
            self.failed.add(resource_type)
            responses = ()
        finally:
            if self._progress is not None:
                self._progress(self.scanned, self.listed)
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        return ResourceResult(resource_type, key, tuple(responses), version)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Scanner:
    """Background scans of `policy_set`'s background-enabled validating policies over `cluster`.

    `services` default to `resource.*` lookups through the cluster (for policies that read other objects); the
    request of every object is a CREATE, as `celvern apply` builds it (kyverno-cel-spec.md 3.3).
    """

    cluster: Cluster
    policy_set: PolicySet
    mapper: ResourceMapper = DEFAULT_MAPPER
    page_size: int = DEFAULT_PAGE_SIZE
    list_workers: int = DEFAULT_LIST_WORKERS
    services: Services | None = None
    operation: str = CREATE
    clock: Callable[[], datetime.datetime] = _utc_now
    plan: ScanPlan = field(init=False)
    resolved_services: Services = field(init=False)

    def __post_init__(self) -> None:
        if self.page_size <= 0 or self.list_workers <= 0:
            raise ValueError("page_size and list_workers must be positive")
        self.policy_set = background_policies(self.policy_set)  # compiled once, shared by every scan
        self.plan = scan_plan(self.policy_set, self.mapper)
        if self.services is not None:
            self.resolved_services = self.services
        else:
            from webhook.generator import ClusterResourceLookup

            self.resolved_services = Services(resources=ClusterResourceLookup(self.cluster, self.mapper))

    @property
    def policy_count(self) -> int:
        """Background policies as written (autogen variants not counted)."""
        return self.policy_set.policy_count

    def scan(self, namespace: str = "", *, progress: Progress | None = None) -> Scan:
        """A scan of every namespace (or only `namespace`: then cluster-scoped types are not listed)."""
        return Scan(self, namespace, progress)
