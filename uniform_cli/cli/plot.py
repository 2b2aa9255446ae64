"""`uniform plot`: a run's training curves as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uniform_cli.cli import USAGE, fail


def main(
    run: Path = typer.Argument(..., metavar="RUN", help="A run folder written by `uniform train` (runs/NAME), or its metrics.jsonl."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE.png", help="PNG to write; default RUN/metrics.png."),
) -> None:
    """Draw a run's loss per task, gradient norm and learning rate from its metrics.jsonl to a PNG.

    \b
    Example: uniform plot runs/multitask --out multitask.png
    """
    from uniform_cli.train.plot import PlotError, plot_metrics

    try:
        path = plot_metrics(run, out)
    except PlotError as e:
        fail(e, USAGE)
    except OSError as e:
        fail(e)
    typer.echo(f"wrote {path}")
