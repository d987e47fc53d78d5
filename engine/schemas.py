"""Structural schemas of Kubernetes kinds, for server-side-apply merges of ApplyConfiguration mutations.

A MutatingPolicy's `Object{...}` value is merged into the resource the way the API server merges an apply
request (structured-merge-diff): how a list merges depends on the schema of the field holding it. `containers`
is a map-list keyed by `name`, `args` is atomic and is replaced, `finalizers` is a set. None of that can be
guessed from the data, so this module answers "what kind of node is `spec.template.spec.containers`?".

The built-in kinds come from the OpenAPI schemas shipped by the `kubernetes-validate` package
(`kubernetes-json-schema/v1.NN.0-local/_definitions.json`: `$defs` keyed like `io.k8s.api.core.v1.PodSpec`, with
the `x-kubernetes-list-type`, `x-kubernetes-list-map-keys` and `x-kubernetes-map-type` markers). The file is 1.7 MB;
it is parsed with orjson on first use only (about 20 ms), once per version per process. Custom resources add
their CRDs (`SchemaIndex.with_crds`), whose `openAPIV3Schema` may carry the same markers.

Conversion rules follow Kubernetes' own (`k8s.io/kube-openapi/pkg/schemaconv`):
- an array's merge type is `x-kubernetes-list-type`; without it, `x-kubernetes-patch-strategy: merge` (+
  `x-kubernetes-patch-merge-key`) makes a map-list (or a set without a key); anything else is atomic;
- an object with `properties` is a struct, with `additionalProperties` a map, both granular unless
  `x-kubernetes-map-type: atomic`; an object with neither, `x-kubernetes-preserve-unknown-fields` and `{}` carry
  no schema (`None`), which the merge treats as "deduced": maps merge key by key, lists are replaced;
- `Quantity`, `IntOrString` (`oneOf` of scalars), `x-kubernetes-int-or-string` are untyped scalars;
- the root of a CRD kind (and any `x-kubernetes-embedded-resource`) gets `metadata` as `ObjectMeta` and string
  `apiVersion`/`kind`, as the apiextensions server does;
- key fields of map-lists may default (`protocol` of container and service ports is keyed as `TCP` when
  absent); the shipped schemas drop `default`s, so those two are known here, and CRD `default`s are read.

Everything is immutable to callers: `Schema` views resolve `$ref`s lazily and memoise their children.
"""

from __future__ import annotations

import importlib.util
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson

__all__ = ["NO_DEFAULT", "Schema", "SchemaIndex", "default_schema_index"]

_DEFINITIONS_FILE = "_definitions.json"
_VERSION_DIR = re.compile(r"^v(\d+)\.(\d+)\.0-local$")
_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

NO_DEFAULT: Final = object()
"""Returned by `Schema.key_default` for a key field without a default value."""

# Defaults of list-map key fields that Kubernetes' OpenAPI declares but the shipped JSON schemas drop.
_KEY_DEFAULTS: Final[Mapping[tuple[str, str], Any]] = {
    ("io.k8s.api.core.v1.ContainerPort", "protocol"): "TCP",
    ("io.k8s.api.core.v1.ServicePort", "protocol"): "TCP",
}

STRUCT: Final = "struct"
MAP: Final = "map"
LIST: Final = "list"
SCALAR: Final = "scalar"


def _schema_root() -> Path | None:
    """The `kubernetes-json-schema` folder of the kubernetes-validate package, without importing the package."""
    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "kubernetes-json-schema"
    return root if root.is_dir() else None


def _available() -> dict[str, Path]:
    root = _schema_root()
    if root is None:
        return {}
    found: dict[str, Path] = {}
    for child in root.iterdir():
        match = _VERSION_DIR.match(child.name)
        if match and (child / _DEFINITIONS_FILE).is_file():
            found[f"{match.group(1)}.{match.group(2)}"] = child / _DEFINITIONS_FILE
    return dict(sorted(found.items(), key=lambda item: tuple(int(part) for part in item[0].split("."))))


