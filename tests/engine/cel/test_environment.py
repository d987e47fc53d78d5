"""Compiling expressions: located, caret-annotated errors on the user's own text; runtime errors as values."""

from __future__ import annotations

import pytest

from engine.cel.environment import CelError, VariableDefinition, validating_environment
from engine.errors import PolicyCompileError

COMPILE_ERRORS = [
    ("syntax", "object.spec.(", "1:13: Syntax error: "),
    (
        "undeclared-function",
        "nosuch(1) == 1",
        "1:7: undeclared reference to 'nosuch' (in container '')\n | nosuch(1) == 1\n | ......^",
    ),
    (
        "undeclared-after-rewrite",
        "[1].transformList(i, v, v) == [] && authorizer.x",
        "1:37: undeclared reference to 'authorizer.x' (in container '')\n"
        " | [1].transformList(i, v, v) == [] && authorizer.x\n"
        " | ....................................^",
    ),
    ("unknown-struct", "Foo{a: 1}", "1:1: struct literal of type 'Foo' is not supported"),
    ("empty", "  ", "expression is empty"),
    ("undefined-variable", "variables.missing", "undefined variable 'missing' (defined before this point: none)"),
]


@pytest.mark.parametrize(
    ("expression", "expected"), [c[1:] for c in COMPILE_ERRORS], ids=[c[0] for c in COMPILE_ERRORS]
)
def test_compile_errors_are_located(expression: str, expected: str) -> None:
    with pytest.raises(PolicyCompileError) as caught:
        validating_environment().compile(expression, path="spec.validations[0].expression")
    assert caught.value.message.startswith(expected)
    assert caught.value.field_path == "spec.validations[0].expression"


def test_variables_are_bound_lazily_and_once() -> None:
    env = validating_environment()
    broken = env.compile("1 / 0", path="spec.variables[0].expression")
    double = env.compile("object.n * 2", path="spec.variables[1].expression")
    scope = [
        VariableDefinition("broken", broken.inlined, broken.variables),
        VariableDefinition("double", double.inlined, double.variables),
    ]
    program = env.compile("variables.double + variables.double", path="p", variables=scope)
    assert "__celvern_var_broken" not in program.text  # not read, so not bound: its error cannot surface
    assert program.evaluate(env.activation({"object": {"n": 4}})) == 16
    failing = env.compile("variables.broken == 1", path="p", variables=scope)
    result = failing.evaluate(env.activation({"object": {}}))
    assert isinstance(result, CelError) and "divide by zero" in result.message


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("object.missing == 1", 'Key not found in map : "missing"'),
        ("object.all(x, x > 0)", "cannot iterate over a value that is not a list or a map"),
        ("object.items.all(x, object.items.all(y, y >= 0))", "budget of 10,000 comprehension iterations"),
    ],
    ids=["missing-key", "iterate-non-list", "iteration-budget"],
)
def test_runtime_errors_are_values(expression: str, message: str) -> None:
    env = validating_environment()
    data = (
        {"object": {"items": list(range(200))}}
        if "items" in expression
        else {"object": 5 if "all" in expression else {}}
    )
    result = env.compile(expression, path="p").evaluate(env.activation(data))
    assert isinstance(result, CelError)
    assert message in result.message


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('true ? {"a": 1} : null', {"a": 1}),
        ('false ? {"a": 1} : null', None),
        ("false ? null : [1]", [1]),
        ('regex.replace("docker.io/nginx", "^docker\\\\.io/(.*)", "registry.example/\\\\1")', "registry.example/nginx"),
        ('regex.replace("aaa", "a", "b", 2)', "bba"),
        ('regex.extract("abc123", "[0-9]+").orValue("none")', "123"),
        ('regex.extract("abc", "[0-9]+").hasValue()', False),
        ('regex.extract("key=value", "key=(.*)").value()', "value"),
        ('regex.extractAll("a1b22c333", "[0-9]+")', ["1", "22", "333"]),
    ],
    ids=[
        "null-else-branch",
        "null-else-taken",
        "null-then-branch",
        "regex-replace-group",
        "regex-replace-count",
        "regex-extract",
        "regex-extract-none",
        "regex-extract-group",
        "regex-extract-all",
    ],
)
def test_cel_go_compatibility(expression: str, expected: object) -> None:
    """Constructs cel-go accepts that the C++ runtime needs help with (null ternaries, the regex extension)."""
    env = validating_environment()
    assert env.compile(expression, path="p").evaluate(env.activation({})) == expected


def test_map_values_come_back_with_sorted_keys() -> None:
    """The runtime returns maps in no fixed order; results (and so generated and mutated objects) are sorted."""
    environment = validating_environment()
    program = environment.compile("{'zeta': 1, 'alpha': {'y': [ {'b': 1, 'a': 2} ], 'x': 0}, 'mid': 2}", path="x")
    for _ in range(20):
        value = program.evaluate(environment.activation({}))
        assert list(value) == ["alpha", "mid", "zeta"]
        assert list(value["alpha"]) == ["x", "y"] and list(value["alpha"]["y"][0]) == ["a", "b"]
