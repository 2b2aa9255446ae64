"""The batch runner behind `uniform generate`: planned items (`generate.prompts`) in, `{id}.mp4` + `{id}.wav` +
results.jsonl out.

Each output is written atomically, then its JSON line goes to `results.jsonl` (`results.part-I-of-N.jsonl` for
`--part I/N`), one line per output: generating an output again replaces its line. An output counts as done when its
mp4, wav and results line all exist (and, with --skip-existing, its settings are the ones asked for). A run of
the whole work ends by merging every results file into `results.jsonl`; after runs of parts, a rerun of the
whole with --skip-existing generates nothing and does the merge.

V2A rows and audio-only retakes keep the user's own video: their `{id}.mp4` holds the given video stream
copied as it is with the generated sound (`media.mux`); `--model-format` writes the model's own format instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from uniform_cli.atomic import sweep_temp
from uniform_cli.config import ClipSpec
from uniform_cli.generate.jobs import Job
from uniform_cli.generate.prompts import PromptRow, WorkItem
from uniform_cli.generate.results import ResultsFile, read_results, results_path
from uniform_cli.memory import peak_memory_bytes
from uniform_cli.stage import Part

if TYPE_CHECKING:
    from uniform_cli.eval.run import Extractor, MetricSpec


def settings_of(item: "WorkItem", options: "RunOptions", defaults) -> dict:
    """What makes an item's output what it is, with these options and the checkpoint's `[generate]` defaults:
    the fields of its results line that `--skip-existing` compares."""
    row = item.row
    return {
        "text": row.text,
        "task": row.task,
        "video": str(row.video) if row.video else None,
        "audio": str(row.audio) if row.audio else None,
        "image": str(row.image) if row.image else None,
        "seconds": row.length,
        "span": list(row.span) if row.task == "retake" else None,
        "modality": row.modality if row.task == "retake" else None,
        "seed": item.seed,
        "sampler": options.sampler or defaults.sampler,
        "steps": options.steps or defaults.steps,
        "cfg_video": defaults.cfg_video if options.cfg_video is None else options.cfg_video,
        "cfg_audio": defaults.cfg_audio if options.cfg_audio is None else options.cfg_audio,
        "overlap": options.overlap,
        "model_format": options.model_format,
        "cache": (defaults.cache if options.cache is None else options.cache) or None,  # off: None, as before
        "keep_best": {"metric": options.keep_best, "candidates": options.candidates} if options.keep_best else None,
    }


# ------------------------------------------------------------------------------------------------- running


@dataclass
class RunOptions:
    """Sampling settings of a run (None: the checkpoint's `[generate]` default)."""

    sampler: str | None = None
    steps: int | None = None
    cfg_video: float | None = None
    cfg_audio: float | None = None
    batch_size: int = 4
    overlap: int = 1
    """Whole seconds each window shares with what is already made."""
    model_format: bool = False
    """Write every mp4 at the model's format (else V2A rows and audio-only retakes keep the user's video)."""
    cache: float | None = None
    """First-block step cache threshold (`model.cache`; 0 off; None: the checkpoint's `[generate] cache`)."""
    keep_best: str | None = None
    """A metric of `scorable_metrics`: make `candidates` clips per item (seeds seed, seed + 1, ...) and
    keep the one it scores best."""
    candidates: int = 1


@dataclass
class RunReport:
    """What a run did: names generated, names that failed with why, and seconds."""

    generated: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    clip_seconds: list[float] = field(default_factory=list)
    """End-to-end seconds per generated clip (its share of the batch, plus writing)."""
    notes: list[str] = field(default_factory=list)
    """Given media that were cut or padded, one line per output."""


def batches(items: list[WorkItem], size: int) -> Iterator[list[WorkItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _prepare(item: WorkItem, spec: ClipSpec) -> tuple[Job, str | None]:
    """The item's job with its given media prepared at the clip format, and a note when media were cut or
    padded (None otherwise)."""
    import dataclasses

    from uniform_cli.media.prepare import prepare_media

    row = item.row
    job = Job(row.text, row.task, seconds=row.seconds, span=row.span, modality=row.modality)
    note = None
    if row.task == "i2av":
        job.image = read_image(row.image, spec.size)
    elif row.task != "t2av":
        path = row.audio if row.task == "a2v" else row.video
        used = _used_seconds(row)
        clip = prepare_media(path, dataclasses.replace(spec, seconds=used), video=row.task != "a2v",
                             audio=row.task != "v2a", allow_short=True)
        job.video, job.audio = clip.video, clip.audio  # without `seconds`, the job is as long as these
        if used < row.source_seconds - 1.0 / spec.fps:
            note = f"{item.name}: used 0-{used:.2f} s of {path.name} ({row.source_seconds:.2f} s)"
        if clip.padded:
            note = f"{item.name}: {path.name} was padded ({clip.padded})"
    return job, note


def _used_seconds(row: PromptRow) -> float:
    """How much of the given media (from its start) the output uses: all of it for extend, else the output's
    length (at most the media's)."""
    return row.source_seconds if row.task == "extend" else min(row.length, row.source_seconds)


def _segment(row: PromptRow) -> list[float] | None:
    """Seconds `[start, end]` of the given media the output used (None without given media)."""
    return None if row.source_seconds is None else [0.0, round(_used_seconds(row), 3)]


def read_image(path: Path, size: int):
    """An image file as uint8 `size size 3`: short side scaled to `size`, then centre-cropped (as clips are)."""
    import numpy as np
    from PIL import Image

    from uniform_cli.media.io import MediaError, local_file

    try:
        with Image.open(local_file(path)) as image:
            image = image.convert("RGB")
            scale = size / min(image.size)
            w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((w, h), Image.Resampling.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except OSError as e:
        raise MediaError(f"{path}: cannot read the image: {e}") from None


def generate_items(pipeline, items: list[WorkItem], out_dir: Path, options: RunOptions, part: Part = Part(),
              on_batch: Callable[[int], None] | None = None,
              on_step: Callable[[int, int], None] | None = None, scorer: "ClipScorer | None" = None) -> RunReport:
    """Generate `items` in batches of `options.batch_size` clips with `pipeline`; write each clip's mp4 and wav,
    then its results line. With `options.keep_best`, each item is `options.candidates` clips scored by `scorer`
    (`load_scorer`), and the best is written, every candidate's seed and score in its line. A row whose media
    cannot be prepared fails alone (recorded in the report)."""
    if options.keep_best and scorer is None:
        raise ValueError("keep_best needs a scorer (load_scorer)")
    from uniform_cli.generate.pipeline import PipelineError
    from uniform_cli.media.io import MediaError, write_mp4, write_wav
    from uniform_cli.media.mux import mux_audio_onto
    from uniform_cli.stage import StageError

    out_dir = Path(out_dir)
    sweep_temp(out_dir)  # what a killed run left half-written
    report = RunReport()
    start = time.perf_counter()
    results = ResultsFile(results_path(out_dir, part))
    spec = pipeline.spec
    n = options.candidates if options.keep_best else 1
    for batch in batches(items, max(1, options.batch_size // n)):
        ready, jobs = [], []
        for item in batch:
            try:
                job, note = _prepare(item, spec)
            except (StageError, MediaError) as e:
                report.failed[item.name] = str(e)
                continue
            if note:
                report.notes.append(note)
            ready.append(item)
            jobs.append(job)
        if ready:
            try:
                out = pipeline.generate([job for job in jobs for _ in range(n)], sampler=options.sampler,
                                        steps=options.steps, cfg_video=options.cfg_video, cfg_audio=options.cfg_audio,
                                        seed=[candidate_seed(item.seed, k) for item in ready for k in range(n)],
                                        overlap=options.overlap, progress=on_step, cache=options.cache)
            except PipelineError as e:  # a job the whole-CSV check let through (media shorter than probed)
                for item in ready:
                    report.failed[item.name] = str(e)
                ready = []
            peak, peak_kind = peak_memory_bytes(pipeline.device)
            share = {k: v / max(len(ready), 1) for k, v in out.timings.items()} if ready else {}
            for j, item in enumerate(ready):
                clock = time.perf_counter()
                best, candidates = _pick(scorer, out, j * n, n, item) if options.keep_best else (0, None)
                scored = time.perf_counter() - clock
                i = j * n + best
                wav, mp4 = out_dir / f"{item.name}.wav", out_dir / f"{item.name}.mp4"
                write_wav(wav, out.wave[i], out.sample_rate)
                keeps_video = item.row.task == "v2a" or (item.row.task == "retake" and item.row.modality == "audio")
                if keeps_video and not options.model_format:
                    mux_audio_onto(item.row.video, mp4, out.wave[i], out.sample_rate,
                                   seconds=len(out.wave[i]) / out.sample_rate)
                else:
                    write_mp4(mp4, out.frames[i], out.fps, audio=out.wave[i], sample_rate=out.sample_rate)
                write = time.perf_counter() - clock
                timings = {k: round(v, 4) for k, v in share.items()}
                timings["write"] = round(write - scored, 4)
                if candidates is not None:
                    timings["score"] = round(scored, 4)
                timings["total"] = round(share["total"] + write, 4)
                record = _record(pipeline, item, options, timings, len(ready), peak, peak_kind)
                record.update(num_frames=len(out.frames[i]), num_samples=len(out.wave[i]), windows=out.windows[i],
                              source_seconds=item.row.source_seconds, segment=_segment(item.row),
                              own_video=keeps_video and not options.model_format)
                if record["cache"]:  # the batch's forwards (one decision per forward for the whole batch)
                    record["cache_skips"] = {"skipped": out.cache_skips[0], "forwards": out.cache_skips[1]}
                if candidates is not None:
                    record.update(candidates=candidates, best_seed=candidates[best]["seed"], score_key=scorer.spec.keys[0])
                results.write(record)
                report.generated.append(item.name)
                report.clip_seconds.append(timings["total"])
        if on_batch:
            on_batch(len(batch))
    report.seconds = time.perf_counter() - start
    return report


def _pick(scorer: "ClipScorer", out, start: int, n: int, item: WorkItem) -> tuple[int, list[dict]]:
    """Score outputs `start` .. `start + n - 1` (one item's candidates): the best one's index among them, and
    every candidate's seed and score."""
    candidates = [{"seed": candidate_seed(item.seed, k),
                   "score": scorer.score(out.frames[start + k], out.fps, out.wave[start + k], out.sample_rate,
                                         item.row.text or None)} for k in range(n)]
    best = 0
    for k in range(1, n):
        if scorer.better(candidates[k]["score"], candidates[best]["score"]):
            best = k
    return best, candidates


def candidate_seed(seed: int, k: int) -> int:
    """The seed of an item's candidate k (`--keep-best`): the item's seed plus k, as `--num-samples` counts."""
    from uniform_cli.generate.prompts import MAX_SEED

    return (seed + k) % (MAX_SEED + 1)


@dataclass
class ClipScorer:
    """A metric of `eval.run.METRICS` with a value per clip (AV-Align, CLAP, IB, DeSync) with its model loaded,
    scoring single clips."""

    name: str
    spec: "MetricSpec"
    extractor: "Extractor"
    model: object

    def score(self, frames, fps: float, wave, rate: int, text: str | None = None) -> float:
        """The metric's value for one clip, as `uniform eval` gives it (`eval.run.clip_value`)."""
        from uniform_cli.eval.run import clip_features, clip_value

        return clip_value(self.spec, clip_features(self.extractor, self.model, frames, fps, wave, rate, text))

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` beats score `b` (ties keep the earlier candidate)."""
        return a > b if self.spec.higher_is_better else a < b


def scorable_metrics() -> list[str]:
    """The metrics `--keep-best` takes: every metric of `eval.run.METRICS` with a value per clip (the paired
    ones and DeSync)."""
    from uniform_cli.eval.run import METRICS

    return [name for name, spec in METRICS.items() if spec.pair is not None or spec.per_clip is not None]


def check_scorer(name: str, sources, items: list[WorkItem]) -> None:
    """Raise ValueError listing why `name` cannot pick among candidates: not a paired metric, its weights
    missing (`sources`: `eval.run.Sources`), or rows without the caption it scores."""
    from uniform_cli.eval.run import EXTRACTORS, METRICS, missing_weights

    if name not in scorable_metrics():
        raise ValueError(f"--keep-best takes one of {', '.join(scorable_metrics())}, not {name!r}")
    problems = []
    missing = missing_weights(name, sources)
    if missing:
        problems.append(missing)
    if name == "desync":
        from uniform_cli.eval.synchformer import WINDOW_SECONDS

        short = sorted({item.row.id for item in items if item.row.length < WINDOW_SECONDS})
        if short:
            problems.append(f"desync scores {WINDOW_SECONDS:.1f} s windows, and these rows are shorter (give "
                            f"seconds >= {WINDOW_SECONDS:.1f}): {', '.join(short[:10])}")
    if "text" in EXTRACTORS[METRICS[name].extractor].reads:
        without = sorted({item.row.id for item in items if not item.row.text})
        if without:
            problems.append(f"{name} scores captions, and these rows have none: {', '.join(without[:10])}")
    if problems:
        raise ValueError(f"--keep-best {name}: " + "; ".join(problems))


def load_scorer(name: str, sources, device: str = "cpu") -> ClipScorer:
    """The scorer of metric `name` (one of `scorable_metrics`), its model loaded from `sources` onto `device`."""
    from uniform_cli.eval.run import EXTRACTORS, METRICS

    extractor = EXTRACTORS[METRICS[name].extractor]
    return ClipScorer(name, METRICS[name], extractor, extractor.load(extractor.locate(sources), device))


def _record(pipeline, item: WorkItem, options: RunOptions, timings: dict, batch_size: int, peak: int,
            peak_kind: str) -> dict:
    spec = pipeline.spec
    return {
        "id": item.name,
        "row_id": item.row.id,
        "sample": item.sample,
        **settings_of(item, options, pipeline.defaults),
        "checkpoint": str(pipeline.checkpoint) if pipeline.checkpoint else None,
        "mp4": f"{item.name}.mp4",
        "wav": f"{item.name}.wav",
        "fps": spec.fps,
        "num_frames": spec.frames,
        "size": spec.size,
        "sample_rate": spec.sample_rate,
        "num_samples": spec.samples,
        "batch_size": batch_size,
        "timings": timings,
        "peak_memory_gb": round(peak / 2**30, 3),
        "peak_memory_kind": peak_kind,
        "device": str(pipeline.device),
        "dtype": str(pipeline.dtype).removeprefix("torch."),
        "time": round(time.time(), 3),
    }


@dataclass
class Selection:
    """What a run has to do: its items, those skipped as done, and those done before with other settings."""

    todo: list[WorkItem]
    skipped: int
    changed: dict[str, str] = field(default_factory=dict)
    """Output name -> what differs ("steps 25 -> 50"); these are generated again."""


def select(items: Iterable[WorkItem], part: Part, out_dir: Path, skip_existing: bool,
           options: RunOptions | None = None, defaults=None) -> Selection:
    """This part's items, minus those already done when `skip_existing`. An output that exists but whose
    results line has other settings (`settings_of`) than these `options` and `defaults` give is generated again
    and listed in `changed`."""
    mine = part.select(items, key=lambda item: item.name)
    out_dir = Path(out_dir)
    if not skip_existing or not out_dir.is_dir():
        return Selection(mine, 0)
    results = read_results(out_dir)
    todo, changed = [], {}
    for item in mine:
        record = results.get(item.name)
        if record is None or not (out_dir / f"{item.name}.mp4").is_file() or not (out_dir / f"{item.name}.wav").is_file():
            todo.append(item)
            continue
        if options is not None and defaults is not None:
            want = settings_of(item, options, defaults)
            diff = [f"{k} {record.get(k)!r} -> {v!r}" for k, v in want.items() if record.get(k) != v]
            if diff:
                changed[item.name] = ", ".join(diff)
                todo.append(item)
    return Selection(todo, len(mine) - len(todo), changed)
