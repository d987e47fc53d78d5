"""Part 1's naive baseline: the Pod Security expressions under the pure-Python `cel-python` package (`celpy`).

Issue 8 asks for celvern's CEL core to be measured next to the obvious pure-Python alternative, on the same
expressions, in the same process. The expressions are the policies' own validation expressions with their
`variables.*` substituted (parenthesised), not celvern's compiled texts (those carry `cel.bind` and rewrites).

cel-python 0.5 cannot parse CEL's optional syntax (`x.?f`, `.orValue(d)`), which almost every Pod Security
expression uses. So two comparisons are reported, each only over expressions that both engines evaluate to the
same boolean on the benchmark Pod:

- **as written**: the expressions cel-python parses unchanged (the strict comparison);
- **desugared**: the others with each `base.?a.?b.orValue(d)` rewritten to `(has(base.a) && has(base.a.b) ?
  base.a.b : d)`, which is standard CEL both engines run. Both engines get the same desugared text, so this is a
  like-for-like comparison, but of a text that is not the policy's own.

Per expression, each engine evaluates against an activation built once (the Pod already converted); "per request"
adds building the activation from the Pod (celvern: a session over the plain dict, converted lazily by the runtime;
cel-python: `celpy.json_to_cel`), as an admission review would pay it.
"""

from __future__ import annotations

import functools
import importlib
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.report import Table
from engine.cel.environment import Program, validating_environment
from engine.evaluation import EvaluationContext, Session
from engine.loader import load_paths
from engine.model import parse_validating_policy
from engine.policy_set import split_documents
from engine.request import request_for_resource

MISSING = "cel-python not installed (pip install -e '.[bench]')"

_VARIABLE = re.compile(r"\bvariables\.([A-Za-z_]\w*)")
_PATH_BEFORE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_FIELD = re.compile(r"\.[A-Za-z_]\w*(?![\w(])")
"""A plain field selection `.f` (not a call `.f(`)."""


@dataclass(frozen=True)
class Expression:
    policy: str
    index: int
    text: str
    """The validation expression with its variables substituted."""
    desugared: str | None
    """`text` with the optional syntax rewritten to `has()` (same as `text` when it has none); None if not possible."""


def inline_variables(expression: str, variables: dict[str, str]) -> str:
    """Substitute `variables.NAME` by the variable's (recursively substituted) expression, in parentheses."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            return match.group(0)
        return "(" + inline_variables(variables[name], variables) + ")"

    return _VARIABLE.sub(substitute, expression)


def _closing_paren(text: str, start: int) -> int:
    """Index of the `)` closing the `(` at `start - 1`, skipping string literals; -1 if unbalanced."""
    depth = 1
    quote = ""
    index = start
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return -1


def desugar(text: str) -> str | None:
    """Rewrite every `base.?f1.f2.?f3.orValue(d)` (base a dotted path) to standard CEL, or None when some optional
    chain has another shape (base not a plain path, no `.orValue`, `[?` indexing)."""
    if "[?" in text:
        return None
    while (start := text.find(".?")) >= 0:
        base = _PATH_BEFORE.search(text, 0, start)
        if base is None or (base.start() > 0 and text[base.start() - 1] in ".)]"):
            return None
        fields: list[str] = []
        position = start
        while text.startswith(".?", position) or _FIELD.match(text, position):
            # after the first `.?`, plain `.f` selections are optional too (the chain stays an optional)
            identifier = _IDENTIFIER.match(text, position + (2 if text.startswith(".?", position) else 1))
            if identifier is None:
                return None
            fields.append(identifier.group(0))
            position = identifier.end()
        if not text.startswith(".orValue(", position):
            return None
        argument_start = position + len(".orValue(")
        end = _closing_paren(text, argument_start)
        if end < 0:
            return None
        default = text[argument_start:end]
        path = base.group(0)
        present = " && ".join(f"has({path}.{'.'.join(fields[: i + 1])})" for i in range(len(fields)))
        replacement = f"({present} ? {path}.{'.'.join(fields)} : ({default}))"
        text = text[: base.start()] + replacement + text[end + 1 :]
    return text


def pod_security_expressions(files: list[Any]) -> list[Expression]:
    """Every validation expression of the Pod Security policies, variables substituted, in policy order."""
    expressions = []
    for document in split_documents(load_paths(files))[0]:
        policy = parse_validating_policy(document)
        variables = {variable.name: variable.expression for variable in policy.variables}
        for index, validation in enumerate(policy.validations):
            text = " ".join(inline_variables(validation.expression, variables).split())
            expressions.append(Expression(policy.name, index, text, desugar(text)))
    return expressions


def per_call(function: Callable[[], object], samples: int, inner: int) -> float:
    """Median seconds per call over `samples` blocks of `inner` calls, after one warm-up block."""
    for _ in range(inner):
        function()
    timings = []
    for _ in range(samples):
        begin = time.perf_counter()
        for _ in range(inner):
            function()
        timings.append((time.perf_counter() - begin) / inner)
    return statistics.median(timings)


@dataclass
class Row:
    expression: Expression
    form: str
    """"as written", "desugared", or why it is not compared."""
    celvern_us: float
    celpy_us: float | None = None

    @property
    def comparable(self) -> bool:
        return self.celpy_us is not None


class _Celvern:
    """The expressions compiled by celvern's validating environment, evaluated on the Pod."""

    def __init__(self, pod: dict[str, Any]) -> None:
        self.environment = validating_environment()
        self.context = EvaluationContext(request=request_for_resource(pod))

    def compile(self, text: str) -> Program:
        return self.environment.compile(text, path="bench")

    def session(self) -> Session:
        return Session(self.environment, EvaluationContext(request=self.context.request))


