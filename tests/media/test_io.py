"""Writing media: lossless clips repeat exactly, whichever process writes them and however often."""

import subprocess
import sys

import numpy as np

from uniform_cli.media.io import read_video

CLIP = """
import sys
from uniform_cli.media.io import read_video, write_mp4
from uniform_cli.media.prepare import ClipSpec, prepare_media
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
