"""Clip throughput: clips per second per CPU core for 720p and 1080p sources, against an ffmpeg command line.

Both sides do the same transformation of the same generated source (H.264 + AAC, 30 fps): start at 3 s,
17 fps, short side to 256 and centre crop, 68 frames of H.264 (crf 18, yuv420p), 16 kHz mono 16-bit wav.
"Per core" is clips per CPU-second (user + system time of the process or of the ffmpeg children), so
threading does not flatter either side. Prints one JSON object.

    python benchmarks/clip_throughput.py               # 720p and 1080p, 3 repeats
    python benchmarks/clip_throughput.py --quick       # a small check (240p, 1 repeat)

CPU only: clipping is a CPU stage (worker processes), so there is no CUDA setting.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uniform_cli.config import ClipSpec  # noqa: E402
from uniform_cli.prep.clip import ClipJob, ClipOptions, clip_item  # noqa: E402

START = 3.0


def make_source(path: Path, width: int, height: int, seconds: float = 10.0, fps: int = 30) -> Path:
    """A moving test pattern with sound, encoded like a typical upload (H.264 High, AAC 48 kHz stereo)."""
    import av

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    base = np.kron(noise, np.ones((8, 8, 1), np.uint8))  # blocky texture: realistic bitrate
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "23", "g": str(2 * fps)}
        sound = out.add_stream("aac", rate=48000)
        sound.layout = "stereo"
        for i in range(int(seconds * fps)):
            image = np.roll(base, 4 * i, axis=1)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        t = np.arange(int(seconds * 48000)) / 48000
        wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for s in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(np.stack([wave[s : s + 1024]] * 2), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = 48000, s, Fraction(1, 48000)
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return path


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_ours(source: Path, out: Path, spec: ClipSpec, repeats: int, threads: int) -> dict:
    options = ClipOptions(root=str(out), spec=spec, threads=threads)
    job = ClipJob("bench", str(source), START)
    clip_item(job, options)  # warm up (imports, codec init)
    wall0, cpu0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
    for _ in range(repeats):
        result = clip_item(job, options)
        assert result.status == "ok", result.error
    wall, cpu = time.perf_counter() - wall0, cpu_seconds(resource.RUSAGE_SELF) - cpu0
    return {"clips_per_cpu_second": repeats / cpu, "seconds_per_clip_wall": wall / repeats}


def ffmpeg_command(source: Path, out: Path, spec: ClipSpec) -> list[str]:
    size = spec.size
    chain = (
        f"fps={spec.fps},scale={size}:{size}:force_original_aspect_ratio=increase:flags=area,"
        f"crop={size}:{size},format=yuv420p"
    )
    return [
        "ffmpeg", "-v", "error", "-y", "-ss", str(START), "-i", str(source),
        "-map", "0:v:0", "-vf", chain, "-frames:v", str(spec.frames),
        "-c:v", "libx264", "-preset", "medium", "-crf", "18", str(out / "ffmpeg.mp4"),
        "-map", "0:a:0", "-t", f"{spec.seconds:g}", "-ac", "1", "-ar", str(spec.sample_rate),
        "-c:a", "pcm_s16le", str(out / "ffmpeg.wav"),
    ]  # fmt: skip


def run_ffmpeg(source: Path, out: Path, spec: ClipSpec, repeats: int) -> dict:
    command = ffmpeg_command(source, out, spec)
    subprocess.run(command, check=True)
    wall0, cpu0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    for _ in range(repeats):
        subprocess.run(command, check=True)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0
    return {"clips_per_cpu_second": repeats / cpu, "seconds_per_clip_wall": wall / repeats, "command": " ".join(command)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="240p source, 1 repeat (a smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="decoder threads for ours (1 = one process per core)")
    args = parser.parse_args()
    sizes = {"240p": (426, 240)} if args.quick else {"720p": (1280, 720), "1080p": (1920, 1080)}
    repeats = 1 if args.quick else args.repeats
    spec = ClipSpec()
    has_ffmpeg = shutil.which("ffmpeg") is not None
    report = {"spec": spec.tag, "start": START, "repeats": repeats, "machine": platform.processor() or platform.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (w, h) in sizes.items():
            source = make_source(tmp / f"{name}.mp4", w, h, seconds=8.0)
            row = {"ours": run_ours(source, tmp / "ours", spec, repeats, args.threads)}
            if has_ffmpeg:
                row["ffmpeg"] = run_ffmpeg(source, tmp, spec, repeats)
                row["ours_vs_ffmpeg_per_core"] = row["ours"]["clips_per_cpu_second"] / row["ffmpeg"]["clips_per_cpu_second"]
            else:
                row["ffmpeg"] = "ffmpeg not on PATH"
            report[name] = row
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
