"""Tests for the CEL parser and printer (`engine.cel.syntax`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from cel_expr_python import cel
from cel_expr_python.ext import ext_bindings, ext_encoders, ext_math, ext_optional, ext_strings

from engine.cel.syntax import (
    MAX_DEPTH,
    Binary,
    Call,
    CelSyntaxError,
    Conditional,
    Constant,
    Expr,
    Ident,
    Index,
    ListExpr,
    MapExpr,
    Select,
    StructExpr,
    Unary,
    parse,
    unparse,
)

CONFORMANCE = Path(__file__).resolve().parents[3].parent / "shared" / "conformance"
_EXPRESSION_KEYS = ("expression", "messageExpression", "valueExpression")


def conformance_expressions() -> list[str]:
    """Every CEL expression in the conformance YAML files (read in place, never copied)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _EXPRESSION_KEYS and isinstance(value, str):
                    found.add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in sorted(CONFORMANCE.rglob("*.yaml")):
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for document in documents:
            walk(document)
    return sorted(found)


def shape(node: Any) -> Any:
    """An AST as nested tuples without source spans, for structural comparison."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return (
            type(node).__name__,
            *(
                (f.name, shape(getattr(node, f.name)))
                for f in dataclasses.fields(node)
                if f.name not in ("start", "end", "text")
            ),
        )
    if isinstance(node, tuple):
        return tuple(shape(item) for item in node)
    return node


# ------------------------------------------------------------------------------------------- structure


def ident(name: str) -> Ident:
    return Ident(start=0, end=0, name=name)


def const(value: int) -> Constant:
    return Constant(start=0, end=0, kind="int", value=value, text=str(value))


def binary(op: str, left: Expr, right: Expr) -> Binary:
    return Binary(start=0, end=0, op=op, left=left, right=right)


STRUCTURE_CASES = [
    ("a + b * c", binary("+", ident("a"), binary("*", ident("b"), ident("c")))),
    ("a - b - c", binary("-", binary("-", ident("a"), ident("b")), ident("c"))),
    ("a - (b - c)", binary("-", ident("a"), binary("-", ident("b"), ident("c")))),
    ("a || b && c", binary("||", ident("a"), binary("&&", ident("b"), ident("c")))),
    ("a && b || c", binary("||", binary("&&", ident("a"), ident("b")), ident("c"))),
    ("a < b == c", binary("==", binary("<", ident("a"), ident("b")), ident("c"))),
    ("a in b && c", binary("&&", binary("in", ident("a"), ident("b")), ident("c"))),
    ("1 - -1", binary("-", const(1), const(-1))),
    (
        "a ? b : c ? d : e",
        Conditional(
            start=0,
            end=0,
            condition=ident("a"),
            then=ident("b"),
            otherwise=Conditional(start=0, end=0, condition=ident("c"), then=ident("d"), otherwise=ident("e")),
        ),
    ),
    ("-x.y", Unary(start=0, end=0, op="-", operand=Select(start=0, end=0, operand=ident("x"), field="y"))),
    ("--1", Unary(start=0, end=0, op="-", operand=const(-1))),
    ("!-1", Unary(start=0, end=0, op="!", operand=const(-1))),
    ("-1.abs()", Call(start=0, end=0, function="abs", args=(), target=const(-1))),
    ("a.?b", Select(start=0, end=0, operand=ident("a"), field="b", optional=True)),
    ("a[?0]", Index(start=0, end=0, operand=ident("a"), index=const(0), optional=True)),
    ("f(a, b)", Call(start=0, end=0, function="f", args=(ident("a"), ident("b")))),
    (".f(a)", Call(start=0, end=0, function="f", args=(ident("a"),), absolute=True)),
    (".a", Ident(start=0, end=0, name="a", absolute=True)),
    ("a.f(b)", Call(start=0, end=0, function="f", args=(ident("b"),), target=ident("a"))),
    ("a.if", Select(start=0, end=0, operand=ident("a"), field="if")),
]


@pytest.mark.parametrize(("text", "expected"), STRUCTURE_CASES, ids=[case[0] for case in STRUCTURE_CASES])
def test_parse_structure(text: str, expected: Expr) -> None:
    assert shape(parse(text)) == shape(expected)


AGGREGATE_CASES = [
    ("[a, ?b,]", ListExpr, "[?b]"),
    ("{?a: 1, 'k': 2,}", MapExpr, "{?a: 1}"),
    ("Object.spec{?f: 1, g: [2]}", StructExpr, "Object.spec"),
    (".google.Type{f: 1}", StructExpr, "google.Type"),
]


@pytest.mark.parametrize(("text", "kind", "detail"), AGGREGATE_CASES, ids=[c[0] for c in AGGREGATE_CASES])
def test_parse_aggregates(text: str, kind: type, detail: str) -> None:
    node = parse(text)
    assert isinstance(node, kind)
    if isinstance(node, ListExpr):
        assert [e.optional for e in node.elements] == [False, True]
    elif isinstance(node, MapExpr):
        assert [e.optional for e in node.entries] == [True, False]
    elif isinstance(node, StructExpr):
        assert node.type_name == detail
        assert node.absolute == text.startswith(".")


LITERAL_CASES = [
    ("42", "int", 42),
    ("0x1F", "int", 31),
    ("-9223372036854775808", "int", -(2**63)),
    ("7u", "uint", 7),
    ("0xFFu", "uint", 255),
    ("18446744073709551615u", "uint", 2**64 - 1),
    ("1.5", "double", 1.5),
    ("1e3", "double", 1000.0),
    (".5", "double", 0.5),
    ("2.5e-1", "double", 0.25),
    ("-1.5", "double", -1.5),
    ('"a\\nb"', "string", "a\nb"),
    ("'it\\'s'", "string", "it's"),
    ('"\\x41\\101\\u00e9\\U0001F600"', "string", "AAé\U0001f600"),
    ('"\\a\\b\\f\\r\\t\\v\\\\\\"\\`\\?"', "string", '\a\b\f\r\t\v\\"`?'),
    ('"""multi\nline "quoted" """', "string", 'multi\nline "quoted" '),
    ("'''x'''", "string", "x"),
    ('r"a\\nb"', "string", "a\\nb"),
    ("R'''raw \\d'''", "string", "raw \\d"),
    ('b"ab"', "bytes", b"ab"),
    ('b"\\xff\\377"', "bytes", b"\xff\xff"),
    ('b"\\u00e9"', "bytes", "é".encode()),
    ('br"\\x"', "bytes", b"\\x"),
    ('"é"', "string", "é"),
    ("true", "bool", True),
    ("false", "bool", False),
    ("null", "null", None),
]


@pytest.mark.parametrize(("text", "kind", "value"), LITERAL_CASES, ids=[c[0] for c in LITERAL_CASES])
def test_literals(text: str, kind: str, value: object) -> None:
    node = parse(text)
    assert isinstance(node, Constant)
    assert (node.kind, node.value) == (kind, value)
    assert unparse(node) == text


ERROR_CASES = [
    ("a ? b ? c : d : e", "expected ':'", 6),
    ("if", "reserved identifier 'if'", 0),
    ("f(while)", "reserved identifier 'while'", 2),
    ("a.true", "expected a field or method name", 2),
    ("[,]", "unexpected ','", 1),
    ("f(a,)", "unexpected ')'", 4),
    ("1 +", "unexpected end of input", 3),
    ('"abc', "unterminated string literal", 0),
    ("'\\q'", "invalid escape sequence", 1),
    ('"\\uD800"', "invalid code point", 1),
    ("a = b", "unexpected character '='", 2),
    ("a & b", "unexpected character '&'", 2),
    ("(((a))", "expected ')'", 6),
    ("9223372036854775808", "out of range", 0),
    ("18446744073709551616u", "out of range", 0),
    ("a.?b(1)", "unexpected '('", 4),
    ("{a}", "expected ':'", 2),
    ("T{1: 2}", "expected a field name", 2),
    ("(a).b{}", "unexpected '{'", 5),
    ("x.f(){}", "unexpected '{'", 5),
    ("a[?]", "unexpected ']'", 3),
    ("!-x", "cannot be combined", 1),
    ("a b", "unexpected 'b'", 2),
    ("", "unexpected end of input", 0),
]


@pytest.mark.parametrize(("text", "message", "offset"), ERROR_CASES, ids=[c[0] or "<empty>" for c in ERROR_CASES])
def test_syntax_errors(text: str, message: str, offset: int) -> None:
    with pytest.raises(CelSyntaxError) as caught:
        parse(text)
    assert message in caught.value.message
    assert caught.value.offset == offset


def test_render_points_at_line_and_column() -> None:
    text = "a &&\n  b +"
    with pytest.raises(CelSyntaxError) as caught:
        parse(text)
    assert caught.value.render(text) == "2:6: Syntax error: unexpected end of input\n |   b +\n | .....^"


def test_comments_are_ignored() -> None:
    assert shape(parse("a // first\n + b // last")) == shape(binary("+", ident("a"), ident("b")))


SPAN_CASES = [
    ("(a + b) * c", "(a + b) * c", "a + b"),
    ("x.y[0].f(1)", "x.y[0].f(1)", "x.y[0]"),
    ("!(a)", "!(a)", "a"),
    ("- 1 + 2", "- 1 + 2", "- 1"),
    ("  f( a )  ", "f( a )", "a"),
]


@pytest.mark.parametrize(("text", "whole", "first_child"), SPAN_CASES, ids=[c[0] for c in SPAN_CASES])
def test_spans(text: str, whole: str, first_child: str) -> None:
    node = parse(text)
    assert text[node.start : node.end] == whole
    child: Expr
    if isinstance(node, Binary):
        child = node.left
    elif isinstance(node, Unary):
        child = node.operand
    elif isinstance(node, Call):
        child = node.target if node.target is not None else node.args[0]
    else:
        raise AssertionError(node)
    assert text[child.start : child.end] == first_child


# ---------------------------------------------------------------------------------------------- limits

DEPTH_CASES = [
    ("parentheses", "(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1)),
    ("lists", "[" * 5000 + "]" * 5000),
    ("selects", "a" + ".b" * (MAX_DEPTH + 1)),
    ("additions", " + ".join(["a"] * (MAX_DEPTH + 2))),
    ("negations", "!" * (MAX_DEPTH + 1) + "a"),
    ("ternaries", "a ? b : " * (MAX_DEPTH + 1) + "c"),
    ("calls", "f(" * 10000 + ")" * 10000),
]


@pytest.mark.parametrize(("name", "text"), DEPTH_CASES, ids=[c[0] for c in DEPTH_CASES])
def test_too_deep_is_a_syntax_error(name: str, text: str) -> None:
    with pytest.raises(CelSyntaxError, match="maximum depth of 250"):
        parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 200 + "a" + ")" * 200,
        "a" + ".b" * 200,
        "f(" * 120 + ")" * 120,
        " && ".join(["a"] * 200),
    ],
    ids=["parentheses", "selects", "calls", "conjunction"],
)
def test_deep_but_allowed(text: str) -> None:
    node = parse(text)
    assert shape(parse(unparse(node))) == shape(node)


def test_large_expression_parses() -> None:
    """A 100 KB expression built from real policy expressions parses (timings live in bench/, not here)."""
    parts: list[str] = []
    while sum(len(part) + 2 for part in parts) < 100_000:
        parts.extend(conformance_expressions())
    text = "[" + ", ".join(parts) + "]"
    parsed = parse(text)
    assert isinstance(parsed, ListExpr) and len(parsed.elements) == len(parts)


# --------------------------------------------------------------------------------------------- printer

ROUND_TRIP = [
    "a + b * c",
    "(a + b) * c",
    "a - (b - c)",
    "(a - b) - c",
    "a / (b * c)",
    "(a || b) && c",
    "!(a && b)",
    "-(1)",
    "-(-x)",
    "(-1).f()",
    "(a ? b : c) ? d : e",
    "a ? (b ? c : d) : e",
    "a ? b : c ? d : e",
    "{(a ? b : c): d}",
    "(a + b).size()",
    "(a ? [1] : [2])[0]",
    "x.?y.z[?0].orValue(1)",
    '[?a, "b", .c, f(d)]',
    "T.U{?f: 1, g: [2]}",
    "'single' + \"double\" + '''tri\"ple''' + r'\\d' + b'\\x00'",
    "m.all(k, m[k] > 0)",
    "1u + 0x10 + 1.5e-3 + .5",
]


@pytest.mark.parametrize("text", ROUND_TRIP, ids=ROUND_TRIP)
def test_unparse_round_trips_structurally(text: str) -> None:
    node = parse(text)
    assert shape(parse(unparse(node))) == shape(node)


def test_unparse_uses_verbatim_text() -> None:
    text = "f(a  +  b, c)"
    node = parse(text)
    assert isinstance(node, Call)
    kept = {id(node.args[0])}
    printed = unparse(node, verbatim=lambda n: text[n.start : n.end] if id(n) in kept else None)
    assert printed == "f(a  +  b, c)"
    assert unparse(node) == "f(a + b, c)"


_VARIABLES = ("a", "b", "m", "object", "oldObject", "request", "namespaceObject", "variables", "params")
_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
    "spec": {
        "containers": [
            {"name": "nginx", "image": "nginx:1.25", "securityContext": {"runAsNonRoot": True}},
            {"name": "side", "image": "docker.io/busybox", "ports": [{"hostPort": 80}]},
        ],
        "hostNetwork": False,
    },
}
_DATA = {
    "a": 3,
    "b": 2,
    "m": {"k": [1, 2, 3]},
    "object": _POD,
    "oldObject": _POD,
    "request": {"operation": "CREATE", "userInfo": {"username": "alice", "groups": ["dev"]}},
    "namespaceObject": {"metadata": {"name": "default", "labels": {}}},
    "variables": {},
    "params": {},
}


def _environment() -> Any:
    return cel.NewEnv(
        variables=dict.fromkeys(_VARIABLES, cel.Type.DYN),
        extensions=[
            ext_optional.ExtOptional(),
            ext_strings.ExtStrings(),
            ext_math.ExtMath(),
            ext_bindings.ExtBindings(),
            ext_encoders.ExtEncoders(),
        ],
    )


def _evaluate(env: Any, text: str, data: dict[str, Any]) -> tuple[str, Any]:
    try:
        program = env.compile(text)
    except RuntimeError:
        return ("compile error", None)
    value = program.eval(env.Activation(data=data))
    kind = value.type().name()
    if kind.lower() == "error":
        return ("error", value.value())
    try:
        return ("value", value.plain_value())
    except TypeError:
        return ("unconvertible", kind)


EVAL_CASES = [
    "a + b * 2",
    "(a + b) * 2",
    "a - (b - 1)",
    "a - b - 1",
    "10 / (a - 1)",
    "10 / a / 2",
    "10 % (a + 1)",
    "-(a - b)",
    "-a * -b",
    "--1",
    "-(-9223372036854775807)",
    "!(a > b) || a == 3",
    "a > b ? 'x' : a < b ? 'y' : 'z'",
    "(a > b ? 1 : 2) + 1",
    "'\\x41\\101\\u00e9' + \"\\\\\" + r'\\n' + '''a\nb'''",
    "b'\\377\\x00' == b'\\xff\\x00'",
    "0x1Fu + 2u",
    "1.5e3 + .5 - 2e-1",
    "m.?x.?y.orValue('none')",
    "m.k[?0].orValue(7)",
    "[1, ?optional.none(), ?optional.of(2),].size()",
    "{'a': 1, ?'b': optional.none(),}",
    "m.k.all(x, x > 0) && m.k.exists_one(x, x == 2)",
    "m.k.map(x, x > 1, x * 10)",
    "cel.bind(y, a + 1, y * y)",
    "has(m.k) && !has(m.z)",
    "a in [1, 2, 3] == true",
    "1 - -1",
    "'abc'.indexOf('c') + size('é')",
    ".a + a",
]


@pytest.mark.parametrize("text", EVAL_CASES, ids=EVAL_CASES)
def test_unparse_evaluates_the_same(text: str) -> None:
    env = _environment()
    expected = _evaluate(env, text, _DATA)
    assert expected[0] in ("value", "error")
    assert _evaluate(env, unparse(parse(text)), _DATA) == expected


# ------------------------------------------------------------------------------------------ conformance


def test_conformance_corpus_is_present() -> None:
    assert len(conformance_expressions()) > 100


@pytest.mark.parametrize("text", conformance_expressions(), ids=lambda text: " ".join(text.split())[:60])
def test_conformance_expression_round_trips(text: str) -> None:
    node = parse(text)
    printed = unparse(node)
    assert shape(parse(printed)) == shape(node)
    env = _environment()
    original = _evaluate(env, text, _DATA)
    if original[0] != "compile error":
        assert _evaluate(env, printed, _DATA) == original
