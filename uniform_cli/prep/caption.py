"""The caption stage: one text per clip in `ROOT/captions.csv` (key, status, error, text, captioner, model).

Video captioners read the clips the clip stage made (`ROOT/clips.csv`, status ok); the label captioner needs
only the manifest. Items are captioned in batches; a caption that is empty, one phrase looping, or an echo
of the prompt is recorded with that status word instead of `ok`. A rerun skips keys already captioned by
the same captioner and model (degenerate ones too, since greedy decoding would repeat them, unless
`redo_degenerate`) and retries the rest.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from uniform_cli.prep.captioners import CaptionerConfig, build_captioner
from uniform_cli.prep.captioners.contract import Captioner, CaptionError, CaptionInput
from uniform_cli.prep.captioners.degenerate import DEGENERATE, degenerate_status
from uniform_cli.prep.manifest import ManifestItem, read_items
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

TABLE = "captions"
FIELDS = ["text", "captioner", "model"]


@dataclass(frozen=True)
class CaptionJob:
    """One key to caption and where its clip is (None for label captions)."""

    key: str
    video: Path | None
    label: str = ""


@dataclass
class BatchedWork:
    """`run_stage`'s work function that captions `batch_size` jobs at a time.

    run_stage calls it once per job, in order; the first call of each batch captions the whole batch
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


def plan_captions(
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


def captioned_by(row: dict[str, str] | None, name: str, model: str, redo_degenerate: bool) -> bool:
    """Whether a captions.csv row holds an ok (or, unless redoing, degenerate) caption by this captioner and model."""
    if row is None or row.get("captioner") != name or row.get("model") != model:
        return False
    return row["status"] == OK or (row["status"] in DEGENERATE and not redo_degenerate)


def run_caption(
    source: str | Path,
    root: Path,
    captioner: CaptionerConfig,
    *,
    batch_size: int = 8,
    part: Part = Part(),
    guard: FailureGuard | None = None,
    redo_degenerate: bool = False,
) -> StageResult:
    """Caption every item of `source` (manifest or folder) that `part` owns into `root/captions{part.suffix}.csv`.

    Rows by the same captioner and model (`captioner.recorded_model`) are done. The captioner is built only
    when something is left to caption (loading a 7B model takes a while).
    """
    if batch_size < 1:
        raise CaptionError(f"--batch-size must be >= 1, got {batch_size}")
    elapsed = timer()
    name, model = captioner.name, captioner.recorded_model
    table = StatusTable.for_part(root, TABLE, part, FIELDS)
    jobs, failures = plan_captions(part.select(read_items(source)), root, captioner.needs_video, Path(source).is_dir())
    for failure in failures:
        table.record(failure)
    table.close()
    todo, skipped = drop_done(jobs, lambda job: captioned_by(table.rows.get(job.key), name, model, redo_degenerate))
    counts = Counter(failure.status for failure in failures)
    if todo:
        work = BatchedWork(todo, build_captioner(captioner), batch_size)
        counts += run_stage(todo, work, table, key=lambda job: job.key, guard=guard, description="captioning")
    return StageResult("caption", counts, skipped, elapsed(), table.path, table.path, errors=common_errors(table))