def compare(pod: dict[str, Any], files: list[Any], samples: int = 15) -> tuple[Table, Table]:
    """Per-expression table and summary table (celvern only when cel-python is missing)."""
    expressions = pod_security_expressions(files)
    celvern = _Celvern(pod)
    try:
        celpy: Any = importlib.import_module("celpy")
    except ImportError:
        celpy = None
    rows: list[Row] = []
    differences: list[str] = []
    celpy_programs: dict[int, Any] = {}
    celvern_programs: dict[int, Program] = {}
    if celpy is not None:
        celpy_env = celpy.Environment()
        celpy_activation = {"object": celpy.json_to_cel(pod)}
    for position, expression in enumerate(expressions):
        form = "celvern only"
        text = expression.text
        if celpy is not None:
            form, text, program = _celpy_program(celpy_env, expression)
            if program is not None:
                celpy_programs[position] = program
        compiled = celvern_programs[position] = celvern.compile(text)
        session = celvern.session()  # one per expression: a session's time budget is per policy
        ours = session.evaluate(compiled)
        row = Row(expression, form, per_call(functools.partial(session.evaluate, compiled), samples, 200) * 1e6)
        if position in celpy_programs:
            theirs = _celpy_value(celpy_programs[position], celpy_activation)
            if theirs is ours:
                program = celpy_programs[position]
                row.celpy_us = per_call(functools.partial(program.evaluate, celpy_activation), samples, 1) * 1e6
            else:
                row.form = f"{form}, results differ"
                differences.append(f"{expression.policy}#{expression.index}: celvern {ours!r}, cel-python {theirs!r}")
                del celpy_programs[position]
        rows.append(row)
    table = _expression_table(rows)
    table.notes.extend(differences)
    return table, _summary(rows, celvern, celvern_programs, celpy, celpy_programs, pod, samples)


def _celpy_program(environment: Any, expression: Expression) -> tuple[str, str, Any]:
    """(form, text both engines run, cel-python program or None)."""
    try:
        return "as written", expression.text, environment.program(environment.compile(expression.text))
    except Exception:  # celpy raises its own parse errors
        pass
    if expression.desugared is None:
        return "not parsed by cel-python", expression.text, None
    try:
        return "desugared", expression.desugared, environment.program(environment.compile(expression.desugared))
    except Exception:
        return "not parsed by cel-python, even desugared", expression.text, None


def _celpy_value(program: Any, activation: dict[str, Any]) -> object:
    try:
        value = program.evaluate(activation)
    except Exception as exc:  # evaluation errors are raised or returned, depending on the error
        return exc
    return bool(value) if type(value).__name__ == "BoolType" else value


def _expression_table(rows: list[Row]) -> Table:
    table = Table(
        "1b. Pod Security validation expressions, celvern (cel-expr-python) vs pure-Python cel-python, per expression",
        ("policy", "#", "form", "celvern us", "cel-python us", "ratio"),
    )
    for row in rows:
        ratio = row.celpy_us / row.celvern_us if row.celpy_us is not None else None
        table.add(row.expression.policy, row.expression.index, row.form, row.celvern_us, row.celpy_us, ratio)
    table.notes.append(
        "medians per evaluation, activation built once; 'desugared': `.?f.orValue(d)` rewritten to has() for both "
        "engines (cel-python cannot parse optional syntax); only expressions both engines agree on are compared"
    )
    return table


def _summary(
    rows: list[Row],
    celvern: _Celvern,
    celvern_programs: dict[int, Program],
    celpy: Any,
    celpy_programs: dict[int, Any],
    pod: dict[str, Any],
    samples: int,
) -> Table:
    table = Table(
        "1c. cel-python baseline, on the comparable expressions only",
        ("subset", "expressions", "celvern ms", "cel-python ms", "ratio"),
    )
    if celpy is None:
        table.notes.append(MISSING)
        return table
    subsets = {
        "as written, sum of per-expression medians": [i for i, r in enumerate(rows) if r.form == "as written"],
        "as written + desugared, sum of medians": [i for i, r in enumerate(rows) if r.comparable],
    }
    for name, positions in subsets.items():
        ours = sum(rows[i].celvern_us for i in positions) / 1000
        theirs = sum(rows[i].celpy_us or 0.0 for i in positions) / 1000
        table.add(name, f"{len(positions)} of {len(rows)}", ours, theirs or None, theirs / ours if ours else None)
    for name, positions in subsets.items():
        if not positions:
            continue
        label = name.split(",")[0] + ", per request incl. converting the Pod"

        def ours_request(ps: list[int] = positions) -> None:
            session = celvern.session()
            for i in ps:
                session.evaluate(celvern_programs[i])

        def theirs_request(ps: list[int] = positions) -> None:
            activation = {"object": celpy.json_to_cel(pod)}
            for i in ps:
                celpy_programs[i].evaluate(activation)

        ours_ms = per_call(ours_request, samples, 20) * 1000
        theirs_ms = per_call(theirs_request, max(5, samples // 2), 1) * 1000
        table.add(label, f"{len(positions)} of {len(rows)}", ours_ms, theirs_ms, theirs_ms / ours_ms)
    table.notes.append(
        "ratio = cel-python time / celvern time (how many times faster celvern's compiled core is); "
        "cel-python compares nothing when it parses none of an expression's text"
    )
    return table
