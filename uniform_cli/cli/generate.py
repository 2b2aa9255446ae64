"""`uniform generate`: render audible videos from a prompts CSV with a trained checkpoint (T2AV, A2V, V2A,
extend, retake, I2AV; any length)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Optional

import typer

from uniform_cli.cli import USAGE, fail
from uniform_cli.cli.gallery import write_gallery
from uniform_cli.config import Sampler

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
SAMPLER_NAMES = typing.get_args(Sampler)


def main(
    prompts: Path = typer.Argument(
        ..., help="CSV with columns id,text and optionally task,video,audio,image,seconds,span,modality,seed."
    ),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint folder, e.g. runs/NAME/checkpoints/latest."),
    task: str = typer.Option(
        "t2av", "--task", help="Task of rows without a 'task' cell: t2av, a2v, v2a, extend, retake or i2av."
    ),
    out: Path = typer.Option(Path("outputs"), "--out", help="Output folder for {id}.mp4, {id}.wav, results.jsonl."),
    sampler: Optional[str] = typer.Option(
        None, "--sampler", help=f"{', '.join(SAMPLER_NAMES)} (default: the checkpoint's)."
    ),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the checkpoint's)."),
    guidance: Optional[float] = typer.Option(None, "--cfg", help="Guidance scale of both video and audio."),
    cfg_video: Optional[float] = typer.Option(None, "--cfg-video", help="Guidance scale of the video."),
    cfg_audio: Optional[float] = typer.Option(None, "--cfg-audio", help="Guidance scale of the audio."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Clips per batch (tasks may be mixed)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Base seed of rows without a 'seed' cell."),
    num_samples: int = typer.Option(1, "--num-samples", help="Clips per row, written as {id}_{k} (seed + k)."),
    keep_best: Optional[str] = typer.Option(
        None, "--keep-best", help="av-align, clap, ib or desync (clips of 4.8 s or more): make --num-samples "
        "candidates per row and keep the best as {id}; results.jsonl records each candidate's seed and score."
    ),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Weight files of the --keep-best metric."),
    clap: Optional[str] = typer.Option(None, "--clap", help="CLAP folder or cached hub id for --keep-best clap."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip outputs whose mp4, wav and results line exist."),
    part: Optional[str] = typer.Option(
        None, "--part", help="I/N: this process's part of the work (default from RANK/WORLD_SIZE)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (default: bf16 on GPUs, fp32 on CPU)."),
    video_vae: Optional[str] = typer.Option(
        None, "--video-vae", help="Open-Sora VAE folder or hub id, or 'pixel' (weight-free); overrides the recipe."
    ),
    audio_vae: Optional[str] = typer.Option(
        None, "--audio-vae", help="AudioLDM folder or hub id, or 'mel' (weight-free); overrides the recipe."
    ),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="Text encoder folder or hub id; 'none' for no text."),
    overlap: int = typer.Option(1, "--overlap", help="Whole seconds each window of a long output shares with the last."),
    model_format: bool = typer.Option(
        False, "--model-format", help="Write every mp4 at the model's format (V2A rows otherwise keep their own video)."
    ),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the transformer blocks (long runs on GPUs)."),
    cache: Optional[float] = typer.Option(
        None, "--cache", min=0.0, help="Step cache threshold, e.g. 0.08: skip blocks on steps that change little (0: off)."
    ),
    gallery: bool = typer.Option(False, "--gallery", help="Also write OUT/index.html to look at the clips (uniform gallery)."),
) -> None:
    """Generate {id}.mp4 (H.264 + AAC) and {id}.wav per CSV row, and one results.jsonl line per clip.

    Given media (video for v2a, extend and retake rows, audio for a2v rows, an image for i2av rows; paths
    relative to the CSV) are prepared like `uniform clip` does, held fixed, and carried into the output
    unchanged; outputs of any length (the 'seconds' column) are made in windows of the model's clip. V2A rows
    keep the given video stream itself, with the new sound. Every row is checked first; all problems are
    reported together and nothing is written.

    \b
    Example: uniform generate prompts.csv --task v2a --checkpoint runs/multitask/checkpoints/latest --steps 25
    """
    import os

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from uniform_cli.config import with_codec_overrides
    from uniform_cli.eval.run import Sources
    from uniform_cli.generate.jobs import TASKS
    from uniform_cli.generate.pipeline import PipelineError, UniFormPipeline, read_checkpoint_recipe, resolve_checkpoint
    from uniform_cli.generate.prompts import PromptsError, plan, read_prompts
    from uniform_cli.generate.results import merge_results
    from uniform_cli.generate.runner import RunOptions, check_scorer, generate_items, load_scorer, select
    from uniform_cli.model.checkpoint import CheckpointError
    from uniform_cli.pretrained import PretrainedError
    from uniform_cli.progress import LogProgress
    from uniform_cli.stage import parse_part

    console = Console(stderr=True, soft_wrap=True)
    if guidance is not None and (cfg_video is not None or cfg_audio is not None):
        fail("use either --cfg or --cfg-video/--cfg-audio, not both", USAGE)
    if dtype is not None and dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}", USAGE)
    if batch_size is not None and batch_size < 1:
        fail("--batch-size must be at least 1", USAGE)
    if steps is not None and steps < 2:
        fail("--steps must be at least 2 (the first and the last timestep)", USAGE)
    if sampler is not None and sampler not in SAMPLER_NAMES:
        fail(f"--sampler must be one of {', '.join(SAMPLER_NAMES)}, not {sampler!r}", USAGE)
    try:
        default_task = task.strip().lower()
        if default_task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
        part = parse_part(part)
        folder = resolve_checkpoint(checkpoint)
        recipe = read_checkpoint_recipe(folder)
        spec = recipe.data.clip
        rows = read_prompts(prompts, default_task, spec)
        items = plan(rows, 1 if keep_best else num_samples, recipe.generate.seed if seed is None else seed, source=prompts)
        sources = Sources(weights_dir, clap) if clap else Sources(weights_dir)
        if keep_best is not None and num_samples < 2:
            raise ValueError("--keep-best picks among --num-samples candidates: give --num-samples 2 or more")
        if keep_best is not None:
            check_scorer(keep_best.strip().lower(), sources, items)
    except (PromptsError, PipelineError, ValueError) as e:
        fail(str(e), USAGE)
    options = RunOptions(
        sampler=sampler,
        steps=steps,
        cfg_video=guidance if guidance is not None else cfg_video,
        cfg_audio=guidance if guidance is not None else cfg_audio,
        batch_size=batch_size or recipe.generate.batch_size,
        overlap=overlap,
        model_format=model_format,
        cache=cache,
        keep_best=keep_best.strip().lower() if keep_best else None,
        candidates=num_samples if keep_best else 1,
    )
    chosen = select(items, part, out, skip_existing, options, recipe.generate)
    todo, skipped = chosen.todo, chosen.skipped
    for name, what in list(chosen.changed.items())[:10]:
        console.print(f"{name} exists with other settings ({what}): generating it again", markup=False)
    if len(chosen.changed) > 10:
        console.print(f"... and {len(chosen.changed) - 10} more outputs with other settings")
    part_note = f" (part {part.index}/{part.count})" if part.count > 1 else ""
    if not todo:
        if part.count == 1 and Path(out).is_dir():
            merge_results(Path(out))
        console.print(f"nothing to generate{part_note}: {skipped} output(s) already in {out}")
        if gallery:
            write_gallery(out)
        return

    if device is None and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
    try:
        codec = with_codec_overrides(recipe.codec, video_vae, audio_vae, text_encoder)
        pipe = UniFormPipeline.from_pretrained(
            folder, device=device, dtype=getattr(torch, DTYPES[dtype]) if dtype else None, codec=codec, compile=compile
        )
        scorer = load_scorer(options.keep_best, sources, str(pipe.device)) if options.keep_best else None
    except (PipelineError, PretrainedError, CheckpointError) as e:
        fail(e)

    try:
        if console.is_terminal:  # a clip bar and a denoising bar
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
            with Progress(*columns, console=console, transient=True) as progress:
                clips = progress.add_task(f"generating{part_note}", total=len(todo))
                denoise = progress.add_task("  denoising batch", total=None)
                report = generate_items(pipe, todo, out, options, part, scorer=scorer,
                                        on_batch=lambda n: progress.advance(clips, n),
                                        on_step=lambda done, total: progress.update(denoise, completed=done, total=total))
        else:  # a log: a plain line now and then
            plain = LogProgress(console, f"generate{part_note}", len(todo), unit=" clips")
            report = generate_items(pipe, todo, out, options, part, on_batch=plain.advance, scorer=scorer)
    except (PipelineError, OSError) as e:
        fail(e)

    if part.count == 1:
        merge_results(Path(out))
    _summary(console, report, skipped, out, pipe)
    if gallery:
        write_gallery(out)
    if report.failed:
        raise typer.Exit(1)


def _summary(console, report, skipped: int, out: Path, pipe) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"uniform generate: {len(report.generated) + len(report.failed)} clip(s) in {report.seconds:.1f} s")
    table = Table()
    table.add_column("status")
    table.add_column("clips", justify="right")
    table.add_row("generated", str(len(report.generated)))
    if skipped:
        table.add_row("skipped (done before)", str(skipped))
    if report.failed:
        table.add_row("failed", str(len(report.failed)))
    console.print(table)
    for note in report.notes[:20]:
        console.print(f"  {note}", markup=False, highlight=False)
    for name, error in list(report.failed.items())[:10]:
        console.print(f"  [red]{escape(name)}[/red]: {escape(str(error))}", highlight=False)
    if report.clip_seconds:
        mean = sum(report.clip_seconds) / len(report.clip_seconds)
        console.print(f"{mean:.2f} s per clip on {pipe.device} ({str(pipe.dtype).removeprefix('torch.')})")
    console.print(f"outputs: {out}")
