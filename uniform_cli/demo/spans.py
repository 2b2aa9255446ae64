"""The demo's outputs of any span and any length (#17): one prompts CSV through `uniform generate`, then each
output checked against what it was given.

    v2a      the picture of a held-out 12 s source, as the world wrote it (96 x 72, 34 fps): the sound made
             window by window, the source's own video stream kept in the mp4
    extend   a held-out 4 s clip, picture and sound, continued to 8 s
    retake   1.5-2.5 s of a held-out clip made again, picture and sound; the rest kept

A clip's mp4 holds only its picture (its sound is the wav beside it), so extend and retake are given the clip
as one audible video: `prompts/spans/{key}.mp4`, the clip's lossless video stream copied, with its sound.
Generate prepares every given file as `uniform clip` would; the checks prepare it the same way and compare the
output with it: the given samples are to be bit-exact in the output's wav; the given frames in its mp4 differ
by H.264's loss (the mp4 is crf 18), shown beside the codecs' round trip of the same frames (what they would
be had the pipeline made them again); the V2A's video stream is to be the source's, packet for packet.
"""

from __future__ import annotations

import csv
import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uniform_cli.config import ClipSpec
from uniform_cli.demo.world import WorldClip

SPAN_FOLDER = "generated/spans"
"""Where the span outputs go, relative to the demo's OUT."""
SPAN_KINDS = {"v2a": "light", "extend": "ball", "retake": "whistle"}
"""The kind of scene each span output is made of: flashes that beep for the long V2A, a bounce to continue,
a whistle whose pitch a retake must pick up on both sides."""
EXTEND_SECONDS = 8.0
RETAKE_SPAN = (1.5, 2.5)


@dataclass(frozen=True)
class SpanJob:
    """One row of the spans CSV."""

    name: str
    """Output id: `{name}.mp4`, `{name}.wav` in SPAN_FOLDER."""
    task: str
    key: str
    """The world clip or long source it is made of."""
    label: str
    video: str
    """The given audible video, relative to OUT."""
    seconds: float | None = None
    span: tuple[float, float] | None = None
    modality: str = "both"
    seed: int = 0


def span_jobs(long_source: WorldClip, test: list[WorldClip]) -> list[SpanJob]:
    """The demo's three span outputs: V2A of `long_source` (a WorldClip of `write_long_sources`, at its own
    length), and an extend and a retake of the first held-out clip of their kinds (`SPAN_KINDS`)."""
    clip = {c.kind: c for c in reversed(test)}
    extend, retake = clip[SPAN_KINDS["extend"]], clip[SPAN_KINDS["retake"]]
    return [
        SpanJob(f"v2a_{long_source.key}", "v2a", long_source.key, long_source.label, f"world/{long_source.path}",
                seed=0),
        SpanJob(f"extend_{extend.key}", "extend", extend.key, extend.label, f"prompts/spans/{extend.key}.mp4",
                seconds=EXTEND_SECONDS, seed=1),
        SpanJob(f"retake_{retake.key}", "retake", retake.key, retake.label, f"prompts/spans/{retake.key}.mp4",
                span=RETAKE_SPAN, modality="both", seed=2),
    ]


def write_span_prompts(out: Path, jobs: list[SpanJob]) -> Path:
    """`OUT/prompts/spans.csv` and the audible videos its extend and retake rows are given (from the clips in
    OUT/data/clips)."""
    from uniform_cli.media.io import read_audio
    from uniform_cli.media.mux import mux_audio_onto

    path = out / "prompts" / "spans.csv"
    (out / "prompts" / "spans").mkdir(parents=True, exist_ok=True)
    for job in jobs:
        if job.task in ("extend", "retake"):
            clip = out / "data" / "clips" / job.key
            wave, rate = read_audio(clip.with_suffix(".wav"))
            mux_audio_onto(clip.with_suffix(".mp4"), out / job.video, wave, rate)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "task", "video", "seconds", "span", "modality", "seed"])
        for job in jobs:
            span = "" if job.span is None else f"{job.span[0]:g}-{job.span[1]:g}"
            w.writerow([job.name, "", job.task, f"../{job.video}", "" if job.seconds is None else f"{job.seconds:g}",
                        span, job.modality if job.task == "retake" else "", job.seed])
    return path


# ------------------------------------------------------------------------------------------------ checking


