"""The policy library's catalogue, its parameters, and turning a library policy into an instance.

Why this module exists: the library under `policies/` ships plain `policies.kyverno.io` policies that follow the
conventions of `policies/README.md`: catalogue annotations (title, category, severity, ...) and parameters, which
are policy variables whose expression is a CEL literal (the default), declared in the annotation
`celvern.io/parameters`. `celvern library list|show|instantiate` needs that catalogue as data, user values checked
against the declared types before anything is written, and the policy rewritten with new literals, action,
namespaces and name. Reading the literals with the engine's own CEL parser (`engine.cel.syntax`) means that what
counts as a literal here is exactly what the compiler will see, and checking quantities and regular expressions
with the engine's own quantity parser and RE2 compiler means that a value accepted here behaves the same in the
policy. The same checks make a malformed library policy an error naming its file, line and field.

Pure: files are read only through `engine.loader`; rendering and instantiation work on plain data.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, cast, get_args

import yaml

from engine.cel.libraries.quantity import QuantityError, parse_nanos
from engine.cel.libraries.regex import RegexError, compile_pattern
from engine.cel.syntax import Call, CelSyntaxError, Constant, Expr, ListExpr, MapExpr, parse
from engine.errors import CelvernError, LoadError, Location, SchemaError
from engine.loader import Document, iter_files, load_paths, read_text, type_name
from engine.model import POLICY_KINDS, VALIDATING_KINDS, Reader, is_policy_document

POLICY_FILE: Final = "policy.yaml"
"""The file that holds a library policy (`policies/<kind>/<group>/<name>/policy.yaml`)."""

TITLE: Final = "policies.kyverno.io/title"
CATEGORY: Final = "policies.kyverno.io/category"
SEVERITY: Final = "policies.kyverno.io/severity"
SUBJECT: Final = "policies.kyverno.io/subject"
DESCRIPTION: Final = "policies.kyverno.io/description"
PSS_CONTROL: Final = "celvern.io/pss-control"
PSP_FIELD: Final = "celvern.io/psp-field"
PARAMETERS: Final = "celvern.io/parameters"
LIBRARY_POLICY: Final = "celvern.io/library-policy"
"""Set on an instance named differently from its library policy: which library policy it is an instance of."""

REQUIRED_ANNOTATIONS: Final = (TITLE, CATEGORY, SEVERITY, DESCRIPTION)
"""What the catalogue cannot do without. `policies.kyverno.io/subject` is informational: an empty string when unset."""
CATEGORIES: Final = (
    "Pod Security Standards (Baseline)",
    "Pod Security Standards (Restricted)",
    "PodSecurityPolicy",
    "Governance: General",
    "Governance: Compliance",
    "Governance: Infra",
    "Governance: FinOps",
    "Deletion Protection",
    "Mutation Defaults",
    "Generation Defaults",
)
SEVERITIES: Final = ("low", "medium", "high")

ParameterType: TypeAlias = Literal[
    "string", "integer", "boolean", "quantity", "regex", "list[string]", "list[integer]", "object"
]
PARAMETER_TYPES: Final[tuple[str, ...]] = get_args(ParameterType)
ENUM_TYPES: Final = frozenset({"string", "list[string]"})
"""Types an `enum` may restrict (a string, or the items of a list of strings)."""
PARAMETER_FIELDS: Final = frozenset({"name", "type", "description", "enum"})

ACTIONS: Final = ("Deny", "Warn", "Audit")
NAMESPACE_LABEL: Final = "kubernetes.io/metadata.name"
"""The label the API server puts on every Namespace, holding its name: what `--namespaces` selects on."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MAX_VALUE_DEPTH: Final = 64
_IDENTIFIER: Final = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class LibraryError(CelvernError):
    """A request the library cannot honour: an unknown policy or parameter, a value that does not fit its
    parameter, an action or namespaces that do not apply. A usage error (exit code 2); the message says what
    was expected."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class LiteralError(ValueError):
    """Text that is not a CEL literal the library can read, or a value that cannot be written as one."""


class ValueMismatch(ValueError):
    """A value that does not fit a parameter type; the message says what was expected."""


# --- CEL literals ---------------------------------------------------------------------------------------------


def parse_literal(text: str) -> Any:
    """The Python value of a CEL literal: a string, int, double, bool or null constant, or a list or map (string
    keys) of literals, any of them possibly wrapped in `dyn()`. Raises LiteralError for anything else
    (identifiers, calls, operators, bytes, unsigned and non-finite numbers, optional entries)."""
    try:
        node = parse(text)
    except CelSyntaxError as error:
        raise LiteralError(str(error)) from None
    return _literal_value(node, text)


def _literal_value(node: Expr, text: str) -> Any:
    if isinstance(node, Constant):
        if node.kind in ("string", "int", "bool", "null"):
            return node.value
        if node.kind == "double":
            if not math.isfinite(cast(float, node.value)):
                raise LiteralError(f"{node.text} is out of range for a double")
            return node.value
        if node.kind == "uint":
            raise LiteralError(f"unsigned literals are not supported: write {node.text[:-1]}, not {node.text}")
        raise LiteralError(f"{node.kind} literals are not supported: {node.text}")
    if isinstance(node, ListExpr):
        items = []
        for element in node.elements:
            if element.optional:
                raise LiteralError(f"optional list elements are not literals: {text[element.start : element.end]}")
            items.append(_literal_value(element.value, text))
        return items
    if isinstance(node, MapExpr):
        result: dict[str, Any] = {}
        for entry in node.entries:
            if entry.optional:
                raise LiteralError(f"optional map entries are not literals: {text[entry.start : entry.end]}")
            key = _literal_value(entry.key, text)
            if not isinstance(key, str):
                raise LiteralError(f"map keys must be strings, got {text[entry.key.start : entry.key.end]}")
            if key in result:
                raise LiteralError(f"duplicate map key {render_literal(key)}")
            result[key] = _literal_value(entry.value, text)
        return result
    if isinstance(node, Call) and node.function == "dyn" and node.target is None and len(node.args) == 1:
        return _literal_value(node.args[0], text)  # dyn() only changes the static type
    raise LiteralError(
        f"{text[node.start : node.end]!r} is not a literal (write a string, number, boolean, null, list or map)"
    )


_STRING_ESCAPES: Final = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _quote(text: str) -> str:
    parts = ["'"]
    for char in text:
        escaped = _STRING_ESCAPES.get(char)
        if escaped is not None:
            parts.append(escaped)
        elif char.isprintable():
            parts.append(char)
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise LiteralError(f"a string cannot hold the lone surrogate U+{ord(char):04X}")
        elif ord(char) <= 0xFFFF:
            parts.append(f"\\u{ord(char):04x}")
        else:
            parts.append(f"\\U{ord(char):08x}")
    parts.append("'")
    return "".join(parts)


_LiteralType: TypeAlias = str | tuple[str, Any]
"""The CEL type of a rendered literal: `int`, `string`, ..., `dyn`, or `("list", element)`, `("map", value)`."""


def _join(left: _LiteralType, right: _LiteralType) -> _LiteralType | None:
    """The common type of two literals in one list or map, as cel-go's checker joins them; None when they conflict
    (Kubernetes' and Kyverno's CEL enable `HomogeneousAggregateLiterals`, which rejects such a literal)."""
    if left == right:
        return left
    if left == "dyn" or right == "dyn":
        return "dyn"
    if isinstance(left, tuple) and isinstance(right, tuple) and left[0] == right[0]:
        inner = _join(left[1], right[1])
        return None if inner is None else (left[0], inner)
    return None


def _render_items(values: list[Any]) -> tuple[list[str], _LiteralType]:
    """The literals of a list's items (or a map's values) and their common type. When the types conflict the first
    is wrapped in `dyn()`, which makes the rest of the literal type-check under homogeneous aggregate literals."""
    rendered = [_render(value) for value in values]
    joined: _LiteralType | None = "dyn"
    for index, (_, literal_type) in enumerate(rendered):
        joined = literal_type if index == 0 else _join(joined or "dyn", literal_type)
        if joined is None:
            break
    texts = [text for text, _ in rendered]
    if joined is None:
        texts[0] = f"dyn({texts[0]})"
        joined = "dyn"
    return texts, joined


def _render(value: Any) -> tuple[str, _LiteralType]:
    if value is None:
        return "null", "null"
    if isinstance(value, bool):
        return ("true" if value else "false"), "bool"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise LiteralError(f"{value} is out of range for a CEL int (64 bits)")
        return str(value), "int"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LiteralError(f"{value} cannot be written as a CEL double")
        text = repr(value)
        return (text if any(char in text for char in ".eE") else text + ".0"), "double"
    if isinstance(value, str):
        return _quote(value), "string"
    if isinstance(value, list | tuple):
        texts, element = _render_items(list(value))
        return "[" + ", ".join(texts) + "]", ("list", element)
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise LiteralError(f"map keys must be strings, got {type_name(key)} {key!r}")
        texts, item = _render_items(list(value.values()))
        entries = [f"{_quote(key)}: {text}" for key, text in zip(value, texts, strict=True)]
        return "{" + ", ".join(entries) + "}", ("map", item)
    raise LiteralError(f"a {type_name(value)} cannot be written as a CEL literal")


def render_literal(value: Any) -> str:
    """The CEL literal of a Python value (None, bool, int, float, str, list/tuple, mapping with string keys):
    single-quoted strings with escapes, `[...]` lists, `{...}` maps, and `dyn(...)` around the first item of a list
    or map whose items differ in type (`{'key': dyn('a'), 'optional': true}`), so that the literal also compiles
    where aggregate literals must be homogeneous, as in Kubernetes and Kyverno. `parse_literal` reads it back."""
    return _render(value)[0]


# --- parameter types ------------------------------------------------------------------------------------------


def _check_integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueMismatch(f"expected an integer, got {type_name(value)} {render_value(value)}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueMismatch(f"{value} is out of range for a 64-bit integer")
    return value


def _check_string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueMismatch(f"expected a string, got {type_name(value)} {render_value(value)}")
    return value


def _check_json(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_VALUE_DEPTH:
        raise ValueMismatch(f"nested deeper than {_MAX_VALUE_DEPTH} levels")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return _check_integer(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueMismatch(f"{value} is not a JSON number")
        return value
    if isinstance(value, list | tuple):
        return [_check_json(item, depth + 1) for item in value]
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueMismatch(f"map keys must be strings, got {type_name(key)} {key!r}")
            result[key] = _check_json(item, depth + 1)
        return result
    raise ValueMismatch(f"{type_name(value)} is not a JSON value")


def _check_list(value: Any, check: Callable[[Any], Any]) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueMismatch(f"expected a list, got {type_name(value)} {render_value(value)}")
    checked = []
    for index, item in enumerate(value):
        try:
            checked.append(check(item))
        except ValueMismatch as error:
            raise ValueMismatch(f"item {index + 1}: {error}") from None
    return checked


def check_value(parameter_type: str, value: Any, enum: Sequence[str] = ()) -> Any:
    """`value` as a value of `parameter_type` (tuples become lists); raises ValueMismatch saying what was expected."""
    if parameter_type == "string":
        result: Any = _check_string(value)
    elif parameter_type == "integer":
        result = _check_integer(value)
    elif parameter_type == "boolean":
        if not isinstance(value, bool):
            raise ValueMismatch(f"expected true or false, got {type_name(value)} {render_value(value)}")
        result = value
    elif parameter_type == "quantity":
        result = _check_string(value)
        try:
            if result:  # the empty string is "no quantity" (policies use it for an unset bound)
                parse_nanos(result)
        except QuantityError as error:
            raise ValueMismatch(f"{result!r} is not a Kubernetes quantity (such as 500m or 2Gi): {error}") from None
    elif parameter_type == "regex":
        result = _check_string(value)
        try:
            compile_pattern(result)
        except RegexError as error:
            raise ValueMismatch(f"{result!r} is not an RE2 regular expression: {error}") from None
    elif parameter_type == "list[string]":
        result = _check_list(value, _check_string)
    elif parameter_type == "list[integer]":
        result = _check_list(value, _check_integer)
    elif parameter_type == "object":
        result = _check_json(value)
    else:
        raise ValueMismatch(f"unknown parameter type {parameter_type!r} (expected one of {', '.join(PARAMETER_TYPES)})")
    if enum:
        for item in result if parameter_type == "list[string]" else [result]:
            if item not in enum:
                raise ValueMismatch(f"{item!r} is not one of the allowed values")
    return result


def render_value(value: Any) -> str:
    """A value as it reads in messages and `show`: its CEL literal (or Python's repr when it has none)."""
    try:
        return render_literal(value)
    except LiteralError:
        return repr(value)


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        raise ValueMismatch(f"invalid JSON/YAML: {error.problem or error}") from None
    except (yaml.YAMLError, RecursionError) as error:
        raise ValueMismatch(f"invalid JSON/YAML: {error}") from None


def _parse_integer(text: str) -> int:
    if not _INTEGER.fullmatch(text.strip()):
        raise ValueMismatch(f"expected an integer, got {text!r}")
    if len(text.strip()) > 21:  # longer than any 64-bit integer (and than what int() converts quickly)
        raise ValueMismatch(f"{text.strip()[:24]}... is out of range for a 64-bit integer")
    return int(text)


def parse_text_value(parameter_type: str, text: str, enum: Sequence[str] = ()) -> Any:
    """A command-line value (`--set name=TEXT`) as a value of `parameter_type`: strings, quantities and regexes as
    they are; integers; `true`/`false`; lists as `a,b` or as a JSON/YAML list `[...]`; objects as JSON/YAML.
    Raises ValueMismatch saying what was expected."""
    if parameter_type == "integer":
        value: Any = _parse_integer(text)
    elif parameter_type == "boolean":
        if text.strip().lower() not in ("true", "false"):
            raise ValueMismatch(f"expected true or false, got {text!r}")
        value = text.strip().lower() == "true"
    elif parameter_type in ("list[string]", "list[integer]"):
        stripped = text.strip()
        if stripped.startswith("["):
            value = _yaml_value(stripped)
        else:
            items = [item.strip() for item in stripped.split(",")] if stripped else []
            if "" in items:
                raise ValueMismatch(f"empty item in {text!r} (write a,b or a JSON list ['a', 'b'])")
            value = [_parse_integer(item) for item in items] if parameter_type == "list[integer]" else items
    elif parameter_type == "object":
        value = _yaml_value(text)
    else:
        value = text
    return check_value(parameter_type, value, enum)


@dataclass(frozen=True, slots=True)
class Parameter:
    """One declared parameter of a library policy; `default` is the value of its variable's literal."""

    name: str
    type: ParameterType
    description: str
    enum: tuple[str, ...]
    default: Any

    @property
    def expected(self) -> str:
        """What a value must be, for messages: `integer`, `string, one of: A, B`."""
        if not self.enum:
            return self.type
        return f"{self.type}, {'items ' if self.type == 'list[string]' else ''}one of: {', '.join(self.enum)}"

    def _rejection(self, detail: str) -> LibraryError:
        return LibraryError(f"invalid value for parameter {self.name!r} ({self.expected}): {detail}")

    def check(self, value: Any) -> Any:
        """`value` checked against the parameter's type and enum; raises LibraryError naming the parameter."""
        try:
            return check_value(self.type, value, self.enum)
        except ValueMismatch as error:
            raise self._rejection(str(error)) from None

    def parse(self, text: str) -> Any:
        """A command-line value for this parameter (see `parse_text_value`); raises LibraryError."""
        try:
            return parse_text_value(self.type, text, self.enum)
        except ValueMismatch as error:
            raise self._rejection(str(error)) from None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "description": self.description,
            "enum": list(self.enum),
            "default": self.default,
        }


