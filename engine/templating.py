"""YAML templates of GeneratingPolicy `spec.generate[].template`, parsed once and rendered per trigger.

A generate entry may describe its resources as a YAML string (`template.value`, one or several documents)
instead of a CEL `generator.Apply(...)` call. With `template.interpolate: cel` the string may contain
`(( expr ))` placeholders, which Kyverno evaluates against the same context as the policy's other
expressions (`pkg/cel/policies/gpol/template/template.go` and `scanner.go`):

- a scalar that is exactly one placeholder is replaced by the value itself, whatever its type (so
  `labels: (( variables.labels ))` splices a whole map);
- a placeholder embedded in a longer string is replaced by the text of its value, which must be a scalar;
- placeholders are not allowed in mapping keys, and `\\((` stands for a literal `((`.

This module owns only the YAML side, and does no I/O and no CEL: `parse_template` splits the template into
static parts and placeholders once, at policy compile time, and lists the placeholder expressions so the
caller can compile them with its own environment. `Template.render` then takes the evaluated value of each
expression and builds fresh resource dicts. Keeping CEL out means authoring errors (bad YAML, a placeholder in
a key, an unterminated `((`) are reported when the policy is loaded, each with the document, line and field.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeAlias

import yaml

try:  # libyaml is an optional C extension of PyYAML; it is many times faster when present.
    _Loader: type[Any] = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

_NULL_TAG = "tag:yaml.org,2002:null"
_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class TemplateError(ValueError):
    """A template that cannot be parsed or rendered; the message says what is wrong and where."""


@dataclass(frozen=True, slots=True)
class LiteralNode:
    """A subtree without placeholders, as the YAML loader built it; rendered as a deep copy."""

    value: Any


@dataclass(frozen=True, slots=True)
class PlaceholderNode:
    """One `(( expression ))`; as a whole scalar it is spliced as is, inside a string it is formatted."""

    index: int
    """Position of the expression in `Template.expressions` (and of its value in `Template.render`)."""
    expression: str


@dataclass(frozen=True, slots=True)
class InterpolatedNode:
    """A string mixing literal text and placeholders, each of which must evaluate to a scalar."""

    parts: tuple[str | PlaceholderNode, ...]


@dataclass(frozen=True, slots=True)
class MapNode:
    """A mapping with at least one placeholder somewhere below it."""

    entries: tuple[tuple[str, Node], ...]


@dataclass(frozen=True, slots=True)
class ListNode:
    """A sequence with at least one placeholder somewhere below it."""

    items: tuple[Node, ...]


Node: TypeAlias = LiteralNode | PlaceholderNode | InterpolatedNode | MapNode | ListNode


@dataclass(frozen=True, slots=True)
class TemplateDocument:
    """One non-empty YAML document of a template."""

    number: int
    """1-based position of the document in the YAML stream, as used in error messages."""
    line: int
    """1-based line of the template value where the document starts."""
    root: Node


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: its documents, and the placeholder expressions the caller evaluates for `render`."""

    documents: tuple[TemplateDocument, ...]
    expressions: tuple[str, ...]
    """Every placeholder expression, in order of appearance (a placeholder under a YAML alias counts once)."""

    def render(self, values: Sequence[Any]) -> list[dict[str, Any]]:
        """The rendered resources, given `values[i]` as the evaluated value of `expressions[i]`.

        The result shares nothing with the template or with `values`, so callers may mutate it.
        Raises TemplateError when an embedded placeholder's value is not a scalar or a document does not
        render to a mapping.
        """
        if len(values) != len(self.expressions):
            raise ValueError(f"expected {len(self.expressions)} placeholder values, got {len(values)}")
        resources: list[dict[str, Any]] = []
        for document in self.documents:
            resource = _render(document.root, values, document.number, "")
            if not isinstance(resource, dict):
                raise TemplateError(
                    f"document {document.number}: expected a mapping describing a resource, got {_kind(resource)}"
                )
            resources.append(resource)
        return resources


