"""Safe file writes: a stage killed at any point leaves nothing half-written that a rerun would trust, and no
write follows a symbolic link planted at its path (an append would otherwise truncate and extend the link's
target, wherever it is).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import uuid
from pathlib import Path
from typing import IO, Iterator

import numpy as np


class UnsafePathError(OSError):
    """A path to be written is a symbolic link or not a regular file; nothing was written."""


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp(\.[^.]*)?$")


def temp_beside(path: str | Path) -> Path:
    """A fresh temporary name beside `path` (same suffix, so writers that go by it still do), naming this host
    and process, so that `sweep_temp` can tell a killed run's leftovers from a live run's work."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def sweep_temp(folder: str | Path) -> list[Path]:
    """Delete the temporary files and folders (`temp_beside` names) in `folder` that processes of this host which
    are no longer running left behind (a killed run); returns them. Other hosts' and live processes' are kept."""
    import shutil

    gone = []
    folder = Path(folder)
    for path in folder.glob(".*.tmp*") if folder.is_dir() else ():
        match = _TEMP.match(path.name)
        if not match or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        gone.append(path)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name that the writer creates itself (normal permissions); same folder, so the rename is atomic.
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a whole text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def complete_prefix(data: bytes, csv_quotes: bool = False) -> int:
    """The length of the part of `data` that ends with a complete line: after the last line break, or with
    `csv_quotes` after the last line break outside a quoted CSV field (a field may hold line breaks)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    breaks = np.flatnonzero(buf == ord("\n"))
    if csv_quotes and len(breaks):
        quotes_before = np.cumsum(buf == ord('"'))[breaks]  # a break is between records iff this is even
        breaks = breaks[quotes_before % 2 == 0]
    return int(breaks[-1]) + 1 if len(breaks) else 0


def read_complete(path: str | Path, csv_quotes: bool = False) -> str:
    """The text of a line file (a status table, a results file) up to its last complete line: a line cut off by a
    killed run is left out (see `complete_prefix`; `csv_quotes` for CSV). Bytes that are not UTF-8 are replaced."""
    data = Path(path).read_bytes()
    return data[: complete_prefix(data, csv_quotes)].decode("utf-8", errors="replace")


def open_append(path: str | Path, csv_quotes: bool = False) -> IO[str]:
    """Open a line file (a status table, results.jsonl) for appending text. A symbolic link at `path`, or a
    directory or FIFO, is refused (UnsafePathError); a partial last line left by a killed run is cut first
    (see `complete_prefix`), so an appended line never joins it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if path.is_symlink() or path.exists():
            raise UnsafePathError(
                f"{path} is a symbolic link or not a regular file; refusing to write through it (remove it)"
            ) from err
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{path} is not a regular file; refusing to append to it")
        os.set_blocking(fd, True)
        size = os.fstat(fd).st_size
        if size:
            keep = complete_prefix(os.pread(fd, size, 0), csv_quotes)
            if keep < size:
                os.ftruncate(fd, keep)
        return os.fdopen(fd, "a", newline="", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


class Busy(RuntimeError):
    """Another process holds the lock of the work this one was asked to do."""


@contextlib.contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created, never followed as a link) for the block, so that two
    runs of the same work (`what`) on one folder never meet; Busy at once when another process holds it. The
    lock goes with the process, so a killed run never leaves it held."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another {what} is running ({path} is locked); wait for it or stop it") from None
        yield
    finally:
        os.close(fd)
