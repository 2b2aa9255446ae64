"""The `uniform` command: one subcommand per pipeline stage, each in its own module of this package.

Subcommand modules import only typer at the top and the heavy libraries inside the command, so that
`uniform --help` stays fast.
"""

import typer

from uniform_cli.cli import caption, clip, demo, encode, fetch, generate
from uniform_cli.cli import eval as eval_cmd
from uniform_cli.cli import train

app = typer.Typer(
    name="uniform",
    help="UniForm: prepare data for, train and run one diffusion transformer for audio and video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """UniForm: prepare data for, train and run one diffusion transformer for audio and video."""


# Subcommands, in pipeline order (one line each: app.command(name)(module.function)).
# -- subcommands --
app.command("fetch")(fetch.main)
app.command("clip")(clip.main)
app.command("caption")(caption.main)
app.command("encode")(encode.main)
app.command("train")(train.main)
app.command("generate")(generate.main)
app.command("eval")(eval_cmd.main)
app.command("demo")(demo.main)

if __name__ == "__main__":
    app()
