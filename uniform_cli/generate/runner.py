"""The batch runner behind `uniform generate`: a prompts CSV in, `{id}.mp4` + `{id}.wav` + results.jsonl out.

    id,text,task,video,audio,image,seconds,span,modality,seed
    dog,a dog barks,t2av,,,,,,,
    rain,,v2a,clips/rain.mkv,,,,,,7
    drum,a drummer plays,a2v,,sounds/drum.flac,,,,,
    more,,extend,clips/street.mp4,,,12,,,
    fix,,retake,clips/street.mp4,,,,2-3,audio,
    still,a kite in the wind,i2av,,,photos/kite.jpg,6,,,

`task` (t2av, a2v, v2a, extend, retake, i2av; `generate.jobs`) overrides `--task` per row; `seconds` is the
output length (default: the given media's own length for v2a, a2v and retake, the recipe's clip length for
t2av and i2av; extend needs it); `span` (`START-END` seconds) and `modality` (audio, video or both) say what a
retake redoes; `image` is the first frame of an i2av row. Media paths are relative to the CSV's folder, in any
container, codec, fps or sample rate: they are prepared like `uniform clip` does. Every row is checked before
any work (a column the runner does not know is a problem too) and all problems are reported together.

V2A rows and audio-only retakes keep the user's own video: their `{id}.mp4` holds the given video stream
copied as it is with the generated sound (`media.mux`); `--model-format` writes the model's own format instead.

Each output is written atomically, then its JSON line goes to `results.jsonl` (`results.part-I-of-N.jsonl` for
`--part I/N`), one line per output: generating an output again replaces its line. An output counts as done when its
mp4, wav and results line all exist (and, with --skip-existing, its settings are the ones asked for). A run of
the whole work ends by merging every results file into `results.jsonl`; after runs of parts, a rerun of the
whole with --skip-existing generates nothing and does the merge.
"""

from __future__ import annotations

import csv
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from uniform_cli.atomic import sweep_temp
from uniform_cli.config import ClipSpec
from uniform_cli.generate.jobs import TASKS, Job, check_job, parse_span
from uniform_cli.generate.results import ResultsFile, read_results, results_path
from uniform_cli.media.io import URL_SCHEME
from uniform_cli.memory import peak_memory_bytes
from uniform_cli.stage import Part

REQUIRED_COLUMNS = ("id", "text")
OPTIONAL_COLUMNS = ("task", "video", "audio", "image", "seconds", "span", "modality", "seed")
MAX_SEED = 2**63 - 1
_SAFE_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,199}")


class PromptsError(ValueError):
    """A prompts CSV that cannot be run; `problems` lists every one found (the message shows them all)."""

    def __init__(self, path: Path, problems: list[str]):
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s), nothing was generated:\n{shown}")


@dataclass(frozen=True)
class PromptRow:
    """One checked CSV row; media paths are resolved against the CSV's folder."""

    id: str
    text: str
    task: str
    """One of `generate.jobs.TASKS`."""
    video: Path | None
    audio: Path | None
    seed: int | None
    line: int
    image: Path | None = None
    seconds: float | None = None
    """The output length asked for (None: the task's default)."""
    span: tuple[float, float] | None = None
    modality: str = "both"
    source_seconds: float | None = None
    """Length of the given media (the shorter stream of an audible video), as probed."""
    length: float = 0.0
    """The output length the row will have."""


@dataclass(frozen=True)
class WorkItem:
    """One clip to generate: output name `{id}` (or `{id}_{k}` with several samples) and its seed."""

    name: str
    row: PromptRow
    sample: int
    seed: int


def default_seed(base: int, row_id: str) -> int:
    """The seed of a row without its own: `base` plus a hash of the id, so rows start from different noise
    and a row's seed does not change when the CSV is reordered or split into parts."""
    return (base + zlib.crc32(row_id.encode())) % (MAX_SEED + 1)


def _probe(path: Path, needs: str) -> tuple[float | None, float | None, str | None]:
    """(video seconds, audio seconds, problem) of a media file that must have a `needs` stream."""
    from uniform_cli.media.prepare import PrepareError, probe

    if not path.is_file():
        return None, None, f"{needs} file {path} does not exist"
    try:
        info = probe(path)
    except PrepareError as e:
        return None, None, f"{needs} file {path} cannot be read: {e}"
    if needs == "video" and not info.width:
        return None, None, f"{path} has no video stream"
    if needs == "audio" and not info.audio_rate:
        return None, None, f"{path} has no audio stream"
    if not info.duration:
        return None, None, f"{path}: its length is unknown (remux it, e.g. with ffmpeg -c copy)"
    return (info.duration if info.width else None), (info.duration if info.audio_rate else None), None


