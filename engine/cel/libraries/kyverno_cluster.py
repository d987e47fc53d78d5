"""Kyverno's libraries that reach outside the expression: resource, http, globalContext, image data.

In Kyverno these are handles (`resource`, `http`, ...) bound to a cluster client; here each call reads the
evaluation's `engine.cel.services.current()` at call time, so one compiled program serves the CLI's mocks
and the webhook's live cluster alike. Kyverno declares different `resource.*` overloads for namespaced
policies (no namespace argument, scoped to the policy's namespace); this environment declares both sets
and rejects, at evaluation, the set that does not fit the policy's scope. Every PascalCase function has
its camelCase alias (Kyverno 1.18).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.cel import services
from engine.cel.libraries import Library, cel, opaque, opaque_type
from engine.cel.libraries.image import ImageReferenceError, parse_reference
from engine.cel.libraries.kyverno_data import ANY_VALUE_TYPES

GVR_TYPE = "kyverno.gvr"
HTTP_CLIENT_TYPE = "kyverno.http.client"

NO_RESOURCES = "resource lookups are not available in this evaluation"
NO_HTTP = "http calls are not available in this evaluation"
HTTP_DENIED = "http calls are not allowed in namespaced policies"

_S = cel.Type.STRING
_DYN = cel.Type.DYN
_MAP = cel.Type.Map(cel.Type.DYN, cel.Type.DYN)


def _pascal_and_camel(name: str) -> tuple[str, str]:
    prefix, _, method = name.rpartition(".")
    camel = method[0].lower() + method[1:]
    return name, f"{prefix}.{camel}" if prefix else camel


def _declare(name: str, overloads: Callable[[str], list[Any]]) -> tuple[Any, ...]:
    """`name` and its camelCase alias, each with its own overload ids."""
    return tuple(cel.FunctionDecl(alias, overloads(alias.replace(".", "_"))) for alias in _pascal_and_camel(name))


# --- resource ---------------------------------------------------------------------------------------------


def _resources() -> services.ResourceLookup:
    lookup = services.current().resources
    if lookup is None:
        raise ValueError(NO_RESOURCES)
    return lookup


def _cluster_namespace(function: str, namespace: str) -> str:
    """The namespace argument of a cluster-policy call; namespaced policies may not pass one."""
    if services.current().policy_namespace:
        raise ValueError(f"{function} with a namespace argument is not available in namespaced policies")
    return namespace


def _policy_namespace(function: str) -> str:
    """The namespace of a namespaced policy, for calls that take no namespace argument."""
    namespace = services.current().policy_namespace
    if not namespace:
        raise ValueError(f"{function} without a namespace argument is only available in namespaced policies")
    return namespace


def _gvr(value: Any) -> tuple[str, str]:
    """(apiVersion, resource) of a GVR value from `resource.ToGVR`."""
    if opaque_type(value) != GVR_TYPE:
        raise ValueError("no such overload: expected a GroupVersionResource (from resource.ToGVR)")
    group, version = str(value["Group"]), str(value["Version"])
    return (f"{group}/{version}" if group else version), str(value["Resource"])


def _labels(labels: Mapping[Any, Any]) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ValueError("no such overload: labels must be a map(string, string)")
    return dict(labels)


def _get(api_version: str, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
    lookup = _resources()
    try:
        return lookup.get(api_version, resource, namespace, name)
    except Exception as exc:
        raise ValueError(f"failed to get resource: {exc}") from exc


def _list(api_version: str, resource: str, namespace: str, labels: Mapping[Any, Any] | None) -> dict[str, Any]:
    lookup = _resources()
    try:
        items = lookup.list(api_version, resource, namespace, None if labels is None else _labels(labels))
    except Exception as exc:
        raise ValueError(f"failed to list resource: {exc}") from exc
    result: dict[str, Any] = {"apiVersion": api_version}
    kind_for = getattr(lookup, "kind_for", None)
    kind = kind_for(api_version, resource) if callable(kind_for) else None
    if kind is None and items:
        kind = items[0].get("kind")
    if isinstance(kind, str) and kind:
        result["kind"] = f"{kind}List"
    result["items"] = list(items)
    return result


def _post(api_version: str, resource: str, namespace: str, data: Mapping[Any, Any]) -> dict[str, Any]:
    lookup = _resources()
    post = getattr(lookup, "post", None)
    if not callable(post):
        raise ValueError("resource.Post is not available offline")
    try:
        result: dict[str, Any] = post(api_version, resource, namespace, dict(data))
    except Exception as exc:
        raise ValueError(f"failed to create resource: {exc}") from exc
    return result


def _to_gvr(api_version: str, kind: str) -> dict[str, Any]:
    lookup = _resources()
    resource_for = getattr(lookup, "resource_for", None)
    resource = resource_for(api_version, kind) if callable(resource_for) else None
    if not resource:
        raise ValueError(f"failed to map kind to resource: no resource known for {api_version} {kind}")
    group, _, version = api_version.rpartition("/")
    return opaque(GVR_TYPE, Group=group, Version=version, Resource=resource)


def _resource_overloads(prefix: str) -> dict[str, list[Any]]:
    ns_get, ns_list, ns_post = "resource.Get", "resource.List", "resource.Post"

    def get4(a: str, r: str, ns: str, n: str) -> Any:
        return _get(a, r, _cluster_namespace(ns_get, ns), n)

    def get3(a: str, r: str, n: str) -> Any:
        return _get(a, r, _policy_namespace(ns_get), n)

    def get_gvr3(g: Any, ns: str, n: str) -> Any:
        return _get(*_gvr(g), _cluster_namespace(ns_get, ns), n)

    def get_gvr2(g: Any, n: str) -> Any:
        return _get(*_gvr(g), _policy_namespace(ns_get), n)

    def list3(a: str, r: str, ns: str) -> Any:
        return _list(a, r, _cluster_namespace(ns_list, ns), None)

    def list4(a: str, r: str, ns: str, labels: Mapping[Any, Any]) -> Any:
        return _list(a, r, _cluster_namespace(ns_list, ns), labels)

    def list2(a: str, r: str) -> Any:
        return _list(a, r, _policy_namespace(ns_list), None)

    def list3_labels(a: str, r: str, labels: Mapping[Any, Any]) -> Any:
        return _list(a, r, _policy_namespace(ns_list), labels)

    def list_gvr2(g: Any, ns: str) -> Any:
        return _list(*_gvr(g), _cluster_namespace(ns_list, ns), None)

    def list_gvr3(g: Any, ns: str, labels: Mapping[Any, Any]) -> Any:
        return _list(*_gvr(g), _cluster_namespace(ns_list, ns), labels)

    def list_gvr1(g: Any) -> Any:
        return _list(*_gvr(g), _policy_namespace(ns_list), None)

    def list_gvr2_labels(g: Any, labels: Mapping[Any, Any]) -> Any:
        return _list(*_gvr(g), _policy_namespace(ns_list), labels)

    def post4(a: str, r: str, ns: str, data: Mapping[Any, Any]) -> Any:
        return _post(a, r, _cluster_namespace(ns_post, ns), data)

    def post3(a: str, r: str, data: Mapping[Any, Any]) -> Any:
        # Cluster policies post cluster-scoped objects; namespaced policies post into their namespace.
        return _post(a, r, services.current().policy_namespace or "", data)

    def o(suffix: str, params: list[Any], impl: Callable[..., Any], result: Any = _DYN) -> Any:
        return cel.Overload(f"kyverno_{prefix}_{suffix}", result, params, impl=impl)

    return {
        "Get": [
            o("get_string_string_string_string", [_S, _S, _S, _S], get4),
            o("get_string_string_string", [_S, _S, _S], get3),
            o("get_gvr_string_string", [_MAP, _S, _S], get_gvr3),
            o("get_gvr_string", [_MAP, _S], get_gvr2),
        ],
        "List": [
            o("list_string_string_string", [_S, _S, _S], list3, _MAP),
            o("list_string_string_string_map", [_S, _S, _S, _MAP], list4, _MAP),
            o("list_string_string", [_S, _S], list2, _MAP),
            o("list_string_string_map", [_S, _S, _MAP], list3_labels, _MAP),
            o("list_gvr_string", [_MAP, _S], list_gvr2, _MAP),
            o("list_gvr_string_map", [_MAP, _S, _MAP], list_gvr3, _MAP),
            o("list_gvr", [_MAP], list_gvr1, _MAP),
            o("list_gvr_map", [_MAP, _MAP], list_gvr2_labels, _MAP),
        ],
        "Post": [
            o("post_string_string_string_map", [_S, _S, _S, _MAP], post4, _MAP),
            o("post_string_string_map", [_S, _S, _MAP], post3, _MAP),
        ],
        "ToGVR": [o("to_gvr_string_string", [_S, _S], _to_gvr, _MAP)],
    }


def _resource_functions() -> tuple[Any, ...]:
    decls: list[Any] = []
    for method in ("Get", "List", "Post", "ToGVR"):
        for alias in _pascal_and_camel(f"resource.{method}"):
            decls.append(cel.FunctionDecl(alias, _resource_overloads(alias.replace(".", "_"))[method]))
    return tuple(decls)


RESOURCE_LIBRARY = Library(name="kyverno.resource", functions=_resource_functions())


# --- http -------------------------------------------------------------------------------------------------


def _headers(headers: Mapping[Any, Any]) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("no such overload: headers must be a map(string, string)")
    return dict(headers)


def _request(method: str, url: str, body: Any, headers: Mapping[Any, Any] | None) -> Any:
    current = services.current()
    if not current.allow_http:
        raise ValueError(HTTP_DENIED)
    if current.http is None:
        raise ValueError(NO_HTTP)
    try:
        return current.http.request(method, url, body, _headers(headers or {}))
    except Exception as exc:
        raise ValueError(f"request failed: {exc}") from exc


def _client(value: Any) -> None:
    if opaque_type(value) != HTTP_CLIENT_TYPE:
        raise ValueError("no such overload: expected an http client (from http.Client)")


def _http_client(ca_bundle: str) -> dict[str, Any]:
    current = services.current()
    if not current.allow_http:
        raise ValueError(HTTP_DENIED)
    return opaque(HTTP_CLIENT_TYPE, caBundle=ca_bundle)


def _http_method_overloads(method: str, prefix: str, member: bool) -> list[Any]:
    """Get(url[, headers]) or Post/Put(url, body[, headers]), as globals or as members of a client."""
    receiver = [_MAP] if member else []
    overloads: list[Any] = []

    def call(*args: Any) -> Any:
        if member:
            _client(args[0])
            args = args[1:]
        if method == "GET":
            url, headers = args[0], (args[1] if len(args) > 1 else None)
            return _request(method, url, None, headers)
        url, body, headers = args[0], args[1], (args[2] if len(args) > 2 else None)
        return _request(method, url, body, headers)

    if method == "GET":
        overloads.append(cel.Overload(f"kyverno_{prefix}_string", _DYN, [*receiver, _S], is_member=member, impl=call))
        overloads.append(
            cel.Overload(f"kyverno_{prefix}_string_map", _DYN, [*receiver, _S, _MAP], is_member=member, impl=call)
        )
        return overloads
    for suffix, body_type in ANY_VALUE_TYPES:
        overloads.append(
            cel.Overload(
                f"kyverno_{prefix}_string_{suffix}",
                _DYN,
                [*receiver, _S, body_type],
                is_member=member,
                impl=call,
            )
        )
        overloads.append(
            cel.Overload(
                f"kyverno_{prefix}_string_{suffix}_map",
                _DYN,
                [*receiver, _S, body_type, _MAP],
                is_member=member,
                impl=call,
            )
        )
    return overloads


def _http_functions() -> tuple[Any, ...]:
    decls: list[Any] = []
    for name, method in (("Get", "GET"), ("Post", "POST"), ("Put", "PUT")):
        for alias in _pascal_and_camel(f"http.{name}"):
            decls.append(cel.FunctionDecl(alias, _http_method_overloads(method, alias.replace(".", "_"), False)))
        for alias in _pascal_and_camel(name):
            decls.append(cel.FunctionDecl(alias, _http_method_overloads(method, f"http_client_{alias}", True)))
    for alias in _pascal_and_camel("http.Client"):
        prefix = alias.replace(".", "_")
        decls.append(cel.FunctionDecl(alias, [cel.Overload(f"kyverno_{prefix}_string", _MAP, [_S], impl=_http_client)]))
    return tuple(decls)


HTTP_LIBRARY = Library(name="kyverno.http", functions=_http_functions())


# --- globalContext ----------------------------------------------------------------------------------------


def projection_key(name: str, projection: str) -> str:
    """Key of a projection's value in `Services.global_context` (entry names cannot contain `:`)."""
    return f"{name}:{projection}" if projection else name


