"""The `celvern` command line: a Kyverno-CLI-compatible front to the engine.

This module only wires commands together and owns the error contract every command shares: input that does not
load exits 2 with `file:line: field.path: message` on stderr, and nothing a user feeds in ever ends in a
Python traceback. An unexpected exception prints one `internal error: ...` line and exits 2; set
`CELVERN_DEBUG` to let it propagate (tests and bug reports want the traceback)."""

from __future__ import annotations

import importlib
import os
from typing import Any

import click

from cli.apply_command import apply_command
from cli.output import error_text
from cli.program_cache import configured_cache
from cli.test_command import test_command
from engine.cel.environment import program_cache
from engine.errors import CelvernError

LAZY_COMMANDS = {
    "controller": "cli.controller_command:controller_command",
    "dashboard": "cli.dashboard_command:dashboard_command",
    "overview": "cli.overview_command:overview_command",
    "scan": "cli.scan_command:scan_command",
    "serve": "cli.serve_command:serve_command",
    "protect": "cli.protect_command:protect_command",
    "replay": "cli.replay_command:replay_command",
    "unprotect": "cli.protect_command:unprotect_command",
    "library": "cli.library_command:library_group",
}
"""Commands whose modules import heavy libraries (the kubernetes client, uvicorn): loaded only when used, so that
`celvern apply` and `celvern test` start fast."""

DEBUG_VARIABLE = "CELVERN_DEBUG"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("celvern")
    except PackageNotFoundError:
        return "0.1.0+source"


class _GuardedGroup(click.Group):
    """A click group that turns celvern errors into exit code 2 and hides unexpected tracebacks, and loads the
    `LAZY_COMMANDS` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in LAZY_COMMANDS:
            return command
        module_name, _, attribute = LAZY_COMMANDS[cmd_name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise  # a dependency of the command is missing: say so rather than "no such command"
            return None
        loaded = getattr(module, attribute)
        assert isinstance(loaded, click.Command)
        return loaded

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with program_cache(configured_cache()):  # compiled programs kept between runs (cli/program_cache.py)
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


def main() -> None:
    """Console-script entry point."""
    celvern(prog_name="celvern")


if __name__ == "__main__":
    main()
