"""`uniform app`: a Gradio web app over one checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uniform_cli.cli import USAGE, fail


def main(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint folder, e.g. runs/NAME/checkpoints/latest."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 opens the app to the network."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default: 7860, or the next free one)."),
    out: Path = typer.Option(Path("outputs/app"), "--out", help="Folder for the clips, as `uniform generate --out`."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cuda when available)."),
) -> None:
    """Serve a web app with one tab per task (t2av, a2v, v2a, extend, retake, i2av): media in and out, seed,
    steps and guidance, one request at a time from a queue. Each request runs what `uniform generate` runs for
    one CSV row and writes into OUT (its row to OUT/requests/, its media to OUT/inputs/).

    Needs gradio: pip install 'uniform[app]'. Anyone who can reach the address can run the model and write
    files, so it binds 127.0.0.1 unless --host says otherwise.

    \b
    Example: uniform app --checkpoint runs/multitask/checkpoints/latest --port 7860
    """
    from uniform_cli.app import AppError, launch, require_gradio

    try:
        require_gradio()
    except AppError as e:
        fail(e, USAGE)
    if port is not None and not 0 < port < 65536:
        fail(f"--port must be in 1..65535, not {port}", USAGE)

    from uniform_cli.generate.pipeline import PipelineError, UniFormPipeline
    from uniform_cli.model.checkpoint import CheckpointError
    from uniform_cli.pretrained import PretrainedError

    try:
        pipe = UniFormPipeline.from_pretrained(checkpoint, device=device)
    except PipelineError as e:
        fail(e, USAGE)
    except (PretrainedError, CheckpointError) as e:
        fail(e)
    launch(pipe, out, host=host, port=port)
