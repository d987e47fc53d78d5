"""Reading YAML and JSON documents from files, directories and streams, with enough position data to
point a user at the line of any field.

Loading is on the path of every offline run (`celvern apply` over thousands of manifests), so documents are
parsed with libyaml's C loader and carry no position data. Only when something is wrong do we parse the file a
second time into a node tree and walk it to the line of the offending field path (`spec.validations[2]`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.errors import LoadError, Location, SchemaError

try:  # libyaml is an optional C extension of PyYAML; it is many times faster when present.
    _SafeLoader: type[Any] = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _SafeLoader = yaml.SafeLoader

YAML_SUFFIXES = (".yaml", ".yml", ".json")
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""Upper bound for one input file; larger files are refused rather than loaded into memory."""
MAX_NESTING = 200
"""Deepest structure accepted in a document; deeper input is refused with an error, never a crash."""

STDIN = "-"


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document of a file (a `List` kind is expanded into one Document per item)."""

    data: Mapping[str, Any]
    source: str
    index: int
    """Index of the YAML document in its file (0-based), used to find lines again on errors."""
    item: int | None = None
    """Index inside a `kind: List` document, when the document came from one."""
    text: str | None = None
    """The source text when it did not come from a file we can re-read (stdin)."""

    def locate(self, field_path: str = "") -> Location:
        """The location of `field_path` (e.g. `spec.validations[2].expression`) in this document."""
        path = f"items[{self.item}]" + (f".{field_path}" if field_path else "") if self.item is not None else field_path
        return locate(self.source, self.index, path, text=self.text)

    def error(self, message: str, field_path: str = "") -> SchemaError:
        """A SchemaError about `field_path` of this document, located at its line."""
        return SchemaError(message, self.locate(field_path), field_path)


def _depth_ok(value: Any, limit: int = MAX_NESTING) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(current, dict):
            stack.extend((v, depth + 1) for v in current.values())
        elif isinstance(current, list):
            stack.extend((v, depth + 1) for v in current)
    return True


def parse_text(text: str, source: str) -> list[Document]:
    """Parse a multi-document YAML (or JSON) text into documents, expanding `kind: List`."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise LoadError(f"input is larger than {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB", Location(source))
    keep_text = text if source == STDIN or source.startswith("<") else None
    documents: list[Document] = []
    try:
        raw_documents = list(yaml.load_all(text, Loader=_SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        location = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
        problem = " ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        raise LoadError(f"invalid YAML: {problem}", location) from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise LoadError(f"invalid YAML: {exc}", Location(source)) from None
    for index, raw in enumerate(raw_documents):
        if raw is None:
            continue
        if not _depth_ok(raw):
            raise LoadError(f"document {index + 1} is nested deeper than {MAX_NESTING} levels", Location(source))
        if not isinstance(raw, dict):
            document = Document({}, source, index, text=keep_text)
            raise document.error(f"expected a mapping (a Kubernetes object), got {type_name(raw)}")
        if raw.get("kind") == "List" and isinstance(raw.get("items"), list):
            for item_index, item in enumerate(raw["items"]):
                document = Document({}, source, index, item_index, text=keep_text)
                if not isinstance(item, dict):
                    raise document.error(f"expected a mapping (a Kubernetes object), got {type_name(item)}")
                documents.append(Document(item, source, index, item_index, text=keep_text))
            continue
        documents.append(Document(raw, source, index, text=keep_text))
    return documents


def iter_files(path: str | os.PathLike[str]) -> Iterator[Path]:
    """The YAML/JSON files under `path` (the path itself if it is a file), in a stable order.

    Hidden directories below `path` (`.git`, `.github`, Kyverno's `.kyverno-test`) are skipped: they hold tooling
    and tests (test-only policy instances among them), not what a directory of policies or manifests means."""
    root = Path(path)
    if root.is_file():
        yield root
        return
    if not root.exists():
        raise LoadError("no such file or directory", Location(str(path)))
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in sorted(files):
            if name.endswith(YAML_SUFFIXES):
                yield Path(directory) / name


def read_text(path: str | os.PathLike[str]) -> str:
    """The text of a file, with read errors turned into LoadError."""
    try:
        size = os.path.getsize(path)
        if size > MAX_DOCUMENT_BYTES:
            raise LoadError(f"file is larger than {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB", Location(str(path)))
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError:
        raise LoadError("file is not UTF-8 text", Location(str(path))) from None
    except OSError as exc:
        raise LoadError(exc.strerror or str(exc), Location(str(path))) from None


def load_paths(paths: Iterable[str | os.PathLike[str]], *, stdin_text: str | None = None) -> list[Document]:
    """Every document in `paths` (files, directories, or `-` for `stdin_text`), in order."""
    documents: list[Document] = []
    for path in paths:
        if str(path) == STDIN:
            documents.extend(parse_text(stdin_text or "", STDIN))
            continue
        for file in iter_files(path):
            documents.extend(parse_text(read_text(file), str(file)))
    return documents


# --- locating field paths -------------------------------------------------------------------------------------

_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_path(field_path: str) -> list[str | int]:
    """`spec.validations[2].expression` -> ['spec', 'validations', 2, 'expression']."""
    parts: list[str | int] = []
    for name, index in _PATH_PART.findall(field_path):
        parts.append(int(index) if index else name)
    return parts


def locate(source: str, document_index: int, field_path: str, *, text: str | None = None) -> Location:
    """Best-effort line and column of `field_path` in document `document_index` of `source`.

    Walks as deep as the path exists: a missing field points at its closest existing parent.
    """
    if text is None:
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError):
            return Location(source)
    try:
        nodes = list(yaml.compose_all(text, Loader=_SafeLoader))
    except (yaml.YAMLError, RecursionError):
        return Location(source)
    documents = [node for node in nodes if node is not None]
    # compose_all drops nothing but empty documents; keep indices aligned with parse_text's numbering.
    node: Any = nodes[document_index] if document_index < len(nodes) else (documents[-1] if documents else None)
    if node is None:
        return Location(source)
    for part in split_path(field_path):
        child = None
        if isinstance(part, int) and isinstance(node, yaml.SequenceNode):
            if part < len(node.value):
                child = node.value[part]
        elif isinstance(part, str) and isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    child = value
                    break
        if child is None:
            break
        node = child
    mark = node.start_mark
    return Location(source, mark.line + 1, mark.column + 1)


def type_name(value: Any) -> str:
    """YAML-flavoured name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__
