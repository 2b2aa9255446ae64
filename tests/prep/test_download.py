"""A yt-dlp download's format choice, and where its ffmpeg comes from (downloads themselves: test_fetch.py)."""

import pytest

from uniform_cli.prep import download as D


def test_format_selection_prefers_the_smallest_mp4_with_short_side_256():
    formats = [
        {"format_id": "140", "vcodec": "none", "acodec": "mp4a", "ext": "m4a", "abr": 128},
        {"format_id": "251", "vcodec": "none", "acodec": "opus", "ext": "webm", "abr": 160},
        {"format_id": "160", "vcodec": "avc1", "acodec": "none", "ext": "mp4", "width": 256, "height": 144},
        {"format_id": "134", "vcodec": "avc1", "acodec": "none", "ext": "mp4", "width": 640, "height": 360},
        {"format_id": "243", "vcodec": "vp9", "acodec": "none", "ext": "webm", "width": 640, "height": 360},
        {"format_id": "137", "vcodec": "avc1", "acodec": "none", "ext": "mp4", "width": 1920, "height": 1080},
        {"format_id": "18", "vcodec": "avc1", "acodec": "mp4a", "ext": "mp4", "width": 640, "height": 360},
    ]
    (chosen,) = D.select_format({"formats": formats})
    assert chosen["format_id"] == "134+140"
    portrait = [{"format_id": "v", "vcodec": "avc1", "acodec": "none", "ext": "mp4", "width": 360, "height": 640},
                {"format_id": "s", "vcodec": "avc1", "acodec": "none", "ext": "mp4", "width": 144, "height": 256},
                formats[0]]
    assert next(D.select_format({"formats": portrait}))["format_id"] == "v+140"  # short side is the width
    small = [formats[0], formats[2]]
    assert next(D.select_format({"formats": small}))["format_id"] == "160+140"  # the best there is
    direct = [{"format_id": "0", "url": "http://x/v.mp4", "ext": "mp4"}]
    assert next(D.select_format({"formats": direct}))["format_id"] == "0"


def test_ffmpeg_comes_from_path_else_from_imageio_ffmpeg_else_says_how_to_install(monkeypatch, tmp_path):
    import sys

    import imageio_ffmpeg

    monkeypatch.setenv("PATH", str(tmp_path))
    assert D.require_ffmpeg() == imageio_ffmpeg.get_ffmpeg_exe()
    (tmp_path / "ffmpeg").write_text("#!/bin/sh\n")
    (tmp_path / "ffmpeg").chmod(0o755)
    assert D.require_ffmpeg() == str(tmp_path / "ffmpeg")
    (tmp_path / "ffmpeg").unlink()
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # not installed
    with pytest.raises(D.FetchSetupError, match="apt install ffmpeg"):
        D.require_ffmpeg()
