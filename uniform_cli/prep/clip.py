"""`clip`: cut every item into the model's clip format (68 frames of 256 x 256 at 17 fps, 64,000 samples).

An item's source is the file `fetch` downloaded (`ROOT/raw/{key}.mp4`, whose t = 0 sits at the recorded
`offset` of the source), or the manifest's local path, or a file of a FOLDER. Decoding is
`uniform_cli.media.prepare.prepare_media`; this module plans the work, writes `ROOT/clips/{key}.mp4|.wav`
atomically and records `ROOT/clips.csv`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from uniform_cli.atomic import sweep_temp
from uniform_cli.config import ClipSpec
from uniform_cli.media.prepare import prepare_media
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
    run_stage,
    timer,
)

CLIP_FIELDS = [
    "video", "audio", "label", "split",
    "src_fps", "src_width", "src_height", "src_duration", "rotation",
    "source", "start", "padded", "silent", "spec", "seconds",
]  # fmt: skip


@dataclass(frozen=True)
class ClipJob:
    """One item to clip: where its media is and where in that file the clip starts."""

    key: str
    source: str
    start: float
    """Seconds into `source` (on its own timeline) where the clip starts."""
    label: str = ""
    split: str = ""


@dataclass(frozen=True)
class ClipOptions:
    """How every item is clipped."""

    root: str
    spec: ClipSpec = ClipSpec()
    allow_short: bool = False
    allow_silence: bool = False
    timeout: float | None = 120.0
    threads: int = 1
    """Decoder threads per worker (1 when there is one worker process per core)."""
    crf: int = 18
    """H.264 quality (`write_mp4`): 0 is lossless, and its clips repeat exactly on every rerun."""

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise ValueError(f"--crf must lie in 0..51, not {self.crf}")


def clip_paths(root: str | Path, key: str) -> tuple[Path, Path]:
    """ROOT/clips/{key}.mp4 and .wav, refusing any key that would land outside ROOT/clips."""
    base = (Path(root) / "clips").resolve()
    video, audio = (base / f"{key}.mp4").resolve(), (base / f"{key}.wav").resolve()
    if video.parent != base or "/" in key or "." in key or key.startswith("."):
        raise StageError("bad_key", f"key {key!r} would write outside {base}")
    return video, audio


def plan_clips(
    items: list[ManifestItem], root: str | Path, fetched: dict[str, dict[str, str]]
) -> tuple[list[ClipJob], list[str]]:
    """Jobs for items whose media is at hand, and the keys of remote items not fetched (yet)."""
    root = Path(root)
    jobs, unfetched = [], []
    for item in items:
        if not item.is_remote:
            jobs.append(ClipJob(item.key, item.url, item.start, item.label, item.split))
            continue
        row = fetched.get(item.key)
        if not row or row["status"] != OK or not (root / row["path"]).is_file():
            unfetched.append(item.key)
            continue
        offset = float(row.get("offset") or 0.0)
        jobs.append(ClipJob(item.key, str(root / row["path"]), item.start - offset, item.label, item.split))
    return jobs, unfetched


def clipped_with(row: dict[str, str] | None, root: str | Path, spec: ClipSpec) -> bool:
    """Whether a clips.csv row says the item was clipped ok in `spec`, and its two files are still there."""
    if not row or row["status"] != OK or row.get("spec") != spec.tag:
        return False
    return (Path(root) / row["video"]).is_file() and (Path(root) / row["audio"]).is_file()


def clip_item(job: ClipJob, options: ClipOptions) -> ItemResult:
    """Decode, write the mp4 and wav, and return the row for clips.csv (a failure's status is its row's)."""
    from uniform_cli.media.io import write_mp4, write_wav

    t0 = time.perf_counter()
    spec = options.spec
    video_path, audio_path = clip_paths(options.root, job.key)
    known = {"label": job.label, "split": job.split, "source": job.source, "start": job.start, "spec": spec.tag}
    try:
        clip = prepare_media(
            job.source,
            spec,
            start=job.start,
            allow_short=options.allow_short,
            allow_silence=options.allow_silence,
            timeout=options.timeout,
            threads=options.threads,
        )
    except StageError as e:
        return ItemResult(job.key, e.status, str(e), fields=known)
    write_mp4(video_path, clip.video, spec.fps, crf=options.crf)
    write_wav(audio_path, clip.audio, spec.sample_rate)
    root = Path(options.root).resolve()
    info = clip.info
    fields = {
        "video": video_path.relative_to(root).as_posix(),
        "audio": audio_path.relative_to(root).as_posix(),
        **known,
        "src_fps": round(info.fps, 3),
        "src_width": info.width,
        "src_height": info.height,
        "src_duration": round(info.duration, 3),
        "rotation": info.rotation,
        "padded": ";".join(f"{where}={sec:g}" for where, sec in clip.padded.items()),
        "silent": int(clip.silent),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return ItemResult(job.key, OK, fields=fields)


def run_clip(
    items: list[ManifestItem],
    root: str | Path,
    options: ClipOptions,
    *,
    part: Part = Part(),
    workers: int = 1,
    guard: FailureGuard | None = None,
) -> StageResult:
    """Clip every item of `part` not clipped in `options.spec` yet; remote items that `fetch` has not downloaded
    are left out (`StageResult.left_out`)."""
    from functools import partial

    elapsed = timer()
    root = Path(root)
    jobs, unfetched = plan_clips(part.select(items), root, read_status(root, "fetch"))
    clipped = read_status(root, "clips")
    todo, skipped = drop_done(jobs, lambda job: clipped_with(clipped.get(job.key), root, options.spec))
    table = StatusTable.for_part(root, "clips", part, CLIP_FIELDS)
    sweep_temp(root / "clips")  # what a killed run left half-written
    work = partial(clip_item, options=options)
    counts = run_stage(todo, work, table, workers=workers, guard=guard, description="clip")
    return StageResult("clip", counts, skipped, elapsed(), table.path, root / "clips", errors=common_errors(table),
                       left_out=unfetched, needs="fetch")
