"""Peak memory of preparing one clip from a huge-frame source: what `uniform clip` and `generate` cost per item.

Makes a nearly static H.264 source of SIDE x SIDE pixels (a few hundred KB on disk), prepares a 4 s clip at
256 x 256 from it in a fresh process, and prints one JSON object with the source size and the process's peak
resident memory (Linux: VmHWM). The cost should follow the clip and the decoder's own buffers, not the number of frames kept.

    python benchmarks/prepare_memory.py               # 8000 x 8000
    python benchmarks/prepare_memory.py --side 2000   # a quicker check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# VmHWM is this process image's own peak (ru_maxrss would carry the parent's peak across fork + exec).
PREPARE = """
import json, re, sys
from pathlib import Path
from uniform_cli.config import ClipSpec
from uniform_cli.media.prepare import prepare_media
clip = prepare_media(sys.argv[1], ClipSpec(fps=17, size=256, seconds=4.0), audio=False)
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"frames": list(clip.video.shape), "peak_rss_gb": round(peak_kb / 2**20, 3)}))
"""


def make_source(path: Path, side: int, seconds: float = 5.0, fps: int = 17) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), 90, np.uint8), format="rgb24")
        for _ in range(int(seconds * fps)):
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "huge.mp4"
        make_source(source, args.side)
        run = subprocess.run([sys.executable, "-c", PREPARE, str(source)], capture_output=True, text=True, check=True)
        result = {"side": args.side, "source_bytes": source.stat().st_size, **json.loads(run.stdout)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
