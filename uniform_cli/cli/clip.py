"""`uniform clip`: cut every item into exact 4 s, 17 fps, 256x256 clips with 16 kHz mono audio."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from uniform_cli.cli import USAGE, fail, finish_stage

CLIP_FLAGS = ("fps", "size", "seconds", "sample_rate")


def main(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="A manifest (VGGSound or toolkit CSV) or a folder of media files."),
    root: Optional[Path] = typer.Option(None, help="Data root; default data/<manifest or folder name>/."),
    workers: int = typer.Option(0, help="Worker processes (0: one per CPU core)."),
    part: Optional[str] = typer.Option(
        None, help="I/N: this process's part of the work (default from RANK/WORLD_SIZE or SLURM)."
    ),
    recipe: Optional[Path] = typer.Option(
        None, help="Clip in the format this recipe trains on (its [data] fps, size, seconds, sample_rate); "
        "--fps, --size, --seconds and --sample-rate are then an error."
    ),
    fps: int = typer.Option(17, help="Frames per second of the clip."),
    size: int = typer.Option(256, help="Clip side in pixels (short side scaled, centre crop)."),
    seconds: float = typer.Option(4.0, help="Clip length in seconds."),
    sample_rate: int = typer.Option(16000, help="Audio sample rate of the clip."),
    allow_short: bool = typer.Option(False, help="Pad sources shorter than the clip (recorded in the 'padded' column)."),
    allow_silence: bool = typer.Option(False, help="Write silence for sources without audio (recorded in 'silent')."),
    crf: int = typer.Option(18, help="H.264 quality of the clips: 0 (lossless) to 51; lower is better and larger."),
    timeout: float = typer.Option(120.0, help="Per-item time limit in seconds (status 'timeout')."),
    max_failures: float = typer.Option(0.5, help="Stop when more than this fraction of items has failed (after 50)."),
    max_consecutive_failures: int = typer.Option(100, help="Stop after this many failures in a row."),
) -> None:
    """Write ROOT/clips/{key}.mp4 (H.264) and ROOT/clips/{key}.wav (16-bit PCM) for every item.

    Remote items are read from what `uniform fetch` downloaded; local paths and folder files directly.
    Every item ends in ROOT/clips.csv with a status (ok, too_short, late_audio, no_audio, no_video,
    decode_error, timeout); a rerun skips ok items and retries the rest.

    \b
    Examples: uniform clip manifests/vggsound.csv --workers 8
              uniform clip my_videos/ --root data/mine
              uniform clip manifests/vggsound.csv --recipe recipes/multitask.toml
    """
    from uniform_cli.config import ClipSpec, load_recipe
    from uniform_cli.prep.clip import ClipOptions, run_clip
    from uniform_cli.prep.manifest import ManifestError, default_root, read_items
    from uniform_cli.stage import FailureGuard, TooManyFailures, parse_part

    try:
        if recipe is not None:
            # typer ships its own click, so the source is compared by name
            given = [name for name in CLIP_FLAGS if ctx.get_parameter_source(name).name == "COMMANDLINE"]
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                raise ValueError(f"--recipe sets the clip format, so {flags} cannot be given too; drop them, or edit "
                                 f"the [data] table of {recipe}")
            spec = load_recipe(recipe).data.clip
        else:
            spec = ClipSpec(fps=fps, size=size, seconds=seconds, sample_rate=sample_rate)
        items = read_items(source)
        root = root or default_root(source)
        workers = workers or os.cpu_count() or 1
        options = ClipOptions(
            root=str(root),
            spec=spec,
            allow_short=allow_short,
            allow_silence=allow_silence,
            timeout=timeout,
            threads=1 if workers > 1 else 0,
            crf=crf,
        )
        guard = FailureGuard(max_rate=max_failures, max_consecutive=max_consecutive_failures)
        result = run_clip(items, root, options, part=parse_part(part), workers=workers, guard=guard)
    except (ManifestError, ValueError) as e:
        fail(f"uniform clip: {e}", USAGE)
    except (TooManyFailures, OSError) as e:
        fail(f"uniform clip: {e}")
    finish_stage(result)
