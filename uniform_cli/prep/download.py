"""One yt-dlp download of a time range of a remote video: the format chosen, a deadline on the whole attempt,
and a check that what arrived is a video.

yt-dlp hands the range to ffmpeg, which stream-copies from the keyframe before it (`clip` cuts exactly), so the
file's t = 0 is the range's start. Nothing is retried here; `fetch` retries what `retry.py` says is transient.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from uniform_cli.atomic import atomic_path, temp_beside
from uniform_cli.prep.manifest import ManifestItem
from uniform_cli.stage import StageError

FFMPEG_HELP = (
    "fetch needs the ffmpeg program (yt-dlp uses it to download a time range), and found neither one on PATH "
    "nor the imageio-ffmpeg package's. Install it with "
    "`sudo apt install ffmpeg` (Debian/Ubuntu), `brew install ffmpeg` (macOS) or "
    "`conda install -c conda-forge ffmpeg`, or put a static build from https://ffmpeg.org/download.html on PATH."
)


class FetchSetupError(RuntimeError):
    """Something the whole run needs is missing (ffmpeg, a cookies file)."""


def require_ffmpeg() -> str:
    """The ffmpeg executable's path: the one on PATH, else the binary the imageio-ffmpeg package ships;
    FetchSetupError saying how to install one when there is neither."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        raise FetchSetupError(FFMPEG_HELP) from None


def select_format(ctx: dict):
    """yt-dlp format selector: the smallest video whose short side is >= 256 (else the largest there is),
    mp4/H.264 preferred, merged with the best audio (m4a preferred); a single file with both when the site
    offers nothing better (direct links have one format of unknown size)."""
    formats = ctx["formats"]
    videos = [f for f in formats if _has_video(f) and f.get("acodec") == "none"]
    audios = [f for f in formats if f.get("vcodec") == "none" and f.get("acodec") not in (None, "none")]
    combined = [f for f in formats if f not in videos and f not in audios and _has_video(f)]
    video, both = _fitting_video(videos), _fitting_video(combined)
    if video is not None and audios and (both is None or _short_side(video) >= min(256, _short_side(both))):
        audio = max(audios, key=lambda f: (f.get("ext") == "m4a", f.get("abr") or f.get("tbr") or 0))
        yield {
            "format_id": f"{video['format_id']}+{audio['format_id']}",
            "ext": "mp4",
            "requested_formats": [video, audio],
            "protocol": f"{video.get('protocol')}+{audio.get('protocol')}",
        }
    elif both is not None:
        yield both
    elif formats:
        yield formats[-1]


def _short_side(f: dict) -> int:
    sides = [s for s in (f.get("width"), f.get("height")) if s]
    return min(sides) if sides else 0


def _has_video(f: dict) -> bool:
    return f.get("vcodec") != "none"


def _mp4_first(f: dict) -> tuple[bool, bool]:
    return f.get("ext") == "mp4", str(f.get("vcodec") or "").startswith(("avc1", "h264"))


def _fitting_video(candidates: list[dict]) -> dict | None:
    """Smallest with short side >= 256 (ties: mp4/H.264, then lower bitrate), else the largest."""
    big = [f for f in candidates if _short_side(f) >= 256]
    if big:
        return min(big, key=lambda f: (_short_side(f), [not p for p in _mp4_first(f)], f.get("tbr") or 0))
    if candidates:
        return max(candidates, key=lambda f: (_short_side(f), _mp4_first(f), f.get("tbr") or 0))
    return None


