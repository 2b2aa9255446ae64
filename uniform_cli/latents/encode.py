"""The `encode` stage: prepared clips and captions -> WebDataset shards of latents (see latents/shards.py).

Inputs under the data root: `clips/{key}.mp4|.wav` with `clips.csv` (rows with status ok; their label and
split), and `captions.csv` (key, text, ...). Output: `shards/` and the status table `encode.csv`
(`encode.part-I-of-N.csv` for `--part I/N`).

What is done is what is in a complete shard (from the shards' stats, whichever process wrote them); a key is
recorded `ok` in the status table only when its shard is complete, so a run killed mid-shard loses that
shard's samples and the rerun encodes them again into a new shard. Failures (a corrupt or malformed clip, a
missing caption, a codec error, a non-finite latent) are recorded with a status word and retried by a rerun.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from uniform_cli.atomic import exclusive, sweep_temp
from uniform_cli.config import CodecConfig, DataConfig
from uniform_cli.latents.clip_reader import Clip, Job, read_ahead, read_clip
from uniform_cli.latents.shard_writer import LatentSample, SplitShardWriter, discard_partial, shard_prefix
from uniform_cli.latents.shards import (
    SHARDS_DIR,
    ShardStats,
    check_compatible,
    clip_settings,
    read_stats,
    recover_stats,
    set_aside_broken,
    stable_id,
    write_index,
)
from uniform_cli.prep.manifest import ManifestItem
from uniform_cli.stage import (
    OK,
    FailureGuard,
    ItemResult,
    Part,
    StageError,
    StageResult,
    StatusTable,
    common_errors,
    drop_done,
    read_status,
    timer,
)

DEFAULT_SPLIT = "train"
STATUS_FIELDS = ["split", "shard"]
CLIP_FACTS = ("src_fps", "src_width", "src_height", "src_duration", "padded", "silent")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class EncodeOptions:
    """How to run the stage (the codecs come from CodecConfig, the clip contract from DataConfig)."""

    text_embeddings: bool = True
    """Store the text encoder's embeddings of each caption (valid tokens only) as `text.npy`."""
    text_max_length: int = 300
    """Longest caption in tokens (T5 in the paper: 300)."""
    samples_per_shard: int = 1000
    batch_size: int = 8
    """Clips per codec call."""
    device: str = "auto"
    """torch device; "auto" = cuda when available."""
    dtype: str = "auto"
    """Codec weights: bf16 | fp16 | fp32; "auto" = bf16 on GPU, fp32 on CPU."""
    workers: int = 4
    """Threads that decode clips ahead of the codecs."""
    video_frames_per_call: int | None = None
    """Frames per spatial VAE call (None: the checkpoint's; more is faster on a GPU while memory lasts)."""
    allow_missing_captions: bool = False
    """Encode clips without a caption with empty text instead of recording a failure."""
    limit: int | None = None
    """Encode at most this many clips in this run (for trying things out)."""
    part: Part = field(default_factory=Part)
    """This process's part of the work (`--part I/N`)."""
    guard: FailureGuard = field(default_factory=FailureGuard)


