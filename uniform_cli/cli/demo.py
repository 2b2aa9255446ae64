"""`uniform demo`: the whole pipeline on a built-in audible-video world, on a laptop CPU, in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uniform_cli.cli import USAGE, fail


def main(
    out: Path = typer.Option(
        Path("demo"), "--out", help="Folder for everything the demo makes (new, empty, or an earlier demo's)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A shortened run: a handful of clips, a few training steps (about a minute)."
    ),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe to use (default: recipes/demo.toml)."),
    train_per_kind: Optional[int] = typer.Option(None, "--train-per-kind", help="Training clips per kind of scene."),
    test_per_kind: Optional[int] = typer.Option(None, "--test-per-kind", help="Held-out clips per kind of scene."),
    t2av_samples: Optional[int] = typer.Option(None, "--t2av-samples", help="T2AV clips per held-out caption."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default: the recipe's)."),
    sample_steps: Optional[int] = typer.Option(None, "--sample-steps", help="Sampling steps (default: the recipe's)."),
    cache: Optional[float] = typer.Option(
        None, "--cache", min=0.0, help="Step cache threshold of generate (e.g. 0.08; default: the recipe's, off)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the world, training and sampling."),
) -> None:
    """Make a world of scenes whose sound is caused by the picture, and run clip, caption, encode, train,
    generate (T2AV, A2V, V2A) and eval on it; ends with generated mp4s, a contact sheet and a table of
    AV-Align and nearest-kind accuracy. Needs no weights and no GPU.

    \b
    Example: uniform demo --out demo
    """
    from dataclasses import replace

    from rich.console import Console

    from uniform_cli.config import ConfigError
    from uniform_cli.demo.run import QUICK, DemoError, DemoSettings, run_demo

    console = Console()
    settings = QUICK if quick else DemoSettings()
    given = {"train_per_kind": train_per_kind, "test_per_kind": test_per_kind, "t2av_samples": t2av_samples,
             "steps": steps, "sample_steps": sample_steps, "cache": cache}
    settings = replace(settings, seed=seed, **{k: v for k, v in given.items() if v is not None})
    if min(settings.train_per_kind, settings.test_per_kind, settings.t2av_samples) < 1:
        fail("--train-per-kind, --test-per-kind and --t2av-samples must be at least 1", USAGE)
    try:
        run_demo(out, recipe, settings, console)
    except ConfigError as e:
        fail(e, USAGE)
    except DemoError as e:
        fail(e)
