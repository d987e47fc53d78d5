"""`celvern library list|show|instantiate`: browse the policy library and render instances of its policies.

Why this module exists: the library under `policies/` is meant to be used like a console's policy governance page:
pick a policy, set its parameters, choose Block (`Deny`) or Alert (`Warn`/`Audit`) and the namespaces it applies
to. The catalogue, the parameter checks and the rewriting live in `engine.library`; this module parses flags,
renders the catalogue, and makes sure that an instance is only ever written when it is valid: every `--set` value
is checked against its parameter's type first, and the rendered YAML is loaded back and compiled with
`engine.policy_set.build_policy_set` before a byte of it goes out. Errors exit 2 like every other usage error.

The library is the repository's `policies/` next to the installed `cli` package, or `--library DIR` /
`$CELVERN_LIBRARY`."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import click
import orjson
import yaml
from rich import box
from rich.table import Table
from rich.text import Text

import cli
from cli.output import console, error_text
from engine.errors import CelvernError
from engine.library import (
    ACTIONS,
    Library,
    LibraryError,
    LibraryPolicy,
    instantiate,
    load_library,
    render_policy,
    render_value,
)
from engine.loader import parse_text
from engine.policy_set import build_policy_set

LIBRARY_VARIABLE = "CELVERN_LIBRARY"
DEFAULT_LIBRARY = Path(cli.__file__).resolve().parents[1] / "policies"
"""The repository's policy library, next to the installed packages."""

_SEVERITY_STYLE = {"high": "red", "medium": "yellow", "low": "green"}
_WRAP = 100


def _library_option(command: Any) -> Any:
    return click.option(
        "--library",
        "library_dir",
        type=click.Path(),
        envvar=LIBRARY_VARIABLE,
        default=None,
        help=f"Library directory [default: ${LIBRARY_VARIABLE}, else the policies/ shipped with celvern].",
    )(command)


def _load(library_dir: str | None) -> Library:
    return load_library(library_dir or DEFAULT_LIBRARY)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


@click.group("library")
def library_group() -> None:
    """Browse the policy library and render instances of its policies."""


# --- list -----------------------------------------------------------------------------------------------------


@library_group.command("list")
@click.option("--category", default=None, help="Only this category (case-insensitive; a part is enough: 'finops').")
@_library_option
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format."
)
def list_command(category: str | None, library_dir: str | None, output: str) -> None:
    """List the library's policies: name, category, severity, kind, parameters and title."""
    library = _load(library_dir)
    policies = sorted(library.policies, key=lambda policy: (policy.category, policy.name))
    if category is not None:
        wanted = category.strip().lower()
        policies = [policy for policy in policies if wanted in policy.category.lower()]
        if not policies:
            raise LibraryError(
                f"no policies in category {category!r}; categories in use: {', '.join(library.categories) or 'none'}"
            )
    if output == "json":
        click.echo(_json([policy.to_json() for policy in policies]))
        return
    table = Table(box=box.SQUARE, pad_edge=True)
    for column in ("NAME", "CATEGORY", "SEVERITY", "KIND", "PARAMETERS", "TITLE"):
        table.add_column(column, overflow="fold")
    for policy in policies:
        table.add_row(
            Text(policy.name),
            Text(policy.category),
            Text(policy.severity, style=_SEVERITY_STYLE.get(policy.severity, "")),
            Text(policy.kind),
            Text(str(len(policy.parameters))),
            Text(policy.title),
        )
    console().print(table)


# --- show -----------------------------------------------------------------------------------------------------


