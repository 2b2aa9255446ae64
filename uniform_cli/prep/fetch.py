"""`fetch`: download the needed seconds of each remote manifest item with yt-dlp.

Only the time range `[start - margin, start + seconds + margin]` is downloaded (yt-dlp hands ranges to
ffmpeg, which stream-copies from the keyframe before the range; `clip` cuts exactly). The file's t = 0 is
the range's start, recorded as `offset` in `ROOT/fetch.csv`, so `clip` seeks to `start - offset`.

Workers are threads, not processes: the work is waiting on the network and on the ffmpeg subprocess, so
the GIL costs nothing, and one in-process `RateLimiter` is then an exact global limit (a 429 pauses every
worker at once). Separate shards (`--shard I/N` on several machines) each have their own limit.

Failures are classified: permanent ones (unavailable, private, age-restricted, geo-blocked, forbidden) are
never retried; transient ones (network errors, HTTP 5xx, 429, cut downloads) are retried with exponential
backoff and jitter, 429 honouring Retry-After, and again on the next run.
"""

from __future__ import annotations

import email.utils
import os
import random
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from uniform_cli.atomic import atomic_path, sweep_temp, temp_beside
from uniform_cli.media.io import URL_SCHEME
from uniform_cli.prep.manifest import BadRow, ManifestItem
from uniform_cli.stage import OK, ItemResult, StageError

LOCAL = "local"
FETCH_FIELDS = ["path", "offset", "start", "url", "attempts", "format"]

# Status words. Permanent failures are skipped by a rerun (unless --retry-failed); the rest are retried.
BAD_ROW = "bad_row"
PERMANENT = {"unavailable", "private", "age_restricted", "geo_blocked", "forbidden", "bad_url"}
RETRYABLE = {"rate_limited", "server_error", "network_error", "incomplete", "bot_check", "error", "timeout"}
DONE = {OK, LOCAL}

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


@dataclass(frozen=True)
class FetchOptions:
    """How each item is fetched."""

    root: str
    seconds: float = 4.0
    """Clip length needed after the item's start."""
    margin: float = 2.0
    """Extra seconds downloaded before and after (stream copy starts at a keyframe; clip cuts exactly)."""
    retries: int = 4
    """Retries of a transient failure within this run."""
    backoff: float = 2.0
    """First retry delay in seconds; doubled each retry, with jitter."""
    max_wait: float = 300.0
    """Longest single wait (also caps Retry-After)."""
    cookies: str | None = None
    socket_timeout: float = 30.0
    """Seconds a connection may be silent."""
    deadline: float = 600.0
    """Seconds one download attempt may take in all: a server that trickles a byte a second or stalls after
    the headers is cut off then (status `timeout`, retried like other transient failures)."""


# -------------------------------------------------------------------------------------------- rate limit


class RateLimiter:
    """At most `rate` download starts per second across all worker threads; `pause` stops them all."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)

    def pause(self, seconds: float) -> None:
        """Nobody starts a download for `seconds` (a server said 429 / Retry-After)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


# ------------------------------------------------------------------------------------------ classifying


@dataclass(frozen=True)
class Failure:
    """A classified download failure."""

    status: str
    message: str
    retry_after: float | None = None

    @property
    def transient(self) -> bool:
        return self.status in RETRYABLE


_MESSAGE_RULES = [  # (status, pattern on the lower-cased message); first match wins
    ("private", r"private video|video is private"),
    ("age_restricted", r"confirm your age|age[- ]restricted|inappropriate for some users"),
    ("geo_blocked", r"available in your country|geo[- ]?restrict|blocked it in your country"),
    ("bot_check", r"not a bot|sign in to confirm"),
    ("rate_limited", r"http error 429|too many requests"),
    ("server_error", r"http error 5\d\d"),
    ("unavailable", r"http error (?:404|410)|video unavailable|has been removed|no longer available"
     r"|account .* terminated|does not exist|unsupported url|is not a valid url|not available"),
    ("forbidden", r"http error 403"),
    ("network_error", r"timed out|timeout|connection|reset by peer|temporary failure|unable to download"
     r"|ffmpeg exited|incomplete|eof|broken pipe|network is unreachable|name resolution|ssl"),
]


