"""Typed views of the Kyverno CLI's own input files (`cli.kyverno.io/v1alpha1`).

`kyverno apply` and `kyverno test` read a handful of small documents besides policies and resources: Values
(namespace labels, Namespace objects, global values), UserInfo, Context (objects for `resource.Get/List`,
image metadata), ClusterResource lists and the Test itself. Parsing them here, once, into frozen dataclasses
keeps the commands free of dict-walking, and turns every malformed field into a SchemaError that names file,
line and field path, the way policy documents are checked (`engine.model.Reader`).

Kyverno accepts both `Value` and `Values` as the kind of a values file, and Namespace objects whose kind is
written `namespace`; so do we.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import LoadError, Location
from engine.loader import Document, load_paths, type_name
from engine.model import Reader
from engine.request import UserInfo
from engine.results import Status

API_VERSION = "cli.kyverno.io/v1alpha1"
VALUES_KINDS = frozenset({"Values", "Value"})
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
OPERATION_VALUE = "request.operation"
"""The `globalValues` key Kyverno reads the operation from."""


def _check_header(document: Document, kinds: frozenset[str]) -> None:
    api_version = document.data.get("apiVersion")
    kind = document.data.get("kind")
    if api_version is None or kind is None:
        missing = "apiVersion" if api_version is None else "kind"
        expected = f"apiVersion {API_VERSION}, kind {' or '.join(sorted(kinds))}"
        raise document.error(f"required field is missing (expected {expected})", missing)
    if api_version != API_VERSION:
        raise document.error(f"unsupported apiVersion {api_version!r} (expected {API_VERSION})", "apiVersion")
    if kind not in kinds:
        raise document.error(f"expected kind {' or '.join(sorted(kinds))}, got {kind!r}", "kind")


def _objects(reader: Reader, key: str) -> tuple[Mapping[str, Any], ...]:
    """A list of Kubernetes objects (mappings with at least a kind)."""
    objects = []
    for item in reader.items(key):
        if not isinstance(item.raw, Mapping):
            raise item.fail(f"expected a Kubernetes object (a mapping), got {type_name(item.raw)}")
        objects.append(item.raw)
    return tuple(objects)


def _single(documents: list[Document], source: str, what: str) -> Document:
    if len(documents) != 1:
        raise LoadError(f"expected one {what} document, found {len(documents)}", Location(source))
    return documents[0]


def _name_of(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else ""


def _labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    metadata = obj.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    if not isinstance(labels, Mapping):
        return {}
    return {str(key): str(value) for key, value in labels.items()}


# --- Values -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Values:
    """A Values file (`--values`, a test's `variables:` or inline `values:`)."""

    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """`namespaceSelector[]`: namespace name -> labels."""
    namespaces: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """`namespaces[]`: namespace name -> full Namespace object (takes priority over namespaceSelector)."""
    global_values: Mapping[str, Any] = field(default_factory=dict)
    subresources: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """`subresources[]`: subresource kind (e.g. Binding) -> (parent resource, subresource), e.g. (pods, binding)."""

    @property
    def operation(self) -> str | None:
        """The operation set with `globalValues["request.operation"]`, if any."""
        value = self.global_values.get(OPERATION_VALUE)
        return value.upper() if isinstance(value, str) and value else None


def parse_values(document: Document, *, path: str = "", check_header: bool = True) -> Values:
    """Parse a Values document (or the inline `values:` of a Test, at field path `path`)."""
    if check_header:
        _check_header(document, VALUES_KINDS)
    raw = document.data if not path else document.data.get(path)
    if not isinstance(raw, Mapping):
        raise document.error(f"expected a mapping, got {type_name(raw)}", path)
    reader = Reader(document, raw, path)
    prefix = f"{path}." if path else ""
    labels: dict[str, Mapping[str, str]] = {}
    for item in reader.items("namespaceSelector"):
        labels[item.string("name", required=True)] = item.string_map("labels")
    namespaces: dict[str, Mapping[str, Any]] = {}
    for index, namespace in enumerate(_objects(reader, "namespaces")):
        name = _name_of(namespace)
        if not name:
            raise document.error("a Namespace needs metadata.name", f"{prefix}namespaces[{index}]")
        namespaces[name] = {**namespace, "kind": "Namespace", "apiVersion": namespace.get("apiVersion", "v1")}
    global_values = reader.mapping("globalValues").raw
    operation = global_values.get(OPERATION_VALUE)
    if operation is not None and (not isinstance(operation, str) or operation.upper() not in OPERATIONS):
        raise document.error(
            f"must be one of {', '.join(sorted(OPERATIONS))}, got {operation!r}",
            f"{prefix}globalValues.{OPERATION_VALUE}",
        )
    subresources: dict[str, tuple[str, str]] = {}
    for item in reader.items("subresources"):
        sub = item.mapping("subresource", required=True)
        parent_name, _, sub_name = sub.string("name", required=True).partition("/")
        if not sub_name:
            raise sub.fail("expected `<resource>/<subresource>`, e.g. pods/binding", "name")
        subresources[sub.string("kind", required=True)] = (parent_name, sub_name)
    return Values(labels, namespaces, dict(global_values), subresources)


def load_values(path: str | Path) -> Values:
    document = _single(load_paths([path]), str(path), "Values")
    return parse_values(document)


# --- UserInfo -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestUser:
    """A UserInfo file: who makes the (simulated) admission request."""

    user_info: UserInfo = field(default_factory=UserInfo)
    roles: tuple[str, ...] = ()
    cluster_roles: tuple[str, ...] = ()


def parse_user_info(document: Document) -> RequestUser:
    _check_header(document, frozenset({"UserInfo"}))
    reader = Reader(document, document.data)
    info = reader.mapping("userInfo")
    info.string("username")
    info.strings("groups")
    return RequestUser(UserInfo.from_raw(info.raw), reader.strings("roles"), reader.strings("clusterRoles"))


def load_user_info(path: str | Path) -> RequestUser:
    return parse_user_info(_single(load_paths([path]), str(path), "UserInfo"))


# --- Context and ClusterResource ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterContext:
    """What `resource.*` and `image.GetMetadata` may see: objects of a fake cluster and image metadata."""

    resources: tuple[Mapping[str, Any], ...] = ()
    images: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    crds: tuple[Mapping[str, Any], ...] = ()

    def merge(self, other: ClusterContext) -> ClusterContext:
        return ClusterContext(
            (*self.resources, *other.resources), {**self.images, **other.images}, (*self.crds, *other.crds)
        )


def parse_context(document: Document) -> ClusterContext:
    """A Context document: `spec.resources[]` and `spec.images[]{image, ...}`."""
    _check_header(document, frozenset({"Context"}))
    spec = Reader(document, document.data).mapping("spec")
    images: dict[str, Mapping[str, Any]] = {}
    for item in spec.items("images"):
        images[item.string("image", required=True)] = dict(item.raw)
    return ClusterContext(_objects(spec, "resources"), images)


def load_context(path: str | Path) -> ClusterContext:
    return parse_context(_single(load_paths([path]), str(path), "Context"))


def load_cluster_resources(paths: list[Path]) -> ClusterContext:
    """Files of resources, or ClusterResource documents (`spec.resources[]`, `spec.crds[]` file paths)."""
    context = ClusterContext()
    for document in load_paths(paths):
        if document.data.get("apiVersion") == API_VERSION and document.data.get("kind") == "ClusterResource":
            spec = Reader(document, document.data).mapping("spec")
            base = Path(document.source).parent
            crd_paths = [base / crd for crd in spec.strings("crds")]
            crds = tuple(d.data for d in load_paths(crd_paths))
            context = context.merge(ClusterContext(_objects(spec, "resources"), crds=crds))
        elif document.data.get("kind") == "CustomResourceDefinition":
            context = context.merge(ClusterContext(crds=(document.data,)))
        else:
            context = context.merge(ClusterContext((document.data,)))
    return context


# --- Test ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """`resourceSpecs[]`: a resource named by its parts (empty parts match anything)."""

    group: str = ""
    version: str = ""
    kind: str = ""
    namespace: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class ExpectedResult:
    """One entry of a Test's `results[]`."""

    policy: str
    result: Status
    rule: str = ""
    kind: str = ""
    resources: tuple[str, ...] = ()
    resource_specs: tuple[ResourceSpec, ...] = ()
    operation: str | None = None
    patched_resources: str = ""
    generated_resources: tuple[str, ...] = ()
    index: int = 0

    @property
    def policy_name(self) -> str:
        """Kyverno compares only the part after the last `/` with the policy name."""
        return self.policy.rpartition("/")[2]


@dataclass(frozen=True, slots=True)
class ApiCallResponse:
    """`apiCallResponses[]`: a mocked answer for `http.*` calls."""

    url: str
    url_path: str
    method: str
    status_code: int
    body: Any

    def to_raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "method": self.method,
            "response": {"statusCode": self.status_code, "body": self.body},
        }
        if self.url:
            raw["url"] = self.url
        if self.url_path:
            raw["urlPath"] = self.url_path
        return raw


