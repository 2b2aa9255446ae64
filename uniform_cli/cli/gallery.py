"""`uniform gallery`: a static index.html to look at the outputs of `uniform generate`."""

from __future__ import annotations

from pathlib import Path

import typer

from uniform_cli.cli import FAILED, USAGE, fail


def main(
    outdir: Path = typer.Argument(..., help="The --out folder of `uniform generate` (holds results.jsonl)."),
) -> None:
    """Write OUTDIR/index.html: per clip the video with sound, caption, task, seed, settings, a mel-spectrogram
    image and the given input. It opens from file:// with no server (images go to OUTDIR/gallery/).

    Exits 1 when part of a clip's card could not be made (a missing mp4, an unreadable wav); the page is
    written all the same.

    \b
    Example: uniform gallery outputs/   then open outputs/index.html in a browser
    """
    from uniform_cli.generate.gallery import GalleryError, build_gallery

    try:
        report = build_gallery(outdir)
    except GalleryError as e:
        fail(e, USAGE)
    except OSError as e:
        fail(e)
    print_report(report)
    if report.failed:
        raise typer.Exit(FAILED)


def print_report(report) -> None:
    """One line for the page, one per clip whose card is incomplete."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    for name, why in list(report.failed.items())[:20]:
        console.print(f"  {name}: {why}", markup=False)
    console.print(f"gallery: {len(report.clips)} clip(s) in {report.index}", markup=False)


def write_gallery(outdir: Path) -> None:
    """`generate --gallery`: the gallery of the run's folder, after the run (a problem is reported, and leaves
    the run's exit code alone)."""
    from uniform_cli.generate.gallery import GalleryError, build_gallery

    try:
        print_report(build_gallery(outdir))
    except (GalleryError, OSError) as e:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(f"[yellow]no gallery:[/yellow] {escape(str(e))}", highlight=False)
