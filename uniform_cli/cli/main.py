"""The `uniform` command: one subcommand per pipeline stage, each in its own module of this package.

Subcommand modules import only typer at the top and the heavy libraries inside the command, so that
`uniform --help` stays fast.

Help is click's plain text (`rich_markup_mode=None`): rich markup would read a recipe table name such as
`[data]` in a help string as a style tag and drop it, and typer's rich panels keep a docstring's own line
breaks and print `<bool>` after every flag. Plain text rewraps each paragraph to the terminal; a paragraph
whose first line is a lone `\\b` (examples) is printed as written.
"""

import typer

import uniform_cli
from uniform_cli.cli import Command, caption, clip, demo, encode, fetch, generate, train
from uniform_cli.cli import app as app_cmd
from uniform_cli.cli import eval as eval_cmd
from uniform_cli.cli import export as export_cmd
from uniform_cli.cli import gallery as gallery_cmd
from uniform_cli.cli import plot as plot_cmd

app = typer.Typer(
    name="uniform",
    help="UniForm: prepare data for, train and run one diffusion transformer for audio and video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"uniform {uniform_cli.__version__}")
        raise typer.Exit()


@app.callback()
def _group(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    """UniForm: prepare data for, train and run one diffusion transformer for audio and video."""


# Subcommands, in pipeline order (one line each: app.command(name, cls=Command)(module.function)).
# -- subcommands --
app.command("fetch", cls=Command)(fetch.main)
app.command("clip", cls=Command)(clip.main)
app.command("caption", cls=Command)(caption.main)
app.command("encode", cls=Command)(encode.main)
app.command("train", cls=Command)(train.main)
app.command("plot", cls=Command)(plot_cmd.main)
app.command("generate", cls=Command)(generate.main)
app.command("export", cls=Command)(export_cmd.main)
app.command("gallery", cls=Command)(gallery_cmd.main)
app.command("app", cls=Command)(app_cmd.main)
app.command("eval", cls=Command)(eval_cmd.main)
app.command("demo", cls=Command)(demo.main)

if __name__ == "__main__":
    app()