# --------------------------------------------------------------------------------------------- codecs


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """"auto" picks cuda when available; dtype "auto" is bf16 on GPU and fp32 on CPU."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be auto, {', '.join(DTYPES)}; not {dtype!r}")
    return dev, DTYPES[dtype]


def codec_info(codec: CodecConfig, video: Any, audio: Any, text: Any, dtype: torch.dtype) -> dict[str, Any]:
    """What goes into every sample's json and the stats: which codecs made the latents, and versions."""
    import diffusers
    import transformers

    from uniform_cli import __version__

    return {
        "video": {"codec": codec.video, "id": stable_id(codec.video_vae), "class": type(video).__name__},
        "audio": {
            "codec": codec.audio,
            "id": stable_id(codec.audio_vae),
            "class": type(audio).__name__,
            "scaling_factor": getattr(audio, "scaling_factor", None),
        },
        "text": None
        if text is None
        else {
            "id": stable_id(codec.text_encoder),
            "class": type(text.model).__name__,
            "max_length": text.max_length,
            "dim": text.dim,
        },
        "dtype": str(dtype).removeprefix("torch."),
        "versions": {
            "uniform": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
    }


class BatchEncoder:
    """Codecs on one device: a batch of clips -> per-clip latents (and text embeddings), or per-clip errors."""

    def __init__(self, video: Any, audio: Any, text: Any, device: torch.device) -> None:
        self.video = video
        self.audio = audio
        self.text = text
        self.device = device

    def encode(self, clips: list[Clip]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """fp16 (video `C F H W`, audio `C T M`, text `L D` or None) per clip; raises on a codec failure."""
        frames = torch.from_numpy(np.stack([c.frames for c in clips])).to(self.device)  # B F H W 3 uint8
        wave = torch.from_numpy(np.stack([c.wave for c in clips])).to(self.device)  # B S
        video = self.video.encode(frames).float().cpu()  # B C F H W
        audio = self.audio.encode(wave).float().cpu()  # B C T M
        texts: list[np.ndarray | None] = [None] * len(clips)
        if self.text is not None:
            emb, mask = self.text([c.job.caption for c in clips])  # B L D, B L
            emb, mask = emb.float().cpu(), mask.cpu()
            texts = [emb[i][mask[i]].numpy().astype(np.float16) for i in range(len(clips))]
        return [
            (video[i].numpy().astype(np.float16), audio[i].numpy().astype(np.float16), texts[i])
            for i in range(len(clips))
        ]


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _check_finite(key: str, arrays: tuple[np.ndarray | None, ...]) -> None:
    for name, a in zip(("video", "audio", "text"), arrays):
        if a is not None and not np.isfinite(a).all():
            raise StageError("nonfinite", f"{key}: the {name} latent has NaN or values beyond fp16 range")


# ----------------------------------------------------------------------------------------------- driver


def plan_encode(
    items: list[ManifestItem], root: Path, allow_missing_captions: bool
) -> tuple[list[Job], list[tuple[str, str, StageError]], list[str]]:
    """The clips of `items` to encode, the ones failing for want of a caption, and the keys without an ok clip.

    Returns (jobs, failures as (key, split, error), keys not clipped).
    """
    clips = read_status(root, "clips")
    captions = read_status(root, "captions")
    jobs, failures, not_clipped = [], [], []
    for item in items:
        row = clips.get(item.key)
        if row is None or row["status"] != OK:
            not_clipped.append(item.key)
            continue
        split = row.get("split") or item.split or DEFAULT_SPLIT
        cap = captions.get(item.key)
        if cap is not None and cap["status"] == OK:
            caption = cap.get("text", "")
            source = {"captioner": cap.get("captioner", ""), "model": cap.get("model", "")}
        elif allow_missing_captions:
            caption, source = "", {"captioner": "none", "model": ""}
        else:
            why = "no row in captions.csv" if cap is None else f"captions.csv says {cap['status']}: {cap.get('error', '')}"
            failures.append((item.key, split, StageError("no_caption", f"{item.key}: {why}; run `uniform caption` "
                                                          "or pass --allow-missing-captions")))
            continue
        jobs.append(
            Job(
                key=item.key,
                split=split,
                label=row.get("label") or item.label,
                video_path=root / (row.get("video") or f"clips/{item.key}.mp4"),
                audio_path=root / (row.get("audio") or f"clips/{item.key}.wav"),
                caption=caption,
                caption_source=source,
                clip_facts={k: row[k] for k in CLIP_FACTS if row.get(k)},
            )
        )
    return jobs, failures, not_clipped


def encode_dataset(
    items: list[ManifestItem],
    root: str | Path,
    codec: CodecConfig,
    data: DataConfig,
    options: EncodeOptions,
) -> StageResult:
    """Encode the clips of `items` that `options.part` owns into `root/shards/`; see the module docstring.

    Raises TooManyFailures past the failure caps, CodecError for missing weights, ShardFormatError when
    the folder already holds shards of other codecs or shapes, Busy when another run of the same `--part`
    is encoding into this root; the shards sealed so far stay complete either way.
    """
    elapsed = timer()
    root = Path(root)
    folder = root / SHARDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    part = options.part
    if options.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {options.batch_size}")
    # a second run of the same --part on this root would delete the first one's temp shards
    what = f"`uniform encode` with --part {part.index}/{part.count} on {root}"
    with exclusive(folder / f".encode{part.suffix}.lock", what):
        return _encode(items, root, folder, part, codec, data, options, elapsed)


def _encode(items, root: Path, folder: Path, part: Part, codec: CodecConfig, data: DataConfig,
            options: EncodeOptions, elapsed: Callable[[], float]) -> StageResult:
    """encode_dataset's work, with this part's lock held."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from uniform_cli.latents.codecs import build_audio_codec, build_video_codec

    sweep_temp(folder)  # stats and index temp files of killed runs (temp shards: discard_partial)
    recover_stats(folder)
    set_aside_broken(folder)
    stats = read_stats(folder)
    done = {k for s in stats for k in s.keys}
    table = StatusTable.for_part(root, "encode", part, STATUS_FIELDS)
    for s in stats:  # a run killed after a shard's stats but before its status rows
        for key in s.keys:
            if part.owns(key) and table.status(key) != OK:
                table.record(ItemResult(key, OK, fields={"split": s.split, "shard": s.file}))

    todo, skipped = drop_done(part.select(items), lambda item: item.key in done)
    jobs, caption_failures, not_clipped = plan_encode(todo, root, options.allow_missing_captions)
    for split in {j.split for j in jobs} | {split for _, split, _ in caption_failures}:
        discard_partial(folder, shard_prefix(split, part))
    if options.limit is not None:
        jobs = jobs[: options.limit]

    counts: Counter = Counter()
    writers: dict[str, SplitShardWriter] = {}
    guard = options.guard
    early_failures: dict[str, dict[str, str]] = {}

    def fail(key: str, split: str, error: StageError) -> None:
        table.record(ItemResult(key, error.status, str(error), {"split": split}))
        if split in writers:
            writers[split].fail(key, error.status)
        else:  # noted in the split's first shard once it has one
            early_failures.setdefault(split, {})[key] = error.status
        counts[error.status] += 1
        guard.update(False)

    try:
        for key, split, error in caption_failures:
            fail(key, split, error)
        if jobs:
            device, dtype = resolve_device(options.device, options.dtype)
            video = build_video_codec(codec, device, dtype)
            if options.video_frames_per_call is not None:
                video.frames_per_call = options.video_frames_per_call
            audio = build_audio_codec(codec, device, dtype)
            text = None
            if options.text_embeddings and codec.text_encoder != "none":
                from uniform_cli.latents.text import TextEncoder

                text = TextEncoder.from_pretrained(codec.text_encoder, max_length=options.text_max_length, device=device, dtype=dtype)
            info = codec_info(codec, video, audio, text, dtype)
            info["clip"] = clip_settings(data)
            check_compatible(folder, info, None)
            encoder = BatchEncoder(video, audio, text, device)
            shapes: dict[str, Any] = {}

            def on_sealed(s: ShardStats) -> None:
                for key in s.keys:
                    table.record(ItemResult(key, OK, fields={"split": s.split, "shard": s.file}))
                write_index(folder)

            def writer(split: str) -> SplitShardWriter:
                if split not in writers:
                    writers[split] = SplitShardWriter(
                        folder, split, part, options.samples_per_shard, lambda: (info, shapes), on_sealed
                    )
                    writers[split].failed.update(early_failures.pop(split, {}))
                return writers[split]

            def write(clip: Clip, latents: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> None:
                job = clip.job
                if not shapes:  # the first clip fixes the shapes; they must match the shards already there
                    shapes.update(video=list(latents[0].shape), audio=list(latents[1].shape),
                                  text_dim=None if text is None else text.dim)
                    check_compatible(folder, info, shapes)
                if [list(latents[0].shape), list(latents[1].shape)] != [shapes["video"], shapes["audio"]]:
                    raise StageError("bad_shape", f"{job.key}: latents {latents[0].shape} / {latents[1].shape}, "
                                                  f"expected {shapes['video']} / {shapes['audio']}")
                _check_finite(job.key, latents)
                meta = {
                    "key": job.key,
                    "label": job.label,
                    "split": job.split,
                    "caption_source": job.caption_source,
                    "codecs": info,
                    "shapes": shapes,
                    "source": {
                        "video": _relative(job.video_path, root),
                        "audio": _relative(job.audio_path, root),
                        "frames": int(clip.frames.shape[0]),
                        "fps": clip.fps,
                        "height": int(clip.frames.shape[1]),
                        "width": int(clip.frames.shape[2]),
                        "samples": int(clip.wave.shape[0]),
                        "sample_rate": data.sample_rate,
                        **job.clip_facts,
                    },
                }
                writer(job.split).write(LatentSample(job.key, latents[0], latents[1], job.caption, meta, latents[2]))
                counts[OK] += 1
                guard.update(True)

            def encode_batch(batch: list[Clip]) -> None:
                try:
                    results = encoder.encode(batch)
                except Exception as e:
                    if len(batch) == 1:
                        fail(batch[0].job.key, batch[0].job.split, StageError("encode_error", f"{type(e).__name__}: {e}"))
                        return
                    for clip in batch:  # find the clip that breaks the batch; the others still go in
                        encode_batch([clip])
                    return
                for clip, latents in zip(batch, results):
                    try:
                        write(clip, latents)
                    except StageError as e:
                        fail(clip.job.key, clip.job.split, e)

            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
            with Progress(*columns, transient=True) as progress:
                bar = progress.add_task("encoding", total=len(jobs))
                batch: list[Clip] = []
                window = 2 * options.batch_size + options.workers
                for job, clip in read_ahead(jobs, lambda j: read_clip(j, data.clip), options.workers, window):
                    if isinstance(clip, StageError):
                        fail(job.key, job.split, clip)
                        progress.advance(bar)
                        continue
                    batch.append(clip)
                    if len(batch) == options.batch_size:
                        encode_batch(batch)
                        progress.advance(bar, len(batch))
                        batch = []
                if batch:
                    encode_batch(batch)
                    progress.advance(bar, len(batch))
    finally:
        # the samples written so far are good: seal them as a (smaller) complete shard
        for w in writers.values():
            w.close()
        table.close()
        if read_stats(folder):
            write_index(folder)
    return StageResult("encode", counts, skipped, elapsed(), table.path, folder, errors=common_errors(table),
                       left_out=not_clipped, needs="clip")
