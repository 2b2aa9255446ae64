"""What every data stage shares: parts of the work, status tables, failure caps, workers, the result and its summary.

A stage keeps no hidden state. It appends one CSV row per finished item to its status table
(`ROOT/{table}.csv`, or `ROOT/{table}.part-I-of-N.csv` for part I of N of the work); the last row of a key wins,
so a rerun knows what is done. A killed run can leave at most one partial last line, which is ignored.

Every stage (fetch, clip, caption, encode) takes all the items and a `Part`, keeps the items its part owns
(`Part.select`), leaves out those done before (`drop_done`) and returns a `StageResult`, which each command
prints (`print_summary`) and turns into its exit code the same way.
"""

from __future__ import annotations

import csv
import io
import os
import time
import zlib
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from uniform_cli.atomic import open_append, read_complete

T = TypeVar("T")

OK = "ok"


class StageError(Exception):
    """An item failed for a known reason: `status` is the word recorded in the status table."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class TooManyFailures(RuntimeError):
    """The failure cap was passed; the run stops so that a systematic problem is noticed."""


@dataclass
class ItemResult:
    """What a stage's work function returns for one item (failures are raised as StageError)."""

    key: str
    status: str = OK
    error: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- parts of work


@dataclass(frozen=True)
class Part:
    """This process's part of the work (`--part I/N`): the items whose key hashes to `index` modulo `count`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"bad part {self.index}/{self.count}: need 0 <= I < N")

    def owns(self, key: str) -> bool:
        return zlib.crc32(key.encode()) % self.count == self.index

    def select(self, items: Iterable[T], key: Callable[[T], str] = lambda item: item.key) -> list[T]:
        """The items this part owns, in order."""
        return [item for item in items if self.owns(key(item))]

    @property
    def suffix(self) -> str:
        """'' for the whole work, '.part-I-of-N' otherwise (in the names of status tables and results files)."""
        return "" if self.count == 1 else f".part-{self.index}-of-{self.count}"


def parse_part(text: str | None, env: dict[str, str] | None = None) -> Part:
    """`--part I/N`, else torchrun's RANK/WORLD_SIZE, else SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT."""
    env = os.environ if env is None else env
    if text:
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--part must look like I/N (e.g. 0/4), not {text!r}") from None
        return Part(i, n)
    if "WORLD_SIZE" in env and "RANK" in env:
        return Part(int(env["RANK"]), int(env["WORLD_SIZE"]))
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return Part(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]))
    return Part()


def drop_done(items: Sequence[T], done: Callable[[T], bool]) -> tuple[list[T], int]:
    """The items still to do, and how many were done before (a stage's `skipped`)."""
    todo = [item for item in items if not done(item)]
    return todo, len(items) - len(todo)


# ---------------------------------------------------------------------------------------- status tables