# --- the catalogue --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LibraryPolicy:
    """A library policy: its catalogue annotations, its parameters and the document it came from."""

    name: str
    kind: str
    title: str
    category: str
    severity: str
    subject: str
    description: str
    pss_control: str
    """`celvern.io/pss-control` (Pod Security Standards policies), or ""."""
    psp_field: str
    """`celvern.io/psp-field` (PodSecurityPolicy policies), or ""."""
    parameters: tuple[Parameter, ...]
    source: str
    """The policy file."""
    document: Document

    @property
    def validating(self) -> bool:
        return self.kind in VALIDATING_KINDS

    def parameter(self, name: str) -> Parameter:
        """The parameter called `name`; raises LibraryError listing the policy's parameters."""
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        if not self.parameters:
            raise LibraryError(f"policy {self.name} has no parameters (asked for {name!r})")
        known = ", ".join(f"{p.name} ({p.type})" for p in self.parameters)
        close = difflib.get_close_matches(name, [p.name for p in self.parameters], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LibraryError(f"unknown parameter {name!r} for policy {self.name}{hint} (its parameters: {known})")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "title": self.title,
            "category": self.category,
            "severity": self.severity,
            "subject": self.subject,
            "description": self.description,
            "pssControl": self.pss_control or None,
            "pspField": self.psp_field or None,
            "parameters": [parameter.to_json() for parameter in self.parameters],
            "path": self.source,
        }