def classify_error(exc: BaseException) -> Failure:
    """Status word for a yt-dlp error, from its cause (`exc_info`: HTTP status, geo error) or its message."""
    from yt_dlp.utils import DownloadError, GeoRestrictedError

    cause = exc
    if isinstance(exc, DownloadError) and exc.exc_info and exc.exc_info[1] is not None:
        cause = exc.exc_info[1]
    seen = set()
    while cause is not None and id(cause) not in seen:  # follow ExtractorError.cause chains
        seen.add(id(cause))
        if isinstance(cause, GeoRestrictedError):
            return Failure("geo_blocked", _short(exc))
        status = getattr(cause, "status", None)
        if isinstance(status, int) and hasattr(cause, "response"):
            return _from_http(status, cause, exc)
        cause = getattr(cause, "cause", None) or cause.__cause__
    text = _short(exc).lower()
    for status, pattern in _MESSAGE_RULES:
        if re.search(pattern, text):
            return Failure(status, _short(exc))
    return Failure("error", _short(exc))


def _from_http(status: int, http_error, exc: BaseException) -> Failure:
    message = _short(exc)
    if status == 429:
        headers = getattr(getattr(http_error, "response", None), "headers", None) or {}
        return Failure("rate_limited", message, parse_retry_after(headers.get("Retry-After")))
    if status >= 500:
        return Failure("server_error", message)
    if status in (404, 410):
        return Failure("unavailable", message)
    if status in (401, 403):
        return Failure("forbidden", message + " (private or blocked; --cookies may help)")
    if status == 408:
        return Failure("network_error", message)
    return Failure("error", message)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).replace("ERROR: ", "").strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random = random.Random()) -> float:
    """Exponential backoff with full jitter: uniform in [base * 2^attempt / 2, base * 2^attempt], capped."""
    top = min(cap, base * (2**attempt))
    return rng.uniform(top / 2, top)


# ------------------------------------------------------------------------------------------ downloading


def section(item: ManifestItem, seconds: float, margin: float) -> tuple[float, float]:
    """The source time range to download: the clip plus a margin on both sides."""
    return max(0.0, item.start - margin), item.start + seconds + margin


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


def raw_path(root: str | Path, key: str) -> Path:
    """ROOT/raw/{key}.mp4, refusing anything that would land outside ROOT/raw."""
    base = (Path(root) / "raw").resolve()
    path = (base / f"{key}.mp4").resolve()
    if path.parent != base or not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        raise StageError("bad_key", f"key {key!r} would write outside {base}")
    return path


