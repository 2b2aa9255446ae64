"""`uniform encode`: clips and captions -> WebDataset shards of Open-Sora VAE, AudioLDM VAE and T5 latents."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uniform_cli.atomic import Busy
from uniform_cli.cli import USAGE, fail, finish_stage


def main(
    manifest: Path = typer.Argument(..., help="Manifest CSV (or a folder of media files) the clips were made from."),
    root: Optional[Path] = typer.Option(None, "--root", help="Data root (default data/<manifest name>/)."),
    recipe: Optional[Path] = typer.Option(
        None, "--recipe", help="Take the clip settings ([data]) and codecs ([codec]) from this recipe."
    ),
    video_vae: Optional[str] = typer.Option(None, "--video-vae", help="Open-Sora VAE v1.2: hub id (in the local HF cache) or folder, or 'pixel' (weight-free)."),
    audio_vae: Optional[str] = typer.Option(None, "--audio-vae", help="AudioLDM checkpoint with vae/ and vocoder/: hub id or folder, or 'mel' (weight-free)."),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="Text encoder with its tokenizer: hub id or folder."),
    text_embeddings: bool = typer.Option(
        True, "--text-embeddings/--no-text-embeddings", help="Store caption embeddings (valid tokens only) in the shards."
    ),
    text_max_length: int = typer.Option(300, "--text-max-length", help="Longest caption in tokens."),
    samples_per_shard: int = typer.Option(1000, "--samples-per-shard", help="Clips per shard file."),
    batch_size: int = typer.Option(8, "--batch-size", help="Clips per codec call."),
    device: str = typer.Option("auto", "--device", help="torch device (auto: cuda when available)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | bf16 | fp16 | fp32 (auto: bf16 on GPU, fp32 on CPU)."),
    workers: int = typer.Option(4, "--workers", help="Threads decoding clips ahead of the codecs."),
    video_frames_per_call: Optional[int] = typer.Option(
        None, "--video-frames-per-call", help="Frames per spatial VAE call (default: the checkpoint's, 4)."
    ),
    part: Optional[str] = typer.Option(
        None, "--part", help="I/N: encode only this part of the work (or RANK/WORLD_SIZE)."
    ),
    allow_missing_captions: bool = typer.Option(
        False, "--allow-missing-captions", help="Encode clips without a caption with empty text (else a failure)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Encode at most this many clips in this run."),
    max_failures: float = typer.Option(0.5, "--max-failures", help="Stop when this share of items failed."),
    max_consecutive_failures: int = typer.Option(100, "--max-consecutive-failures", help="Stop after this many in a row."),
) -> None:
    """Encode clips into ROOT/shards/{split}-{00000}.tar (+ .stats.json, index.json); reruns resume.

    Each sample holds video.npy [4,20,32,32] and audio.npy [8,100,16] (fp16), the caption (txt), its
    json (codecs, shapes, source) and, with --text-embeddings, text.npy. Status per clip: ROOT/encode.csv.

    \b
    Example: uniform encode manifests/vggsound.csv --video-vae models/OpenSora-VAE-v1.2 --batch-size 16
    """
    from uniform_cli.config import CodecConfig, ConfigError, DataConfig, load_recipe, with_codec_overrides
    from uniform_cli.latents.encode import EncodeOptions, encode_dataset
    from uniform_cli.latents.shards import ShardFormatError
    from uniform_cli.prep.manifest import ManifestError, default_root, read_items
    from uniform_cli.pretrained import PretrainedError
    from uniform_cli.stage import FailureGuard, TooManyFailures, parse_part

    try:
        codec, data = CodecConfig(), DataConfig()
        if recipe is not None:
            loaded = load_recipe(recipe)
            codec, data = loaded.codec, loaded.data
        codec = with_codec_overrides(codec, video_vae, audio_vae, text_encoder)
        options = EncodeOptions(
            text_embeddings=text_embeddings,
            text_max_length=text_max_length,
            samples_per_shard=samples_per_shard,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            workers=workers,
            video_frames_per_call=video_frames_per_call,
            allow_missing_captions=allow_missing_captions,
            limit=limit,
            part=parse_part(part),
            guard=FailureGuard(max_rate=max_failures, max_consecutive=max_consecutive_failures),
        )
        result = encode_dataset(read_items(manifest), root or default_root(manifest), codec, data, options)
    except (Busy, PretrainedError, ShardFormatError, TooManyFailures, OSError) as e:
        fail(e)
    except (ConfigError, ManifestError, ValueError) as e:
        fail(e, USAGE)
    finish_stage(result)
