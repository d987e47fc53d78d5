"""The admission request a policy is evaluated against.

Admission webhooks receive an AdmissionRequest from the API server; offline runs (`celvern apply`, `celvern
test`, background scans) build one from a manifest the way Kyverno's CLI does (kyverno-cel-spec.md 3.3). Either
way the engine sees the same immutable value, and the `request` CEL variable is derived from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.resources import DEFAULT_MAPPER, ResourceMapper

CREATE, UPDATE, DELETE, CONNECT = "CREATE", "UPDATE", "DELETE", "CONNECT"


@dataclass(frozen=True, slots=True)
class GroupVersionKind:
    group: str
    version: str
    kind: str

    def to_cel(self) -> dict[str, str]:
        return {"group": self.group, "version": self.version, "kind": self.kind}


@dataclass(frozen=True, slots=True)
class GroupVersionResource:
    group: str
    version: str
    resource: str

    def to_cel(self) -> dict[str, str]:
        return {"group": self.group, "version": self.version, "resource": self.resource}


@dataclass(frozen=True, slots=True)
class UserInfo:
    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_cel(self) -> dict[str, Any]:
        info: dict[str, Any] = {"username": self.username, "groups": list(self.groups)}
        if self.uid:
            info["uid"] = self.uid
        if self.extra:
            info["extra"] = {key: list(values) for key, values in self.extra.items()}
        return info

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any] | None) -> UserInfo:
        raw = raw or {}
        extra = raw.get("extra") if isinstance(raw.get("extra"), Mapping) else {}
        assert isinstance(extra, Mapping)
        return cls(
            username=str(raw.get("username") or ""),
            uid=str(raw.get("uid") or ""),
            groups=tuple(str(group) for group in raw.get("groups") or () if isinstance(group, str)),
            extra={str(key): tuple(str(v) for v in value or ()) for key, value in extra.items()},
        )


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """What one admission (or offline evaluation) is about."""

    operation: str
    kind: GroupVersionKind
    resource: GroupVersionResource
    namespace: str
    name: str
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None
    namespaced: bool = True
    sub_resource: str = ""
    uid: str = ""
    user_info: UserInfo = field(default_factory=UserInfo)
    dry_run: bool = False
    options: Mapping[str, Any] | None = None
    roles: tuple[str, ...] = ()
    cluster_roles: tuple[str, ...] = ()

    @property
    def subject(self) -> Mapping[str, Any]:
        """The object the request is about: the new object, or the old one for DELETE."""
        return self.object if self.object is not None else (self.old_object or {})

    def to_cel(self) -> dict[str, Any]:
        """The `request` CEL variable (an admission.k8s.io/v1 AdmissionRequest as a map)."""
        value: dict[str, Any] = {
            "uid": self.uid,
            "kind": self.kind.to_cel(),
            "resource": self.resource.to_cel(),
            "requestKind": self.kind.to_cel(),
            "requestResource": self.resource.to_cel(),
            "name": self.name,
            "namespace": self.namespace,
            "operation": self.operation,
            "userInfo": self.user_info.to_cel(),
            "dryRun": self.dry_run,
        }
        if self.sub_resource:
            value["subResource"] = self.sub_resource
            value["requestSubResource"] = self.sub_resource
        if self.options is not None:
            value["options"] = dict(self.options)
        if self.roles:
            value["roles"] = list(self.roles)
        if self.cluster_roles:
            value["clusterRoles"] = list(self.cluster_roles)
        return value


def request_for_resource(
    resource: Mapping[str, Any],
    *,
    operation: str = CREATE,
    user_info: UserInfo | None = None,
    mapper: ResourceMapper = DEFAULT_MAPPER,
    roles: tuple[str, ...] = (),
    cluster_roles: tuple[str, ...] = (),
    sub_resource: str = "",
    default_namespace: str = "",
    parent_resource: str = "",
) -> AdmissionRequest:
    """Build the request Kyverno's CLI would for a manifest (CREATE: object; UPDATE: both; DELETE: oldObject).

    For a subresource object (a Binding sent to `pods/binding`), pass `parent_resource` and `sub_resource`.
    """
    api_version = resource.get("apiVersion") if isinstance(resource.get("apiVersion"), str) else ""
    kind = resource.get("kind") if isinstance(resource.get("kind"), str) else ""
    assert isinstance(api_version, str) and isinstance(kind, str)
    metadata = resource.get("metadata") if isinstance(resource.get("metadata"), Mapping) else {}
    assert isinstance(metadata, Mapping)
    resource_type = mapper.for_kind(api_version, kind)
    namespace = metadata.get("namespace") if isinstance(metadata.get("namespace"), str) else ""
    name = metadata.get("name") if isinstance(metadata.get("name"), str) else ""
    assert isinstance(namespace, str) and isinstance(name, str)
    if not resource_type.namespaced:
        namespace = ""
    elif not namespace:
        namespace = default_namespace
    new, old = {
        CREATE: (resource, None),
        UPDATE: (resource, resource),
        DELETE: (None, resource),
        CONNECT: (resource, None),
    }.get(operation, (resource, None))
    return AdmissionRequest(
        operation=operation,
        kind=GroupVersionKind(resource_type.group, resource_type.version, kind),
        resource=GroupVersionResource(
            resource_type.group, resource_type.version, parent_resource or resource_type.resource
        ),
        namespace=namespace,
        name=name,
        object=new,
        old_object=old,
        namespaced=resource_type.namespaced,
        sub_resource=sub_resource,
        user_info=user_info or UserInfo(),
        roles=roles,
        cluster_roles=cluster_roles,
    )
