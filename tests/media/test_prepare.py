"""prepare_media on generated files with the oddities of real uploads: exact shapes, sync, orientation."""

from fractions import Fraction

import av
import numpy as np
import pytest

from tests.fixtures.av_corpus import make_media
from uniform_cli.config import ClipSpec
from uniform_cli.media.prepare import PrepareError, prepare_media, scaled_size

SPEC = ClipSpec()  # 17 fps, 256 px, 4 s, 16 kHz
FLASH = 2.0  # seconds into the source where a white frame and a click happen together
START = 0.5

FORMATS = {
    "h264_aac_stereo.mp4": dict(sample_rate=16000, layout="stereo"),
    "vfr_flac_44k.mkv": dict(vfr=True, sample_rate=44100, layout="stereo"),
    "vp9_opus_mono_48k.webm": dict(vcodec="libvpx-vp9", sample_rate=48000, layout="mono"),
    "h264_pcm_mono_8k.mov": dict(sample_rate=8000, layout="mono"),
    "mpeg4_mp3_22k.avi": dict(vcodec="mpeg4", sample_rate=22050),
    "aac_5.1_96k.mp4": dict(sample_rate=96000, layout="5.1"),
    "10bit.mkv": dict(pix_fmt="yuv420p10le", sample_rate=32000),
    "yuv444.mkv": dict(pix_fmt="yuv444p"),
    "mjpeg_yuvj.avi": dict(vcodec="mjpeg", pix_fmt="yuvj420p"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    files = {name: make_media(folder / name, seconds=5.0, fps=24, flash_at=FLASH, click_at=FLASH, **kw)
             for name, kw in FORMATS.items()}
    files["rot90.mp4"] = make_media(folder / "rot90.mp4", seconds=4.6, rotation=90)
    files["rot270.mov"] = make_media(folder / "rot270.mov", seconds=4.6, rotation=270)
    files["sar2.mp4"] = make_media(folder / "sar2.mp4", seconds=4.6, size=(64, 64), sar=Fraction(2, 1))
    files["short.mp4"] = make_media(folder / "short.mp4", seconds=2.0)
    files["late_audio.mkv"] = make_media(folder / "late_audio.mkv", seconds=4.6, audio_start=1.0)
    files["slightly_late.mkv"] = make_media(folder / "slightly_late.mkv", seconds=4.6, audio_start=0.03)
    files["early_end.mkv"] = make_media(folder / "early_end.mkv", seconds=4.6, audio_seconds=2.5)
    files["silent.mp4"] = make_media(folder / "silent.mp4", seconds=4.6, audio=False)
    files["audio_only.mp4"] = make_media(folder / "audio_only.mp4", seconds=4.6, video=False)
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    files["corrupt.mp4"] = corrupt
    return files


def flash_and_click(video: np.ndarray, audio: np.ndarray, spec: ClipSpec) -> tuple[float, float]:
    """Seconds into the clip of the brightest frame and of the loudest sample."""
    return float(np.argmax(video.mean(axis=(1, 2, 3)))) / spec.fps, float(np.argmax(np.abs(audio))) / spec.sample_rate


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_gives_exact_shapes_in_sync(corpus, name):
    clip = prepare_media(corpus[name], SPEC, start=START)
    assert clip.video.shape == (68, 256, 256, 3) and clip.video.dtype == np.uint8
    assert clip.audio.shape == (64000,) and clip.audio.dtype == np.float32
    assert clip.padded == {} and not clip.silent
    flash, click = flash_and_click(clip.video, clip.audio, SPEC)
    # AVI has no edit lists, so encoder delays shift its timeline by a frame or two: 0.1 s for the start...
    assert abs(flash - (FLASH - START)) <= 0.1
    assert abs(flash - click) <= 1 / SPEC.fps  # ...and the click lands within one frame of it
    assert clip.video[20, 30, 30, 0] > 200 and clip.video[20, 30, 30, 2] < 60  # red corner top-left, colours kept


def test_pixel_formats_and_layouts_are_reported(corpus):
    assert prepare_media(corpus["10bit.mkv"], SPEC, audio=False).info.pix_fmt == "yuv420p10le"
    info = prepare_media(corpus["aac_5.1_96k.mp4"], SPEC, video=False).info
    assert (info.audio_rate, info.audio_channels) == (96000, 6)


def red_centre(frame: np.ndarray) -> tuple[float, float]:
    """(row, col) centre of the red block as fractions of the frame."""
    red = (frame[..., 0] > 150) & (frame[..., 1] < 100) & (frame[..., 2] < 100)
    rows, cols = np.nonzero(red)
    return rows.mean() / frame.shape[0], cols.mean() / frame.shape[1]


def test_rotation_metadata_is_applied(corpus):
    # ffmpeg's convention (checked against its autorotate): 90 turns the picture counter-clockwise.
    clip = prepare_media(corpus["rot90.mp4"], SPEC)
    assert clip.info.rotation == 90 and (clip.info.width, clip.info.height) == (64, 96)
    row, col = red_centre(clip.video[0])
    assert row > 0.5 and col < 0.5  # top-left corner went to the bottom-left
    clip = prepare_media(corpus["rot270.mov"], SPEC)
    assert clip.info.rotation == 270
    row, col = red_centre(clip.video[0])
    assert row < 0.5 and col > 0.5  # ... and to the top-right for 270


def test_non_square_pixels_are_made_square(corpus):
    clip = prepare_media(corpus["sar2.mp4"], SPEC)  # 64 x 64 stored, pixels twice as wide as tall
    assert (clip.info.width, clip.info.height) == (128, 64)
    blue = (clip.video[0, ..., 2] > 150) & (clip.video[0, ..., 0] < 100)
    rows, cols = np.nonzero(blue)
    aspect = (cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1)
    assert 1.8 < aspect < 2.2  # the stored square shows as a 2:1 box


def test_scaled_size_puts_the_displayed_short_side_at_size():
    assert scaled_size(1920, 1080, 1.0, 0, 256) == (455, 256)
    assert scaled_size(1080, 1920, 1.0, 0, 256) == (256, 455)
    assert scaled_size(1920, 1080, 1.0, 90, 256) == (455, 256)  # decoded orientation; rotated afterwards
    assert scaled_size(720, 576, 16 / 15, 0, 256) == (341, 256)  # PAL 4:3 with non-square pixels


def test_too_short_fails_unless_padding_is_allowed(corpus):
    with pytest.raises(PrepareError) as e:
        prepare_media(corpus["short.mp4"], SPEC)
    assert e.value.status == "too_short" and "--allow-short" in str(e.value)
    clip = prepare_media(corpus["short.mp4"], SPEC, allow_short=True)
    assert clip.video.shape[0] == 68 and clip.audio.shape == (64000,)
    assert clip.padded["video_end"] == pytest.approx(2.0, abs=0.1)
    assert clip.padded["audio_end"] == pytest.approx(2.0, abs=0.1)
    assert np.abs(clip.audio[-8000:]).max() == 0  # padding is silence, not repeated sound


def test_start_past_the_end_is_too_short(corpus):
    with pytest.raises(PrepareError) as e:
        prepare_media(corpus["h264_aac_stereo.mp4"], SPEC, start=30.0)
    assert e.value.status == "too_short"


def test_late_audio_is_an_error_beyond_the_tolerance(corpus):
    with pytest.raises(PrepareError) as e:
        prepare_media(corpus["late_audio.mkv"], SPEC)
    assert e.value.status == "late_audio"
    clip = prepare_media(corpus["late_audio.mkv"], SPEC, allow_short=True)
    assert clip.padded["audio_start"] == pytest.approx(1.0, abs=0.01)
    assert np.abs(clip.audio[:15000]).max() == 0 and np.abs(clip.audio[17000:]).max() > 0.01
    ok = prepare_media(corpus["slightly_late.mkv"], SPEC)  # 30 ms late: within one frame, padded and said so
    assert ok.padded["audio_start"] == pytest.approx(0.03, abs=0.005)


def test_audio_ending_early_is_too_short(corpus):
    with pytest.raises(PrepareError) as e:
        prepare_media(corpus["early_end.mkv"], SPEC)
    assert e.value.status == "too_short" and "audio ends" in str(e.value)


def test_missing_streams_and_corrupt_files(corpus):
    with pytest.raises(PrepareError) as e:
        prepare_media(corpus["silent.mp4"], SPEC)
    assert e.value.status == "no_audio"
    clip = prepare_media(corpus["silent.mp4"], SPEC, allow_silence=True)
    assert clip.silent and np.abs(clip.audio).max() == 0 and clip.video.shape[0] == 68
    with pytest.raises(PrepareError) as e:
        prepare_media(corpus["audio_only.mp4"], SPEC)
    assert e.value.status == "no_video"
    assert prepare_media(corpus["audio_only.mp4"], SPEC, video=False).audio.shape == (64000,)
    assert prepare_media(corpus["silent.mp4"], SPEC, audio=False).audio is None
    with pytest.raises(PrepareError) as e:
        prepare_media(corpus["corrupt.mp4"], SPEC)
    assert e.value.status == "decode_error" and "corrupt.mp4" in str(e.value)


def test_truncated_file_fails_cleanly(corpus, tmp_path):
    data = corpus["h264_aac_stereo.mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(PrepareError) as e:
        prepare_media(cut, SPEC)
    assert e.value.status in ("decode_error", "too_short")


def test_timeout_is_checked_while_decoding(corpus):
    with pytest.raises(PrepareError) as e:
        prepare_media(corpus["h264_aac_stereo.mp4"], SPEC, timeout=1e-6)
    assert e.value.status == "timeout"


def test_other_clip_specs(corpus):
    spec = ClipSpec(fps=8, size=32, seconds=2.0, sample_rate=8000)
    clip = prepare_media(corpus["vfr_flac_44k.mkv"], spec, start=1.0)
    assert clip.video.shape == (16, 32, 32, 3) and clip.audio.shape == (16000,)
    flash, click = flash_and_click(clip.video, clip.audio, spec)
    assert abs(flash - 1.0) <= 1 / 8 and abs(flash - click) <= 1 / 8


def test_frames_are_converted_as_they_are_decoded_and_never_kept(tmp_path):
    """Memory follows the clip, not the source (benchmarks/prepare_memory.py: 8000 x 8000 source, 6.8 -> 0.7 GB)."""
    from uniform_cli.media.prepare import _pick_frames

    source = make_media(tmp_path / "s.mp4", seconds=2.0, fps=24, audio=False)
    targets = np.arange(34) / 17
    converted = []

    def convert(frame):
        assert isinstance(frame, av.VideoFrame)
        converted.append(frame.pts)
        return np.full((2, 2, 3), len(converted), np.uint8)

    class Deadline:
        def check(self):
            pass

    with av.open(str(source)) as container:
        chosen, _, _ = _pick_frames(container, container.streams.video[0], None, targets, Deadline(), convert)
    assert all(isinstance(image, np.ndarray) for image in chosen)  # images, not decoded frames
    assert len(converted) == len(set(converted)) <= len(targets)  # each kept frame converted once


def test_nan_audio_is_a_bad_audio_record_not_an_encoder_abort(tmp_path):
    path = tmp_path / "nan.wav"
    wave = np.sin(np.arange(16000 * 5, dtype=np.float32) / 10)
    wave[1000:1010] = np.nan
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_f32le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with pytest.raises(PrepareError, match="10 NaN or infinite samples") as err:
        prepare_media(path, ClipSpec(fps=17, size=32), video=False)
    assert err.value.status == "bad_audio"


def test_an_audio_stream_without_packets_is_no_audio(tmp_path):
    path = tmp_path / "empty_audio.mkv"  # Matroska keeps a declared stream that never got a packet
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=17)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        out.add_stream("aac", rate=16000, layout="mono")
        for i in range(17 * 5):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    with pytest.raises(PrepareError, match="the audio stream holds no packets") as err:
        prepare_media(path, ClipSpec(fps=17, size=32))
    assert err.value.status == "no_audio"
    clip = prepare_media(path, ClipSpec(fps=17, size=32), allow_silence=True)
    assert clip.silent and not clip.audio.any() and clip.video.shape == (68, 32, 32, 3)


def test_32_channels_without_a_layout_are_downmixed(tmp_path):
    import wave as wav

    t = np.arange(16000 * 5) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "c32.wav"  # plain PCM WAV: no channel mask, so FFmpeg knows no layout for 32 channels
    with wav.open(str(path), "wb") as w:
        w.setnchannels(32)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.repeat(tone[:, None], 32, axis=1) * 32767).astype("<i2").tobytes())
    clip = prepare_media(path, ClipSpec(fps=17, size=32), video=False)
    np.testing.assert_allclose(clip.audio, tone[:64000], atol=2e-3)
