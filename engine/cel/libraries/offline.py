"""Offline services for the Kyverno CLI: cluster objects and HTTP answers read from test files.

`kyverno test` and `kyverno apply` serve `resource.*` from the resources of a test's `context` file or
`clusterResources`, and `http.*` from the test's `apiCallResponses`. `InMemoryResources` implements
`engine.cel.services.ResourceLookup` over a list of objects and `MockedHttp` implements
`engine.cel.services.HttpLookup` with the CLI's matching rules and its `{body, statusCode}` answers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

PluralFor = Callable[[str, str], str | None]
"""(apiVersion, kind) -> plural resource name, or None when unknown."""


def plural_of(kind: str) -> str:
    """The usual plural of a kind: lowercase, then `-s`, `-es` or `-ies` (what kubectl guesses)."""
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        return lower[:-1] + "ies"
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    return lower + "s"


class InMemoryResources:
    """Read-only Kubernetes objects indexed by apiVersion, plural resource, namespace and name.

    `plural_for(apiVersion, kind)` names the resource of a kind (from discovery or CRDs); when it returns
    None the default pluralization applies. Lookups return deep copies, so expressions cannot alter the
    stored objects.
    """

    def __init__(self, objects: Iterable[Mapping[str, Any]], plural_for: PluralFor | None = None) -> None:
        self._plural_for = plural_for
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._kinds: dict[tuple[str, str], str] = {}
        self._resources: dict[tuple[str, str], str] = {}
        for obj in objects:
            self.add(obj)

    def add(self, obj: Mapping[str, Any]) -> None:
        """Store `obj` (replacing an object with the same identity); it needs apiVersion, kind and name."""
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        metadata = obj.get("metadata") or {}
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        if not isinstance(api_version, str) or not isinstance(kind, str) or not isinstance(name, str):
            raise ValueError("a cluster resource needs apiVersion, kind and metadata.name")
        namespace = metadata.get("namespace") or ""
        resource = self.resource_for(api_version, kind)
        self._kinds[(api_version, resource)] = kind
        self._resources[(api_version, kind)] = resource
        self._objects.setdefault((api_version, resource), {})[(str(namespace), name)] = copy.deepcopy(dict(obj))

    def resource_for(self, api_version: str, kind: str) -> str:
        """Plural resource name of `kind` (what `resource.ToGVR` needs)."""
        known = self._resources.get((api_version, kind))
        if known is not None:
            return known
        plural = self._plural_for(api_version, kind) if self._plural_for is not None else None
        return plural or plural_of(kind)

    def kind_for(self, api_version: str, resource: str) -> str | None:
        """Kind of the stored objects of a resource, if any was stored."""
        return self._kinds.get((api_version, resource))

    def get(self, api_version: str, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self._objects.get((api_version, resource), {}).get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list(
        self, api_version: str, resource: str, namespace: str, labels: Mapping[str, str] | None
    ) -> list[dict[str, Any]]:
        objects = self._objects.get((api_version, resource), {})
        found = []
        for (obj_namespace, _), obj in sorted(objects.items()):
            if namespace and obj_namespace != namespace:
                continue
            if labels and not _has_labels(obj, labels):
                continue
            found.append(copy.deepcopy(obj))
        return found


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    metadata = obj.get("metadata") or {}
    present = metadata.get("labels") or {} if isinstance(metadata, Mapping) else {}
    return all(present.get(key) == value for key, value in labels.items())


class UnmatchedCall(LookupError):
    """An HTTP call that no mocked response answers."""


class MockedHttp:
    """HTTP answers from a Kyverno CLI test's `apiCallResponses`.

    Each entry is `{url | urlPath, method, response: {statusCode, body}}`. `url` must equal the called URL;
    `urlPath` must equal its path. `method` is GET, POST (any case) or empty for any method. The first
    matching entry answers `{"body": body, "statusCode": statusCode}` (status 200 by default), whatever the
    body's type, as the CLI does.
    """

    def __init__(self, responses: Iterable[Mapping[str, Any]]) -> None:
        self._responses = [dict(entry) for entry in responses]
        for entry in self._responses:
            if not entry.get("url") and not entry.get("urlPath"):
                raise ValueError("an apiCallResponses entry needs url or urlPath")

    def request(self, method: str, url: str, body: Any, headers: Mapping[str, str] | None) -> Any:
        path = urlsplit(url).path
        for entry in self._responses:
            wanted = str(entry.get("method") or "").upper()
            if wanted and wanted != method.upper():
                continue
            if entry.get("url"):
                if entry["url"] != url:
                    continue
            elif entry.get("urlPath") != path:
                continue
            response = entry.get("response") or {}
            status = response.get("statusCode") or 200
            return {"body": copy.deepcopy(response.get("body")), "statusCode": status}
        raise UnmatchedCall(f"no mocked response for {method.upper()} {url}")