def _show_text(policy: LibraryPolicy) -> str:
    fields = [
        ("Name", policy.name),
        ("Kind", policy.kind),
        ("Title", policy.title),
        ("Category", policy.category),
        ("Severity", policy.severity),
        ("Subject", policy.subject),
        ("PSS control", policy.pss_control),
        ("PSP field", policy.psp_field),
        ("Path", policy.source),
    ]
    lines = [f"{label + ':':<13} {value}" for label, value in fields if value]
    lines += ["", "Description:", textwrap.fill(policy.description, _WRAP, initial_indent="  ", subsequent_indent="  ")]
    lines += ["", "Parameters:" if policy.parameters else "Parameters: none"]
    for parameter in policy.parameters:
        lines.append(f"  {parameter.name} ({parameter.type})")
        if parameter.enum:
            lines.append(f"    allowed: {', '.join(parameter.enum)}")
        lines.append(f"    default: {render_value(parameter.default)}")
        lines.append(textwrap.fill(parameter.description, _WRAP, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(lines)


@library_group.command("show")
@click.argument("name")
@_library_option
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json", "yaml"]),
    default="text",
    show_default=True,
    help="Output format.",
)
def show_command(name: str, library_dir: str | None, output: str) -> None:
    """Show a library policy: what it checks, its category and severity, and its parameters with their defaults."""
    policy = _load(library_dir).get(name)
    if output == "json":
        click.echo(_json(policy.to_json()))
    elif output == "yaml":
        click.echo(yaml.safe_dump(policy.to_json(), sort_keys=False, width=120).rstrip("\n"))
    else:
        click.echo(_show_text(policy))


# --- instantiate ----------------------------------------------------------------------------------------------


def _settings(policy: LibraryPolicy, settings: tuple[str, ...]) -> dict[str, Any]:
    """`--set key=value` flags as checked parameter values (LibraryError on an unknown key or a bad value)."""
    values: dict[str, Any] = {}
    for setting in settings:
        key, equals, text = setting.partition("=")
        key = key.strip()
        if not equals or not key:
            raise click.BadParameter(f"expected key=value, got {setting!r}", param_hint="'--set'")
        if key in values:
            raise click.BadParameter(f"{key} is set twice", param_hint="'--set'")
        values[key] = policy.parameter(key).parse(text)
    return values


def _namespaces(values: tuple[str, ...]) -> list[str]:
    names = [name.strip() for value in values for name in value.split(",")]
    if any(not name for name in names):
        raise click.BadParameter("empty namespace name (write a,b)", param_hint="'--namespaces'")
    return names


def _check_compiles(text: str, name: str) -> None:
    """Load the rendered instance back and compile it; print every problem and exit 2 when it does not compile."""
    try:
        policy_set = build_policy_set(parse_text(text, f"<instance {name}>"))
    except CelvernError as error:
        raise LibraryError(f"the instance does not load, nothing written: {error_text(error)}") from None
    errors = policy_set.compile_errors
    if errors:
        for compile_error in errors:
            click.echo(error_text(compile_error), err=True)
        raise LibraryError(f"the instance of {name} does not compile, nothing written")


@library_group.command("instantiate")
@click.argument("name")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A parameter value (repeatable). Lists: a,b or [a, b]; objects: JSON/YAML.",
)
@click.option(
    "--action",
    type=click.Choice(ACTIONS, case_sensitive=False),
    metavar="[Deny|Warn|Audit]",
    default=None,
    help="validationActions of a validating policy: Deny blocks, Warn and Audit alert [default: as in the library].",
)
@click.option(
    "--namespaces",
    "namespaces",
    multiple=True,
    metavar="A,B",
    help="Only apply in these namespaces (comma-separated, repeatable) [default: every namespace].",
)
@click.option("--name", "instance_name", default=None, help="Name of the instance [default: the library name].")
@click.option(
    "-o",
    "--output",
    "output_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="Write the policy to this file [default: stdout].",
)
@_library_option
def instantiate_command(
    name: str,
    settings: tuple[str, ...],
    action: str | None,
    namespaces: tuple[str, ...],
    instance_name: str | None,
    output_file: str,
    library_dir: str | None,
) -> None:
    """Render an instance of library policy NAME with your parameters, action and namespaces, as YAML.

    \b
    celvern library instantiate allowed-image-registries \\
        --set allowedRepositories=registry.k8s.io/,ghcr.io/example/ \\
        --action Deny --namespaces payments,shop -o registries.yaml
    """
    policy = _load(library_dir).get(name)
    values = _settings(policy, settings)
    document = instantiate(policy, values, action, _namespaces(namespaces), instance_name)
    text = render_policy(document)
    _check_compiles(text, document["metadata"]["name"])
    if output_file == "-":
        click.echo(text, nl=False)
        return
    try:
        Path(output_file).write_text(text, encoding="utf-8")
    except OSError as error:
        raise LibraryError(f"cannot write {output_file}: {error.strerror or error}") from None
    click.echo(f"wrote {document['kind']} {document['metadata']['name']} to {output_file}", err=True)


__all__ = ["DEFAULT_LIBRARY", "LIBRARY_VARIABLE", "library_group"]
