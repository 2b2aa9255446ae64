"""Prepared clips read back for `encode`: decoded in threads ahead of the codecs and checked against the clip
contract (`[data]`), so a clip of the wrong size, rate or length is a recorded failure, not a bad latent.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from uniform_cli.config import ClipSpec
from uniform_cli.media.io import MediaError, read_audio, read_video
from uniform_cli.stage import StageError


@dataclass
class Job:
    """One clip to encode."""

    key: str
    split: str
    label: str
    video_path: Path
    audio_path: Path
    caption: str
    caption_source: dict[str, str]
    clip_facts: dict[str, str] = field(default_factory=dict)
    """What clips.csv measured about the source (padding, silence, source fps and size)."""


@dataclass
class Clip:
    """A decoded clip that satisfies the clip contract."""

    job: Job
    frames: np.ndarray  # F H W 3 uint8
    wave: np.ndarray  # S float32
    fps: float


def read_clip(job: Job, spec: ClipSpec) -> Clip:
    """Decode a clip and check it against the clip contract; StageError('corrupt' | 'bad_clip') otherwise."""
    for path in (job.video_path, job.audio_path):
        if not path.is_file():
            raise StageError("missing_clip", f"{path} does not exist; rerun `uniform clip`")
    try:
        frames, fps = read_video(job.video_path)
        wave, rate = read_audio(job.audio_path)
    except MediaError as e:
        raise StageError("corrupt", str(e)) from None
    want = (spec.frames, spec.size, spec.size, 3)
    problems = []
    if frames.shape != want:
        problems.append(f"video is {'x'.join(map(str, frames.shape))}, expected {'x'.join(map(str, want))}")
    if abs(fps - spec.fps) > 0.01:
        problems.append(f"video runs at {fps:g} fps, expected {spec.fps}")
    if rate != spec.sample_rate or wave.shape != (spec.samples,):
        problems.append(f"audio is {wave.shape[0]} samples at {rate} Hz, expected {spec.samples} at {spec.sample_rate} Hz")
    if problems:
        raise StageError("bad_clip", f"{job.key}: " + "; ".join(problems) + " (rerun `uniform clip` for this key)")
    return Clip(job, frames, wave, fps)


def read_ahead(jobs: Iterable[Job], read: Callable[[Job], Clip], workers: int, window: int) -> Iterator[tuple[Job, Clip | StageError]]:
    """Decode clips in `workers` threads, at most `window` ahead; yield them in order (failures as StageError)."""

    def result(job: Job, fut: Future) -> tuple[Job, Clip | StageError]:
        try:
            return job, fut.result()
        except StageError as e:
            return job, e
        except Exception as e:  # an unexpected decoder failure is still one bad item
            return job, StageError("error", f"{type(e).__name__}: {e}")

    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque[tuple[Job, Future]] = deque()
        for job in jobs:
            pending.append((job, pool.submit(read, job)))
            if len(pending) >= window:
                yield result(*pending.popleft())
        while pending:
            yield result(*pending.popleft())
