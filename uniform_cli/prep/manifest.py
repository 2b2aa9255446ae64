"""Manifests: the list of items a dataset is made of, and the data root its stages share.

Two formats are read (see manifests/README.md):
- VGGSound's own CSV, no header: `youtube_id,start_seconds,label,split` (labels may be quoted and contain
  commas; ids may start with `-`).
- The toolkit's headed CSV: `id,url,start,end,label,split` (`url` is an http(s) URL or a local path; `end`,
  `label` and `split` may be empty).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from uniform_cli.media.io import URL_SCHEME

YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
MEDIA_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts"}
TOOLKIT_COLUMNS = ["id", "url", "start", "end", "label", "split"]


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


def read_manifest(path: str | Path) -> list[ManifestItem]:
    """Read either manifest format; every problem (bad row, duplicate key) is reported together."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ManifestError(f"manifest {path} is empty")
    if _is_toolkit_header(rows[0]):
        items, problems = _read_toolkit(rows, path)
    else:
        items, problems = _read_vggsound(rows)
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.key in seen:
            problems.append(f"duplicate key {item.key!r} (rows {seen[item.key] + 1} and {i + 1})")
        seen.setdefault(item.key, i)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ManifestError(f"{path}: {len(problems)} problem(s):\n  {shown}{more}")
    return items


def _read_vggsound(rows: list[list[str]]) -> tuple[list[ManifestItem], list[str]]:
    items, problems = [], []
    for n, row in enumerate(rows, start=1):
        if len(row) != 4:
            problems.append(f"row {n}: expected youtube_id,start_seconds,label,split, got {len(row)} fields: {row}")
            continue
        vid, start, label, split = (c.strip() for c in row)
        if not YOUTUBE_ID.match(vid):
            problems.append(f"row {n}: {vid!r} is not a YouTube id")
            continue
        try:
            start_s = float(start)
        except ValueError:
            problems.append(f"row {n}: start {start!r} is not a number")
            continue
        if start_s < 0:
            problems.append(f"row {n}: negative start {start_s}")
            continue
        items.append(
            ManifestItem(
                key=youtube_key(vid, start_s),
                url=f"https://www.youtube.com/watch?v={vid}",
                start=start_s,
                end=start_s + 10.0,  # VGGSound segments are 10 s long
                label=label,
                split=split,
            )
        )
    return items, problems


def _read_toolkit(rows: list[list[str]], path: Path) -> tuple[list[ManifestItem], list[str]]:
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in ("id", "url", "start") if c not in header]
    if missing:
        return [], [f"header lacks column(s) {missing}; expected {','.join(TOOLKIT_COLUMNS)}"]
    items, problems = [], []
    for n, row in enumerate(rows[1:], start=2):
        rec = dict(zip(header, (c.strip() for c in row)))
        if len(row) != len(header):
            problems.append(f"row {n}: {len(row)} fields for {len(header)} columns")
            continue
        key, url = rec["id"], rec["url"]
        if not SAFE_KEY.match(key):
            problems.append(f"row {n}: id {key!r} may only hold letters, digits, '_' and '-'")
            continue
        if not url:
            problems.append(f"row {n}: empty url")
            continue
        if not url.startswith(("http://", "https://")):
            if URL_SCHEME.match(url):  # data:, file:, javascript: ... are schemes, not file names
                problems.append(f"row {n}: url {url!r} is neither http(s) nor a local path")
                continue
            local = Path(url)
            url = str(local if local.is_absolute() else (path.parent / local).resolve())
        try:
            start = float(rec["start"] or 0)
            end = float(rec["end"]) if rec.get("end") else None
        except ValueError:
            problems.append(f"row {n}: start/end must be numbers, got {rec['start']!r}/{rec.get('end')!r}")
            continue
        if start < 0 or (end is not None and end <= start):
            problems.append(f"row {n}: bad time range start={start} end={end}")
            continue
        items.append(ManifestItem(key, url, start, end, rec.get("label", ""), rec.get("split", "")))
    return items, problems


def folder_items(folder: str | Path) -> list[ManifestItem]:
    """Every media file in a folder (not recursive) as an item starting at 0; keys from file names."""
    folder = Path(folder)
    items = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES:
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
    """A manifest file or a folder of media files."""
    return folder_items(source) if Path(source).is_dir() else read_manifest(source)