@dataclass(frozen=True, slots=True)
class TestDocument:
    """A `kind: Test` document, with every path already resolved against the test file's directory."""

    __test__ = False  # not a pytest test class

    name: str
    source: Path
    document: Document
    policies: tuple[Path, ...]
    resources: tuple[Path, ...]
    exceptions: tuple[Path, ...]
    results: tuple[ExpectedResult, ...]
    variables: Path | None = None
    values: Values | None = None
    user_info: Path | None = None
    context: Path | None = None
    cluster_resources: tuple[Path, ...] = ()
    json_payloads: tuple[Path, ...] = ()
    api_call_responses: tuple[ApiCallResponse, ...] = ()
    unsupported_inputs: tuple[str, ...] = ()
    """Fields this version ignores although they influence results (httpPayloads, envoyPayloads, ...)."""


_UNSUPPORTED_FIELDS = (
    "httpPayloads",
    "envoyPayloads",
    "globalContextEntries",
    "targetResources",
    "paramResources",
)
_RESULTS = frozenset(status.value for status in Status)


def _paths(reader: Reader, key: str, base: Path) -> tuple[Path, ...]:
    return tuple(base / path for path in reader.strings(key))


def _expected(item: Reader, index: int) -> ExpectedResult:
    result = item.string("result", required=True)
    if result not in _RESULTS:
        raise item.fail(f"must be one of {', '.join(sorted(_RESULTS))}, got {result!r}", "result")
    operation = item.string("operation") or None
    if operation is not None and operation not in OPERATIONS:
        raise item.fail(f"must be one of {', '.join(sorted(OPERATIONS))}, got {operation!r}", "operation")
    specs = tuple(
        ResourceSpec(
            spec.string("group"),
            spec.string("version"),
            spec.string("kind"),
            spec.string("namespace"),
            spec.string("name"),
        )
        for spec in item.items("resourceSpecs")
    )
    generated = item.strings("generatedResources")
    if item.raw.get("generatedResource") is not None:
        generated = (item.string("generatedResource"), *generated)
    return ExpectedResult(
        policy=item.string("policy", required=True),
        result=Status(result),
        rule=item.string("rule"),
        kind=item.string("kind"),
        resources=item.strings("resources"),
        resource_specs=specs,
        operation=operation,
        patched_resources=item.string("patchedResources"),
        generated_resources=generated,
        index=index,
    )


