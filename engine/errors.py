"""The errors celvern reports, as one documented hierarchy.

Decisions about resources are data (`engine.results`), never exceptions. Exceptions are for input that cannot
be used at all: a file that does not parse, a policy that does not fit the schema. Each carries where the problem
is (file, line, field path) so that the CLI can print it and exit with its code.

    CelvernError
    ├── LoadError               input that cannot be read or parsed (file, line)
    │   └── SchemaError         a document that parses but does not fit its schema (file, line, field path)
    └── PolicyCompileError      a CEL expression that does not compile (field path, expression, caret)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Location:
    """Where something is in the user's input. Lines and columns are 1-based; 0 means unknown."""

    file: str = "<input>"
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}" + (f":{self.column}" if self.column else "")
        return self.file


class CelvernError(Exception):
    """Base of every error celvern raises on purpose."""

    exit_code: ClassVar[int] = 2


class LoadError(CelvernError):
    """Input that cannot be read or parsed."""

    def __init__(self, message: str, location: Location | None = None) -> None:
        self.message = message
        self.location = location or Location()
        super().__init__(f"{self.location}: {message}")


class SchemaError(LoadError):
    """A document that parses but does not fit its schema, with the path of the offending field."""

    def __init__(self, message: str, location: Location | None = None, field_path: str = "") -> None:
        self.field_path = field_path
        super().__init__(f"{field_path}: {message}" if field_path else message, location)


class PolicyCompileError(CelvernError):
    """A CEL expression that does not compile; `str()` shows the field path and the expression with a caret."""

    def __init__(self, message: str, *, field_path: str, expression: str, location: Location | None = None):
        self.message = message
        self.field_path = field_path
        self.expression = expression
        self.location = location or Location()
        super().__init__(f"{self.location}: {field_path}: {message}")
