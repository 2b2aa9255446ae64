"""Jobs of any length: what is given and what is generated over an output's whole timeline, and the windows
of the model's clip length that generate it.

One latent frame is 0.2 s of picture and sound (`diffusion.tasks`), so every task is a mask over time:

| task   | given                                         | output length (default)      |
|--------|-----------------------------------------------|------------------------------|
| t2av   | nothing                                       | the recipe's clip length     |
| i2av   | the first video frame (`image`)               | the recipe's clip length     |
| v2a    | the video, all of it                          | the video's length           |
| a2v    | the audio, all of it                          | the audio's length           |
| extend | an audible video's picture and sound          | `seconds` (required, longer) |
| retake | an audible video except `span` in `modality`  | the video's length           |

An output longer than the model's window is made window by window, each window starting on a whole second:
the next window starts `overlap` seconds before the first frame still to generate, so it is conditioned on
what is already there (both modalities) and on the given modality over the whole window. Decoded media are
written only where the job generates: given frames and samples stay the given ones exactly. A window's sound
is first brought to the level of the sound already there (`level_match`). Where new media meet media made by
an earlier window, the new window also redoes the last half of the overlap and fades in over `CROSSFADE`
seconds before it; where they meet the original media a retake replaces, they fade from and back to it inside
the span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from uniform_cli.config import ClipSpec

TASKS = ("t2av", "a2v", "v2a", "extend", "retake", "i2av")
MODALITIES = ("audio", "video", "both")
CROSSFADE = 0.1
"""Seconds over which new media are blended into their neighbours."""


class JobError(ValueError):
    """A job that cannot be generated as asked; the message says what to change."""


@dataclass
class Job:
    """One output. Media are at the pipeline's clip format (`prepare_media(path, spec)` with any seconds)."""

    text: str = ""
    task: str = "t2av"
    video: np.ndarray | None = None
    """uint8 `F H W 3`: the given video (v2a), or the audible video's picture (extend, retake)."""
    audio: np.ndarray | None = None
    """float32 `S`: the given audio (a2v), or the audible video's sound (extend, retake)."""
    image: np.ndarray | None = None
    """uint8 `H W 3`: the first frame (i2av)."""
    seconds: float | None = None
    """Output length; None: the task's default (see the module docstring)."""
    span: tuple[float, float] | None = None
    """Seconds `(start, end)` to regenerate (retake)."""
    modality: str = "both"
    """What a retake regenerates: "audio", "video" or "both"."""


def check_job(task: str, spec: ClipSpec, *, seconds: float | None = None, video_seconds: float | None = None,
              audio_seconds: float | None = None, has_image: bool = False, span: tuple[float, float] | None = None,
              modality: str = "both") -> tuple[float, list[str]]:
    """The output length of a job and the problems that keep it from running (empty when it can run).

    Media lengths are in seconds (None: not given). Used on the whole CSV before any work, and by the pipeline.
    """
    problems: list[str] = []
    if task not in TASKS:
        return 0.0, [f"unknown task {task!r}; choose one of {', '.join(TASKS)}"]
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        problems.append(f"seconds must be a positive number, not {seconds}")
        seconds = None
    needs = {"a2v": "audio", "v2a": "video", "extend": "video", "retake": "video"}.get(task)
    if needs == "audio" and audio_seconds is None:
        problems.append("a2v needs an audio (CSV column 'audio')")
    if needs == "video" and video_seconds is None:
        problems.append(f"{task} needs a video (CSV column 'video')")
    if task in ("extend", "retake") and video_seconds is not None and audio_seconds is None:
        problems.append(f"{task} needs a video with sound; the video has no audio stream")
    if task == "i2av" and not has_image:
        problems.append("i2av needs an image (CSV column 'image')")
    if task == "retake" and modality not in MODALITIES:
        problems.append(f"modality must be one of {', '.join(MODALITIES)}, not {modality!r}")
    if problems:
        return 0.0, problems
    source = {"a2v": audio_seconds, "v2a": video_seconds}.get(task)
    if task in ("extend", "retake"):
        source = min(video_seconds, audio_seconds)
    slack = 1.0 / spec.fps  # container durations are rounded
    if task in ("t2av", "i2av"):
        length = seconds or spec.seconds
    elif task == "extend":
        if seconds is None:
            return 0.0, ["extend needs the output length (CSV column 'seconds')"]
        if seconds <= source + slack:
            return 0.0, [f"seconds {seconds:g} is not longer than the video ({source:.2f} s); extend makes more"]
        length = seconds
    else:
        length = seconds or source
        if length > source + slack:
            problems.append(f"seconds {length:g} is longer than the given media ({source:.2f} s)")
    if task == "retake":
        if span is None:
            problems.append("retake needs a span START-END in seconds (CSV column 'span')")
        elif not 0 <= span[0] < span[1] <= length + slack:
            problems.append(f"span {span[0]:g}-{span[1]:g} is not inside the output (0-{length:.2f} s)")
    if length > spec.seconds and not windowed(spec):
        problems.append(f"outputs longer than {spec.seconds:g} s need a clip format in whole seconds "
                        f"(this checkpoint's is {spec.tag})")
    return float(length), problems


