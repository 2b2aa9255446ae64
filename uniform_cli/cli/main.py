"""The `uniform` command: one subcommand per pipeline stage, each in its own module of this package.

Subcommand modules import only typer at the top and the heavy libraries inside the command, so that
`uniform --help` stays fast.
"""

import typer

app = typer.Typer(
    name="uniform",
    help="UniForm: prepare data for, train and run one diffusion transformer for audio and video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Subcommands, in pipeline order (one line each: app.command(name)(module.function)).
# -- subcommands --

if __name__ == "__main__":
    app()