class _Quiet:
    """yt-dlp logger that keeps messages (for the error text) and prints nothing."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        self.messages.append(msg)

    def error(self, msg: str) -> None:
        self.messages.append(msg)


def download_range(
    item: ManifestItem,
    out: Path,
    section: tuple[float, float],
    *,
    cookies: str | None = None,
    socket_timeout: float = 30.0,
    deadline: float = 600.0,
) -> str:
    """Download the source seconds `section` of `item.url` to `out` (atomically) in one yt-dlp attempt; returns
    the format id. `deadline` bounds the whole attempt (StageError `timeout`), `socket_timeout` each silence."""
    import yt_dlp
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor
    from yt_dlp.utils import download_range_func

    if not item.is_remote:
        raise StageError("bad_url", f"{item.url!r} is not an http(s) URL; only those are downloaded")
    ffmpeg = require_ffmpeg()
    # yt-dlp asks "is ffmpeg there?" of this context variable, not of its params (yt-dlp's own CLI sets it too);
    # set per call, since each worker thread has its own context
    FFmpegPostProcessor._ffmpeg_location.set(ffmpeg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(out.with_suffix(""))  # a folder for yt-dlp's parts; a killed run's is swept
    tmp.mkdir()
    late = threading.Event()
    too_long = f"the download took longer than {deadline:g} s"

    def cut_off() -> None:  # the deadline passed: stop yt-dlp (its next progress hook) and its ffmpeg
        late.set()
        kill_processes_using(str(tmp))

    def check_deadline(_status: dict) -> None:
        if late.is_set():
            raise StageError("timeout", too_long)

    timer = threading.Timer(deadline, cut_off)
    timer.daemon = True
    timer.start()
    try:
        params = {
            "format": select_format,
            "download_ranges": download_range_func(None, [section]),
            "outtmpl": {"default": str(Path(tmp) / "media.%(ext)s")},
            "merge_output_format": "mp4",
            "postprocessors": [{"key": "FFmpegVideoRemuxer", "preferedformat": "mp4"}],
            "ffmpeg_location": ffmpeg,
            "noplaylist": True,
            "playlist_items": "1",  # one row, one video: a page with many <video> tags is a "playlist"
            "overwrites": True,
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "logger": _Quiet(),
            "retries": 0,  # retries are ours: classified, backed off, rate-limited
            "extractor_retries": 0,
            "fragment_retries": 3,
            "socket_timeout": socket_timeout,
            "cookiefile": cookies,
            "progress_hooks": [check_deadline],
        }
        try:
            with yt_dlp.YoutubeDL(params) as ydl:
                info = ydl.extract_info(item.url, download=True)
        except Exception:
            if late.is_set():
                raise StageError("timeout", too_long) from None
            raise
        if late.is_set():
            raise StageError("timeout", too_long)
        produced = sorted(Path(tmp).glob("media.*"))
        produced = [p for p in produced if p.suffix == ".mp4"] or produced
        if not produced:
            raise StageError("incomplete", "yt-dlp finished without writing a file")
        _check_download(produced[0])
        with atomic_path(out) as final:
            shutil.move(str(produced[0]), final)
    finally:
        timer.cancel()
        shutil.rmtree(tmp, ignore_errors=True)
    return str(info.get("format_id", ""))


def kill_processes_using(needle: str) -> list[int]:
    """Kill this user's processes whose command line holds `needle` (an attempt's own temp folder, which
    yt-dlp hands to the ffmpeg it starts); returns their pids. Linux (/proc) only; elsewhere nothing."""
    import signal

    killed = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle.encode() in cmdline.read_bytes():
                pid = int(cmdline.parent.name)
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        except (OSError, ValueError):
            continue
    return killed


def _check_download(path: Path) -> None:
    """A download that cannot be opened or has no video frames is incomplete (a cut connection).

    A file that is merely shorter than asked for passes: a source may end early, and `clip` reports that.
    """
    import av

    from uniform_cli.media.io import local_file

    try:
        with av.open(local_file(path)) as container:
            if not container.streams.video:
                raise StageError("incomplete", f"downloaded file has no video stream ({path.stat().st_size} bytes)")
            stream = container.streams.video[0]
            last = None
            for packet in container.demux(stream):
                if packet.pts is not None:
                    last = float(packet.pts * stream.time_base)
            if last is None:
                raise StageError("incomplete", "downloaded file has no video frames")
    except Exception as e:
        if isinstance(e, StageError):
            raise
        raise StageError("incomplete", f"downloaded file is unreadable: {e}") from None
