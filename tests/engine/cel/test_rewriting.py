"""Tests for the rewrites that let cel-expr-python run Kubernetes/Kyverno CEL (`engine.cel.rewriting`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cel_expr_python import cel
from cel_expr_python.ext import ext_bindings, ext_encoders, ext_math, ext_optional, ext_strings

from engine.cel.libraries import comprehensions
from engine.cel.rewriting import INTERNAL_FUNCTIONS, Rewritten, is_optional_typed, rewrite
from engine.cel.syntax import CelSyntaxError, parse

CONFORMANCE = Path(__file__).resolve().parents[3].parent / "shared" / "conformance"


def conformance_expressions() -> list[str]:
    """Every `expression`/`messageExpression`/`valueExpression` string in the conformance YAML files."""
    found: set[str] = set()
    pending: list[Any] = []
    for path in sorted(CONFORMANCE.rglob("*.yaml")):
        try:
            pending.extend(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expression", "messageExpression", "valueExpression") and isinstance(value, str):
                    found.add(value)
                pending.append(value)
        elif isinstance(node, list):
            pending.extend(node)
    return sorted(found)


_DYN = cel.Type.DYN
_LIST = cel.Type.List(_DYN)
_MAP = cel.Type.Map(_DYN, _DYN)
_VALUE_TYPES = {
    "int": cel.Type.INT,
    "uint": cel.Type.UINT,
    "double": cel.Type.DOUBLE,
    "string": cel.Type.STRING,
    "bool": cel.Type.BOOL,
    "bytes": cel.Type.BYTES,
    "null": cel.Type.NULL,
    "list": _LIST,
    "map": _MAP,
}


def _index_of(items: list[Any], value: Any) -> int:
    return items.index(value) if value in items else -1


def _last_index_of(items: list[Any], value: Any) -> int:
    return len(items) - 1 - items[::-1].index(value) if value in items else -1


def _per_value_type(name: str, impl: Any) -> Any:
    overloads = [
        cel.Overload(f"test{name}_{kind}", cel.Type.INT, [_LIST, param], impl=impl)
        for kind, param in _VALUE_TYPES.items()
    ]
    return cel.FunctionDecl(name, overloads)


def _decl(name: str, result: Any, params: list[Any], impl: Any) -> Any:
    return cel.FunctionDecl(name, [cel.Overload(f"test{name}", result, params, impl=impl)])


# Local stand-ins for the internal functions other libraries implement (see INTERNAL_FUNCTIONS).
_STAND_INS = [
    _decl("lists.range", cel.Type.List(cel.Type.INT), [cel.Type.INT], lambda n: list(range(n))),
    _per_value_type("__celvern_list_indexOf", _index_of),
    _per_value_type("__celvern_list_lastIndexOf", _last_index_of),
    _decl("__celvern_list_reverse", _LIST, [_LIST], lambda items: items[::-1]),
    _decl("__celvern_string", cel.Type.STRING, [_MAP], lambda m: f"opaque:{m['@celvern.type']}"),
    _decl("__celvern_math_round", cel.Type.DOUBLE, [cel.Type.DOUBLE, cel.Type.INT], round),
    _decl("__celvern_format_named", _MAP, [cel.Type.STRING], lambda n: {"name": n} if n == "lower" else {}),
    _decl(
        "__celvern_format_validate",
        cel.Type.List(cel.Type.STRING),
        [_MAP, cel.Type.STRING],
        lambda f, s: [] if s.islower() else [f"{s!r} is not {f['name']}"],
    ),
]


@pytest.fixture(scope="module")
def env() -> Any:
    return cel.NewEnv(
        variables={name: _DYN for name in ("object", "variables", "x")},
        extensions=[
            ext_optional.ExtOptional(),
            ext_strings.ExtStrings(),
            ext_math.ExtMath(),
            ext_bindings.ExtBindings(),
            ext_encoders.ExtEncoders(),
        ],
        functions=[*_STAND_INS, *comprehensions.LIBRARY.functions],
    )


def _accept_kyverno_structs(name: str) -> bool:
    return name in ("Object", "JSONPatch") or name.startswith("Object.")


_DATA: dict[str, Any] = {
    "object": {
        "labels": {"app": "web", "tier": "front"},
        "containers": [{"name": "a", "port": 80}, {"name": "b", "port": 443}],
        "numbers": [3, 1, 3, 2],
        "name": "web",
        "ip": {"@celvern.type": "ip", "value": "10.0.0.1"},
    },
    "variables": {"optional": None, "count": 4},
}


def evaluate(env: Any, expression: str, data: dict[str, Any] | None = None) -> Any:
    """Rewrite, compile and evaluate; returns the plain value or ("error", message)."""
    rewritten = rewrite(expression, struct_types=_accept_kyverno_structs)
    program = env.compile(rewritten.text)
    value = program.eval(env.Activation(data=data if data is not None else _DATA))
    if value.type().name().lower() == "error":
        return ("error", value.value())
    return value.plain_value()


EVAL_CASES: list[tuple[str, str, Any]] = [
    # orValue on values that are not syntactically optional
    ("orValue on an optional", "optional.of(1).orValue(2)", 1),
    ("orValue on an empty optional", "cel.bind(o, optional.none(), o.orValue(2))", 2),
    ("orValue on an int", "object.containers[0].port.orValue(1)", 80),
    ("orValue on a map", "object.labels.orValue({}).app", "web"),
    ("orValue on a string", "object.name.orValue('none')", "web"),
    ("orValue on a list", "object.numbers.orValue([]).size()", 4),
    ("orValue on a bound optional", "cel.bind(o, object.?missing, o.orValue('dflt'))", "dflt"),
    ("orValue fast path", "object.?missing.orValue(7)", 7),
    # two-variable comprehensions
    ("all over a list", "object.numbers.all(i, v, i < 4 && v > 0)", True),
    ("all over a map", "object.labels.all(k, v, k.size() > 2 && v != '')", True),
    ("exists over a map", "object.labels.exists(k, v, k == 'tier' && v == 'front')", True),
    ("exists is false", "object.numbers.exists(i, v, i == v + 5)", False),
    ("existsOne", "object.numbers.existsOne(i, v, v == 3 && i > 0)", True),
    ("exists_one with three args", "object.numbers.exists_one(i, v, v == 3)", False),
    ("one-variable existsOne", "object.numbers.existsOne(v, v == 1)", True),
    ("transformList", "object.numbers.transformList(i, v, i * v)", [0, 1, 6, 6]),
    ("transformList with filter", "object.numbers.transformList(i, v, v != 3, i)", [1, 3]),
    (
        "transformList over a map",
        "object.labels.transformList(k, v, k + '=' + v).exists_one(e, e == 'tier=front')",
        True,
    ),
    ("transformMap over a list", "object.numbers.transformMap(i, v, v * 10)", {0: 30, 1: 10, 2: 30, 3: 20}),
    (
        "transformMap over a map",
        "object.labels.transformMap(k, v, v.upperAscii())",
        {"app": "WEB", "tier": "FRONT"},
    ),
    ("transformMap with filter", "object.labels.transformMap(k, v, k == 'app', v + '!')", {"app": "web!"}),
    (
        "transformMapEntry",
        "object.containers.transformMapEntry(i, c, {c.name: c.port + i})",
        {"a": 80, "b": 444},
    ),
    (
        "transformMapEntry with filter",
        "object.labels.transformMapEntry(k, v, k != 'app', {v: k})",
        {"front": "tier"},
    ),
    ("transformMapEntry duplicate key", "object.numbers.transformMapEntry(i, v, {v: i})", ("error", ...)),
    (
        "nested two-variable comprehensions",
        "object.labels.all(k, v, object.labels.exists(k2, v2, k2 == k))",
        True,
    ),
    ("empty list", "[].all(i, v, false) && {}.transformMap(k, v, v) == {}", True),
    # struct literals
    (
        "struct literal",
        "Object{metadata: Object.metadata{labels: {'a': object.name}}, ?spec: optional.none()}",
        {"metadata": {"labels": {"a": "web"}}},
    ),
    (
        "JSONPatch literal",
        "[JSONPatch{op: 'add', path: '/x', value: 1}]",
        [{"op": "add", "path": "/x", "value": 1}],
    ),
    # routing by runtime type
    ("indexOf on a list", "object.numbers.indexOf(3)", 0),
    ("indexOf a map in a list", "object.containers.indexOf(object.containers[1])", 1),
    ("indexOf on a string", "object.name.indexOf('b')", 2),
    ("indexOf with offset untouched", "object.name.indexOf('b', 1)", 2),
    ("lastIndexOf on a list", "object.numbers.lastIndexOf(3)", 2),
    ("lastIndexOf on a string", "'abcabc'.lastIndexOf('b')", 4),
    ("reverse on a list", "object.numbers.reverse()", [2, 3, 1, 3]),
    ("reverse on a string", "object.name.reverse()", "bew"),
    ("string of an opaque value", "string(object.ip)", "opaque:ip"),
    ("string of an int", "string(object.containers[0].port)", "80"),
    ("string of a literal", "string(1.5)", "1.5"),
    ("math.round with digits", "math.round(3.14159, 2)", 3.14),
    ("math.round without digits", "math.round(2.5)", 3.0),
    ("format.named known", "format.named('lower').hasValue()", True),
    ("format.named unknown", "format.named('nope').hasValue()", False),
    ("validate passes", "format.named('lower').value().validate('abc').hasValue()", False),
    ("validate fails", "format.named('lower').value().validate('ABC').value()", ["'ABC' is not lower"]),
]


@pytest.mark.parametrize(("name", "expression", "expected"), EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_rewritten_expression_evaluates(env: Any, name: str, expression: str, expected: Any) -> None:
    result = evaluate(env, expression)
    if isinstance(expected, tuple) and expected[1] is ...:
        assert isinstance(result, tuple)
        assert result[0] == expected[0]
    else:
        assert result == expected


def test_duplicate_entry_message(env: Any) -> None:
    result = evaluate(env, "[1, 1].transformMapEntry(i, v, {v: i})")
    assert isinstance(result, tuple)
    assert result[1].endswith("insert failed: key 1 already exists")


def test_or_value_does_not_evaluate_unused_default(env: Any) -> None:
    assert evaluate(env, "object.name.orValue(1 / 0)") == "web"


UNCHANGED = [
    "object.spec.?containers.orValue([]).all(c, c.name != '')",
    "object.?a[?'b'].orValue(1)",
    "optional.of(1).orValue(2)",
    "[1, 2].first().orValue(0)",
    "'abc'.indexOf('c')",
    "'abc'.reverse()",
    "string('x')",
    "x.indexOf('a', 1)",
    "math.round(1.5)",
    "object.items.all(i, i > 0) && object.m.map(k, k)",
    "  object.a  +  1  // a comment\n",
]


@pytest.mark.parametrize("expression", UNCHANGED, ids=UNCHANGED)
def test_text_is_untouched_when_nothing_is_rewritten(expression: str) -> None:
    assert rewrite(expression).text is expression


def test_untouched_sub_expressions_keep_their_spelling() -> None:
    expression = "(object.a  ==  'x' ||  r'\\d' != '')  &&  object.b.orValue( 1 )"
    text = rewrite(expression).text
    assert text.startswith("(object.a  ==  'x' ||  r'\\d' != '') && cel.bind(")
    assert "object.b, type(" in text


def test_binders_do_not_clash_with_user_identifiers(env: Any) -> None:
    expression = "cel.bind(__celvern_v0, 5, __celvern_v0 + x.orValue(1))"
    text = rewrite(expression).text
    assert "__celvern_v1" in text
    program = env.compile(text)
    assert program.eval(env.Activation(data={"x": 2})).plain_value() == 7


VARIABLE_CASES: list[tuple[str, set[str], bool]] = [
    ("variables.a + variables.b", {"a", "b"}, False),
    ("variables.?a.orValue(1)", {"a"}, False),
    ("variables['a-b'] + variables[?'c'].orValue(0)", {"a-b", "c"}, False),
    ("has(variables.flag)", {"flag"}, False),
    ("variables.a.exists(v, v == variables.b)", {"a", "b"}, False),
    ("variables[object.key]", set(), True),
    ("size(variables)", set(), True),
    ("variables.a + f(variables)", {"a"}, True),
    ("[1].all(variables, variables > 0)", set(), False),
    ("cel.bind(variables, 1, variables + 1)", set(), False),
    ("cel.bind(variables, variables.a, variables)", {"a"}, False),
    ("[1].all(variables, .variables.x > 0)", {"x"}, False),
    ("m.all(k, variables, variables > 0) && variables.z", {"z"}, False),
    ("object.variables.a", set(), False),
]


@pytest.mark.parametrize(
    ("expression", "names", "everything"), VARIABLE_CASES, ids=[case[0] for case in VARIABLE_CASES]
)
def test_variables_analysis(expression: str, names: set[str], everything: bool) -> None:
    result = rewrite(expression)
    assert (set(result.variables), result.all_variables) == (names, everything)


def test_struct_types_are_reported() -> None:
    result = rewrite("Object{spec: Object.spec{a: JSONPatch{op: 'x'}}}", struct_types=_accept_kyverno_structs)
    assert result.struct_types == {"Object", "Object.spec", "JSONPatch"}
    assert result == Rewritten(
        text='{"spec": {"a": {"op": \'x\'}}}',
        variables=frozenset(),
        all_variables=False,
        struct_types=frozenset({"Object", "Object.spec", "JSONPatch"}),
    )


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("Foo{a: 1}", "struct literal of type 'Foo' is not supported"),
        ("[1].map(x, google.protobuf.Int64Value{value: x})", "'google.protobuf.Int64Value' is not supported"),
        ("a +", "unexpected end of input"),
    ],
    ids=["unknown struct", "protobuf struct", "syntax error"],
)
def test_rejections(expression: str, message: str) -> None:
    with pytest.raises(CelSyntaxError, match=re.escape(message)):
        rewrite(expression, struct_types=_accept_kyverno_structs)


OPTIONAL_CASES = [
    ("a.?b", True),
    ("a.?b.c", True),
    ("a[?0]", True),
    ("a[?0][1]", True),
    ("optional.of(1)", True),
    ("optional.none()", True),
    ("optional.ofNonZeroValue(x)", True),
    ("l.first()", True),
    ("l.last()", True),
    ("format.named('x')", True),
    ("a.b", False),
    ("a.?b.size()", False),
    ("f(a.?b)", False),
    ("(a.?b).orValue(1)", False),
    ("x ? a.?b : a.?c", False),
]


@pytest.mark.parametrize(("expression", "expected"), OPTIONAL_CASES, ids=[c[0] for c in OPTIONAL_CASES])
def test_is_optional_typed(expression: str, expected: bool) -> None:
    assert is_optional_typed(parse(expression)) is expected


def test_emitted_internal_functions_are_documented() -> None:
    sources = [
        "x.indexOf(1)",
        "x.lastIndexOf(1)",
        "x.reverse()",
        "string(x)",
        "math.round(x, 1)",
        "format.named('a')",
        "f.validate('a')",
        "x.transformMap(k, v, v)",
        "x.transformMapEntry(k, v, {k: v})",
        "regex.extract(x, 'a')",
    ]
    emitted = set()
    for source in sources:
        emitted.update(re.findall(r"__celvern_[A-Za-z_]+(?=\()", rewrite(source).text))
    assert emitted == {name for name in INTERNAL_FUNCTIONS if name.startswith("__celvern_")}


def test_conformance_corpus_rewrites() -> None:
    """Every expression of the conformance suites rewrites (timings live in bench/, not here)."""
    expressions = conformance_expressions()
    assert len(expressions) > 100
    for expression in expressions:
        assert rewrite(expression, struct_types=_accept_kyverno_structs).text


@pytest.mark.parametrize("expression", conformance_expressions(), ids=lambda text: " ".join(text.split())[:60])
def test_conformance_rewrites_reparse(expression: str) -> None:
    result = rewrite(expression, struct_types=_accept_kyverno_structs)
    parse(result.text)
    if result.text is not expression:
        assert "__celvern_v" in result.text or "{" in expression or ("null" in expression and "dyn(" in result.text)