class StatusTable:
    """Append-only CSV of item results with fixed columns `key,status,error,<fields...>`."""

    def __init__(self, path: str | Path, fields: Sequence[str]):
        """The table at `path` (see `for_part` for a stage's own), with its rows so far."""
        self.path = Path(path)
        self.columns = ["key", "status", "error", *fields]
        self.rows: dict[str, dict[str, str]] = {}
        if self.path.exists():
            self.rows = _read_rows(self.path)
        self._file = None

    @classmethod
    def for_part(cls, root: str | Path, name: str, part: Part, fields: Sequence[str]) -> "StatusTable":
        """The status table that `part`'s process of a stage writes: `ROOT/{name}{part.suffix}.csv`."""
        return cls(Path(root) / f"{name}{part.suffix}.csv", fields)

    def status(self, key: str) -> str | None:
        row = self.rows.get(key)
        return row["status"] if row else None

    def record(self, result: ItemResult) -> None:
        row = {"key": result.key, "status": result.status, "error": result.error.replace("\n", " ")}
        row.update({k: _cell(v) for k, v in result.fields.items()})
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path.name}: fields {sorted(unknown)} are not columns {self.columns}")
        self.rows[result.key] = row
        if self._file is None:
            self._file = open_append(self.path, csv_quotes=True)
            if self._file.tell() == 0:
                csv.writer(self._file).writerow(self.columns)
        buf = io.StringIO()
        csv.writer(buf).writerow([row.get(c, "") for c in self.columns])
        self._file.write(buf.getvalue())
        self._file.flush()

    def compact(self) -> None:
        """Rewrite the table with one row per key, atomically."""
        from uniform_cli.atomic import atomic_path

        self.close()
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
                writer.writeheader()
                for row in self.rows.values():
                    writer.writerow({c: row.get(c, "") for c in self.columns})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def _read_rows(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a status CSV, last row per key winning; blank and partial lines skipped."""
    rows: dict[str, dict[str, str]] = {}
    # Every complete row ends with a line break outside quotes: what follows the last one is a row cut off
    # by a kill, even when it happens to have the right number of fields.
    text = read_complete(path, csv_quotes=True)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        return rows
    for rec in reader:
        if len(rec) != len(header) or not rec[0]:
            continue
        row = dict(zip(header, rec))
        rows[row["key"]] = row
    return rows


def read_status(root: str | Path, stage: str) -> dict[str, dict[str, str]]:
    """Merge a stage's status tables (`{stage}.csv` and every part's) into one row per key."""
    root = Path(root)
    rows: dict[str, dict[str, str]] = {}
    for path in sorted(root.glob(f"{stage}.csv")) + sorted(root.glob(f"{stage}.part-*.csv")):
        rows.update(_read_rows(path))
    return rows


# ------------------------------------------------------------------------------------------ failure caps


@dataclass
class FailureGuard:
    """Stops a run whose failures pass a rate (judged after `min_items`) or a run of failures in a row."""

    max_rate: float = 0.5
    min_items: int = 50
    max_consecutive: int = 100
    done: int = 0
    failed: int = 0
    consecutive: int = 0

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        self.consecutive = 0 if ok else self.consecutive + 1
        if self.consecutive >= self.max_consecutive:
            raise TooManyFailures(
                f"{self.consecutive} items failed in a row; stopping (see the status table; "
                "raise the limit with --max-consecutive-failures if this is expected)"
            )
        if self.done >= self.min_items and self.failed / self.done > self.max_rate:
            raise TooManyFailures(
                f"{self.failed} of {self.done} items failed ({self.failed / self.done:.0%} > "
                f"--max-failures {self.max_rate:.0%}); stopping (see the status table)"
            )


# ------------------------------------------------------------------------------------------------ runner


def _call(work: Callable[[Any], ItemResult], item: Any, key: str) -> ItemResult:
    """Run one item; a StageError becomes its status, any other exception the status 'error'."""
    try:
        return work(item)
    except StageError as e:
        return ItemResult(key, e.status, str(e))
    except Exception as e:  # one bad item never stops the run
        return ItemResult(key, "error", f"{type(e).__name__}: {e}")


def run_stage(
    items: Sequence[Any],
    work: Callable[[Any], ItemResult],
    table: StatusTable,
    *,
    key: Callable[[Any], str] = lambda item: item.key,
    workers: int = 1,
    threads: bool = False,
    guard: FailureGuard | None = None,
    description: str = "working",
    on_result: Callable[[ItemResult], None] | None = None,
) -> Counter:
    """Run `work` on every item (in `workers` processes when > 1), recording each result as it ends.

    `work` must be a picklable top-level function when workers > 1, unless `threads` (for I/O-bound work:
    worker threads that can share in-process state such as a rate limiter). Returns a Counter of statuses.
    Raises TooManyFailures when `guard` trips; results recorded so far stay in the table.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    guard = guard or FailureGuard()
    counts: Counter = Counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True) as progress:
        bar = progress.add_task(description, total=len(items))

        def finish(result: ItemResult) -> None:
            table.record(result)
            counts[result.status] += 1
            if on_result:
                on_result(result)
            progress.advance(bar)
            guard.update(result.status == OK)

        try:
            if workers <= 1:
                for item in items:
                    finish(_call(work, item, key(item)))
            else:
                with (ThreadPoolExecutor if threads else ProcessPoolExecutor)(workers) as pool:
                    pending: set[Future] = set()
                    queue = iter(items)
                    for item in queue:  # keep at most 2 x workers in flight
                        pending.add(pool.submit(_call, work, item, key(item)))
                        if len(pending) >= 2 * workers:
                            done, pending = wait(pending, return_when=FIRST_COMPLETED)
                            for fut in done:
                                finish(fut.result())
                    for fut in _as_done(pending):
                        finish(fut.result())
        finally:
            table.close()
    return counts