@dataclass
class SpanCheck:
    """What one span output is, and how what it was given came through (summary.json "spans")."""

    task: str
    what: str
    """The job, in words."""
    given: str
    """What the job was given, in words."""
    seconds: float
    """Length of the output's sound."""
    num_frames: int
    """Frames of the output's mp4 (V2A: the source's own video, at its own rate)."""
    fps: float
    num_samples: int
    """Samples of the output's wav."""
    windows: list[int]
    """Start seconds of the model windows that made it (results.jsonl)."""
    sound_exact: bool | None
    """The given samples are bit-exact in the output's wav (16-bit, as generate writes it); None: no sound given."""
    video_copied: bool | None
    """V2A: every video packet of the output is the source's, byte for byte; None for the others."""
    frames_error: float | None
    """Mean |difference| (grey levels of 255) of the given frames in the output's mp4 from the given frames
    as prepared: H.264's loss (the mp4 is crf 18); None for V2A."""
    frames_error_codecs: float | None = None
    """The same for the given frames through the video codec and back: what the mp4 would hold had the
    pipeline written its decode over them; the yardstick of `frames_error`."""
    av_align: list[float] = field(default_factory=list)
    """V2A: AV-Align of the given picture with the generated sound, over the whole output, then per window."""
    av_align_own: list[float] = field(default_factory=list)
    """V2A: the same with the source's own sound."""


@dataclass
class SpanMedia:
    """A span output, what it was given (prepared at the clip format) and its results line."""

    job: SpanJob
    given_frames: np.ndarray
    given_wave: np.ndarray
    frames: np.ndarray
    fps: float
    wave: np.ndarray
    sample_rate: int
    record: dict


def load_span(out: Path, job: SpanJob, spec: ClipSpec) -> SpanMedia:
    """Read a span output and prepare its given video the way `uniform generate` did (the part it used,
    results.jsonl's `segment`)."""
    from uniform_cli.generate.results import read_results
    from uniform_cli.media.io import read_audio, read_video
    from uniform_cli.media.prepare import prepare_media

    folder = out / SPAN_FOLDER
    record = read_results(folder)[job.name]
    given = prepare_media(out / job.video, dataclasses.replace(spec, seconds=record["segment"][1]), allow_short=True)
    frames, fps = read_video(folder / f"{job.name}.mp4")
    wave, rate = read_audio(folder / f"{job.name}.wav")
    return SpanMedia(job, given.video, given.audio, frames, fps, wave, rate, record)