def read_prompts(path: str | Path, default_task: str = "t2av", spec: ClipSpec = ClipSpec()) -> list[PromptRow]:
    """Read and check every row of a prompts CSV; raise PromptsError listing all problems at once.

    Checks: the header has id and text and no column the runner does not know; ids are present, unique and
    safe as file names; tasks are known; each row names the media its task needs, which exist and have the
    streams it needs; `seconds`, `span` and `modality` make sense for the task and the
    media's length (`generate.jobs.check_job`); seeds are integers in [0, 2^63).
    """
    path = Path(path)
    if not path.is_file():
        raise PromptsError(path, [f"the prompts file {path} does not exist"])
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        records = list(reader)
    if not header:
        raise PromptsError(path, ["the file is empty; it needs a header row with at least: id,text"])
    header = [h.strip().lower() for h in header]
    problems = [f"missing column '{c}' (the header is: {','.join(header)})" for c in REQUIRED_COLUMNS
                if c not in header]
    duplicated = sorted({h for h in header if header.count(h) > 1 and h})
    problems += [f"column '{c}' appears more than once in the header" for c in duplicated]
    if problems:
        raise PromptsError(path, problems)
    known = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)  # reported beside the rows' problems
    problems += [f"unknown column '{c}' (known: {', '.join(known)})" for c in header if c and c not in known]
    col = {name: header.index(name) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in header}
    base = path.parent
    rows: list[PromptRow] = []
    first_line: dict[str, int] = {}
    line = 1
    for record in records:
        line += 1
        if not any(cell.strip() for cell in record):
            continue  # blank line
        where = f"line {line}"
        if len(record) != len(header):
            problems.append(f"{where}: {len(record)} cells for {len(header)} columns (quote text that holds commas)")
            continue

        def cell(name: str) -> str:
            return record[col[name]].strip() if name in col else ""

        row_id = cell("id")
        if row_id:
            where = f"line {line} (id {row_id!r})"
        if not row_id:
            problems.append(f"{where}: empty id")
        elif not _SAFE_ID.fullmatch(row_id) or row_id.endswith("."):
            problems.append(f"{where}: id {row_id!r} is not safe as a file name (use letters, digits, _ - . "
                            f"and at most 200 characters; no / or leading .)")
        elif row_id in first_line:
            problems.append(f"{where}: duplicate id {row_id!r} (first on line {first_line[row_id]})")
        else:
            first_line[row_id] = line
        task = (cell("task") or default_task).lower()
        if task not in TASKS:
            problems.append(f"{where}: unknown task {task!r}; choose one of {', '.join(TASKS)}")
            continue
        seed = None
        if cell("seed"):
            try:
                seed = int(cell("seed"))
                if not 0 <= seed <= MAX_SEED:
                    raise ValueError
            except ValueError:
                problems.append(f"{where}: seed {cell('seed')!r} is not an integer in [0, 2^63)")
        seconds = span = None
        try:
            seconds = float(cell("seconds")) if cell("seconds") else None
        except ValueError:
            problems.append(f"{where}: seconds {cell('seconds')!r} is not a number")
        try:
            span = parse_span(cell("span")) if cell("span") else None
        except ValueError as e:
            problems.append(f"{where}: {e}")
        modality = (cell("modality") or "both").lower()
        needs = {"a2v": ("audio",), "v2a": ("video",), "extend": ("video",), "retake": ("video",),
                 "i2av": ("image",)}.get(task, ())
        paths: dict[str, Path | None] = {}
        lengths: dict[str, float | None] = {"video": None, "audio": None}
        reported = len(problems)
        for kind in ("video", "audio", "image"):
            paths[kind] = (base / cell(kind)).expanduser() if cell(kind) else None
            if URL_SCHEME.match(cell(kind)):
                problems.append(f"{where}: {kind} {cell(kind)!r} is a URL, not a file; give a local path")
                paths[kind] = None
            elif kind in needs and paths[kind] is not None:
                if kind == "image":
                    if not paths[kind].is_file():
                        problems.append(f"{where}: image file {paths[kind]} does not exist")
                    continue
                video_s, audio_s, problem = _probe(paths[kind], kind)
                if problem:
                    problems.append(f"{where}: {problem}")
                    paths[kind] = None
                    continue
                lengths[kind] = video_s if kind == "video" else audio_s
                if task in ("extend", "retake"):  # an audible video: its sound comes from the same file
                    lengths["audio"] = audio_s
        length, job_problems = check_job(task, spec, seconds=seconds, video_seconds=lengths["video"],
                                         audio_seconds=lengths["audio"], has_image=paths["image"] is not None,
                                         span=span, modality=modality)
        if len(problems) == reported:  # a row whose media could not be read has said so already
            problems += [f"{where}: {p}" for p in job_problems]
        source = min((x for x in lengths.values() if x is not None), default=None)
        rows.append(PromptRow(row_id, cell("text"), task, paths["video"], paths["audio"], seed, line,
                              paths["image"], seconds, span, modality, source, length))
    if not rows and not problems:
        problems.append("no rows: add one line per clip under the header")
    if problems:
        raise PromptsError(path, problems)
    return rows


