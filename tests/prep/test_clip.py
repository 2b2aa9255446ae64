"""The clip stage end to end: a folder or a manifest in, exact clips and a status table out, resumable."""

import wave
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.fixtures.av_corpus import make_media
from uniform_cli.cli.main import app
from uniform_cli.config import ClipSpec
from uniform_cli.media.io import read_video
from uniform_cli.prep.clip import ClipOptions, clip_paths, run_clip
from uniform_cli.prep.manifest import ManifestItem, folder_items
from uniform_cli.stage import FailureGuard, read_status


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    make_media(d / "good.mp4", seconds=5.0, flash_at=2.0, click_at=2.0)
    make_media(d / "phone.mov", seconds=4.5, rotation=90, vfr=True)
    make_media(d / "short.mkv", seconds=2.0)
    make_media(d / "mute.mp4", seconds=4.5, audio=False)
    make_media(d / "voice.mp4", seconds=4.5, video=False)
    (d / "broken.avi").write_bytes(b"RIFF" + bytes(3000))
    (d / "notes.txt").write_text("not media")
    return d


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32767, w.getframerate()


def test_folder_gives_exact_clips_and_a_status_per_file(folder, tmp_path):
    items = folder_items(folder)
    result = run_clip(items, tmp_path, ClipOptions(str(tmp_path)), workers=2)
    # decode_error: broken.avi, notes.txt
    assert dict(result.counts) == {"ok": 2, "too_short": 1, "no_audio": 1, "no_video": 1, "decode_error": 2}
    assert result.table == tmp_path / "clips.csv" and result.outputs == tmp_path / "clips" and not result.left_out
    rows = read_status(tmp_path, "clips")
    assert rows["good"]["video"] == "clips/good.mp4" and rows["good"]["audio"] == "clips/good.wav"
    assert rows["phone"]["rotation"] == "90" and (rows["phone"]["src_width"], rows["phone"]["src_height"]) == ("64", "96")
    assert rows["mute"]["error"] and rows["broken"]["status"] == "decode_error"
    frames, fps = read_video(tmp_path / "clips" / "good.mp4")
    assert frames.shape == (68, 256, 256, 3) and fps == pytest.approx(17)
    audio, rate = read_wav(tmp_path / "clips" / "good.wav")
    assert rate == 16000 and audio.shape == (64000,)
    # sync survives H.264 and the wav: flash (2.0 s) and click within one frame of each other
    flash = np.argmax(frames.mean(axis=(1, 2, 3))) / 17
    click = np.argmax(np.abs(audio)) / 16000
    assert abs(flash - 2.0) <= 1 / 17 and abs(flash - click) <= 1 / 17
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["good.mp4", "good.wav", "phone.mp4", "phone.wav"]


def test_flags_pad_and_silence_and_say_so(folder, tmp_path):
    options = ClipOptions(str(tmp_path), allow_short=True, allow_silence=True)
    items = [i for i in folder_items(folder) if i.key in ("short", "mute")]
    assert dict(run_clip(items, tmp_path, options).counts) == {"ok": 2}
    rows = read_status(tmp_path, "clips")
    assert "video_end=" in rows["short"]["padded"] and "audio_end=" in rows["short"]["padded"]
    assert rows["mute"]["silent"] == "1" and rows["short"]["silent"] == "0"
    audio, _ = read_wav(tmp_path / "clips" / "mute.wav")
    assert audio.shape == (64000,) and not audio.any()


def test_rerun_skips_done_items_and_redoes_missing_files(folder, tmp_path):
    items = [i for i in folder_items(folder) if i.key in ("good", "short")]
    run_clip(items, tmp_path, ClipOptions(str(tmp_path)))
    with open(tmp_path / "clips.csv", "a") as f:
        f.write("good,ok,,clips/go")  # a run killed mid-line
    again = run_clip(items, tmp_path, ClipOptions(str(tmp_path)))
    assert dict(again.counts) == {"too_short": 1} and again.skipped == 1  # the failure is retried, the done item kept
    (tmp_path / "clips" / "good.wav").unlink()
    again = run_clip(items, tmp_path, ClipOptions(str(tmp_path)))
    assert again.counts["ok"] == 1 and again.skipped == 0
    other = ClipOptions(str(tmp_path), spec=ClipSpec(fps=8, size=64, seconds=2.0, sample_rate=8000))
    again = run_clip(items, tmp_path, other)  # a different spec is not "done"
    assert dict(again.counts) == {"ok": 2} and again.skipped == 0
    assert read_video(tmp_path / "clips" / "good.mp4")[0].shape == (16, 64, 64, 3)


def test_fetched_items_are_cut_at_the_recorded_offset(tmp_path):
    (tmp_path / "raw").mkdir()
    raw = make_media(tmp_path / "raw" / "abc_000010.mp4", seconds=7.0, flash_at=4.0, click_at=4.0)
    # fetch downloaded source seconds 8..15 of a video: the clip at source 10 s is file second 2
    (tmp_path / "fetch.csv").write_text(
        "key,status,error,path,offset,start,url,attempts,format\n"
        f"abc_000010,ok,,raw/{raw.name},8.0,10,https://example.org/v,1,0\n"
    )
    items = [
        ManifestItem("abc_000010", "https://example.org/v", 10.0, 20.0, "dog barking", "train"),
        ManifestItem("later_000000", "https://example.org/w", 0.0, None, "cat", "test"),
    ]
    result = run_clip(items, tmp_path, ClipOptions(str(tmp_path)))
    assert dict(result.counts) == {"ok": 1} and result.left_out == ["later_000000"] and result.needs == "fetch"
    row = read_status(tmp_path, "clips")["abc_000010"]
    assert (row["label"], row["split"], row["start"]) == ("dog barking", "train", "2")
    frames, _ = read_video(tmp_path / "clips" / "abc_000010.mp4")
    assert abs(np.argmax(frames.mean(axis=(1, 2, 3))) / 17 - 2.0) <= 1 / 17