def video_packets(path: Path) -> list[bytes]:
    """The payloads of the first video stream's packets, in file order."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [bytes(p) for p in container.demux(stream) if p.size]


def as_written(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """`wave` as a wav written by `uniform generate` reads back (16-bit PCM)."""
    from uniform_cli.media.io import read_audio, write_wav

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "given.wav"
        write_wav(path, wave, sample_rate)
        return read_audio(path)[0]


def given_masks(job: SpanJob, frames: int, samples: int, spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    """bool per frame and per sample of the given clip (`frames`, `samples` at the clip format): what the
    output must carry unchanged. An extension carries all of it (at its start)."""
    video, audio = np.ones(frames, bool), np.ones(samples, bool)
    if job.task == "v2a":
        audio[:] = False
    if job.task == "retake":
        start, end = job.span
        if job.modality in ("video", "both"):
            video[round(start * spec.fps) : round(end * spec.fps)] = False
        if job.modality in ("audio", "both"):
            audio[round(start * spec.sample_rate) : round(end * spec.sample_rate)] = False
    return video, audio


def check_span(out: Path, media: SpanMedia, spec: ClipSpec, video_codec=None) -> SpanCheck:
    """Lengths of the output, and whether what it was given came through (see the module docstring);
    `video_codec` (the recipe's) gives `frames_error_codecs`."""
    from uniform_cli.eval.av_align import av_align

    job, rate = media.job, media.sample_rate
    check = SpanCheck(task=job.task, what="", given="", seconds=len(media.wave) / rate, num_frames=len(media.frames),
                      fps=media.fps, num_samples=len(media.wave), windows=list(media.record["windows"]),
                      sound_exact=None, video_copied=None, frames_error=None)
    if job.task == "v2a":
        check.what = f"V2A of a {media.record['source_seconds']:g} s source"
        check.given = f"the picture of {job.key} ({media.record['source_seconds']:g} s, as the world wrote it)"
        check.video_copied = video_packets(out / job.video) == video_packets(out / SPAN_FOLDER / f"{job.name}.mp4")
        pieces = [(0.0, check.seconds)] + [(float(s), float(s) + spec.seconds) for s in check.windows]
        for wave, scores in ((media.wave, check.av_align), (media.given_wave, check.av_align_own)):
            for a, b in pieces:
                frames = media.given_frames[round(a * spec.fps) : round(b * spec.fps)]
                scores.append(float(av_align(frames, spec.fps, wave[round(a * rate) : round(b * rate)], rate)))
        return check
    f, n = len(media.given_frames), len(media.given_wave)
    video, audio = given_masks(job, f, n, spec)
    check.sound_exact = bool(np.array_equal(media.wave[:n][audio], as_written(media.given_wave, rate)[audio]))
    diff = np.abs(media.frames[:f].astype(np.int16) - media.given_frames.astype(np.int16))
    check.frames_error = float(diff[video].mean())
    if video_codec is not None:
        import torch

        given = torch.from_numpy(media.given_frames)[None]
        decoded = video_codec.decode(video_codec.encode(given), f)[0].numpy()
        check.frames_error_codecs = float(np.abs(decoded.astype(np.int16) - media.given_frames)[video].mean())
    if job.task == "extend":
        check.what = f"extend {n / rate:g} s to {check.seconds:g} s"
        check.given = f"0-{n / rate:g} s of {job.key}, picture and sound"
    else:
        check.what = f"retake {job.span[0]:g}-{job.span[1]:g} s ({job.modality})"
        check.given = f"{job.key} outside {job.span[0]:g}-{job.span[1]:g} s ({job.modality} made again)"
    return check


def span_blocks(medias: list[SpanMedia]) -> list:
    """Contact-sheet blocks: per output, what it was given, then the output with its generated part outlined."""
    from uniform_cli.demo.sheet import SheetBlock, SheetRow

    blocks = []
    for m in medias:
        job, rate = m.job, m.sample_rate
        given_seconds, seconds = len(m.given_wave) / rate, len(m.wave) / rate
        given = SheetRow(f"given ({given_seconds:g} s)", m.given_frames, m.given_wave, rate,
                         "picture given; its own sound" if job.task == "v2a" else "picture and sound")
        if job.task == "v2a":
            made = SheetRow(f"V2A ({seconds:g} s)", m.frames, m.wave, rate, "its own video, new sound")
            heading = f"V2A of a {seconds:g} s source (windows at {', '.join(map(str, m.record['windows']))} s)"
        elif job.task == "extend":
            made = SheetRow(f"extended to {seconds:g} s", m.frames, m.wave, rate,
                            f"{given_seconds:g}-{seconds:g} s made", generated=(given_seconds, seconds))
            heading = f"extend {given_seconds:g} s to {seconds:g} s"
        else:
            made = SheetRow(f"retake {job.span[0]:g}-{job.span[1]:g} s", m.frames, m.wave, rate,
                            f"{job.modality} made again", generated=job.span if job.modality == "both" else None)
            heading = f"retake {job.span[0]:g}-{job.span[1]:g} s of a held-out clip"
        blocks.append(SheetBlock(f"{heading}: \"{job.label}\" ({job.key})", [given, made]))
    return blocks


def print_spans(checks: dict[str, SpanCheck], console) -> None:
    """The span table of the closing report, and the long V2A's AV-Align."""
    from rich.table import Table

    table = Table(title=f"any span, any length: {SPAN_FOLDER}/")
    for column in ("output", "frames / samples", "windows (s)", "given sound", "given picture"):
        table.add_column(column, justify="left" if column == "output" else "right")
    for name, c in checks.items():
        sound = "" if c.sound_exact is None else ("bit-exact" if c.sound_exact else "[red]changed[/red]")
        if c.video_copied is not None:
            picture = "stream copied" if c.video_copied else "[red]not copied[/red]"
        else:
            picture = f"|diff| {c.frames_error:.2f}"
            if c.frames_error_codecs is not None:
                picture += f" (codecs {c.frames_error_codecs:.2f})"
        table.add_row(c.what, f"{c.num_frames} ({c.fps:g} fps) / {c.num_samples}", ", ".join(map(str, c.windows)),
                      sound, picture)
    console.print(table)
    console.print("Given sound: the given samples in the output's wav against the given clip as generate prepares "
                  "it. Given picture: the mean |difference| of its frames in the output's mp4 (grey levels of 255; "
                  "the mp4 is H.264 at crf 18, so not 0) beside the same for the given frames through the codecs "
                  "(had they been made again); for V2A, the source's own video stream, packet for packet.")
    for c in checks.values():
        if c.av_align:
            def scores(values: list[float]) -> str:
                return f"{values[0]:.3f} (windows {' / '.join(f'{v:.2f}' for v in values[1:])})"

            console.print(f"{c.what}: AV-Align of its picture with the generated sound {scores(c.av_align)}, with "
                          f"its own sound {scores(c.av_align_own)}")
