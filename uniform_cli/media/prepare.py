"""Turn any media file into the model's clip format: N frames at a fixed fps and size, mono audio at one rate.

This is the real-world decoding shared by `uniform clip` (training data) and `uniform generate` (given
media). It handles what uploads contain: variable frame rate (frames are picked by timestamp), rotation
metadata (display matrix), non-square pixels, 10-bit / yuv444 / full-range pixel formats, any channel
layout and sample rate, streams that start late or end early. Audio and video are cut from the same
instant of the source timeline, so they stay in sync.

It never pads or truncates silently: a problem raises `PrepareError` whose `status` is the word a status
table records (`too_short`, `late_audio`, `no_audio`, `no_video`, `decode_error`, `timeout`, `bad_audio`),
unless the caller allows padding or silence, in which case the padding is reported in `PreparedClip.padded`.
Each decoded frame that is kept is converted to the clip's size at once, so memory follows the clip.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uniform_cli.config import ClipSpec
from uniform_cli.stage import StageError

# Status words (the ones a status table records).
TOO_SHORT = "too_short"
LATE_AUDIO = "late_audio"
NO_AUDIO = "no_audio"
NO_VIDEO = "no_video"
DECODE_ERROR = "decode_error"
TIMEOUT = "timeout"
BAD_AUDIO = "bad_audio"

_TIME_EPS = 1e-3  # container timestamps are rounded to their time base; 1 ms absorbs that


class PrepareError(StageError):
    """A file that cannot become a clip; `status` says why (see the module docstring)."""


@dataclass
class SourceInfo:
    """Facts about the source file, as measured while decoding."""

    fps: float = 0.0
    """Average frame rate of the video stream (0 when unknown or no video)."""
    width: int = 0
    """Displayed width: after non-square pixels and rotation are applied."""
    height: int = 0
    duration: float = 0.0
    """Seconds, from the container (0 when unknown)."""
    rotation: int = 0
    """Degrees counter-clockwise the decoded picture is turned for display (0, 90, 180, 270)."""
    pix_fmt: str = ""
    audio_rate: int = 0
    audio_channels: int = 0


@dataclass
class PreparedClip:
    """The clip: `video` uint8 `F H W 3`, `audio` float32 `S` in [-1, 1] (None where not asked for)."""

    video: np.ndarray | None
    audio: np.ndarray | None
    info: SourceInfo
    padded: dict[str, float] = field(default_factory=dict)
    """Seconds of padding, by place (`video_start`, `video_end`, `audio_start`, `audio_end`), when allowed."""
    silent: bool = False
    """True when the source had no audio and silence was written (allow_silence)."""


class _Deadline:
    """A cooperative per-item time limit, checked inside the decode loops."""

    def __init__(self, seconds: float | None, path: Path):
        self.end = None if not seconds else time.monotonic() + seconds
        self.seconds = seconds
        self.path = path

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise PrepareError(TIMEOUT, f"{self.path.name}: took longer than {self.seconds:g} s (--timeout)")


def prepare_media(
    path: str | Path,
    spec: ClipSpec = ClipSpec(),
    *,
    start: float = 0.0,
    video: bool = True,
    audio: bool = True,
    allow_short: bool = False,
    allow_silence: bool = False,
    slack: float | None = None,
    timeout: float | None = None,
    threads: int = 0,
) -> PreparedClip:
    """Decode `spec.seconds` of `path` from `start` seconds (on the file's own timeline) into a clip.

    `video`/`audio` say which modalities to produce; a modality not asked for is neither decoded nor
    required. `slack` (default one frame, 1/fps) is how far a stream may start after `start` or end before
    the clip end and still count as present (the gap is held / filled with silence and reported in
    `padded`). `allow_short` pads anything larger (video by repeating the edge frame, audio with silence);
    `allow_silence` turns a missing audio track into silence. `timeout` is a per-call limit in seconds;
    `threads` is the decoder thread count (0 = automatic, 1 for one worker process per core).
    Raises PrepareError (with a status word) for every file that cannot become a clip.
    """
    import av

    path = Path(path)
    slack = 1.0 / spec.fps if slack is None else slack
    deadline = _Deadline(timeout, path)
    try:
        container = av.open(_local(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise PrepareError(DECODE_ERROR, f"{path.name}: cannot open: {e}") from None
    try:
        with container:
            info = _probe(container)
            origin = (container.start_time or 0) / 1_000_000  # the file's t = 0 on its own timeline
            t0 = origin + start
            padded: dict[str, float] = {}
            frames = wave = None
            silent = False
            if video:
                if not _video_stream(container):
                    raise PrepareError(NO_VIDEO, f"{path.name}: no video stream")
                frames = _read_frames(container, t0, spec, info, allow_short, slack, padded, deadline, threads)
            if audio:
                if not container.streams.audio:
                    if not allow_silence:
                        raise PrepareError(NO_AUDIO, f"{path.name}: no audio stream (--allow-silence writes silence)")
                    wave, silent = np.zeros(spec.samples, np.float32), True
                else:
                    try:
                        wave = _read_audio(container, t0, spec, allow_short, slack, padded, deadline)
                    except PrepareError as e:  # a declared stream without packets is no audio either
                        if e.status != NO_AUDIO or not allow_silence:
                            raise
                        wave, silent = np.zeros(spec.samples, np.float32), True
    except PrepareError as e:
        raise PrepareError(e.status, f"{path.name}: {e}" if not str(e).startswith(path.name) else str(e)) from None
    except (av.error.FFmpegError, ValueError, IndexError, UnicodeDecodeError) as e:
        raise PrepareError(DECODE_ERROR, f"{path.name}: cannot decode: {type(e).__name__}: {e}") from None
    return PreparedClip(frames, wave, info, padded, silent)


def probe(path: str | Path) -> SourceInfo:
    """Source facts without decoding (displayed size, fps, duration, rotation, audio format)."""
    import av

    try:
        with av.open(_local(path), metadata_errors="ignore") as container:
            return _probe(container)
    except av.error.FFmpegError as e:
        raise PrepareError(DECODE_ERROR, f"{Path(path).name}: cannot open: {e}") from None


def _local(path: str | Path) -> str:
    """`local_file(path)` with its MediaError as a PrepareError (`decode_error`)."""
    from uniform_cli.media.io import MediaError, local_file

    try:
        return local_file(path)
    except MediaError as e:
        raise PrepareError(DECODE_ERROR, str(e)) from None


# ------------------------------------------------------------------------------------------------ probing


def _video_stream(container):
    """The first real video stream (cover-art pictures attached to audio files do not count)."""
    for stream in container.streams.video:
        if not (stream.disposition & 1024):  # AV_DISPOSITION_ATTACHED_PIC
            return stream
    return None


def _rotation_of(stream) -> int:
    """Display-matrix rotation from the stream's side data, rounded to a multiple of 90 degrees."""
    for value in _side_data_rotations(stream):
        return int(round(value / 90.0)) * 90 % 360
    return 0


def _side_data_rotations(stream):
    side = getattr(stream, "side_data", None) or {}
    for key, value in dict(side).items():
        if "DISPLAYMATRIX" in str(key).upper() and isinstance(value, (int, float)):
            yield value


def _probe(container) -> SourceInfo:
    info = SourceInfo(duration=(container.duration or 0) / 1_000_000)
    stream = _video_stream(container)
    if stream is not None:
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        info.fps = float(rate) if rate else 0.0
        info.pix_fmt = ctx.pix_fmt or ""
        info.rotation = _rotation_of(stream)
        info.width, info.height = _display_size(ctx.width, ctx.height, _sar(stream), info.rotation)
    if container.streams.audio:
        actx = container.streams.audio[0].codec_context
        info.audio_rate = int(actx.sample_rate or 0)
        info.audio_channels = int(actx.channels or 0)
    return info


def _sar(stream) -> float:
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return float(sar) if sar and sar > 0 else 1.0


def _display_size(width: int, height: int, sar: float, rotation: int) -> tuple[int, int]:
    w, h = max(1, round(width * sar)), height
    return (h, w) if rotation in (90, 270) else (w, h)


def scaled_size(width: int, height: int, sar: float, rotation: int, size: int) -> tuple[int, int]:
    """Decoded-picture size (w, h) to scale to so that the displayed short side is `size`.

    The size is in the decoded (unrotated) orientation; non-square pixels are made square.
    """
    disp_w, disp_h = _display_size(width, height, sar, rotation)
    scale = size / min(disp_w, disp_h)
    out_w, out_h = max(size, round(disp_w * scale)), max(size, round(disp_h * scale))
    return (out_h, out_w) if rotation in (90, 270) else (out_w, out_h)


# ------------------------------------------------------------------------------------------------- video


def _read_frames(container, t0, spec, info, allow_short, slack, padded, deadline, threads) -> np.ndarray:
    """Frames at t0 + k / fps: for each target time the last frame shown at or before it. Each frame kept is
    converted to the clip's size as it is decoded, so memory is bounded by the clip, not by the source."""
    stream = _video_stream(container)
    stream.thread_type = "AUTO" if threads != 1 else "SLICE"
    stream.codec_context.thread_count = threads
    sar = _sar(stream)
    seen: dict[str, int] = {}  # rotation and display size, from the first frame converted

    def convert(frame) -> np.ndarray:
        if not seen:
            value = getattr(frame, "rotation", None)  # the frame's display matrix (PyAV >= 14), else the stream's
            seen["rotation"] = int(round(value / 90.0)) * 90 % 360 if value else info.rotation
            seen["width"], seen["height"] = frame.width, frame.height
        return _to_square_rgb(frame, sar, seen["rotation"], spec.size)

    targets = t0 + np.arange(spec.frames) / spec.fps
    picked = _pick_frames(container, stream, t0, targets, deadline, convert)
    if picked is None and t0 > 0:  # some demuxers seek badly (avi, broken indexes): decode from the start
        container.seek(0)
        seen.clear()
        picked = _pick_frames(container, stream, None, targets, deadline, convert)
    if picked is None:
        raise PrepareError(TOO_SHORT, f"no video frames at or after {t0:.3f} s")
    chosen, first_time, last_end = picked
    lead = first_time - t0
    if lead > slack + _TIME_EPS:
        if not allow_short:
            raise PrepareError(TOO_SHORT, f"video starts {lead:.3f} s after the clip start (--allow-short pads)")
        padded["video_start"] = round(lead, 3)
    if targets[-1] >= last_end + slack:
        if not allow_short:
            raise PrepareError(
                TOO_SHORT,
                f"video ends {last_end - t0:.3f} s into the clip, {spec.seconds:g} s needed (--allow-short pads)",
            )
        padded["video_end"] = round(targets[-1] + 1.0 / spec.fps - last_end, 3)
    info.rotation = seen["rotation"]
    info.width, info.height = _display_size(seen["width"], seen["height"], sar, seen["rotation"])
    # Hold the edges: targets before the first decoded frame show it, targets after the last show the last.
    first = next(k for k, f in enumerate(chosen) if f is not None)
    for k in range(first):
        chosen[k] = chosen[first]
    for k in range(1, spec.frames):
        if chosen[k] is None:
            chosen[k] = chosen[k - 1]
    return np.stack(chosen)  # F H W 3


def _pick_frames(container, stream, seek_to, targets, deadline, convert):
    """Decode from `seek_to` (None: from where the container is) and keep `convert(frame)` for each target.

    Returns (images per target or None where no frame precedes it, first frame time, end of last frame),
    or None when no frame was decoded (or the seek landed after the first target). A frame is converted
    once, when the first target it covers is passed, and the decoded frame itself is not kept.
    """
    if seek_to is not None and seek_to > 0:
        container.seek(max(0, int(seek_to / stream.time_base)), stream=stream, backward=True)
    chosen: list = [None] * len(targets)
    k = 0  # next target to fill
    prev = prev_image = None
    prev_time = first_time = None
    default_step = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)

    def image():
        nonlocal prev_image
        if prev_image is None:
            prev_image = convert(prev)
        return prev_image

    for frame in container.decode(stream):
        deadline.check()
        if frame.pts is None:
            continue
        t = float(frame.pts * (frame.time_base or stream.time_base))
        if first_time is None:
            first_time = t
            if seek_to is not None and t > targets[0] + _TIME_EPS and seek_to > 0:
                return None  # the seek overshot; the caller decodes from the start
        if prev_time is not None and t < prev_time:  # out-of-order timestamps: keep the later one
            continue
        # every target that this frame's time passes belongs to the previous frame
        while k < len(targets) and targets[k] + _TIME_EPS < t:
            chosen[k] = image() if prev is not None else None
            k += 1
        if k >= len(targets):
            break
        prev, prev_time, prev_image = frame, t, None
    else:
        if prev is None:
            return None
        step = float(prev.duration * (prev.time_base or stream.time_base)) if prev.duration else default_step
        last_end = prev_time + step
        while k < len(targets) and targets[k] + _TIME_EPS < last_end:
            chosen[k] = image()
            k += 1
        return chosen, first_time, last_end
    return chosen, first_time, math.inf


