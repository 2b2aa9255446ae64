"""Manifests: the list of items a dataset is made of, and the data root its stages share.

Two formats are read (see manifests/README.md):
- VGGSound's own CSV, no header: `youtube_id,start_seconds,label,split` (labels may be quoted and contain
  commas; ids may start with `-`).
- The toolkit's headed CSV: `id,url,start,end,label,split` (`url` is an http(s) URL or a local path; `end`,
  `label` and `split` may be empty).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from uniform_cli.media.io import URL_SCHEME

YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
TOOLKIT_COLUMNS = ["id", "url", "start", "end", "label", "split"]
MAX_KEY = 200
"""Longest key: a key names files ({key}.mp4, {key}.tar.stats.json ...), and file names stop at 255 bytes."""
MAX_SECONDS = 1e7
"""Largest start or end time (about 115 days)."""


class ManifestError(ValueError):
    """A manifest that cannot be used; the message lists every bad row."""


@dataclass(frozen=True)
class ManifestItem:
    """One source clip. `key` is safe as a file name and a WebDataset key (no `.` or `/`)."""

    key: str
    url: str
    """An http(s) URL or an absolute local path."""
    start: float
    """Seconds into the source where the clip starts."""
    end: float | None
    """Seconds into the source where the source segment ends, if known."""
    label: str = ""
    split: str = ""

    @property
    def is_remote(self) -> bool:
        return self.url.startswith(("http://", "https://"))


def youtube_key(youtube_id: str, start: float) -> str:
    """VGGSound's own naming: `{youtube_id}_{start:06d}`."""
    return f"{youtube_id}_{int(start):06d}"


def _is_toolkit_header(row: list[str]) -> bool:
    return [c.strip().lower() for c in row[:2]] == ["id", "url"]


@dataclass(frozen=True)
class BadRow:
    """A manifest row that cannot be an item: its line in the file, its key when it has a usable one, and why."""

    line: int
    key: str | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}{f' (id {self.key!r})' if self.key else ''}: {self.reason}"


def read_manifest(path: str | Path) -> list[ManifestItem]:
    """Read either manifest format; every problem (bad row, duplicate key) is reported together."""
    items, bad = read_manifest_rows(path)
    if bad:
        shown = "\n  ".join(map(str, bad[:20]))
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ManifestError(f"{path}: {len(bad)} problem(s):\n  {shown}{more}")
    return items


def read_manifest_rows(path: str | Path) -> tuple[list[ManifestItem], list[BadRow]]:
    """The good items of a manifest and its bad rows (numbered as the file numbers its lines), so that a stage
    can record each bad row as a failed item and go on. A file that cannot be read as a manifest at all (missing,
    empty, not UTF-8, no usable header) is a ManifestError."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist or is not a file")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM (Excel's "CSV UTF-8") is not part of the first id
    except UnicodeDecodeError as err:
        raise ManifestError(f"manifest {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    for row in reader:
        if row and any(c.strip() for c in row):
            rows.append((reader.line_num, row))
    if not rows:
        raise ManifestError(f"manifest {path} is empty")
    if _is_toolkit_header(rows[0][1]):
        items, bad = _read_toolkit(rows, path)
    else:
        items, bad = _read_vggsound(rows)
    seen: dict[str, int] = {}
    unique = []
    for line, item in items:
        if item.key in seen:
            bad.append(BadRow(line, None, f"duplicate key {item.key!r} (first on line {seen[item.key]})"))
            continue
        seen[item.key] = line
        unique.append(item)
    return unique, sorted(bad, key=lambda b: b.line)


def _time(text: str, what: str) -> float:
    """A time in seconds: a finite number in [0, MAX_SECONDS]; ValueError saying which it is not."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise ValueError(f"{what} {text!r} is not a time between 0 and {MAX_SECONDS:g} s")
    return value