def _normalise_version(version: str) -> str:
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.\d+)?$", version.strip())
    if not match:
        raise ValueError(f"not a Kubernetes version: {version!r} (expected e.g. '1.32')")
    return f"{int(match.group(1))}.{int(match.group(2))}"


def _split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


class _Definitions:
    """The `$defs` of one Kubernetes version, parsed on first use and shared by every index of that version."""

    def __init__(self, version: str, path: Path) -> None:
        self.version = version
        self.path = path
        self.load_seconds: float | None = None
        self._lock = threading.Lock()
        self._defs: Mapping[str, Any] | None = None
        self._by_gvk: dict[tuple[str, str, str], str] = {}
        self._named: dict[str, Schema | None] = {}

    def defs(self) -> Mapping[str, Any]:
        defs = self._defs
        if defs is None:
            with self._lock:
                if self._defs is None:
                    started = time.perf_counter()
                    document = orjson.loads(self.path.read_bytes())
                    raw = document.get("$defs") or document.get("definitions") or {}
                    by_gvk: dict[tuple[str, str, str], str] = {}
                    for name, definition in raw.items():
                        for gvk in definition.get("x-kubernetes-group-version-kind", ()):
                            key = (gvk.get("group", ""), gvk.get("version", ""), gvk.get("kind", ""))
                            by_gvk.setdefault(key, name)
                    self._by_gvk = by_gvk
                    self._defs = raw
                    self.load_seconds = time.perf_counter() - started
                defs = self._defs
        assert defs is not None
        return defs

    def name_for(self, group: str, version: str, kind: str) -> str | None:
        self.defs()
        return self._by_gvk.get((group, version, kind))

    def named(self, name: str) -> Schema | None:
        """The shared Schema of a definition (so `PodSpec` is one object, its children memoised once)."""
        try:
            return self._named[name]
        except KeyError:
            node = self.defs().get(name)
            schema = _build(node, self, name=name) if node is not None else None
            self._named[name] = schema
            return schema


_LOADED: dict[str, _Definitions] = {}
_LOADED_LOCK = threading.Lock()


def _definitions(version: str | None) -> _Definitions:
    available = _available()
    if not available:
        raise RuntimeError("the kubernetes-validate package (with its kubernetes-json-schema folder) is not installed")
    chosen = next(reversed(available)) if version is None else _normalise_version(version)
    if chosen not in available:
        raise ValueError(f"no schemas for Kubernetes {chosen}; available: {', '.join(available)}")
    with _LOADED_LOCK:
        definitions = _LOADED.get(chosen)
        if definitions is None:
            definitions = _LOADED[chosen] = _Definitions(chosen, available[chosen])
        return definitions


def _markers(
    node: Mapping[str, Any], definitions: _Definitions
) -> tuple[Mapping[str, Any], dict[str, Any], str | None]:
    """Follow `$ref`s (and single-entry `allOf`s) to the node that holds the structure.

    Returns that node, the `x-kubernetes-*` markers seen on the way (outermost wins) and the name of the last
    definition referenced.
    """
    markers: dict[str, Any] = {}
    name: str | None = None
    current = node
    for _ in range(32):  # refs chains are short; the bound only guards against cycles of pure refs
        for key, value in current.items():
            if key.startswith("x-kubernetes-") and key not in markers:
                markers[key] = value
        ref = current.get("$ref")
        if ref is None:
            all_of = current.get("allOf")
            if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], Mapping):
                ref = all_of[0].get("$ref")
        if not isinstance(ref, str):
            break
        name = ref.rsplit("/", 1)[-1]
        target = definitions.defs().get(name)
        if not isinstance(target, Mapping):
            break
        current = target
    return current, markers, name


def _json_type(node: Mapping[str, Any]) -> str | None:
    declared = node.get("type")
    if isinstance(declared, str):
        return declared
    if isinstance(declared, list):
        for item in declared:
            if item != "null":
                return str(item)
    return None


