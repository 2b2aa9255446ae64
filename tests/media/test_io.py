"""Writing media: the same frames and sound give the same file in every process (stage reruns repeat)."""

import subprocess
import sys

import numpy as np

from uniform_cli.media.io import read_video

CLIP = """
import sys
from uniform_cli.media.io import write_mp4
from uniform_cli.media.prepare import ClipSpec, prepare_media
clip = prepare_media(sys.argv[1], ClipSpec(fps=17, size=32, seconds=4.0, sample_rate=16000), start=0.5)
write_mp4(sys.argv[2], clip.video, 17, clip.audio, 16000)
"""


def test_write_mp4_encodes_the_same_frames_the_same_way_in_every_process(tmp_path):
    """A rendered source cut to a clip (17 fps, 32 x 32, 16 kHz) by three processes, as `uniform clip` does:
    the video must come out identical."""
    from uniform_cli.demo.world import WorldSpec, render_scene
    from uniform_cli.media.io import write_mp4

    spec = WorldSpec()
    scene = render_scene("light", 0, spec)
    write_mp4(tmp_path / "source.mp4", scene.frames, spec.fps, scene.wave, spec.sample_rate)
    paths = [tmp_path / f"{i}.mp4" for i in range(3)]
    for path in paths:
        subprocess.run([sys.executable, "-c", CLIP, str(tmp_path / "source.mp4"), str(path)], check=True)
    first = read_video(paths[0])[0]
    for path in paths[1:]:
        np.testing.assert_array_equal(read_video(path)[0], first)
