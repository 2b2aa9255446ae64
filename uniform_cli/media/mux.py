"""Put new sound under a user's own video: the video stream is copied packet by packet, never re-encoded.

V2A (and an audio-only retake) should hand back the user's video as it was (resolution, frame rate, codec,
bit rate) with the generated sound, not a 256 x 256 re-encode. The output timeline starts at the source's own
t = 0 (its container start time), the instant `prepare_media` cuts from, so the sound stays in sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from uniform_cli.atomic import atomic_path
from uniform_cli.media.io import MediaError, local_file

MP4_VIDEO_CODECS = {"h264", "hevc", "av1", "vp9", "mpeg4", "mpeg2video", "mjpeg"}
"""Video codecs an mp4 can hold as they are (others are refused with a message naming the codec)."""


@dataclass
class MuxInfo:
    """What went into the output."""

    codec: str
    width: int
    height: int
    fps: float
    packets: int
    """Video packets copied."""
    seconds: float
    """Length of the copied video, from the first shown frame to the end of the last one."""


def mux_audio_onto(video: str | Path, out: str | Path, audio: np.ndarray, sample_rate: int,
                   seconds: float | None = None) -> MuxInfo:
    """Write `out` (mp4): the first video stream of `video` copied as it is, and mono `audio` as AAC.

    `seconds` ends the video there (default: its whole length). A copied stream can only end on a packet:
    every packet shown before the end is kept, with the packets decoded before it, so a stream with B-frames
    may show up to its reorder depth (usually 1-3 frames) past `seconds`.
    """
    import av

    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    if audio.ndim != 1:
        raise MediaError(f"{out}: audio must be mono `S`, got shape {audio.shape}")
    try:
        source = av.open(local_file(video))
    except av.error.FFmpegError as e:
        raise MediaError(f"{video}: cannot open: {e}") from None
    with source:
        if not source.streams.video:
            raise MediaError(f"{video}: no video stream")
        stream = source.streams.video[0]
        codec = stream.codec_context.name
        if codec not in MP4_VIDEO_CODECS:
            raise MediaError(f"{video}: its {codec} video cannot be copied into an mp4 (it holds "
                             f"{', '.join(sorted(MP4_VIDEO_CODECS))}); convert it to H.264 first")
        tb = stream.time_base
        origin = Fraction(source.start_time or 0, 1_000_000)
        packets = [p for p in source.demux(stream) if p.size and p.pts is not None]
        if not packets:
            raise MediaError(f"{video}: the video stream has no packets")
        if seconds is not None:
            last = max((i for i, p in enumerate(packets) if (p.pts * tb - origin) < seconds), default=-1)
            packets = packets[: last + 1]
            if not packets:
                raise MediaError(f"{video}: no video frame starts within the first {seconds:g} s")
        shift = round(origin / tb)
        first_shown = min(p.pts for p in packets)
        end = max(p.pts + (p.duration or 0) for p in packets)
        info = MuxInfo(codec, stream.codec_context.width, stream.codec_context.height,
                       float(stream.average_rate or stream.guessed_rate or 0), len(packets),
                       float((end - first_shown) * tb))
        with atomic_path(out) as tmp:
            with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as sink:
                copied = sink.add_stream_from_template(stream)
                sound = sink.add_stream("aac", rate=sample_rate)
                sound.layout = "mono"
                for packet in packets:
                    packet.pts -= shift
                    if packet.dts is not None:
                        packet.dts -= shift
                    packet.stream = copied
                    sink.mux(packet)
                step = sound.codec_context.frame_size or 1024
                for start in range(0, len(audio), step):
                    frame = av.AudioFrame.from_ndarray(audio[None, start : start + step], format="fltp",
                                                       layout="mono")
                    frame.sample_rate = sample_rate
                    frame.pts = start
                    sink.mux(sound.encode(frame))
                sink.mux(sound.encode(None))
    return info