def windowed(spec: ClipSpec) -> bool:
    """Whether windows can start on any whole second: whole-second clips, whole fps and sample rate."""
    return float(spec.seconds).is_integer() and float(spec.fps).is_integer() and float(spec.sample_rate).is_integer()


def parse_span(text: str) -> tuple[float, float]:
    """`START-END` in seconds, e.g. `2.5-3.5`."""
    try:
        start, end = (float(x) for x in text.split("-"))
    except ValueError:
        raise ValueError(f"span {text!r} must look like START-END in seconds, e.g. 2-3.5") from None
    return start, end


@dataclass
class Timeline:
    """A job laid out over whole seconds: media buffers at the clip format and per-latent-frame masks."""

    seconds: float
    """Output length."""
    whole: int
    """Seconds the buffers cover: the output rounded up to a whole second, at least one window."""
    frames: np.ndarray
    """uint8 `whole*fps H W 3`: given media, then what the windows made."""
    wave: np.ndarray
    """float32 `whole*sample_rate`."""
    given_frames: np.ndarray
    """bool per frame: given media, never written."""
    given_samples: np.ndarray
    source_frames: np.ndarray | None
    """The original media a retake replaces (crossfaded from); None otherwise."""
    source_wave: np.ndarray | None
    generate_video: np.ndarray
    """bool per latent frame: to be generated."""
    generate_audio: np.ndarray
    windows: list[int] = field(default_factory=list)
    """Start seconds of the windows run so far."""
    done_video: np.ndarray = field(init=False)
    """bool per latent frame: generated by a window so far."""
    done_audio: np.ndarray = field(init=False)
    filled_frames: np.ndarray = field(init=False)
    """bool per frame: given, or written by a window."""
    filled_samples: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.done_video = np.zeros_like(self.generate_video)
        self.done_audio = np.zeros_like(self.generate_audio)
        self.filled_frames = self.given_frames.copy()
        self.filled_samples = self.given_samples.copy()

    @property
    def pending(self) -> np.ndarray:
        """bool per latent frame: some modality still to generate."""
        return (self.generate_video & ~self.done_video) | (self.generate_audio & ~self.done_audio)


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """The first `n` entries of `x`, padded with its last entry (a rounding shortfall of a frame or sample)."""
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])


def plan_timeline(job: Job, spec: ClipSpec, latent_frames: int) -> Timeline:
    """Lay `job` out over whole seconds; `latent_frames` is the model's latent frames per window."""
    seconds_of = {"video": None if job.video is None else len(job.video) / spec.fps,
                  "audio": None if job.audio is None else len(job.audio) / spec.sample_rate}
    length, problems = check_job(job.task, spec, seconds=job.seconds, video_seconds=seconds_of["video"],
                                 audio_seconds=seconds_of["audio"], has_image=job.image is not None,
                                 span=job.span, modality=job.modality)
    if problems:
        raise JobError("; ".join(problems))
    window = spec.seconds
    whole = max(math.ceil(length - 1e-9), math.ceil(window)) if windowed(spec) else window
    fps, rate = int(spec.fps), int(spec.sample_rate)
    per_second = latent_frames / window
    n_frames, n_samples, n_latent = round(whole * fps), round(whole * rate), round(whole * per_second)
    frames = np.zeros((n_frames, spec.size, spec.size, 3), np.uint8)
    wave = np.zeros(n_samples, np.float32)
    given_frames = np.zeros(n_frames, bool)
    given_samples = np.zeros(n_samples, bool)
    # A modality given to the end of the output is given to the end of the buffers too (the last frame
    # repeated, silence), so the part past the output that windows round up to is not generated.
    if job.task in ("v2a", "retake"):
        frames[:] = _fit(job.video, n_frames) if len(job.video) else 0
        given_frames[:] = True
    if job.task in ("a2v", "retake"):
        wave[: min(n_samples, len(job.audio))] = job.audio[:n_samples]
        given_samples[:] = True
    if job.task == "extend":
        used = min(n_frames, len(job.video))
        frames[:used] = job.video[:used]
        given_frames[:used] = True
        used = min(n_samples, len(job.audio))
        wave[:used] = job.audio[:used]
        given_samples[:used] = True
    if job.task == "i2av":
        frames[: max(1, round(fps / per_second))] = job.image  # the still fills its latent frame for encoding
        given_frames[0] = True
    source_frames = source_wave = None
    if job.task == "retake":
        source_frames, source_wave = frames.copy(), wave.copy()
        start, end = job.span
        if job.modality in ("video", "both"):
            given_frames[round(start * fps) : round(end * fps)] = False
        if job.modality in ("audio", "both"):
            given_samples[round(start * rate) : round(end * rate)] = False
    # A latent frame is given only where all of its media are given.
    video_bounds, audio_bounds = latent_bounds(n_latent, per_second, fps), latent_bounds(n_latent, per_second, rate)
    generate_video = np.array([not given_frames[a:b].all() for a, b in zip(video_bounds, video_bounds[1:])])
    generate_audio = np.array([not given_samples[a:b].all() for a, b in zip(audio_bounds, audio_bounds[1:])])
    if job.task == "i2av":
        generate_video[0] = False
    return Timeline(length, int(whole), frames, wave, given_frames, given_samples, source_frames, source_wave,
                    generate_video, generate_audio)


