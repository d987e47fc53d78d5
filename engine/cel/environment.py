"""The CEL environment every policy expression is compiled in, and the compiled program type.

One environment per policy family (validating, mutating, generating) is built once per process: it declares the
variables Kyverno binds (kyverno-cel-spec.md 2.2), the runtime's extensions and every library under
`engine.cel.libraries`. `compile_expression` runs an expression through `engine.cel.rewriting` (for language
features the C++ runtime lacks), compiles it, and returns an immutable `Program`, or raises
`PolicyCompileError` naming the field and showing the expression with a caret.

Evaluation never raises: `Program.evaluate` returns the value, or a `CelError` for runtime errors, the
runtime's iteration budget, or values the runtime cannot hand back.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cel_expr_python import cel
from cel_expr_python.ext import ext_bindings, ext_encoders, ext_math, ext_optional, ext_strings

from engine.cel.libraries import Library, ordered
from engine.cel.rewriting import bind_variables, rewrite
from engine.cel.syntax import CelSyntaxError
from engine.errors import Location, PolicyCompileError
from engine.pruning import EVERYTHING, Reads, analyse, reads_from_data, reads_to_data

# Variable names bound in every policy environment (kyverno-cel-spec.md 2.2).
OBJECT = "object"
OLD_OBJECT = "oldObject"
REQUEST = "request"
NAMESPACE_OBJECT = "namespaceObject"
VARIABLES = "variables"
EXCEPTIONS = "exceptions"

ITERATION_BUDGET = 10_000
"""Comprehension iterations one evaluation may run (fixed inside cel-expr-python 0.1.3)."""

_LIBRARY_MODULES = (
    "engine.cel.libraries.kubernetes",
    "engine.cel.libraries.kyverno",
    "engine.cel.libraries.comprehensions",
    "engine.cel.libraries.generator",
)


@dataclass(frozen=True, slots=True)
class CelError:
    """A runtime error of one expression evaluation (returned, never raised)."""

    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled expression: immutable, shareable across threads and requests."""

    source: str
    """The expression as the user wrote it."""
    text: str
    """The expression as compiled (after rewriting and binding the variables it reads)."""
    inlined: str
    """The rewritten expression before its variables are bound (what another expression binds for it)."""
    path: str
    """Field path of the expression in its policy, e.g. `spec.validations[0].expression`."""
    variables: frozenset[str]
    """Names of the policy variables the expression reads directly."""
    expression: Any  # cel_expr_python Expression
    return_type: str
    reads: Reads = EVERYTHING
    """The parts of `object`/`oldObject` the expression can read (see `engine.pruning`)."""

    def evaluate(self, activation: Any) -> Any:
        """The expression's value as plain Python data, or a CelError."""
        try:
            value = self.expression.eval(activation)
            type_name = value.type().name()
            if type_name == "ERROR" or type_name == "error":
                return CelError(clean_message(str(value.value())))
            plain = value.plain_value()
            return ordered(plain) if isinstance(plain, (dict, list)) else plain
        except RuntimeError as exc:
            message = clean_message(str(exc))
            if "Iteration budget exceeded" in message:
                message = (
                    f"evaluation exceeded the budget of {ITERATION_BUDGET:,} comprehension iterations "
                    "(the input is too large for this expression)"
                )
            return CelError(message)
        except (TypeError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
            return CelError(f"the expression's value cannot be used: {exc}")


_STATUS_PREFIX = re.compile(r"^[A-Z_]+: ")
_STATUS_SUFFIX = re.compile(r"\s*\[[A-Z_]+\]$")


def clean_message(message: str) -> str:
    """Strip absl status decorations (`INVALID_ARGUMENT: ... [INVALID_ARGUMENT]`) from runtime messages."""
    message = _STATUS_SUFFIX.sub("", message.strip())
    message = _STATUS_PREFIX.sub("", message, count=1)
    message = message.removeprefix("ERROR: ").removeprefix("<input>:")
    return _ITERATION_ERROR.sub("cannot iterate over a value that is not a list or a map", message)


_ITERATION_ERROR = re.compile(r"No matching overloads found : <iter_range>")


def _libraries() -> list[Library]:
    found: list[Library] = []
    for name in _LIBRARY_MODULES:
        module = importlib.import_module(name)
        libraries = getattr(module, "LIBRARIES", None)
        if libraries is None:
            libraries = (module.LIBRARY,)
        found.extend(libraries)
    return found


@dataclass(frozen=True, slots=True)
class Environment:
    """A CEL environment for one policy family."""

    name: str
    env: Any  # cel_expr_python Env
    struct_types: Callable[[str], bool]

    def activation(self, data: dict[str, Any]) -> Any:
        """An activation over `data` (values are read lazily; dicts may be filled in after creation)."""
        return self.env.Activation(data=data)

    def compile(
        self,
        expression: str,
        *,
        path: str,
        location: Location | Callable[[], Location] | None = None,
        variables: Sequence[VariableDefinition] = (),
    ) -> Program:
        """Compile one expression; raises PolicyCompileError with the field path and a caret display.

        `location` may be a callable: it is only called when an error is raised (finding a line costs a re-read of
        the YAML file). `variables` are the policy variables in scope (declared before this expression, in
        order): reads of `variables.N` are bound to them inside the compiled program, lazily and evaluated at
        most once.
        """
        if not isinstance(expression, str) or not expression.strip():
            raise PolicyCompileError(
                "expression is empty", field_path=path, expression=str(expression), location=_resolve(location)
            )
        cache = _PROGRAM_CACHE.get()
        key = ""
        if cache is not None:
            key = self._cache_key(expression, variables)
            cached = self._from_cache(cache, key, expression, path)
            if cached is not None:
                return cached
        program = self._compile(expression, path, location, variables)
        if cache is not None:
            _store(cache, key, program)
        return program

    def _compile(
        self,
        expression: str,
        path: str,
        location: Location | Callable[[], Location] | None,
        variables: Sequence[VariableDefinition],
    ) -> Program:
        scope = {definition.name: definition for definition in variables}
        try:
            rewritten = rewrite(expression, struct_types=self.struct_types, inline_variables=list(scope))
        except CelSyntaxError as exc:
            raise PolicyCompileError(
                exc.render(expression), field_path=path, expression=expression, location=_resolve(location)
            ) from None
        except RecursionError:
            raise PolicyCompileError(
                "expression is nested too deeply", field_path=path, expression=expression, location=_resolve(location)
            ) from None
        unknown = sorted(name for name in rewritten.variables if name not in scope)
        if unknown:
            raise PolicyCompileError(
                f"undefined variable {', '.join(repr(n) for n in unknown)} (defined before this point: "
                f"{', '.join(scope) or 'none'})",
                field_path=path,
                expression=expression,
                location=_resolve(location),
            )
        needed = _closure(rewritten.variables, scope)
        text = bind_variables(rewritten.text, [(d.name, d.inlined) for d in variables if d.name in needed])
        try:
            compiled = self.env.compile(text)
        except RuntimeError as exc:
            raise PolicyCompileError(
                self._explain(expression, text, str(exc)),
                field_path=path,
                expression=expression,
                location=_resolve(location),
            ) from None
        return Program(
            source=expression,
            text=text,
            inlined=rewritten.text,
            path=path,
            variables=rewritten.variables,
            expression=compiled,
            return_type=_type_name(compiled),
            reads=analyse(text),
        )

    def _cache_key(self, expression: str, variables: Sequence[VariableDefinition]) -> str:
        digest = hashlib.sha256(f"{self.name}\0{expression}".encode())
        for definition in variables:
            digest.update(f"\0{definition.name}\0{definition.inlined}\0{sorted(definition.variables)}".encode())
        return digest.hexdigest()

    def _from_cache(self, cache: ProgramCache, key: str, expression: str, path: str) -> Program | None:
        """The cached program for `key`, or None (missing, unreadable or stale entries are compiled again)."""
        try:
            blob = cache.get(key)
            if blob is None:
                return None
            header, _, serialized = blob.partition(b"\0")
            meta = json.loads(header)
            if meta["source"] != expression:
                return None
            compiled = self.env.deserialize(serialized)
            return Program(
                source=expression,
                text=meta["text"],
                inlined=meta["inlined"],
                path=path,
                variables=frozenset(meta["variables"]),
                expression=compiled,
                return_type=meta["return_type"],
                reads=reads_from_data(meta["reads"]),
            )
        except Exception:  # a cache is only ever an optimisation
            return None

    def combine(self, programs: Sequence[Program], template: str, *, path: str) -> Program | None:
        """One program built from already compiled ones: `template` with `{0}`, `{1}`, ... standing for their
        compiled texts (parenthesised). None when the runtime refuses it (nothing is raised: a combination is
        only ever an optimisation)."""
        text = template.format(*(f"({program.text})" for program in programs))
        cache = _PROGRAM_CACHE.get()
        key = hashlib.sha256(f"{self.name}\0combined\0{text}".encode()).hexdigest()
        if cache is not None:
            cached = self._from_cache(cache, key, text, path)
            if cached is not None:
                return cached
        try:
            compiled = self.env.compile(text)
        except RuntimeError:
            return None
        program = Program(
            source=text,
            text=text,
            inlined=text,
            path=path,
            variables=frozenset(),
            expression=compiled,
            return_type=_type_name(compiled),
            reads=analyse(text),
        )
        if cache is not None:
            _store(cache, key, program)
        return program

    def _explain(self, original: str, text: str, message: str) -> str:
        """The compile error, with carets on the user's own text.

        When the expression was rewritten, the runtime's positions point into the rewritten text; each error is
        then re-anchored on the first occurrence, in the user's text, of the name it quotes (or shown without a
        caret when it quotes none).
        """
        cleaned = clean_message(message)
        if text == original:
            return cleaned
        explained = []
        for error in _ERROR_START.split(cleaned):
            first_line = error.strip().splitlines()[0] if error.strip() else ""
            if not first_line:
                continue
            reason = _POSITION.sub("", first_line)
            quoted = _QUOTED.search(reason)
            offset = _find_identifier(original, quoted.group(1)) if quoted else -1
            explained.append(caret_display(original, offset, reason) if offset >= 0 else reason)
        return "\n".join(explained) or cleaned


class ProgramCache(Protocol):
    """Where compiled programs may be kept between runs (the CLI keeps them on disk). Keys are hex digests of the
    environment, the expression and the variables it binds; values are opaque bytes. Both methods may fail
    silently: a cache is only ever an optimisation."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...


_PROGRAM_CACHE: contextvars.ContextVar[ProgramCache | None] = contextvars.ContextVar("program_cache", default=None)


@contextlib.contextmanager
def program_cache(cache: ProgramCache | None) -> Iterator[None]:
    """Compile with `cache` (get before compiling, put after) within the block."""
    token = _PROGRAM_CACHE.set(cache)
    try:
        yield
    finally:
        _PROGRAM_CACHE.reset(token)


def _store(cache: ProgramCache, key: str, program: Program) -> None:
    try:
        header = {
            "source": program.source,
            "text": program.text,
            "inlined": program.inlined,
            "variables": sorted(program.variables),
            "return_type": program.return_type,
            "reads": reads_to_data(program.reads),
        }
        cache.put(key, json.dumps(header).encode() + b"\0" + program.expression.serialize())
    except Exception:  # a cache is only ever an optimisation
        return


def _resolve(location: Location | Callable[[], Location] | None) -> Location | None:
    return location() if callable(location) else location


_ERROR_START = re.compile(r"(?:^|\n)ERROR: ")
_POSITION = re.compile(r"^(?:<input>:)?\d+:\d+: ")
_QUOTED = re.compile(r"'([A-Za-z_][A-Za-z0-9_.]*)'")


def _find_identifier(text: str, name: str) -> int:
    match = re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text)
    return match.start() if match else -1


def caret_display(expression: str, offset: int, message: str) -> str:
    """`line:column: message`, the source line and a caret under `offset` (the runtime's own format)."""
    line_number = expression.count("\n", 0, offset) + 1
    line_start = expression.rfind("\n", 0, offset) + 1
    line_end = expression.find("\n", offset)
    line = expression[line_start : line_end if line_end >= 0 else len(expression)]
    column = offset - line_start
    return f"{line_number}:{column + 1}: {message}\n | {line}\n | {'.' * column}^"


@dataclass(frozen=True, slots=True)
class VariableDefinition:
    """A policy variable as other expressions see it: its name, inlined text and direct dependencies."""

    name: str
    inlined: str
    variables: frozenset[str]


def _closure(names: frozenset[str], scope: Mapping[str, VariableDefinition]) -> set[str]:
    needed: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in needed or name not in scope:
            continue
        needed.add(name)
        pending.extend(scope[name].variables)
    return needed


def _type_name(compiled: Any) -> str:
    try:
        return str(compiled.return_type().name())
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on runtime version
        return "dyn"


def _declarations(names: Iterable[str]) -> dict[str, Any]:
    return {name: cel.Type.DYN for name in names}


def _build(name: str, variables: Iterable[str], struct_types: Callable[[str], bool]) -> Environment:
    functions = [declaration for library in _libraries() for declaration in library.functions]
    env = cel.NewEnv(
        variables=_declarations(variables),
        extensions=[
            ext_optional.ExtOptional(),
            ext_strings.ExtStrings(),
            ext_math.ExtMath(),
            ext_bindings.ExtBindings(),
            ext_encoders.ExtEncoders(),
        ],
        functions=functions,
    )
    return Environment(name, env, struct_types)


def _no_structs(name: str) -> bool:
    return False


def _mutation_structs(name: str) -> bool:
    return name == "JSONPatch" or name == "Object" or name.startswith("Object.")


_COMMON = (OBJECT, OLD_OBJECT, REQUEST, NAMESPACE_OBJECT, VARIABLES, EXCEPTIONS)


@functools.cache
def validating_environment() -> Environment:
    """Environment for ValidatingPolicy and the PolicyExceptions that target it."""
    return _build("validating", _COMMON, _no_structs)


@functools.cache
def mutating_environment() -> Environment:
    """Environment for MutatingPolicy: adds the `Object{...}` and `JSONPatch{...}` struct literals."""
    return _build("mutating", _COMMON, _mutation_structs)


@functools.cache
def generating_environment() -> Environment:
    """Environment for GeneratingPolicy (`generator.Apply` is a library function, usable only while a generate
    expression runs)."""
    return _build("generating", _COMMON, _no_structs)