@dataclass(frozen=True, slots=True)
class Library:
    """Every policy of a library directory, in file order."""

    root: str
    policies: tuple[LibraryPolicy, ...]

    def get(self, name: str) -> LibraryPolicy:
        """The policy called `name`; raises LibraryError (with the closest names) when there is none."""
        for policy in self.policies:
            if policy.name == name:
                return policy
        close = difflib.get_close_matches(name, [p.name for p in self.policies], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise LibraryError(f"no policy named {name!r} in the library {self.root}{hint}")

    @property
    def categories(self) -> tuple[str, ...]:
        """The categories in use, in the order of `CATEGORIES`."""
        used = {policy.category for policy in self.policies}
        return tuple(category for category in CATEGORIES if category in used)


def load_library(root: str | os.PathLike[str]) -> Library:
    """Every policy in the `policy.yaml` files under `root` (or in `root` itself, when it is a file).

    Documents that are not policies are ignored. Raises LoadError/SchemaError for a file that does not load or a
    policy that breaks the library conventions (annotations, parameters), naming its file, line and field."""
    base = Path(root)
    files = [path for path in iter_files(base) if base.is_file() or path.name == POLICY_FILE]
    policies: list[LibraryPolicy] = []
    seen: dict[str, str] = {}
    for document in load_paths(files):
        if not is_policy_document(document.data) or document.data.get("kind") not in POLICY_KINDS:
            continue
        policy = read_policy(document)
        if policy.name in seen:
            raise document.error(f"policy name {policy.name!r} is also used by {seen[policy.name]}", "metadata.name")
        seen[policy.name] = policy.source
        policies.append(policy)
    return Library(str(root), tuple(policies))


def read_policy(document: Document) -> LibraryPolicy:
    """A policy document as a library entry; raises SchemaError when it breaks the library conventions."""
    reader = Reader(document, document.data)
    metadata = reader.mapping("metadata", required=True)
    name = metadata.string("name", required=True)
    annotations = metadata.string_map("annotations")
    for key in REQUIRED_ANNOTATIONS:
        if not annotations.get(key, "").strip():
            raise _annotation_error(
                document, key, f"annotation {key} is required of library policies (see policies/README.md)"
            )
    category = annotations[CATEGORY].strip()
    if category not in CATEGORIES:
        raise _annotation_error(document, CATEGORY, f"unknown category {category!r} (expected one of: {CATEGORIES})")
    severity = annotations[SEVERITY].strip()
    if severity not in SEVERITIES:
        raise _annotation_error(
            document, SEVERITY, f"unknown severity {severity!r} (expected one of: {', '.join(SEVERITIES)})"
        )
    pss_control = annotations.get(PSS_CONTROL, "").strip()
    psp_field = annotations.get(PSP_FIELD, "").strip()
    if category.startswith("Pod Security Standards") and not pss_control:
        raise _annotation_error(document, CATEGORY, f"a {category} policy needs the annotation {PSS_CONTROL}")
    if category == "PodSecurityPolicy" and not psp_field:
        raise _annotation_error(document, CATEGORY, f"a PodSecurityPolicy policy needs the annotation {PSP_FIELD}")
    source = Path(document.source)
    if source.name == POLICY_FILE and source.parent.name != name:
        raise metadata.fail(
            f"metadata.name {name!r} must match the policy's directory {source.parent.name!r} (policies/README.md)",
            "name",
        )
    return LibraryPolicy(
        name=name,
        kind=str(document.data.get("kind")),
        title=annotations[TITLE].strip(),
        category=category,
        severity=severity,
        subject=annotations.get(SUBJECT, "").strip(),
        description=" ".join(annotations[DESCRIPTION].split()),
        pss_control=pss_control,
        psp_field=psp_field,
        parameters=_parameters(document, reader, annotations.get(PARAMETERS)),
        source=document.source,
        document=document,
    )


def _annotation_path(key: str) -> str:
    return f"metadata.annotations[{key}]"


def _annotation_error(document: Document, key: str, message: str) -> SchemaError:
    return SchemaError(message, _annotation_location(document, key), _annotation_path(key))


def _annotation_nodes(document: Document, key: str) -> tuple[yaml.Node, yaml.Node, list[str]] | None:
    """The key and value nodes of annotation `key` in the document's source, and the source's lines."""
    try:
        text = document.text if document.text is not None else read_text(document.source)
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except (LoadError, yaml.YAMLError, RecursionError):
        return None
    node: Any = nodes[document.index] if document.index < len(nodes) else None
    path: list[str | int] = ["metadata", "annotations", key]
    if document.item is not None:
        path = ["items", document.item, *path]
    key_node: Any = None
    for part in path:
        child = None
        if isinstance(part, int) and isinstance(node, yaml.SequenceNode) and part < len(node.value):
            child = node.value[part]
        elif isinstance(part, str) and isinstance(node, yaml.MappingNode):
            for candidate_key, candidate in node.value:
                if isinstance(candidate_key, yaml.ScalarNode) and candidate_key.value == part:
                    key_node, child = candidate_key, candidate
                    break
        if child is None:
            return None
        node = child
    return key_node, node, text.splitlines()


def _annotation_location(document: Document, key: str, line: int | None = None, column: int = 0) -> Location:
    """Where annotation `key` is; with `line`/`column` (0-based, inside the annotation's value), where that point of
    the value is, when the value is a literal block (`|`), whose lines are the file's lines one for one."""
    found = _annotation_nodes(document, key)
    if found is None:
        return document.locate("metadata.annotations")
    key_node, value_node, lines = found
    if line is None or not isinstance(value_node, yaml.ScalarNode) or value_node.style != "|":
        return Location(document.source, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    first = value_node.start_mark.line + 1  # 0-based file line of the block's first content line
    content = [text for text in lines[first:] if text.strip()]
    indent = len(content[0]) - len(content[0].lstrip(" ")) if content else 0
    return Location(document.source, first + line + 1, indent + column + 1)


def _node_at(root: yaml.Node, index: int | None, key: str | None) -> yaml.Node:
    node = root
    if index is not None and isinstance(node, yaml.SequenceNode) and index < len(node.value):
        node = node.value[index]
        if key is not None and isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                    return cast(yaml.Node, value_node)
    return node


def _parameters(document: Document, reader: Reader, text: str | None) -> tuple[Parameter, ...]:
    """The parameters declared in the annotation `text`, each with the default read from its variable."""
    if text is None or not text.strip():
        return ()
    root_path = _annotation_path(PARAMETERS)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        declared = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        location = _annotation_location(document, PARAMETERS, mark.line if mark else None, mark.column if mark else 0)
        problem = " ".join(part for part in (error.context, error.problem) if part) or str(error)
        raise SchemaError(f"invalid YAML: {problem}", location, root_path) from None
    except (yaml.YAMLError, RecursionError) as error:
        raise SchemaError(f"invalid YAML: {error}", _annotation_location(document, PARAMETERS), root_path) from None
    finally:
        loader.dispose()

    def fail(message: str, index: int | None = None, key: str | None = None) -> SchemaError:
        node = _node_at(root, index, key) if root is not None else None
        mark = node.start_mark if node is not None else None
        location = _annotation_location(document, PARAMETERS, mark.line if mark else None, mark.column if mark else 0)
        path = root_path + (f"[{index}]" if index is not None else "") + (f".{key}" if key is not None else "")
        return SchemaError(message, location, path)

    if not isinstance(declared, list):
        raise fail(f"expected a YAML list of parameters, got {type_name(declared)}")
    variables: dict[str, tuple[int, Reader]] = {}
    for position, item in enumerate(reader.mapping("spec").items("variables")):
        variables.setdefault(item.string("name", required=True), (position, item))
    parameters: list[Parameter] = []
    positions: list[int] = []
    for index, entry in enumerate(declared):
        if not isinstance(entry, dict):
            raise fail(f"expected a mapping (name, type, description, enum), got {type_name(entry)}", index)
        for key in entry:
            if key not in PARAMETER_FIELDS:
                hint = " (the default is the variable's expression)" if key == "default" else ""
                raise fail(f"unknown field {key!r}{hint}; expected name, type, description, enum", index, str(key))
        name = entry.get("name")
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise fail(f"expected a variable name (letters, digits, _), got {render_value(name)}", index, "name")
        if any(parameter.name == name for parameter in parameters):
            raise fail(f"parameter {name!r} is declared twice", index, "name")
        parameter_type = entry.get("type")
        if parameter_type not in PARAMETER_TYPES:
            raise fail(
                f"unknown type {render_value(parameter_type)} for parameter {name!r} "
                f"(expected one of: {', '.join(PARAMETER_TYPES)})",
                index,
                "type",
            )
        description = entry.get("description")
        if not isinstance(description, str) or not description.strip():
            raise fail(f"parameter {name!r} needs a description", index, "description")
        raw_enum = entry.get("enum")
        enum: tuple[str, ...] = ()
        if raw_enum is not None:
            if parameter_type not in ENUM_TYPES:
                raise fail(
                    f"enum only applies to string and list[string] parameters, not {parameter_type}", index, "enum"
                )
            if not isinstance(raw_enum, list) or not raw_enum or not all(isinstance(v, str) for v in raw_enum):
                raise fail("enum must be a non-empty list of strings", index, "enum")
            enum = tuple(raw_enum)
        found = variables.get(name)
        if found is None:
            raise fail(
                f"parameter {name!r} has no variable in spec.variables: declare it as a variable whose expression "
                "is a literal (the default)",
                index,
                "name",
            )
        position, variable = found
        expression = variable.string("expression", required=True)
        expression_path = f"{variable.path}.expression"
        try:
            literal = parse_literal(expression)
        except LiteralError as error:
            raise document.error(
                f"parameter {name!r}: the variable's expression must be a CEL literal (its default): {error}",
                expression_path,
            ) from None
        try:
            default = check_value(parameter_type, literal, enum)
        except ValueMismatch as error:
            raise document.error(
                f"parameter {name!r}: the default does not fit type {parameter_type}"
                + (f" (one of: {', '.join(enum)})" if enum else "")
                + f": {error}",
                expression_path,
            ) from None
        parameters.append(
            Parameter(name, cast(ParameterType, parameter_type), " ".join(description.split()), enum, default)
        )
        positions.append(position)
    if positions and max(positions) >= len(positions):
        first_other = min(set(range(max(positions))) - set(positions))
        late = parameters[positions.index(max(positions))].name
        raise document.error(
            f"parameter variable {late!r} must come before the policy's other variables (policies/README.md)",
            f"spec.variables[{first_other}].name",
        )
    return tuple(parameters)


# --- instances ------------------------------------------------------------------------------------------------


def instantiate(
    policy: LibraryPolicy,
    values: Mapping[str, Any],
    action: str | None = None,
    namespaces: Sequence[str] = (),
    name: str | None = None,
) -> dict[str, Any]:
    """The policy document of an instance of `policy`: the parameters in `values` written as literals into their
    variables, `spec.validationActions` set to `[action]` (validating policies only), the policy scoped to
    `namespaces` (a `kubernetes.io/metadata.name In [...]` requirement added to `matchConstraints.namespaceSelector`)
    and named `name` (default: the library name; another name is recorded in the `celvern.io/library-policy`
    annotation). Raises LibraryError, before building anything, for an unknown
    parameter, a value that does not fit, an action or namespaces that do not apply, or an invalid name."""
    checked = {key: policy.parameter(key).check(value) for key, value in values.items()}
    if action is not None:
        if not policy.validating:
            raise LibraryError(
                f"an action (Deny, Warn, Audit) applies to validating policies only; {policy.name} is a {policy.kind}"
            )
        if action not in ACTIONS:
            raise LibraryError(f"unknown action {action!r} (expected one of: {', '.join(ACTIONS)})")
    for namespace in namespaces:
        if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
            raise LibraryError(
                f"invalid namespace name {namespace!r}: lower-case letters, digits and '-', at most 63 characters"
            )
    if namespaces and policy.kind.startswith("Namespaced"):
        raise LibraryError(f"{policy.name} is a {policy.kind}: it applies in its own namespace only")
    instance_name = policy.name if name is None else name
    if len(instance_name) > 253 or not _DNS_SUBDOMAIN.fullmatch(instance_name):
        raise LibraryError(
            f"invalid policy name {instance_name!r}: lower-case letters, digits, '-' and '.', at most 253 characters"
        )

    data: dict[str, Any] = copy.deepcopy(dict(policy.document.data))
    spec = data.setdefault("spec", {})
    for variable in spec.get("variables") or []:
        if isinstance(variable, dict) and variable.get("name") in checked:
            variable["expression"] = render_literal(checked[variable["name"]])
    data["metadata"]["name"] = instance_name
    if instance_name != policy.name:
        annotations = data["metadata"].get("annotations")
        annotations = dict(annotations) if isinstance(annotations, dict) else {}
        annotations[LIBRARY_POLICY] = policy.name
        data["metadata"]["annotations"] = annotations
    if action is not None:
        spec["validationActions"] = [action]
    if namespaces:
        constraints = spec.get("matchConstraints")
        if not isinstance(constraints, dict):
            raise LibraryError(f"{policy.name} has no spec.matchConstraints to scope to namespaces")
        selector = constraints.get("namespaceSelector")
        selector = dict(selector) if isinstance(selector, dict) else {}
        expressions = list(selector.get("matchExpressions") or [])
        expressions.append({"key": NAMESPACE_LABEL, "operator": "In", "values": list(dict.fromkeys(namespaces))})
        selector["matchExpressions"] = expressions
        constraints["namespaceSelector"] = selector
    return data


_FOLD_AT: Final = 80
"""Strings longer than this are written as folded blocks (`>-`), as the library writes long expressions."""


class _PolicyDumper(yaml.SafeDumper):
    """YAML as the library writes it: sequences indented under their key, multi-line strings as literal blocks, long
    strings folded, and short strings holding single quotes (CEL literals) double-quoted (`"'MustRunAs'"`)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style: str | None = None
    if "\n" in value.rstrip("\n"):
        style = "|"
    elif len(value) > _FOLD_AT:
        style = ">"
    elif "'" in value and '"' not in value and "\\" not in value:
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_PolicyDumper.add_representer(str, _represent_string)


def render_policy(document: Mapping[str, Any]) -> str:
    """A policy document as YAML: keys in their order, multi-line strings as literal blocks."""
    return yaml.dump(dict(document), Dumper=_PolicyDumper, sort_keys=False, width=120, allow_unicode=True)


__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "PARAMETERS",
    "PARAMETER_TYPES",
    "SEVERITIES",
    "Library",
    "LibraryError",
    "LibraryPolicy",
    "LiteralError",
    "Parameter",
    "ParameterType",
    "ValueMismatch",
    "check_value",
    "instantiate",
    "load_library",
    "parse_literal",
    "parse_text_value",
    "read_policy",
    "render_literal",
    "render_policy",
    "render_value",
]
