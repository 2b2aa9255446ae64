"""The `uniform` command line (see main.py). Exit codes, the same in every command: 0 done; 1 a failure at
run time (missing weights, a stage whose every item failed, the failure cap, a full disk); 2 a usage or input
error (bad flags, or a recipe, manifest or prompts CSV that cannot be used); 128 + N a train stopped by signal
N after saving a checkpoint (130 for Ctrl-C, 143 for SIGTERM)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer
from typer.core import TyperArgument, TyperCommand

if TYPE_CHECKING:
    from uniform_cli.stage import StageResult

USAGE = 2
FAILED = 1


class Command(TyperCommand):
    """A subcommand whose help names each argument in capitals: `Usage: uniform train [OPTIONS] RECIPE`.

    This typer writes a required argument as `{recipe}` in the usage line, whatever its metavar."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()  # also names it in the Arguments list and in errors

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar if param.required else f"[{param.metavar}]"
                pieces.append(name if param.nargs == 1 else f"{name}...")
        return pieces


def fail(message: object, code: int = FAILED) -> NoReturn:
    """Print `error: MESSAGE` on stderr and exit with `code`. The message is printed as it is: a `[table]`
    in it is text, not console markup."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(message))}", highlight=False)
    raise typer.Exit(code)


def finish_stage(result: StageResult) -> None:
    """The end of every data command (fetch, clip, caption, encode): print the stage's summary, and exit 1 when
    items were meant for it and none is done, now or before (a job script must notice)."""
    from uniform_cli.stage import print_summary

    print_summary(result)
    if result.nothing_succeeded:
        raise typer.Exit(FAILED)
