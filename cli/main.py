"""The `celvern` command line: a Kyverno-CLI-compatible front to the engine.

This module only wires commands together and owns the error contract every command shares: input that does not
load exits 2 with `file:line: field.path: message` on stderr, and nothing a user feeds in ever ends in a
Python traceback. An unexpected exception prints one `internal error: ...` line and exits 2; set
`CELVERN_DEBUG` to let it propagate (tests and bug reports want the traceback)."""

from __future__ import annotations

import os
from typing import Any

import click

from cli.apply_command import apply_command
from cli.controller_command import controller_command
from cli.output import error_text
from cli.test_command import test_command
from engine.errors import CelvernError

DEBUG_VARIABLE = "CELVERN_DEBUG"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("celvern")
    except PackageNotFoundError:
        return "0.1.0+source"


class _GuardedGroup(click.Group):
    """A click group that turns celvern errors into exit code 2 and hides unexpected tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except CelvernError as error:
            click.echo(error_text(error), err=True)
            ctx.exit(error.exit_code)
        except Exception as error:
            if os.environ.get(DEBUG_VARIABLE):
                raise
            detail = str(error).splitlines()[0] if str(error) else ""
            click.echo(f"internal error: {type(error).__name__}{': ' + detail if detail else ''}", err=True)
            ctx.exit(2)


@click.group(cls=_GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
def celvern() -> None:
    """Evaluate Kyverno CEL policies (Validating, Mutating and Generating policies, PolicyExceptions)."""


@celvern.command("version")
def version_command() -> None:
    """Print celvern's version."""
    click.echo(f"celvern {_version()}")


celvern.add_command(apply_command)
celvern.add_command(test_command)
celvern.add_command(controller_command)


def main() -> None:
    """Console-script entry point."""
    celvern(prog_name="celvern")


if __name__ == "__main__":
    main()