def parse_template(value: str, *, interpolate: bool) -> Template:
    """Parse `template.value`; with `interpolate` (`interpolate: cel`) extract its `(( ... ))` placeholders.

    Empty (or null) documents are skipped; every other document must be a mapping, or with `interpolate` a
    whole-document placeholder that evaluates to one. Raises TemplateError for invalid YAML, a document that is
    not a mapping, a template without documents, and with `interpolate` for a placeholder in a mapping key, an
    unterminated or empty placeholder, or a YAML merge key (`<<`) next to placeholders. Messages number
    documents from 1 and lines from the first line of `value`, not of the policy file.
    """
    loader = _Loader(value)
    expressions: list[str] = []
    documents: list[TemplateDocument] = []
    number = 0
    try:
        while True:
            try:
                if not loader.check_node():
                    break
                node = loader.get_node()
            except yaml.YAMLError as exc:
                raise TemplateError(f"document {number + 1}: invalid YAML: {_yaml_problem(exc)}") from None
            number += 1
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG):
                continue
            line = node.start_mark.line + 1
            compiler = _DocumentCompiler(loader, number, expressions, interpolate=interpolate)
            try:
                root = compiler.compile(node, "")
            except RecursionError:
                raise TemplateError(f"document {number}: template is nested too deeply") from None
            if not _can_be_resource(root):
                raise TemplateError(f"document {number}, line {line}: document must be a mapping describing a resource")
            documents.append(TemplateDocument(number=number, line=line, root=root))
    finally:
        loader.dispose()
    if not documents:
        raise TemplateError("template must contain at least one YAML document")
    return Template(documents=tuple(documents), expressions=tuple(expressions))


def _can_be_resource(root: Node) -> bool:
    """Whether a document root renders to a mapping (a whole-document placeholder is checked when rendered)."""
    if isinstance(root, LiteralNode):
        return isinstance(root.value, dict)
    return isinstance(root, MapNode | PlaceholderNode)


class _DocumentCompiler:
    """Turns the node tree of one YAML document into template nodes, appending placeholders to `expressions`."""

    def __init__(self, loader: Any, number: int, expressions: list[str], *, interpolate: bool) -> None:
        self._loader = loader
        self._number = number
        self._expressions = expressions
        self._interpolate = interpolate
        # Aliased YAML nodes are shared objects: compile each once (bounding the work for alias bombs) and spot
        # cycles. Keyed by id(), which is safe because the document's node tree outlives this compiler.
        self._compiled: dict[int, Node] = {}
        self._in_progress: set[int] = set()
        self._has_placeholder: dict[int, bool] = {}

    def compile(self, node: yaml.Node, path: str) -> Node:
        key = id(node)
        if key in self._compiled:
            return self._compiled[key]
        if not self._interpolate or not self._contains_placeholder(node):
            literal = self._compiled[key] = LiteralNode(self._construct(node, path))
            return literal
        if key in self._in_progress:
            raise self._error(node, path, "a YAML alias refers to its own ancestor")
        self._in_progress.add(key)
        try:
            result = self._compile_placeholders(node, path)
        finally:
            self._in_progress.discard(key)
        self._compiled[key] = result
        return result

    def _compile_placeholders(self, node: yaml.Node, path: str) -> Node:
        if isinstance(node, yaml.ScalarNode):
            return self._compile_scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            return ListNode(tuple(self.compile(item, f"{path}[{i}]") for i, item in enumerate(node.value)))
        if isinstance(node, yaml.MappingNode):
            entries: dict[str, Node] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self._error(key_node, path, "only scalar mapping keys are supported")
                key = key_node.value
                if _scan(key, allow_placeholders=False) is None:
                    raise self._error(
                        key_node,
                        _join(path, key),
                        "placeholders are not allowed in mapping keys; use a whole-value placeholder on the parent "
                        "field instead (e.g. `labels: (( variables.labels ))`)",
                    )
                if key == "<<":
                    raise self._error(key_node, path, "YAML merge keys are not supported next to placeholders")
                entries[key] = self.compile(value_node, _join(path, key))
            return MapNode(tuple(entries.items()))
        raise self._error(node, path, f"unsupported YAML node {type(node).__name__}")  # pragma: no cover

    def _compile_scalar(self, node: yaml.ScalarNode, path: str) -> Node:
        try:
            segments = _scan(node.value, allow_placeholders=True)
        except ValueError as exc:
            raise self._error(node, path, str(exc)) from None
        assert segments is not None
        parts: list[str | PlaceholderNode] = []
        for text, is_expression in segments:
            if is_expression:
                parts.append(PlaceholderNode(index=len(self._expressions), expression=text))
                self._expressions.append(text)
            else:
                parts.append(text)
        if len(parts) == 1 and isinstance(parts[0], PlaceholderNode):
            return parts[0]
        if not any(isinstance(part, PlaceholderNode) for part in parts):
            # Only `\((` escapes: the unescaped text is a plain string, never re-typed as a number or bool.
            return LiteralNode("".join(part for part in parts if isinstance(part, str)))
        return InterpolatedNode(tuple(parts))

    def _contains_placeholder(self, node: yaml.Node) -> bool:
        key = id(node)
        known = self._has_placeholder.get(key)
        if known is not None:
            return known
        self._has_placeholder[key] = False  # provisional answer, which stops a recursive alias
        if isinstance(node, yaml.ScalarNode):
            found = "((" in node.value  # an unescaped placeholder or a `\((` escape
        elif isinstance(node, yaml.SequenceNode):
            found = any(self._contains_placeholder(item) for item in node.value)
        else:
            found = any(self._contains_placeholder(k) or self._contains_placeholder(v) for k, v in node.value)
        self._has_placeholder[key] = found
        return found

    def _construct(self, node: yaml.Node, path: str) -> Any:
        try:
            return self._loader.construct_document(node)
        except (yaml.YAMLError, ValueError) as exc:  # PyYAML raises ValueError for e.g. `!!int zz`
            raise TemplateError(f"{self._where(node, path)}: invalid YAML: {_yaml_problem(exc)}") from None

    def _where(self, node: yaml.Node, path: str) -> str:
        where = f"document {self._number}, line {node.start_mark.line + 1}"
        return f"{where}, field `{path}`" if path else where

    def _error(self, node: yaml.Node, path: str, message: str) -> TemplateError:
        return TemplateError(f"{self._where(node, path)}: {message}")