def download_once(item: ManifestItem, options: FetchOptions) -> tuple[Path, float, str]:
    """One yt-dlp attempt; returns (output path, offset of its t = 0 in the source, format id)."""
    import yt_dlp
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor
    from yt_dlp.utils import download_range_func

    if not item.is_remote:
        raise StageError("bad_url", f"{item.url!r} is not an http(s) URL; only those are downloaded")
    out = raw_path(options.root, item.key)
    lo, hi = section(item, options.seconds, options.margin)
    ffmpeg = require_ffmpeg()
    # yt-dlp asks "is ffmpeg there?" of this context variable, not of its params (yt-dlp's own CLI sets it too);
    # set per call, since each worker thread has its own context
    FFmpegPostProcessor._ffmpeg_location.set(ffmpeg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(out.with_suffix(""))  # a folder for yt-dlp's parts; a killed run's is swept
    tmp.mkdir()
    late = threading.Event()
    too_long = f"the download took longer than {options.deadline:g} s"

    def cut_off() -> None:  # the deadline passed: stop yt-dlp (its next progress hook) and its ffmpeg
        late.set()
        kill_processes_using(str(tmp))

    def check_deadline(_status: dict) -> None:
        if late.is_set():
            raise StageError("timeout", too_long)

    timer = threading.Timer(options.deadline, cut_off)
    timer.daemon = True
    timer.start()
    try:
        params = {
            "format": select_format,
            "download_ranges": download_range_func(None, [(lo, hi)]),
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
            "socket_timeout": options.socket_timeout,
            "cookiefile": options.cookies,
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
    return out, lo, str(info.get("format_id", ""))


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


def fetch_item(item: ManifestItem, options: FetchOptions, limiter: RateLimiter) -> ItemResult:
    """Fetch one item, retrying transient failures; a local path is recorded as 'local' and left in place."""
    if not item.is_remote:
        if URL_SCHEME.match(item.url):
            return ItemResult(item.key, "bad_url", f"{item.url!r}: only http(s) URLs and local paths are accepted")
        if not Path(item.url).is_file():
            return ItemResult(item.key, "missing_file", f"local file {item.url} does not exist")
        return ItemResult(item.key, LOCAL, fields={"path": item.url, "offset": 0, "start": item.start, "url": item.url})
    from yt_dlp.utils import DownloadError

    fields = {"start": item.start, "url": item.url}
    attempt = 0
    while True:
        limiter.wait()
        attempt += 1
        try:
            out, offset, fmt = download_once(item, options)
            path = out.relative_to(Path(options.root).resolve()).as_posix()
            return ItemResult(item.key, OK, fields={**fields, "path": path, "offset": offset, "attempts": attempt, "format": fmt})
        except DownloadError as e:
            failure = classify_error(e)
        except StageError as e:
            failure = Failure(e.status, str(e))
        # A bot check does not pass by retrying at once; it needs cookies or a pause of hours.
        if not failure.transient or failure.status == "bot_check" or attempt > options.retries:
            message = f"{failure.message} (attempt {attempt})"
            return ItemResult(item.key, failure.status, message, fields={**fields, "attempts": attempt})
        delay = backoff_delay(attempt - 1, options.backoff, options.max_wait)
        if failure.retry_after is not None:
            delay = min(options.max_wait, max(delay, failure.retry_after))
            limiter.pause(delay)  # the server asked everyone to slow down
        time.sleep(delay)


def needs_fetch(status: str | None, retry_failed: bool) -> bool:
    """Whether a rerun fetches an item with this recorded status."""
    if status is None or status == BAD_ROW:  # a row that is an item now was corrected since
        return True
    if status in DONE:
        return False
    return retry_failed or status not in PERMANENT


def bad_row_key(row: BadRow) -> str:
    """The status-table key of a bad manifest row: its id when usable, else `line-N`."""
    return row.key or f"line-{row.line}"


def plan_fetch(items: list[ManifestItem], root: Path, rows: dict[str, dict[str, str]], retry_failed: bool) -> list[ManifestItem]:
    """Items this run fetches: new ones, retryable failures, and done ones whose file has gone."""
    todo = []
    for item in items:
        row = rows.get(item.key)
        status = row["status"] if row else None
        if status == OK and not (root / row.get("path", "")).is_file():
            status = None
        if needs_fetch(status, retry_failed):
            todo.append(item)
    return todo


def run_fetch(
    items: list[ManifestItem],
    root: str | Path,
    options: FetchOptions,
    *,
    workers: int = 4,
    rate_limit: float | None = 2.0,
    guard=None,
    table_suffix: str = "",
    retry_failed: bool = False,
    bad_rows: Sequence[BadRow] = (),
):
    """Fetch every item that needs it (see `plan_fetch`); returns (status counts, items skipped, table).
    Each of `bad_rows` (manifest rows that are no item) is recorded as a `bad_row` failure with its reason."""
    from functools import partial

    from uniform_cli.stage import StatusTable, read_status, run_items

    root = Path(root)
    todo = plan_fetch(items, root, read_status(root, "fetch"), retry_failed)
    if any(item.is_remote for item in todo):
        require_ffmpeg()
    if options.cookies and not Path(options.cookies).is_file():
        raise FetchSetupError(f"--cookies {options.cookies}: no such file (export one in Netscape format)")
    (root / "raw").mkdir(parents=True, exist_ok=True)
    sweep_temp(root / "raw")
    table = StatusTable(root / f"fetch{table_suffix}.csv", FETCH_FIELDS)
    limiter = RateLimiter(rate_limit)
    local_counts: Counter = Counter()
    for row in bad_rows:
        table.record(ItemResult(bad_row_key(row), BAD_ROW, str(row)))
        local_counts[BAD_ROW] += 1
    for item in todo:  # local files need no download: recorded at once, outside the failure cap
        if not item.is_remote:
            result = fetch_item(item, options, limiter)
            table.record(result)
            local_counts[result.status] += 1
    remote = [item for item in todo if item.is_remote]
    work = partial(fetch_item, options=options, limiter=limiter)
    counts = run_items(remote, work, table, workers=workers, threads=True, guard=guard, description="fetch")
    return counts + local_counts, len(items) - len(todo), table
