"""`uniform export`: a checkpoint as a self-contained, hub-ready folder with a model card, optionally pushed to the
Hugging Face hub."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from uniform_cli.cli import USAGE, fail


def main(
    checkpoint: str = typer.Argument(
        ..., help="Checkpoint as generate --checkpoint takes it (runs/NAME/checkpoints/latest), or a cached hub id."
    ),
    out: Path = typer.Argument(..., help="Folder to write (must not exist, or be empty)."),
    with_weights: bool = typer.Option(
        False, "--with-weights", help="Copy the codecs' and text encoder's weights too (default: their configs)."
    ),
    push: Optional[str] = typer.Option(None, "--push", help="Hub repository ORG/NAME to upload the folder to."),
    private: bool = typer.Option(False, "--private", help="Create the --push repository as private."),
    license: str = typer.Option("other", "--license", help="License id for the model card (e.g. apache-2.0)."),
    dataset: List[str] = typer.Option([], "--dataset", help="Training dataset for the model card (repeatable)."),
    download: bool = typer.Option(
        False, "--download", help="Fetch CHECKPOINT from the hub when it is a hub id missing from the local cache."
    ),
) -> None:
    """Write OUT with config.json + model.safetensors + recipe.toml (so `uniform generate --checkpoint OUT` loads
    it), the codecs' and text encoder's configs (their weights with --with-weights, which the recipe then
    names), and a model card README.md; --push uploads it (log in first: `hf auth login`, or set HF_TOKEN).

    \b
    Example: uniform export runs/multitask/checkpoints/latest exports/multitask --with-weights --push me/uniform
    """
    from uniform_cli.generate.hub import CardInfo, PipelineError, check_repo_id, export_checkpoint, push_folder
    from uniform_cli.pretrained import PretrainedError

    datasets = tuple(d.strip() for d in dataset if d.strip())
    try:
        card = CardInfo(license=license.strip() or "other", datasets=datasets,
                        repo_id=check_repo_id(push) if push else None)
        folder = export_checkpoint(checkpoint, out, with_weights=with_weights, card=card, download=download)
    except PipelineError as e:
        fail(e, USAGE)
    except (PretrainedError, OSError) as e:
        fail(e)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    typer.echo(f"exported {checkpoint} to {folder}: {len(files)} files, {size / 2**20:.1f} MiB")
    if push:
        try:
            commit = push_folder(folder, push, private=private or None)
        except Exception as e:  # the hub's HTTP errors, httpx's connection errors, a missing login
            fail(f"uploading {folder} to {push} failed ({e.__class__.__name__}: {e}); the folder is complete, "
                 f"retry with `hf upload {push} {folder}`")
        typer.echo(f"pushed to {commit.commit_url}")
