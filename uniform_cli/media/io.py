"""Reading and writing media with PyAV: whole clips as arrays, H.264 + AAC mp4, PCM wav.

These are the plain building blocks; `uniform_cli.prep.clip` handles real-world uploads (variable frame
rate, rotation, odd pixel formats, late audio) on top of PyAV directly.
"""

from __future__ import annotations

import re
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np

from uniform_cli.atomic import atomic_path

URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
"""A leading `scheme:` (http:, data:, file:, concat:, pipe:, javascript: ...)."""


class MediaError(RuntimeError):
    """A media file that cannot be read or written; the message names the file."""


def local_file(path: str | Path) -> str:
    """`path` as the absolute path of an existing regular file, the only thing handed to a decoder.

    FFmpeg reads protocols in the name it is given (`data:`, `concat:`, `subfile:`, `pipe:`, `http:`), so a
    name with a scheme is refused as a URL, not looked up as a file; a directory or FIFO is refused too (a
    FIFO would block the decoder). The absolute path starts with `/`, which FFmpeg never reads as a protocol.
    """
    text = str(path)
    if URL_SCHEME.match(text):
        raise MediaError(f"{text!r} is a URL ({text.split(':', 1)[0]}:), not a file; only local files are decoded")
    absolute = Path(text).absolute()
    if not absolute.exists():
        raise MediaError(f"{text}: no such file")
    if not absolute.is_file():
        raise MediaError(f"{text}: not a regular file (a directory, FIFO or device)")
    return str(absolute)


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames of the first video stream as uint8 `F H W 3`, and the stream's average fps."""
    import av

    try:
        with av.open(local_file(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode video: {e}") from None
    if not frames:
        raise MediaError(f"{path}: the video stream has no frames")
    return np.stack(frames), fps


def read_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """The first audio stream downmixed to mono float32 `S` in [-1, 1], resampled to `sample_rate` if given."""
    import av

    try:
        with av.open(local_file(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            rate = sample_rate or stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = []
            for frame in container.decode(stream):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode audio: {e}") from None
    if not chunks:
        raise MediaError(f"{path}: the audio stream has no samples")
    return np.concatenate(chunks).astype(np.float32), int(rate)


def write_wav(path: str | Path, wave_: np.ndarray, sample_rate: int) -> None:
    """Write mono float `S` in [-1, 1] as 16-bit PCM wav, atomically."""
    pcm = (np.clip(np.asarray(wave_, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = 18,
) -> None:
    """Write uint8 `F H W 3` frames as H.264 (yuv420p) and optional mono float audio as AAC, atomically.

    The result plays in browsers (`+faststart` moves the index to the front), except at `crf=0`: lossless
    H.264 (High 4:4:4 Predictive) plays in FFmpeg-based players, and its frames decode the same every time.
    At crf > 0, libx264's MB-tree may encode the same small frames differently from one call to the next (it
    reads memory it never set); turning MB-tree off would make writes repeat but lets still backgrounds
    flicker between frames, which adds optical-flow peaks to AV-Align. So it stays on, and crf=0 is the way
    to exact repeats (CHANGELOG.md has the measurements).
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaError(f"{path}: frames must be uint8 F H W 3, got {frames.dtype} {frames.shape}")
    if audio is not None and not sample_rate:
        raise MediaError(f"{path}: audio needs a sample rate")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            video = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            video.width, video.height = frames.shape[2], frames.shape[1]
            video.pix_fmt = "yuv420p"
            video.options = {"crf": str(crf), "preset": "medium"}
            sound = None
            if audio is not None:
                sound = out.add_stream("aac", rate=sample_rate)
                sound.layout = "mono"
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
            if sound is not None:
                samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
                step = sound.codec_context.frame_size or 1024
                for start in range(0, len(samples), step):
                    chunk = samples[start : start + step]
                    frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                    frame.sample_rate = sample_rate
                    frame.pts = start
                    out.mux(sound.encode(frame))
                out.mux(sound.encode(None))