def _is_scalar_union(node: Mapping[str, Any]) -> bool:
    branches = node.get("oneOf") or node.get("anyOf")
    if not isinstance(branches, list) or not branches:
        return False
    return all(
        isinstance(branch, Mapping) and _json_type(branch) in ("string", "integer", "number", "boolean")
        for branch in branches
    )


def _build(
    node: Mapping[str, Any], definitions: _Definitions, *, name: str | None = None, object_root: bool = False
) -> Schema | None:
    """The Schema view of a raw OpenAPI node, or None when the node carries no structure."""
    if not isinstance(node, Mapping):
        return None
    target, markers, ref_name = _markers(node, definitions)
    name = ref_name or name
    if markers.get("x-kubernetes-embedded-resource") is True:
        object_root = True
    if markers.get("x-kubernetes-int-or-string") is True or _is_scalar_union(target):
        return Schema(SCALAR, target, definitions, name=name, markers=markers)
    json_type = _json_type(target)
    properties = target.get("properties")
    if json_type == "object" or (json_type is None and isinstance(properties, Mapping)):
        if (isinstance(properties, Mapping) and properties) or object_root:
            return Schema(STRUCT, target, definitions, name=name, markers=markers, object_root=object_root)
        if isinstance(target.get("additionalProperties"), Mapping):
            return Schema(MAP, target, definitions, name=name, markers=markers)
        return None
    if json_type == "array":
        return Schema(LIST, target, definitions, name=name, markers=markers)
    if json_type in ("string", "integer", "number", "boolean"):
        return Schema(SCALAR, target, definitions, name=name, markers=markers)
    return None


