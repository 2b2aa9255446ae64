"""New sound under a user's own video: the video packets are copied byte for byte."""

from pathlib import Path

import av
import numpy as np
import pytest

from tests.fixtures.av_corpus import picture
from uniform_cli.media.io import MediaError, read_audio, read_video
from uniform_cli.media.mux import mux_audio_onto


def write_source(path: Path, codec: str = "libx264", seconds: float = 3.0, fps: int = 30,
                 size: tuple[int, int] = (160, 96)) -> Path:
    """A video with B-frames (x264's medium preset), as a phone or an editor writes them."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p" if codec == "libx264" else "yuv444p"
        if codec == "libx264":
            stream.options = {"preset": "medium", "bf": "3"}
        for i in range(round(seconds * fps)):
            image = np.roll(picture(*size), 3 * i, axis=1)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


def test_the_video_stream_is_copied_and_the_sound_is_new(tmp_path):
    source = write_source(tmp_path / "phone.mkv")
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(48000) / 16000)).astype(np.float32)
    info = mux_audio_onto(source, tmp_path / "out.mp4", wave, 16000)

    assert (info.codec, info.width, info.height, info.packets) == ("h264", 160, 96, 90)
    assert abs(info.seconds - 3.0) < 1e-6
    assert video_packets(tmp_path / "out.mp4") == video_packets(source)  # not re-encoded
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.has_b_frames  # the copy kept the source's B-frames
        assert container.streams.audio[0].codec_context.name == "aac"
    frames, fps = read_video(tmp_path / "out.mp4")
    source_frames, _ = read_video(source)
    assert abs(fps - 30) < 0.05 and np.array_equal(frames, source_frames)  # mkv keeps times in ms
    sound, rate = read_audio(tmp_path / "out.mp4")
    assert rate == 16000 and abs(len(sound) - len(wave)) <= 1024  # AAC codes whole frames of 1024
    n = min(len(sound), len(wave))
    assert np.abs(sound[:n] - wave[:n])[2000:-2000].max() < 0.02  # the same wave, in place (AAC is lossy)


def test_seconds_ends_the_copy_on_a_packet(tmp_path):
    source = write_source(tmp_path / "phone.mkv")
    mux_audio_onto(source, tmp_path / "out.mp4", np.zeros(32000, np.float32), 16000, seconds=2.0)
    frames, _ = read_video(tmp_path / "out.mp4")
    assert 60 <= len(frames) <= 63  # up to the reorder depth past the end
    source_frames, _ = read_video(source)
    assert np.array_equal(frames[:60], source_frames[:60])


def test_a_codec_mp4_cannot_hold_is_named(tmp_path):
    source = write_source(tmp_path / "lossless.mkv", codec="ffv1", seconds=0.5)
    with pytest.raises(MediaError, match="ffv1 video cannot be copied into an mp4"):
        mux_audio_onto(source, tmp_path / "out.mp4", np.zeros(8000, np.float32), 16000)
    assert not (tmp_path / "out.mp4").exists()


def test_no_frame_within_seconds(tmp_path):
    source = write_source(tmp_path / "phone.mkv", seconds=0.5)
    with pytest.raises(MediaError, match="no video frame starts within"):
        mux_audio_onto(source, tmp_path / "out.mp4", np.zeros(8000, np.float32), 16000, seconds=0.0)