def _read_vggsound(rows: list[tuple[int, list[str]]]) -> tuple[list[tuple[int, ManifestItem]], list[BadRow]]:
    items, bad = [], []
    for line, row in rows:
        if len(row) != 4:
            bad.append(BadRow(line, None, f"expected youtube_id,start_seconds,label,split, got {len(row)} fields: "
                                          f"{row}"))
            continue
        vid, start, label, split = (c.strip() for c in row)
        if not YOUTUBE_ID.match(vid):
            bad.append(BadRow(line, None, f"{vid!r} is not a YouTube id"))
            continue
        try:
            start_s = _time(start, "start")
        except ValueError as err:
            bad.append(BadRow(line, None, str(err)))
            continue
        item = ManifestItem(
            key=youtube_key(vid, start_s),
            url=f"https://www.youtube.com/watch?v={vid}",
            start=start_s,
            end=start_s + 10.0,  # VGGSound segments are 10 s long
            label=label,
            split=split,
        )
        items.append((line, item))
    return items, bad


def _read_toolkit(rows: list[tuple[int, list[str]]], path: Path) -> tuple[list[tuple[int, ManifestItem]], list[BadRow]]:
    header = [c.strip().lower() for c in rows[0][1]]
    missing = [c for c in ("id", "url", "start") if c not in header]
    if missing:
        raise ManifestError(f"{path}: the header lacks column(s) {missing}; expected {','.join(TOOLKIT_COLUMNS)}")
    items, bad = [], []
    for line, row in rows[1:]:
        rec = dict(zip(header, (c.strip() for c in row)))
        key = rec.get("id", "")
        good_key = key if SAFE_KEY.match(key) and len(key) <= MAX_KEY else None
        if len(row) != len(header):
            bad.append(BadRow(line, good_key, f"{len(row)} fields for {len(header)} columns"))
            continue
        url = rec["url"]
        if not good_key:
            bad.append(BadRow(line, None, f"id {key!r} may only hold letters, digits, '_' and '-' "
                                          f"(at most {MAX_KEY} characters)"))
            continue
        if not url:
            bad.append(BadRow(line, key, "empty url"))
            continue
        if not url.startswith(("http://", "https://")):
            if URL_SCHEME.match(url):  # data:, file:, javascript: ... are schemes, not file names
                bad.append(BadRow(line, key, f"url {url!r} is neither http(s) nor a local path"))
                continue
            local = Path(url)
            url = str(local if local.is_absolute() else (path.parent / local).resolve())
        try:
            start = _time(rec["start"] or "0", "start")
            end = _time(rec["end"], "end") if rec.get("end") else None
        except ValueError as err:
            bad.append(BadRow(line, key, str(err)))
            continue
        if end is not None and end <= start:
            bad.append(BadRow(line, key, f"bad time range start={start} end={end}"))
            continue
        items.append((line, ManifestItem(key, url, start, end, rec.get("label", ""), rec.get("split", ""))))
    return items, bad


def folder_items(folder: str | Path) -> list[ManifestItem]:
    """Every file in a folder (not recursive; hidden files aside) as an item starting at 0, keys from file names:
    what is not a clip's source becomes a failed item of the stage that reads it (an audio-only `.m4a` is
    `no_video`, a text file `decode_error`), never silently left out."""
    folder = Path(folder)
    items = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            key = re.sub(r"[^A-Za-z0-9_-]", "_", p.stem)
            items.append(ManifestItem(key=key, url=str(p.resolve()), start=0.0, end=None))
    keys = [i.key for i in items]
    dups = sorted({k for k in keys if keys.count(k) > 1})
    if dups:
        raise ManifestError(f"{folder}: files map to the same key(s) {dups}; rename them")
    return items


def default_root(source: str | Path) -> Path:
    """`data/<manifest or folder name>/`, the root every stage shares unless `--root` says otherwise."""
    return Path("data") / Path(source).stem


def read_items(source: str | Path) -> list[ManifestItem]:
    """A manifest file or a folder of media files (a manifest with bad rows is a ManifestError listing them)."""
    return folder_items(source) if Path(source).is_dir() else read_manifest(source)