def sample_names(row_id: str, num_samples: int) -> list[str]:
    """The output names of a row's clips: `{id}` for one sample, `{id}_{k}` for several."""
    return [row_id] if num_samples == 1 else [f"{row_id}_{k}" for k in range(num_samples)]


def plan(rows: list[PromptRow], num_samples: int = 1, base_seed: int = 0,
         source: Path = Path("prompts")) -> list[WorkItem]:
    """One item per row and sample: `{id}` for one sample, `{id}_{k}` (seed + k) for several.
    Raises PromptsError when two items would write the same file (e.g. ids `a` and `a_1` with 2 samples)."""
    if num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, not {num_samples}")
    items, owner, problems = [], {}, []
    for row in rows:
        seed = row.seed if row.seed is not None else default_seed(base_seed, row.id)
        for k, name in enumerate(sample_names(row.id, num_samples)):
            if name in owner:
                problems.append(f"line {row.line}: output {name} is also written for line {owner[name]}; rename an id")
                continue
            owner[name] = row.line
            items.append(WorkItem(name, row, k, (seed + k) % (MAX_SEED + 1)))
    if problems:
        raise PromptsError(source, problems)
    return items


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
        used = row.source_seconds if row.task == "extend" else row.length
        clip = prepare_media(path, dataclasses.replace(spec, seconds=used), video=row.task != "a2v",
                             audio=row.task != "v2a", allow_short=True)
        job.video, job.audio = clip.video, clip.audio
        if row.task in ("v2a", "a2v", "retake") and job.seconds is None:
            job.seconds = len(clip.audio) / spec.sample_rate if row.task == "a2v" else len(clip.video) / spec.fps
        if used < row.source_seconds - 1.0 / spec.fps:
            note = f"{item.name}: used 0-{used:.2f} s of {path.name} ({row.source_seconds:.2f} s)"
        if clip.padded:
            note = f"{item.name}: {path.name} was padded ({clip.padded})"
    return job, note


def _segment(row: PromptRow) -> list[float] | None:
    """Seconds `[start, end]` of the given media the output used (None without given media)."""
    if row.source_seconds is None:
        return None
    return [0.0, round(row.source_seconds if row.task == "extend" else min(row.length, row.source_seconds), 3)]


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
              on_step: Callable[[int, int], None] | None = None) -> RunReport:
    """Generate `items` in batches of `options.batch_size` with `pipeline`; write each clip's mp4 and wav, then
    its results line. A row whose media cannot be prepared fails alone (recorded in the report)."""
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
    for batch in batches(items, options.batch_size):
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
                out = pipeline.generate(jobs, sampler=options.sampler, steps=options.steps,
                                        cfg_video=options.cfg_video, cfg_audio=options.cfg_audio,
                                        seed=[item.seed for item in ready], overlap=options.overlap,
                                        progress=on_step)
            except PipelineError as e:  # a job the whole-CSV check let through (media shorter than probed)
                for item in ready:
                    report.failed[item.name] = str(e)
                ready = []
            peak, peak_kind = peak_memory_bytes(pipeline.device)
            share = {k: v / max(len(ready), 1) for k, v in out.timings.items()} if ready else {}
            for i, item in enumerate(ready):
                clock = time.perf_counter()
                wav, mp4 = out_dir / f"{item.name}.wav", out_dir / f"{item.name}.mp4"
                write_wav(wav, out.wave[i], out.sample_rate)
                keeps_video = item.row.task == "v2a" or (item.row.task == "retake" and item.row.modality == "audio")
                if keeps_video and not options.model_format:
                    mux_audio_onto(item.row.video, mp4, out.wave[i], out.sample_rate, seconds=len(out.wave[i]) / out.sample_rate)
                else:
                    write_mp4(mp4, out.frames[i], out.fps, audio=out.wave[i], sample_rate=out.sample_rate)
                write = time.perf_counter() - clock
                timings = {k: round(v, 4) for k, v in share.items()}
                timings["write"] = round(write, 4)
                timings["total"] = round(share["total"] + write, 4)
                record = _record(pipeline, item, options, timings, len(ready), peak, peak_kind)
                record.update(num_frames=len(out.frames[i]), num_samples=len(out.wave[i]), windows=out.windows[i],
                              source_seconds=item.row.source_seconds, segment=_segment(item.row),
                              own_video=keeps_video and not options.model_format)
                results.write(record)
                report.generated.append(item.name)
                report.clip_seconds.append(timings["total"])
        if on_batch:
            on_batch(len(batch))
    report.seconds = time.perf_counter() - start
    return report


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
