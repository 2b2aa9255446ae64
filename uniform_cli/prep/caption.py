"""The caption stage: one text per clip in `ROOT/captions.csv` (key, status, error, text, captioner, model).

Video captioners read the clips the clip stage made (`ROOT/clips.csv`, status ok); the label captioner needs
only the manifest. Items are captioned in batches; a caption that is empty, one phrase looping, or an echo
of the prompt is recorded with that status word instead of `ok`. A rerun skips keys already captioned by
the same captioner and model (degenerate ones too, since greedy decoding would repeat them, unless
`redo_degenerate`) and retries the rest.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from uniform_cli.prep.captioners import CaptionError, Captioner, CaptionInput
from uniform_cli.prep.captioners.degenerate import DEGENERATE, degenerate_status
from uniform_cli.prep.manifest import ManifestItem, read_items
from uniform_cli.stage import (
    OK,
    FailureGuard,
    ItemResult,
    Shard,
    StageError,
    StatusTable,
    print_summary,
    read_status,
    run_items,
    timer,
)

STAGE = "caption"
TABLE = "captions"
FIELDS = ["text", "captioner", "model"]
CAPTIONERS = ("pllava", "labels", "hf")


@dataclass
class CaptionReport:
    """What a caption run did: status counts, keys skipped as done, and the status table."""

    counts: dict[str, int]
    skipped: int
    table: Path
    seconds: float


@dataclass(frozen=True)
class CaptionJob:
    """One key to caption and where its clip is (None for label captions)."""

    key: str
    video: Path | None
    label: str = ""


@dataclass
class BatchedWork:
    """`run_items`' work function that captions `batch_size` jobs at a time.

    run_items calls it once per job, in order; the first call of each batch captions the whole batch
    (frames decoded in threads) and later calls return the stored results.
    """

    jobs: Sequence[CaptionJob]
    captioner: Captioner
    batch_size: int
    decode_threads: int = 4
    done: dict[str, ItemResult | StageError] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.position = {job.key: i for i, job in enumerate(self.jobs)}

    def __call__(self, job: CaptionJob) -> ItemResult:
        if job.key not in self.done:
            start = self.position[job.key]
            self.run_batch(self.jobs[start : start + self.batch_size])
        result = self.done.pop(job.key)
        if isinstance(result, StageError):
            raise result
        return result

    def run_batch(self, jobs: Sequence[CaptionJob]) -> None:
        ready: list[CaptionInput] = []
        for job, frames in zip(jobs, self.load_frames(jobs)):
            if isinstance(frames, StageError):
                self.done[job.key] = frames
            else:
                ready.append(CaptionInput(job.key, frames, job.label))
        if not ready:
            return
        try:
            texts = self.captioner.caption(ready)
        except Exception as err:  # a whole batch failed (e.g. out of memory): every item records why
            for item in ready:
                self.done[item.key] = StageError("error", f"captioning failed: {type(err).__name__}: {err}")
            return
        for item, text in zip(ready, texts):
            self.done[item.key] = self.result(item, text)

    def load_frames(self, jobs: Sequence[CaptionJob]) -> list:
        if not self.captioner.num_frames:
            return [None] * len(jobs)
        from uniform_cli.media.io import MediaError
        from uniform_cli.prep.captioners.frames import sample_frames

        def one(job: CaptionJob):
            try:
                return sample_frames(job.video, self.captioner.num_frames)
            except MediaError as err:
                return StageError("unreadable", str(err))

        with ThreadPoolExecutor(max(1, min(self.decode_threads, len(jobs)))) as pool:
            return list(pool.map(one, jobs))

    def result(self, item: CaptionInput, text: str) -> ItemResult:
        fields = {"text": text, "captioner": self.captioner.name, "model": self.captioner.model}
        bad = degenerate_status(text, self.captioner.prompt)
        if bad is not None:
            return ItemResult(item.key, bad[0], bad[1], fields)
        return ItemResult(item.key, OK, "", fields)


def clip_path(root: Path, key: str, row: dict[str, str]) -> Path:
    """The clip file named in a clips.csv row (absolute, or relative to the root), else ROOT/clips/{key}.mp4."""
    video = row.get("video", "")
    if not video:
        return root / "clips" / f"{key}.mp4"
    path = Path(video)
    return path if path.is_absolute() else root / path


def plan_jobs(
    items: Sequence[ManifestItem], root: Path, needs_video: bool, source_is_folder: bool
) -> tuple[list[CaptionJob], list[ItemResult]]:
    """Jobs for the items that can be captioned, and failure rows for those that cannot (no clip, no label)."""
    clips = read_status(root, "clips") if needs_video else {}
    if needs_video and not clips and not source_is_folder:
        raise CaptionError(
            f"no clips table under {root} (clips.csv); run `uniform clip` on the same manifest first, or pass "
            "the right --root"
        )
    jobs, failures = [], []
    for item in items:
        row = clips.get(item.key)
        label = item.label or (row or {}).get("label", "")
        if not needs_video:
            if label.strip():
                jobs.append(CaptionJob(item.key, None, label))
            else:
                failures.append(ItemResult(item.key, "no_label", "the manifest has no label for this key"))
            continue
        if row is not None and row.get("status") == OK:
            jobs.append(CaptionJob(item.key, clip_path(root, item.key, row), label))
        elif source_is_folder and row is None:
            jobs.append(CaptionJob(item.key, Path(item.url), label))  # ad-hoc: caption the files themselves
        else:
            why = f"the clip stage recorded {row['status']!r}" if row else "the clip stage has no row for it"
            failures.append(ItemResult(item.key, "no_clip", f"no clip to caption ({why}); rerun `uniform clip`"))
    return jobs, failures


def is_done(row: dict[str, str] | None, name: str, model: str, redo_degenerate: bool) -> bool:
    """A key is done when the same captioner and model gave it an ok (or, unless redoing, degenerate) caption."""
    if row is None or row.get("captioner") != name or row.get("model") != model:
        return False
    return row["status"] == OK or (row["status"] in DEGENERATE and not redo_degenerate)


def run_caption(
    source: str | Path,
    root: Path,
    name: str,
    model: str,
    make_captioner: Callable[[], Captioner],
    *,
    batch_size: int = 8,
    shard: Shard = Shard(),
    guard: FailureGuard | None = None,
    redo_degenerate: bool = False,
    summary: bool = True,
) -> CaptionReport:
    """Caption every item of `source` (manifest or folder) owned by `shard` into `root/captions[.shard].csv`.

    `name` and `model` are what the captioner writes in the `captioner` and `model` columns; rows that match
    them are done. `make_captioner` is called only when something is left to caption (loading a 7B model takes
    a while).
    """
    if name not in CAPTIONERS:
        raise CaptionError(f"unknown captioner {name!r}; pick one of {', '.join(CAPTIONERS)}")
    needs_video = name != "labels"
    if batch_size < 1:
        raise CaptionError(f"--batch-size must be >= 1, got {batch_size}")
    elapsed = timer()
    items = [item for item in read_items(source) if shard.owns(item.key)]
    table = StatusTable(root / f"{TABLE}{shard.suffix}.csv", FIELDS)
    jobs, failures = plan_jobs(items, root, needs_video, Path(source).is_dir())
    counts: dict[str, int] = {}
    for failure in failures:
        table.record(failure)
        counts[failure.status] = counts.get(failure.status, 0) + 1
    table.close()
    todo = [job for job in jobs if not is_done(table.rows.get(job.key), name, model, redo_degenerate)]
    skipped = len(jobs) - len(todo)
    if todo:
        captioner = make_captioner()
        work = BatchedWork(todo, captioner, batch_size)
        done = run_items(todo, work, table, key=lambda job: job.key, guard=guard, description="captioning")
        for status, n in done.items():
            counts[status] = counts.get(status, 0) + n
    report = CaptionReport(counts, skipped, table.path, elapsed())
    if summary:
        from collections import Counter

        print_summary(STAGE, Counter(counts), skipped, table, report.seconds, str(table.path))
    return report