def latent_bounds(latent_frames: int, per_second: float, rate: float) -> np.ndarray:
    """Where each latent frame's media start, and where the last ends: `latent_frames + 1` indices into frames
    (at `rate` fps) or samples (at `rate` Hz)."""
    return np.round(np.arange(latent_frames + 1) * rate / per_second).astype(int)


def next_window(timeline: Timeline, window: int, overlap: int, per_second: int) -> int | None:
    """Start second of the next window (None when nothing is left to generate): `overlap` seconds before the
    first latent frame still to generate, within the timeline."""
    pending = np.flatnonzero(timeline.pending)
    if not len(pending):
        return None
    first = int(pending[0]) // per_second
    return max(0, min(first - overlap if first else 0, timeline.whole - window))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """`[start, end)` of each run of True in a 1-D bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def level_match(known: np.ndarray, decoded: np.ndarray, where: np.ndarray, least: int = 4000) -> float:
    """The gain that brings a window's decoded sound to the level of the sound already there, measured where
    both exist (`where`, at least `least` samples; else 1). Audio codecs normalise each clip they encode
    (AudioLDM's recipe scales a clip to a fixed peak), so a window whose given part is quieter or louder than
    a whole clip comes back at another level; without this a seam would be a step in loudness."""
    if where.sum() < least:
        return 1.0
    power = float(np.mean(decoded[where].astype(np.float64) ** 2))
    target = float(np.mean(known[where].astype(np.float64) ** 2))
    if power <= 1e-12:
        return 1.0
    return float(np.clip(np.sqrt(target / power), 0.01, 100.0))


def _blend(a: np.ndarray, b: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`a` fading into `b` along the first axis. Frames fade linearly; sound with equal power (cos/sin), since
    two windows' sounds need not be in phase and a linear fade of unrelated sounds dips in the middle."""
    x = (np.arange(1, len(a) + 1) / (len(a) + 1)).reshape((-1,) + (1,) * (a.ndim - 1))
    if np.issubdtype(dtype, np.integer):
        return np.rint(a * (1 - x) + b * x).astype(dtype)
    return (a * np.cos(x * np.pi / 2) + b * np.sin(x * np.pi / 2)).astype(dtype)


def write_back(buffer: np.ndarray, decoded: np.ndarray, offset: int, write: np.ndarray, given: np.ndarray,
               filled: np.ndarray, source: np.ndarray | None, fade: int, reach: int) -> None:
    """Write `decoded` (the media of a window that starts at index `offset` of `buffer`) where `write`
    (window-long) is True. Given entries are never written.

    Where a run's left neighbour was made by an earlier window (`filled`, not `given`), the new media also
    replace its last `reach` entries (the end of a decoded window is its least reliable part) and are
    crossfaded over the `fade` entries before those. Else, for a retake (`source`, the original media), they
    fade in from the original after the edge, and at a right edge that meets the original they fade back."""
    for a, b in _runs(write):
        lo, hi = offset + a, offset + b
        buffer[lo:hi] = decoded[a:b]
        back = min(reach + fade, a)
        if back and filled[lo - back : lo].all() and not given[lo - back : lo].any():
            d = min(fade, back)
            start = lo - back + d
            buffer[start:lo] = decoded[a - (lo - start) : a]
            buffer[start - d : start] = _blend(buffer[start - d : start], decoded[a - back : a - back + d],
                                               buffer.dtype)
        elif source is not None and lo > 0 and given[lo - 1]:
            d = min(fade, b - a)
            buffer[lo : lo + d] = _blend(source[lo : lo + d], decoded[a : a + d], buffer.dtype)
        if source is not None and hi < len(buffer) and given[hi]:
            d = min(fade, b - a)
            buffer[hi - d : hi] = _blend(decoded[b - d : b], source[hi - d : hi], buffer.dtype)