def parse_test(document: Document) -> TestDocument:
    """Parse a Test document; relative paths are resolved against the directory of its file."""
    if "name" in document.data and "metadata" not in document.data:
        raise document.error("this is the deprecated Test format (top-level name); use metadata.name", "name")
    _check_header(document, frozenset({"Test"}))
    reader = Reader(document, document.data)
    source = Path(document.source)
    base = source.parent
    name = reader.mapping("metadata").string("name") or source.name

    def optional_path(key: str) -> Path | None:
        value = reader.string(key)
        return base / value if value else None

    values = parse_values(document, path="values", check_header=False) if document.data.get("values") else None
    api_calls = []
    for item in reader.items("apiCallResponses"):
        url, url_path = item.string("url"), item.string("urlPath")
        if not url and not url_path:
            raise item.fail("one of url or urlPath is required")
        response = item.mapping("response")
        status_code = response.raw.get("statusCode", 200)
        if not isinstance(status_code, int) or isinstance(status_code, bool):
            raise response.fail(f"expected an integer, got {type_name(status_code)}", "statusCode")
        method = item.string("method").upper()
        if method not in ("", "GET", "POST"):
            raise item.fail(f"must be GET or POST, got {method!r}", "method")
        api_calls.append(ApiCallResponse(url, url_path, method, status_code, response.raw.get("body")))
    json_payloads = _paths(reader, "jsonPayloads", base)
    if not json_payloads and reader.raw.get("jsonPayload"):
        json_payloads = (base / reader.string("jsonPayload"),)
    return TestDocument(
        name=name,
        source=source,
        document=document,
        policies=_paths(reader, "policies", base),
        resources=_paths(reader, "resources", base),
        exceptions=_paths(reader, "exceptions", base),
        results=tuple(_expected(item, index) for index, item in enumerate(reader.items("results"))),
        variables=optional_path("variables"),
        values=values,
        user_info=optional_path("userinfo"),
        context=optional_path("context"),
        cluster_resources=_paths(reader, "clusterResources", base),
        json_payloads=json_payloads,
        api_call_responses=tuple(api_calls),
        unsupported_inputs=tuple(key for key in _UNSUPPORTED_FIELDS if document.data.get(key)),
    )
