"""`fetch`: download the needed seconds of each remote manifest item with yt-dlp.

Only the time range `[start - margin, start + seconds + margin]` is downloaded (download.py). The file's t = 0
is the range's start, recorded as `offset` in `ROOT/fetch.csv`, so `clip` seeks to `start - offset`.

Workers are threads, not processes: the work is waiting on the network and on the ffmpeg subprocess, so
the GIL costs nothing, and one in-process `RateLimiter` is then an exact global limit (a 429 pauses every
worker at once). Separate parts (`--part I/N` on several machines) each have their own limit.

Failures are classified (retry.py): permanent ones are never retried, transient ones are retried with backoff
within the run and again on the next run.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

from uniform_cli.atomic import sweep_temp
from uniform_cli.media.io import URL_SCHEME
from uniform_cli.prep.download import FetchSetupError, download_range, require_ffmpeg
from uniform_cli.prep.manifest import BadRow, ManifestItem
from uniform_cli.prep.retry import PERMANENT, Failure, RateLimiter, backoff_delay, classify_error
from uniform_cli.stage import (
    OK,
    FailureGuard,
    ItemResult,
    Part,
    StageError,
    StageResult,
    StatusTable,
    common_errors,
    drop_done,
    read_status,
    run_stage,
    timer,
)

LOCAL = "local"
FETCH_FIELDS = ["path", "offset", "start", "url", "attempts", "format"]
BAD_ROW = "bad_row"
DONE = (OK, LOCAL)


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


def section(item: ManifestItem, seconds: float, margin: float) -> tuple[float, float]:
    """The source time range to download: the clip plus a margin on both sides."""
    return max(0.0, item.start - margin), item.start + seconds + margin


def raw_path(root: str | Path, key: str) -> Path:
    """ROOT/raw/{key}.mp4, refusing anything that would land outside ROOT/raw."""
    base = (Path(root) / "raw").resolve()
    path = (base / f"{key}.mp4").resolve()
    if path.parent != base or not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        raise StageError("bad_key", f"key {key!r} would write outside {base}")
    return path


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
    out = raw_path(options.root, item.key)
    lo, hi = section(item, options.seconds, options.margin)
    attempt = 0
    while True:
        limiter.wait()
        attempt += 1
        try:
            fmt = download_range(item, out, (lo, hi), cookies=options.cookies, socket_timeout=options.socket_timeout,
                                 deadline=options.deadline)
            path = out.relative_to(Path(options.root).resolve()).as_posix()
            return ItemResult(item.key, OK, fields={**fields, "path": path, "offset": lo, "attempts": attempt, "format": fmt})
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


def fetched_before(row: dict[str, str] | None, root: Path, retry_failed: bool) -> bool:
    """Whether a rerun leaves an item with this status row alone: done (and, when downloaded, its file is still
    there) or failed for good (unless `retry_failed`); see `needs_fetch`."""
    status = row["status"] if row else None
    if status == OK and not (root / row.get("path", "")).is_file():
        status = None
    return not needs_fetch(status, retry_failed)


def run_fetch(
    items: Sequence[ManifestItem],
    root: str | Path,
    options: FetchOptions,
    *,
    part: Part = Part(),
    workers: int = 4,
    rate_limit: float | None = 2.0,
    guard: FailureGuard | None = None,
    retry_failed: bool = False,
    bad_rows: Sequence[BadRow] = (),
) -> StageResult:
    """Fetch every item of `part` that needs it (see `fetched_before`). Each of `part`'s `bad_rows` (manifest
    rows that are no item) is recorded as a `bad_row` failure with its reason."""
    elapsed = timer()
    root = Path(root)
    rows = read_status(root, "fetch")
    todo, skipped = drop_done(part.select(items), lambda item: fetched_before(rows.get(item.key), root, retry_failed))
    if any(item.is_remote for item in todo):
        require_ffmpeg()
    if options.cookies and not Path(options.cookies).is_file():
        raise FetchSetupError(f"--cookies {options.cookies}: no such file (export one in Netscape format)")
    (root / "raw").mkdir(parents=True, exist_ok=True)
    sweep_temp(root / "raw")
    table = StatusTable.for_part(root, "fetch", part, FETCH_FIELDS)
    limiter = RateLimiter(rate_limit)
    first = [ItemResult(bad_row_key(row), BAD_ROW, str(row)) for row in part.select(bad_rows, key=bad_row_key)]
    # local files need no download: recorded at once, outside the failure cap
    first += [fetch_item(item, options, limiter) for item in todo if not item.is_remote]
    for result in first:
        table.record(result)
    remote = [item for item in todo if item.is_remote]
    work = partial(fetch_item, options=options, limiter=limiter)
    counts = run_stage(remote, work, table, workers=workers, threads=True, guard=guard, description="fetch")
    counts.update(result.status for result in first)
    return StageResult("fetch", counts, skipped, elapsed(), table.path, root / "raw", errors=common_errors(table),
                       ok=DONE)