def _global_context(name: str, projection: str = "") -> Any:
    entries = services.current().global_context
    key = projection_key(name, projection)
    if key not in entries:
        what = f"projection {projection!r} of global context entry" if projection else "global context entry"
        raise ValueError(f"failed to get global reference: {what} {name!r} not found")
    return entries[key]


GLOBAL_CONTEXT_LIBRARY = Library(
    name="kyverno.globalcontext",
    functions=_declare(
        "globalContext.Get",
        lambda prefix: [
            cel.Overload(f"kyverno_{prefix}_string", _DYN, [_S], impl=_global_context),
            cel.Overload(f"kyverno_{prefix}_string_string", _DYN, [_S, _S], impl=_global_context),
        ],
    ),
)


# --- image data -------------------------------------------------------------------------------------------


def _image_metadata(reference: str) -> Any:
    images = services.current().image_data
    if reference in images:
        return images[reference]
    try:
        wanted = parse_reference(reference).name
    except ImageReferenceError as exc:
        raise ValueError(f"failed to get image data: {exc}") from None
    for key, value in images.items():
        try:
            if parse_reference(key).name == wanted:
                return value
        except ImageReferenceError:
            continue
    raise ValueError(f"failed to get image data: no image data for {reference}")


IMAGE_DATA_LIBRARY = Library(
    name="kyverno.imagedata",
    functions=_declare(
        "image.GetMetadata",
        lambda prefix: [cel.Overload(f"kyverno_{prefix}_string", _DYN, [_S], impl=_image_metadata)],
    ),
)

LIBRARIES: tuple[Library, ...] = (RESOURCE_LIBRARY, HTTP_LIBRARY, GLOBAL_CONTEXT_LIBRARY, IMAGE_DATA_LIBRARY)

LIBRARY = Library(
    name="kyverno.cluster",
    functions=tuple(decl for library in LIBRARIES for decl in library.functions),
)
"""All service-backed libraries as one: resource, http, globalContext, image data."""
