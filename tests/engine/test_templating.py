"""GeneratingPolicy YAML templates: parsing, placeholder extraction and rendering (engine.templating)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.templating import TemplateError, parse_template

SHARED_TEMPLATES = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "conformance"
    / "kyverno-cli"
    / "test-generating-policy"
    / "template"
)

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n"


def configmap(**data: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": data}


# (template value, interpolate, expected expressions, values, expected documents)
RENDER_CASES = [
    pytest.param(CM + "data:\n  key: value\n", True, (), [], [configmap(key="value")], id="plain-template"),
    pytest.param(
        CM + "data:\n  n: 1\n  b: true\n  s: '1'\n",
        True,
        (),
        [],
        [configmap(n=1, b=True, s="1")],
        id="plain-template-keeps-yaml-types",
    ),
    pytest.param(
        CM + "data:\n  key: (( object.metadata.name ))\n  esc: \\(( x ))\n",
        False,
        (),
        [],
        [configmap(key="(( object.metadata.name ))", esc="\\(( x ))")],
        id="interpolate-off-leaves-placeholders-and-escapes",
    ),
    pytest.param(
        CM + "  labels: (( variables.labels ))\n",
        True,
        ("variables.labels",),
        [{"team": "platform", "env": "test"}],
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cm", "labels": {"team": "platform", "env": "test"}},
            }
        ],
        id="whole-value-map",
    ),
    pytest.param(
        CM + "data:\n  items: ((object.items))\n",
        True,
        ("object.items",),
        [["a", {"b": 1}]],
        [configmap(items=["a", {"b": 1}])],
        id="whole-value-list-without-spaces",
    ),
    pytest.param(
        CM + "data:\n  replicas: ((   3 + 4   ))\n",
        True,
        ("3 + 4",),
        [7],
        [configmap(replicas=7)],
        id="whole-value-int-keeps-type",
    ),
    pytest.param(
        CM + "data:\n  quoted: '(( x ))'\n  nothing: (( y ))\n",
        True,
        ("x", "y"),
        [False, None],
        [configmap(quoted=False, nothing=None)],
        id="whole-value-bool-and-null-even-when-quoted",
    ),
    pytest.param(
        "(( object ))",
        True,
        ("object",),
        [{"kind": "Secret"}],
        [{"kind": "Secret"}],
        id="whole-document-placeholder",
    ),
    pytest.param(
        CM + "  name: (( variables.nsName ))-config\n",
        True,
        ("variables.nsName",),
        ["test-ns"],
        [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "test-ns-config"}}],
        id="embedded-string",
    ),
    pytest.param(
        CM + "data:\n  i: n=((i))\n  f: f=((f))\n  g: g=((g))\n  t: t=((t))\n  u: u=((u))\n  big: ((big))!\n",
        True,
        ("i", "f", "g", "t", "u", "big"),
        [42, 2.0, 0.5, True, False, 1e6],
        [configmap(i="n=42", f="f=2", g="g=0.5", t="t=true", u="u=false", big="1e+06!")],
        id="embedded-scalars-print-like-go",
    ),
    pytest.param(
        CM + "data:\n  addr: (( host )):(( port ))/(( path ))\n",
        True,
        ("host", "port", "path"),
        ["db", 5432, "x"],
        [configmap(addr="db:5432/x")],
        id="multiple-placeholders-in-one-string",
    ),
    pytest.param(
        CM + "data:\n  block: |\n    name=(( name ))\n",
        True,
        ("name",),
        ["a"],
        [configmap(block="name=a\n")],
        id="block-scalar-with-trailing-newline-is-embedded",
    ),
    pytest.param(
        CM + "data:\n  lit: \\(( not a placeholder ))\n  mixed: \\((kept)) and (( x ))\n",
        True,
        ("x",),
        ["y"],
        [configmap(lit="(( not a placeholder ))", mixed="((kept)) and y")],
        id="escapes",
    ),
    pytest.param(
        CM + "data:\n  n: \\((1\n",
        True,
        (),
        [],
        [configmap(n="((1")],
        id="escape-only-scalar-is-a-string",
    ),
    pytest.param(
        CM + "data:\n  s: '(( \"a))\" + object.x ))'\n  t: x(( '))(' + y ))z\n",
        True,
        ('"a))" + object.x', "'))(' + y"),
        ["a))b", "))(c"],
        [configmap(s="a))b", t="x))(cz")],
        id="closing-parens-inside-cel-string-literals",
    ),
    pytest.param(
        CM + 'data:\n  s: (( "q\\"))" + string(size(f(x))) ))\n',
        True,
        ('"q\\"))" + string(size(f(x)))',),
        ['q"))3'],
        [configmap(s='q"))3')],
        id="escaped-quote-and-nested-parens",
    ),
    pytest.param(
        CM + "data:\n  key: value\n---\n---\n" + CM + "data:\n  other: (( x ))\n...\n",
        True,
        ("x",),
        ["v"],
        [configmap(key="value"), configmap(other="v")],
        id="multi-document-skips-empty-documents",
    ),
    pytest.param(
        CM + "data:\n  a: &v (( x ))\n  b: *v\n  c: ((y))\n",
        True,
        ("x", "y"),
        ["1", "2"],
        [configmap(a="1", b="1", c="2")],
        id="alias-of-a-placeholder-counts-once",
    ),
]


@pytest.mark.parametrize(("value", "interpolate", "expressions", "values", "expected"), RENDER_CASES)
def test_render(
    value: str, interpolate: bool, expressions: tuple[str, ...], values: list[Any], expected: list[dict[str, Any]]
) -> None:
    template = parse_template(value, interpolate=interpolate)
    assert template.expressions == expressions
    assert template.render(values) == expected


def test_render_returns_fresh_copies() -> None:
    template = parse_template(CM + "data:\n  static: {a: [1]}\n  spliced: (( x ))\n", interpolate=True)
    value = {"nested": {"list": [1]}}
    first = template.render([value])
    first[0]["data"]["static"]["a"].append(2)
    first[0]["data"]["spliced"]["nested"]["list"].append(2)
    assert value == {"nested": {"list": [1]}}
    assert template.render([value]) == [configmap(static={"a": [1]}, spliced={"nested": {"list": [1]}})]


def test_render_wants_one_value_per_expression() -> None:
    template = parse_template(CM + "data:\n  a: (( x ))\n", interpolate=True)
    with pytest.raises(ValueError, match="expected 1 placeholder values, got 0"):
        template.render([])


@pytest.mark.parametrize("case", sorted(p.name for p in SHARED_TEMPLATES.iterdir()))
def test_conformance_examples(case: str) -> None:
    """The CLI conformance examples, with the placeholders evaluated by hand for the `test-ns` trigger."""
    directory = SHARED_TEMPLATES / case
    spec = yaml.safe_load((directory / "policy.yaml").read_text())["spec"]
    template_spec = spec["generate"][0]["template"]
    template = parse_template(template_spec["value"], interpolate=template_spec.get("interpolate") == "cel")
    variables = {"variables.nsName": "test-ns", "variables.labels": {"team": "platform", "env": "test"}}
    rendered = template.render([variables[expression] for expression in template.expressions])
    assert rendered == list(yaml.safe_load_all((directory / "generated-resource.yaml").read_text()))


PARSE_ERROR_CASES = [
    pytest.param(
        CM + "  labels:\n    (( variables.key )): v\n",
        'document 1, line 6, field `metadata.labels["(( variables.key ))"]`: placeholders are not allowed in mapping '
        "keys",
        id="placeholder-in-key",
    ),
    pytest.param(CM + "data:\n  a: (( x \n", "line 6, field `data.a`: unterminated placeholder", id="unterminated"),
    pytest.param(
        CM + "data:\n  a: (( 'x )) \n", "field `data.a`: unterminated string literal", id="unterminated-string"
    ),
    pytest.param(CM + "data:\n  a: x-((  ))\n", "field `data.a`: empty placeholder", id="empty-expression"),
    pytest.param(CM + "data:\n  a: (( a) b ))\n", "unbalanced ')' in placeholder", id="unbalanced-paren"),
    pytest.param("- a\n- b\n", "document 1, line 1: document must be a mapping", id="list-document"),
    pytest.param(CM + "---\njust text\n", "document 2, line 6: document must be a mapping", id="scalar-document"),
    pytest.param("x-(( y ))", "document 1, line 1: document must be a mapping", id="interpolated-document"),
    pytest.param(CM + "data: {a: [\n", "document 1: invalid YAML: line 6, column 1", id="bad-yaml"),
    pytest.param(CM + "---\na: b\n  c: d\n", "document 2: invalid YAML: line 7, column", id="bad-yaml-second-document"),
    pytest.param(
        CM + "data:\n  a: !!int zz\n  b: ((x))\n", "line 6, field `data.a`: invalid YAML", id="bad-typed-scalar"
    ),
    pytest.param("", "template must contain at least one YAML document", id="empty-template"),
    pytest.param("---\n~\n---\n", "template must contain at least one YAML document", id="only-empty-documents"),
    pytest.param(
        CM + "base: &b {a: 1}\ndata:\n  <<: *b\n  c: (( x ))\n",
        "field `data`: YAML merge keys are not supported next to placeholders",
        id="merge-key-next-to-placeholder",
    ),
    pytest.param(
        CM + "data:\n  ? [a]\n  : (( x ))\n", "field `data`: only scalar mapping keys are supported", id="complex-key"
    ),
    pytest.param(CM + "data: &d\n  a: (( x ))\n  b: *d\n", "alias refers to its own ancestor", id="recursive-alias"),
]


@pytest.mark.parametrize(("value", "message"), PARSE_ERROR_CASES)
def test_parse_errors(value: str, message: str) -> None:
    with pytest.raises(TemplateError) as excinfo:
        parse_template(value, interpolate=True)
    assert message in str(excinfo.value)


def test_interpolate_off_accepts_placeholder_syntax_but_still_checks_documents() -> None:
    assert parse_template(CM + "data:\n  ((k)): ((\n", interpolate=False).expressions == ()
    with pytest.raises(TemplateError, match="document 1, line 1: document must be a mapping"):
        parse_template("[a]", interpolate=False)


RENDER_ERROR_CASES = [
    pytest.param(
        CM + "data:\n  KEY: prefix-(( variables.labels ))\n",
        {"a": "b"},
        "document 1, field `data.KEY`: placeholder `variables.labels` embedded in a string must evaluate to a scalar "
        "(string, int, double or bool), got map",
        id="embedded-map",
    ),
    pytest.param(
        CM + "data:\n  items:\n  - x=((v))\n", [1], "field `data.items[0]`: placeholder `v`", id="embedded-list"
    ),
    pytest.param(CM + "data:\n  KEY: ((v))!\n", None, "got null", id="embedded-null"),
    pytest.param(
        CM + "---\n(( object ))\n",
        "text",
        "document 2: expected a mapping describing a resource, got str",
        id="whole-document-not-a-map",
    ),
]


@pytest.mark.parametrize(("value", "placeholder_value", "message"), RENDER_ERROR_CASES)
def test_render_errors(value: str, placeholder_value: Any, message: str) -> None:
    template = parse_template(value, interpolate=True)
    with pytest.raises(TemplateError) as excinfo:
        template.render([copy.deepcopy(placeholder_value)])
    assert message in str(excinfo.value)