def _to_square_rgb(frame, sar: float, rotation: int, size: int) -> np.ndarray:
    """One decoded frame -> `size x size x 3` uint8: square pixels, short side `size`, centre crop, upright."""
    from av.video.reformatter import Interpolation

    w, h = scaled_size(frame.width, frame.height, sar, rotation, size)
    shrinking = w * h < frame.width * frame.height
    image = frame.reformat(
        width=w,
        height=h,
        format="rgb24",
        interpolation=Interpolation.AREA if shrinking else Interpolation.BICUBIC,
        src_color_range=frame.color_range or None,
        dst_color_range="JPEG",
        threads=1,
    ).to_ndarray()
    if rotation:
        image = np.rot90(image, k=rotation // 90)  # display rotation is counter-clockwise
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


# ------------------------------------------------------------------------------------------------- audio


def _with_layout(frame):
    """`frame` itself, or, when its channels have no layout (FFmpeg names it "32 channels": a WAV without a
    channel mask), their mean as a mono frame, which FFmpeg's resampler refuses to make ("Invalid argument")."""
    import av

    if not frame.layout.name.endswith("channels"):
        return frame
    samples = frame.to_ndarray()
    data = samples.astype(np.float32)
    if np.issubdtype(samples.dtype, np.integer):
        data /= float(np.iinfo(samples.dtype).max) + 1.0
    channels = len(frame.layout.channels)
    data = data.reshape(channels, -1) if frame.format.is_planar else data.reshape(-1, channels).T  # C S
    mono = av.AudioFrame.from_ndarray(data.mean(axis=0, keepdims=True), format="flt", layout="mono")
    mono.sample_rate, mono.pts, mono.time_base = frame.sample_rate, frame.pts, frame.time_base
    return mono


def _read_audio(container, t0, spec, allow_short, slack, padded, deadline) -> np.ndarray:
    """Mono float32 at spec.sample_rate covering [t0, t0 + seconds) of the source timeline."""
    import av

    stream = container.streams.audio[0]
    sr = spec.sample_rate
    out = np.zeros(spec.samples, np.float32)
    covered_from = covered_to = None  # sample indices of the window that real audio filled
    lead_in = 0.5  # seek earlier than t0: audio packets need not sit next to the video keyframe
    try:
        container.seek(max(0, int((t0 - lead_in) / stream.time_base)) if t0 > lead_in else 0, stream=stream, backward=True)
    except av.error.FFmpegError:  # a stream without index entries (one with no packets at all): read from the start
        container.seek(0)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
    first_input = None
    cursor = None  # time of the next resampled sample, when frames carry no pts

    def place(chunk) -> bool:
        nonlocal covered_from, covered_to, cursor
        data = chunk.to_ndarray().reshape(-1)
        if chunk.pts is not None:
            t = float(chunk.pts * chunk.time_base)
        else:
            t = cursor if cursor is not None else t0
        cursor = t + len(data) / sr
        begin = round((t - t0) * sr)
        lo, hi = max(begin, 0), min(begin + len(data), spec.samples)
        if hi > lo:
            out[lo:hi] = data[lo - begin : hi - begin]
            covered_from = lo if covered_from is None else min(covered_from, lo)
            covered_to = hi if covered_to is None else max(covered_to, hi)
        return begin >= spec.samples

    done = decoded = False
    for frame in container.decode(stream):
        deadline.check()
        decoded = True
        if first_input is None and frame.pts is not None:
            first_input = float(frame.pts * frame.time_base)
        for chunk in resampler.resample(_with_layout(frame)):
            done = place(chunk) or done
        if done:
            break
    if not decoded:  # a stream that is declared but holds no packets (flushing the resampler would fail)
        raise PrepareError(NO_AUDIO, "the audio stream holds no packets (--allow-silence writes silence)")
    if not done:
        for chunk in resampler.resample(None):
            place(chunk)
    if covered_from is None:
        raise PrepareError(TOO_SHORT, f"no audio between {t0:.3f} s and {t0 + spec.seconds:.3f} s")
    lead = covered_from / sr
    if lead > slack:
        if not allow_short:
            raise PrepareError(
                LATE_AUDIO, f"audio starts {lead:.3f} s after the video (more than {slack:.3f} s; --allow-short pads)"
            )
    if lead > 0.001:
        padded["audio_start"] = round(lead, 3)
    short = (spec.samples - covered_to) / sr
    if short > slack and not allow_short:
        raise PrepareError(
            TOO_SHORT, f"audio ends {short:.3f} s before the clip end (--allow-short pads with silence)"
        )
    if short > 0.001:
        padded["audio_end"] = round(short, 3)
    if not np.isfinite(out).all():  # float PCM can hold NaN/inf; encoders (AAC) abort on them
        raise PrepareError(BAD_AUDIO, f"the audio holds {int((~np.isfinite(out)).sum())} NaN or infinite samples")
    return out