def _as_done(futures: Iterable[Future]) -> Iterable[Future]:
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from done


# ------------------------------------------------------------------------------------------------ result


@dataclass
class StageResult:
    """What one process's run of a data stage did: every stage returns one, and every data command prints it
    (`print_summary`) and turns it into its exit code (`nothing_succeeded`)."""

    stage: str
    """The command: fetch, clip, caption or encode."""
    counts: Counter
    """This run's items by status word."""
    skipped: int
    """Items done before (by this process or another part's), not done again."""
    seconds: float
    table: Path
    """This process's status table."""
    outputs: Path
    """Where the stage writes its files."""
    errors: list[tuple[str, int]] = field(default_factory=list)
    """The most common error messages of the status table (their first 120 characters), with how many rows
    have each (`common_errors`)."""
    left_out: list[str] = field(default_factory=list)
    """Keys whose input the stage before (`needs`) has not made yet: neither tried nor recorded."""
    needs: str = ""
    """The stage that makes this one's input (fetch for clip, clip for encode)."""
    ok: tuple[str, ...] = (OK,)
    """The status words that mean done (fetch's `local` too)."""

    @property
    def nothing_succeeded(self) -> bool:
        """Items were meant for this run and none is done, now or before (a job script must notice)."""
        meant = sum(self.counts.values()) + len(self.left_out)
        return bool(meant) and not self.skipped and not any(self.counts.get(word, 0) for word in self.ok)


def common_errors(table: StatusTable, most: int = 5) -> list[tuple[str, int]]:
    """The `most` most common error messages among the table's failed rows (cut to 120 characters)."""
    errors = Counter(row["error"][:120] for row in table.rows.values() if row["status"] != OK and row["error"])
    return errors.most_common(most)


def print_summary(result: StageResult) -> None:
    """One screen: done / skipped / failed by reason, the most common errors, what was left out and where the
    files are."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(soft_wrap=True)  # a log keeps long paths and URLs on one line
    counts = result.counts
    summary = Table(title=f"uniform {result.stage}: {sum(counts.values())} items in {result.seconds:.1f} s")
    summary.add_column("status")
    summary.add_column("items", justify="right")
    for status, n in sorted(counts.items(), key=lambda kv: (kv[0] not in result.ok, -kv[1])):
        summary.add_row(status, str(n))
    if result.skipped:
        summary.add_row("skipped (done before)", str(result.skipped))
    console.print(summary)
    for message, n in result.errors:
        console.print(f"  [red]{n} x[/red] {escape(message)}")
    if result.left_out:
        console.print(
            f"{len(result.left_out)} item(s) have no `{result.needs}` output yet (e.g. {escape(result.left_out[0])}): "
            f"run `uniform {result.needs}` on them first; they were left out."
        )
    console.print(f"status table: {escape(str(result.table))}\noutputs: {escape(str(result.outputs))}")


def timer() -> Callable[[], float]:
    """Seconds since the call, as a function."""
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