def _scan(text: str, *, allow_placeholders: bool) -> list[tuple[str, bool]] | None:
    """Split a scalar into `(text, is_expression)` segments, unescaping `\\((` in literal text.

    Follows Kyverno's scanner: inside a placeholder, parentheses nest and CEL string literals are skipped, so
    `(( f(x) ))` and `(( "))" + x ))` each hold one expression. With `allow_placeholders=False` the result is
    None when the text holds a placeholder opening. Raises ValueError for a malformed placeholder.
    """
    segments: list[tuple[str, bool]] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("\\((", i):
            literal.append("((")
            i += 3
        elif text.startswith("((", i):
            if not allow_placeholders:
                return None
            expression, i = _scan_placeholder(text, i)
            if literal:
                segments.append(("".join(literal), False))
                literal.clear()
            segments.append((expression, True))
        else:
            literal.append(text[i])
            i += 1
    if literal:
        segments.append(("".join(literal), False))
    return segments


def _scan_placeholder(text: str, start: int) -> tuple[str, int]:
    """The trimmed expression of the placeholder opening at `text[start]`, and the index just past its `))`."""
    depth = 0
    quote = ""
    i = start + 2
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1  # skip the escaped character
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            if depth > 0:
                depth -= 1
            elif text.startswith("))", i):
                expression = text[start + 2 : i].strip()
                if not expression:
                    raise ValueError(f"empty placeholder at offset {start}")
                return expression, i + 2
            else:
                raise ValueError(f"unbalanced ')' in placeholder starting at offset {start}")
        i += 1
    if quote:
        raise ValueError(f"unterminated string literal in placeholder starting at offset {start}")
    raise ValueError(f"unterminated placeholder starting at offset {start}: missing closing '))'")


def _render(node: Node, values: Sequence[Any], number: int, path: str) -> Any:
    if isinstance(node, LiteralNode):
        return copy.deepcopy(node.value)
    if isinstance(node, PlaceholderNode):
        return _plain(values[node.index])
    if isinstance(node, MapNode):
        return {key: _render(value, values, number, _join(path, key)) for key, value in node.entries}
    if isinstance(node, ListNode):
        return [_render(item, values, number, f"{path}[{i}]") for i, item in enumerate(node.items)]
    text: list[str] = []
    for part in node.parts:
        if isinstance(part, str):
            text.append(part)
            continue
        value = values[part.index]
        formatted = _scalar_text(value)
        if formatted is None:
            where = f"document {number}, field `{path}`" if path else f"document {number}"
            raise TemplateError(
                f"{where}: placeholder `{part.expression}` embedded in a string must evaluate to a scalar "
                f"(string, int, double or bool), got {_kind(value)}; use a whole-value placeholder for "
                "structured results"
            )
        text.append(formatted)
    return "".join(text)


def _scalar_text(value: Any) -> str | None:
    """How Kyverno writes an embedded placeholder's value (Go's `%v`), or None if it is not a scalar.

    Like Kyverno, null is not a scalar here: an embedded `(( x ))` whose value is null is an error.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_print_float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")  # CEL's JSON form of bytes, which Kyverno converts to
    return None


def _go_print_float(value: float) -> str:
    """`value` as Go's `%v` prints a float64: shortest digits, exponent form below 1e-4 and from 1e6 up."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()[1:]
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)
    point = len(digits) + exponent  # the value is 0.<digits> * 10**point
    if not -4 <= point - 1 < 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        power = point - 1
        return f"{sign}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _plain(value: Any) -> Any:
    """A deep copy of a spliced value, with bytes as base64 text as CEL's JSON conversion writes them."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return copy.deepcopy(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    step = key if _SIMPLE_KEY.fullmatch(key) else f"[{json.dumps(key)}]"
    if not path or step.startswith("["):
        return path + step
    return f"{path}.{step}"


def _yaml_problem(exc: Exception) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "syntax error"
        context = f"{exc.context}: " if exc.context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {context}{problem}"
    return str(exc)