def _list_semantics(markers: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    list_type = markers.get("x-kubernetes-list-type")
    if list_type in ("atomic", "set", "map"):
        keys = markers.get("x-kubernetes-list-map-keys") if list_type == "map" else None
        if list_type == "map":
            if not isinstance(keys, list) or not keys:
                return "atomic", ()
            return "map", tuple(str(key) for key in keys)
        return str(list_type), ()
    strategy = markers.get("x-kubernetes-patch-strategy")
    if isinstance(strategy, str) and "merge" in strategy.split(","):
        merge_key = markers.get("x-kubernetes-patch-merge-key")
        return ("map", (merge_key,)) if isinstance(merge_key, str) else ("set", ())
    return "atomic", ()


class Schema:
    """An immutable view of one schema node: a struct, a map, a list or a scalar.

    Children are resolved lazily and memoised. `None` from `field`, `items` or `additional` means "no schema"
    (untyped, `x-kubernetes-preserve-unknown-fields`, or an unknown field: use `has_field` to tell them apart).
    """

    __slots__ = (
        "_children",
        "_definitions",
        "_items",
        "_node",
        "_object_root",
        "kind",
        "list_map_keys",
        "list_type",
        "map_type",
        "name",
        "preserve_unknown_fields",
        "scalar_type",
    )

    kind: str
    """One of "struct", "map", "list", "scalar"."""
    name: str | None
    """The definition name (`io.k8s.api.core.v1.Container`) when the node came from one."""
    list_type: str | None
    """For lists: "atomic", "set" or "map"."""
    list_map_keys: tuple[str, ...]
    """For map-lists: the key fields (`("containerPort", "protocol")`)."""
    map_type: str | None
    """For structs and maps: "atomic" or "granular"."""
    scalar_type: str | None
    """For scalars: "string", "integer", "number", "boolean", or None when untyped (int-or-string, Quantity)."""
    preserve_unknown_fields: bool
    """For structs: fields not declared are allowed (and have no schema)."""

    def __init__(
        self,
        kind: str,
        node: Mapping[str, Any],
        definitions: _Definitions,
        *,
        name: str | None = None,
        markers: Mapping[str, Any] | None = None,
        object_root: bool = False,
    ) -> None:
        markers = markers or {}
        self.kind = kind
        self.name = name
        self._node = node
        self._definitions = definitions
        self._object_root = object_root
        self._children: dict[str, Schema | None] = {}
        self._items: tuple[Schema | None] | None = None
        self.preserve_unknown_fields = markers.get("x-kubernetes-preserve-unknown-fields") is True
        self.list_type = None
        self.list_map_keys = ()
        self.map_type = None
        self.scalar_type = None
        if kind == LIST:
            self.list_type, self.list_map_keys = _list_semantics(markers)
        elif kind in (STRUCT, MAP):
            self.map_type = "atomic" if markers.get("x-kubernetes-map-type") == "atomic" else "granular"
        else:
            json_type = _json_type(node)
            fmt = node.get("format")
            if json_type in ("integer", "number", "boolean") or (json_type == "string" and fmt in (None, "", "byte")):
                self.scalar_type = json_type

    def __repr__(self) -> str:
        detail = self.list_type if self.kind == LIST else self.map_type if self.kind in (STRUCT, MAP) else None
        parts = [self.kind, *([detail] if detail else []), *([self.name] if self.name else [])]
        return f"Schema({', '.join(parts)})"

    @property
    def is_atomic(self) -> bool:
        """True for atomic lists, maps and structs: a patch replaces them whole."""
        return self.list_type == "atomic" or self.map_type == "atomic"

    def has_field(self, name: str) -> bool:
        """Whether a struct declares `name` (maps accept every key)."""
        if self.kind == MAP:
            return True
        if self.kind != STRUCT:
            return False
        if self._object_root and name in ("apiVersion", "kind", "metadata"):
            return True
        properties = self._node.get("properties")
        return isinstance(properties, Mapping) and name in properties

    def field(self, name: str) -> Schema | None:
        """The schema of a struct field (or of a map's values); None for unknown or untyped fields."""
        if self.kind == MAP:
            return self.additional()
        if self.kind != STRUCT:
            return None
        try:
            return self._children[name]
        except KeyError:
            pass
        child: Schema | None = None
        if self._object_root and name == "metadata":
            child = self._definitions.named(_OBJECT_META)
        else:
            properties = self._node.get("properties")
            raw = properties.get(name) if isinstance(properties, Mapping) else None
            if isinstance(raw, Mapping):
                child = self._resolve(raw)
            elif self._object_root and name in ("apiVersion", "kind"):
                child = Schema(SCALAR, {"type": "string"}, self._definitions)
        self._children[name] = child
        return child

    def items(self) -> Schema | None:
        """The schema of a list's elements."""
        if self.kind != LIST:
            return None
        if self._items is None:
            raw = self._node.get("items")
            self._items = (self._resolve(raw) if isinstance(raw, Mapping) else None,)
        return self._items[0]

    def additional(self) -> Schema | None:
        """The schema of a map's values."""
        if self.kind != MAP:
            return None
        try:
            return self._children["\0additional"]
        except KeyError:
            raw = self._node.get("additionalProperties")
            child = self._resolve(raw) if isinstance(raw, Mapping) else None
            self._children["\0additional"] = child
            return child

    def key_default(self, key: str) -> Any:
        """For a map-list: the default of key field `key` in its elements, or NO_DEFAULT."""
        items = self.items()
        if items is None:
            return NO_DEFAULT
        if items.name is not None and (items.name, key) in _KEY_DEFAULTS:
            return _KEY_DEFAULTS[(items.name, key)]
        properties = items._node.get("properties")
        raw = properties.get(key) if isinstance(properties, Mapping) else None
        if isinstance(raw, Mapping) and "default" in raw:
            return raw["default"]
        return NO_DEFAULT

    def _resolve(self, raw: Mapping[str, Any]) -> Schema | None:
        ref = raw.get("$ref")
        if isinstance(ref, str) and not any(key.startswith("x-kubernetes-") for key in raw):
            return self._definitions.named(ref.rsplit("/", 1)[-1])  # the common case: share the definition
        return _build(raw, self._definitions)


class SchemaIndex:
    """Schemas by kind: Kubernetes' built-in kinds of one version, plus kinds of the CRDs added.

    Immutable: `with_crds` returns a new index sharing the (lazily loaded) built-in definitions.
    """

    __slots__ = ("_crds", "_definitions")

    def __init__(self, definitions: _Definitions, crds: Mapping[tuple[str, str, str], Schema] | None = None) -> None:
        self._definitions = definitions
        self._crds: Mapping[tuple[str, str, str], Schema] = dict(crds or {})

    @classmethod
    def for_version(cls, version: str | None = None) -> SchemaIndex:
        """The built-in schemas of Kubernetes `version` ("1.32", "v1.32", "1.32.0"); None means the newest shipped.

        Raises ValueError for a version the installed kubernetes-validate does not ship.
        """
        return cls(_definitions(version))

    @staticmethod
    def available_versions() -> tuple[str, ...]:
        """The Kubernetes versions whose schemas are installed, oldest first."""
        return tuple(_available())

    @property
    def version(self) -> str:
        return self._definitions.version

    @property
    def load_seconds(self) -> float | None:
        """How long parsing the built-in definitions took (None until they are first used)."""
        return self._definitions.load_seconds

    def with_crds(self, crds: Iterable[Mapping[str, Any]]) -> SchemaIndex:
        """A new index that also knows the kinds of these CustomResourceDefinitions.

        Accepts `apiextensions.k8s.io/v1` (`spec.versions[].schema.openAPIV3Schema`) and v1beta1
        (`spec.validation.openAPIV3Schema`); documents that are not CRDs, or versions without a schema, are
        skipped (their kinds then have no schema and merge as untyped data).
        """
        added = dict(self._crds)
        for crd in crds:
            for key, node in _crd_schemas(crd):
                schema = _build(node, self._definitions, object_root=True)
                if schema is not None:
                    added[key] = schema
        return SchemaIndex(self._definitions, added)

    def for_kind(self, api_version: str, kind: str) -> Schema | None:
        """The schema of a kind (`"apps/v1"`, `"Deployment"`), or None when neither Kubernetes nor a CRD has one."""
        group, version = _split_api_version(api_version)
        crd = self._crds.get((group, version, kind))
        if crd is not None:
            return crd
        name = self._definitions.name_for(group, version, kind)
        return self._definitions.named(name) if name is not None else None

    def definition(self, name: str) -> Schema | None:
        """A built-in definition by name (`"io.k8s.api.core.v1.PodSpec"`)."""
        return self._definitions.named(name)


def _crd_schemas(crd: Mapping[str, Any]) -> list[tuple[tuple[str, str, str], Mapping[str, Any]]]:
    if not isinstance(crd, Mapping) or crd.get("kind") != "CustomResourceDefinition":
        return []
    spec = crd.get("spec")
    if not isinstance(spec, Mapping):
        return []
    group, names = spec.get("group"), spec.get("names")
    kind = names.get("kind") if isinstance(names, Mapping) else None
    if not isinstance(group, str) or not isinstance(kind, str):
        return []
    shared = _open_api_schema(spec.get("validation"))
    found: list[tuple[tuple[str, str, str], Mapping[str, Any]]] = []
    versions = spec.get("versions")
    for entry in versions if isinstance(versions, list) else ():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            continue
        node = _open_api_schema(entry.get("schema")) or shared
        if node is not None:
            found.append(((group, entry["name"], kind), node))
    if not found and shared is not None and isinstance(spec.get("version"), str):
        found.append(((group, spec["version"], kind), shared))
    return found


def _open_api_schema(holder: Any) -> Mapping[str, Any] | None:
    node = holder.get("openAPIV3Schema") if isinstance(holder, Mapping) else None
    return node if isinstance(node, Mapping) else None


_DEFAULT: SchemaIndex | None = None


def default_schema_index() -> SchemaIndex:
    """The process-wide index of the newest shipped Kubernetes schemas (loaded on first `for_kind`)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = SchemaIndex.for_version()
    return _DEFAULT
