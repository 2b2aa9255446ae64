"""`uniform caption`: one caption per clip, from PLLaVA, the manifest labels, or a transformers video model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uniform_cli.cli import USAGE, fail, finish_stage


def main(
    manifest: Path = typer.Argument(..., help="Manifest CSV (or a folder of media files) the clips were made from."),
    root: Optional[Path] = typer.Option(None, "--root", help="Data root (default data/<manifest name>/)."),
    captioner: str = typer.Option("pllava", "--captioner", help="pllava | labels | hf."),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="Hub id (must be in the local HF cache) or folder. Default ermu2001/pllava-7b for pllava; "
        "needed for hf (e.g. llava-hf/LLaVA-NeXT-Video-7B-hf).",
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Clips per generation batch."),
    part: Optional[str] = typer.Option(
        None, "--part", help="I/N: caption only this part of the work (or RANK/WORLD_SIZE)."
    ),
    num_frames: int = typer.Option(4, "--num-frames", help="Frames sampled at segment centres of each clip."),
    pooling: str = typer.Option("4,12,12", "--pooling", help="PLLaVA pooling shape frames,h,w."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest caption in tokens."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Question (default Open-Sora's)."),
    system: Optional[str] = typer.Option(
        None, "--system", help="System text before the question (default Open-Sora's)."
    ),
    template: Optional[str] = typer.Option(None, "--template", help='labels: e.g. "the sound of {label}".'),
    lora_alpha: float = typer.Option(4.0, "--lora-alpha", help="pllava: LoRA alpha used in the merge (scale alpha/r)."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="pllava: LoRA rank (default: as stored, 128)."),
    hf_input: str = typer.Option("auto", "--hf-input", help="hf: video | frames (as images) | auto."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device; default cuda when available."),
    redo_degenerate: bool = typer.Option(False, "--redo-degenerate", help="Caption again keys flagged degenerate."),
    max_failures: float = typer.Option(0.5, "--max-failures", help="Stop when this share of items failed."),
    max_consecutive_failures: int = typer.Option(
        100, "--max-consecutive-failures", help="Stop after this many failures in a row."
    ),
) -> None:
    """Caption clips into ROOT/captions.csv (key, text, captioner, model, status, error); reruns resume.

    \b
    Example: uniform caption manifests/vggsound.csv --model models/pllava-7b --batch-size 16
    Example: uniform caption manifests/landscape.csv --captioner labels --template "the sound of {label}"
    """
    from uniform_cli.prep.caption import run_caption
    from uniform_cli.prep.captioners import CaptionerConfig
    from uniform_cli.prep.captioners.contract import OPEN_SORA_QUESTION, OPEN_SORA_SYSTEM, CaptionError
    from uniform_cli.prep.manifest import ManifestError, default_root
    from uniform_cli.stage import FailureGuard, TooManyFailures, parse_part

    try:
        config = CaptionerConfig(
            name=captioner,
            model=model,
            template=template,
            num_frames=num_frames,
            pooling=_parse_pooling(pooling),
            max_new_tokens=max_new_tokens,
            question=OPEN_SORA_QUESTION if prompt is None else prompt,
            system=OPEN_SORA_SYSTEM if system is None else system,
            lora_alpha=lora_alpha,
            lora_r=lora_r,
            hf_input=hf_input,
            device=device,
        )
        result = run_caption(
            manifest,
            root or default_root(manifest),
            config,
            batch_size=batch_size,
            part=parse_part(part),
            guard=FailureGuard(max_rate=max_failures, max_consecutive=max_consecutive_failures),
            redo_degenerate=redo_degenerate,
        )
    except (CaptionError, TooManyFailures, OSError) as e:
        fail(e)
    except (ManifestError, ValueError) as e:
        fail(e, USAGE)
    finish_stage(result)


def _parse_pooling(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"--pooling must be three positive integers frames,h,w (e.g. 4,12,12), not {text!r}")
    return parts  # type: ignore[return-value]
