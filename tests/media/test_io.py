"""Media files: lossless clips repeat exactly, whichever process writes them; only local files are decoded."""

import os
import subprocess
import sys

import numpy as np
import pytest

from uniform_cli.media.io import MediaError, local_file, read_audio, read_video
from uniform_cli.media.prepare import PrepareError, probe

CLIP = """
import sys
from uniform_cli.media.io import read_video, write_mp4
from uniform_cli.config import ClipSpec
from uniform_cli.media.prepare import prepare_media
clip = prepare_media(sys.argv[1], ClipSpec(fps=17, size=32, seconds=4.0, sample_rate=16000), start=0.5)
for path in sys.argv[2:]:  # one worker writing clip after clip, and reading in between, as `uniform clip` does
    write_mp4(path, clip.video, 17, clip.audio, 16000, crf=0)
    read_video(path)
"""


def test_lossless_clips_decode_to_the_same_frames_every_time(tmp_path):
    """A rendered source cut to a clip (17 fps, 32 x 32, 16 kHz) and written losslessly six times in each of
    two processes: every copy decodes to the same frames."""
    from uniform_cli.demo.world import WorldSpec, render_scene
    from uniform_cli.media.io import write_mp4

    spec = WorldSpec()
    scene = render_scene("ball", 1, spec)
    write_mp4(tmp_path / "source.mp4", scene.frames, spec.fps, scene.wave, spec.sample_rate)
    paths = []
    for process in range(2):
        mine = [tmp_path / f"{process}_{i}.mp4" for i in range(6)]
        subprocess.run([sys.executable, "-c", CLIP, str(tmp_path / "source.mp4"), *map(str, mine)], check=True)
        paths += mine
    first = read_video(paths[0])[0]
    for path in paths[1:]:
        np.testing.assert_array_equal(read_video(path)[0], first, err_msg=path.name)


def test_decoders_refuse_schemes_and_non_files_without_looking_them_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("data:video/mp4;base64,AAAA", "file:clip.mp4", "javascript:alert(1)", "concat:a.mp4|b.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")  # a file of that name exists: it must still not be opened
        with pytest.raises(MediaError, match="is a URL"):
            local_file(name)
        with pytest.raises(PrepareError, match="is a URL"):
            probe(name)
    os.mkfifo(tmp_path / "fifo.wav")
    (tmp_path / "folder.wav").mkdir()
    for name in ("fifo.wav", "folder.wav"):
        with pytest.raises(MediaError, match="not a regular file"):
            read_audio(tmp_path / name)
    (tmp_path / "real.mp4").touch()
    assert local_file("real.mp4") == str(tmp_path / "real.mp4")  # a relative name becomes absolute
