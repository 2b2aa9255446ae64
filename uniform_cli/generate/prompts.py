"""The prompts CSV of `uniform generate`: read, check every row at once, and plan one item per output.

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
"""

from __future__ import annotations

import csv
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from uniform_cli.config import ClipSpec
from uniform_cli.generate.jobs import TASKS, check_job, parse_span
from uniform_cli.media.io import URL_SCHEME

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
            paths[kind] = Path(os.path.normpath(base / Path(cell(kind)).expanduser())) if cell(kind) else None
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