def test_failure_cap_stops_the_run(tmp_path):
    for i in range(4):
        (tmp_path / f"bad{i}.mp4").write_bytes(b"junk" * 100)
    items = folder_items(tmp_path)
    with pytest.raises(Exception, match="in a row"):
        run_clip(items, tmp_path / "out", ClipOptions(str(tmp_path / "out")), guard=FailureGuard(max_consecutive=3))
    assert len(read_status(tmp_path / "out", "clips")) == 3


def test_keys_cannot_escape_the_root(tmp_path):
    with pytest.raises(Exception, match="outside"):
        clip_paths(tmp_path, "../x")


def test_cli_on_a_folder(folder, tmp_path):
    result = CliRunner().invoke(app, ["clip", str(folder), "--root", str(tmp_path), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "too_short" in result.output and "clips.csv" in result.output
    assert (tmp_path / "clips" / "good.mp4").is_file()
    result = CliRunner().invoke(app, ["clip", str(folder / "nowhere.csv")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(app, ["clip", str(folder), "--root", str(tmp_path / "other"), "--crf", "52"])
    assert result.exit_code == 2 and "--crf must lie in 0..51" in result.output


def test_a_run_whose_every_item_failed_exits_1_and_a_rerun_of_done_items_exits_0(folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(2):
        (bad / f"junk{i}.mp4").write_bytes(b"junk" * 100)
    result = CliRunner().invoke(app, ["clip", str(bad), "--root", str(tmp_path / "out"), "--workers", "1"])
    assert result.exit_code == 1 and "decode_error" in result.output
    good = ["clip", str(folder), "--root", str(tmp_path / "good"), "--workers", "1"]
    assert CliRunner().invoke(app, good).exit_code == 0
    assert CliRunner().invoke(app, good).exit_code == 0  # everything done before: nothing failed


def test_every_file_of_a_folder_is_an_item(folder, tmp_path):
    import av

    song = tmp_path / "src" / "song.m4a"  # audio only: a no_video item, not silently left out
    song.parent.mkdir()
    with av.open(str(song), "w", format="ipod") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000 * 5), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    (tmp_path / "src" / "notes.txt").write_text("not media")
    result = CliRunner().invoke(app, ["clip", str(song.parent), "--root", str(tmp_path / "out"), "--workers", "1"])
    rows = read_status(tmp_path / "out", "clips")
    assert {k: r["status"] for k, r in rows.items()} == {"song": "no_video", "notes": "decode_error"}
    assert result.exit_code == 1  # nothing could be clipped


def test_a_read_only_root_is_a_clear_stop(folder, tmp_path):
    from tests.fixtures.filesystems import tmpfs

    with tmpfs(tmp_path / "ro", read_only=True) as root:
        result = CliRunner().invoke(app, ["clip", str(folder), "--root", str(root), "--workers", "1"])
    assert result.exit_code == 1 and "Read-only file system" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def recipe(path: Path, data: str) -> Path:
    path.write_text(f"# a test recipe\n[data]\n{data}\n")
    return path


def test_cli_clips_in_the_format_a_recipe_trains_on(folder, tmp_path):
    tiny = recipe(tmp_path / "tiny.toml", "fps = 8\nsize = 64\nseconds = 2.0\nsample_rate = 8000")
    args = ["clip", str(folder), "--root", str(tmp_path / "d"), "--workers", "1", "--recipe", str(tiny)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frames, fps = read_video(tmp_path / "d" / "clips" / "good.mp4")
    assert frames.shape == (16, 64, 64, 3) and fps == pytest.approx(8)
    audio, rate = read_wav(tmp_path / "d" / "clips" / "good.wav")
    assert (rate, audio.shape) == (8000, (16000,))
    assert read_status(tmp_path / "d", "clips")["good"]["spec"] == "8fps-64px-2s-8000Hz"


def test_cli_refuses_clip_flags_beside_a_recipe_and_a_bad_recipe(folder, tmp_path):
    tiny = recipe(tmp_path / "tiny.toml", "size = 64")
    args = ["clip", str(folder), "--root", str(tmp_path / "d"), "--recipe", str(tiny)]
    result = CliRunner().invoke(app, [*args, "--fps", "17", "--sample-rate", "16000"])
    assert result.exit_code == 2 and "--fps, --sample-rate cannot be given too" in result.output
    bad = recipe(tmp_path / "bad.toml", "colour = 3")
    result = CliRunner().invoke(app, ["clip", str(folder), "--root", str(tmp_path / "d"), "--recipe", str(bad)])
    assert result.exit_code == 2 and "colour" in result.output
    assert not (tmp_path / "d" / "clips.csv").exists()
