"""The demo driver: the built-in world through every real stage of the toolkit, then what came out, measured.

    world     uniform_cli.demo.world          OUT/world/sources/*.mp4 + world.csv (a toolkit manifest),
                                              and a held-out 12 s source (long.csv)
    clip      `uniform clip --crf 0`          OUT/data/clips/  (32 x 32, 17 fps, 4 s, 16 kHz, lossless)
    caption   `uniform caption --captioner labels`
    encode    `uniform encode --recipe`       OUT/data/shards/ ("pixel" + "mel" latents, "hash" text)
    train     `uniform train`                 OUT/runs/demo/   (DeepSpeed, gloo on the CPU)
    generate  `uniform generate` per task     OUT/generated/{t2av,a2v,v2a}/*.mp4|.wav
    spans     `uniform generate` of one CSV   OUT/generated/spans/: a 12 s V2A, a 4 s clip extended to 8 s and
                                              a 1 s retake (uniform_cli.demo.spans)
    eval      uniform_cli.eval.run.evaluate   OUT/generated/{task}/metrics.json (AV-Align)
    report    contact sheet, AV-Align table (generated, reference, shuffled pairs), nearest-kind accuracy,
              the span outputs' lengths and given parts (bit-exact sound, copied video)

Stages run as `python -m uniform_cli.cli.main ...` subprocesses in OUT, exactly as a user would type them;
their own progress and summaries are shown. T2AV is asked for each kind by its caption; A2V and V2A get the
held-out test clips' sound or picture and no text, so what they make comes from the given modality alone.
Then one more CSV asks for outputs of other spans and lengths (`demo.spans`): the sound of a held-out 12 s
source, window by window; a held-out clip extended from 4 s to 8 s; 1 s of another retaken.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from uniform_cli.atomic import write_text_atomic
from uniform_cli.config import Recipe
from uniform_cli.demo.spans import SPAN_FOLDER, SPAN_KINDS, SpanCheck, SpanJob, span_jobs, write_span_prompts

MARKER = ".uniform-demo"
"""A file in OUT saying the demo made it, so a rerun may clear what it made before."""
PRODUCTS = ("world", "data", "runs", "prompts", "generated", "recipe.toml", "contact_sheet.png", "summary.json")
TASKS = ("t2av", "a2v", "v2a")


class DemoError(RuntimeError):
    """The demo cannot go on; the message says which stage failed and where its output is."""


@dataclass(frozen=True)
class DemoSettings:
    """How big a demo to run (the recipe sets the model, codecs, clip format and training)."""

    train_per_kind: int = 32
    """Training clips per kind of scene."""
    test_per_kind: int = 4
    """Held-out clips per kind: references, and the given media of A2V and V2A."""
    t2av_samples: int = 4
    """T2AV clips per held-out caption (4 x 16 = 64 by default): T2AV needs no given media, and its AV-Align
    gap is small enough that a few dozen clips do not settle it (one checkpoint's T2AV: permutation p-value
    0.19 on 32 clips, 0.003 on 64 others)."""
    steps: int | None = None
    """Training steps (default: the recipe's)."""
    sample_steps: int | None = None
    """Sampling steps (default: the recipe's [generate] steps)."""
    cache: float | None = None
    """First-block step cache threshold of the generate stages (`generate --cache`; default: the recipe's)."""
    seed: int = 0
    """Seed of the world (and of training and sampling through the recipe)."""
    workers: int = 2
    """Worker processes / threads of the data stages."""
    long_seconds: float = 12.0
    """Length of the held-out long source whose sound V2A makes, window by window."""


QUICK = DemoSettings(train_per_kind=2, test_per_kind=1, t2av_samples=2, steps=4, sample_steps=2)
"""A shortened run (the test suite's): every stage runs, on a handful of clips, with a barely trained model."""


@dataclass
class DemoReport:
    """What the demo measured (also written to OUT/summary.json)."""

    out: str
    seconds: dict[str, float]
    """Wall-clock seconds per stage, and "total"."""
    av_align: dict[str, float]
    """Mean AV-Align per row of the table."""
    p_values: dict[str, float]
    """Per row of true pairs, the share of random re-pairings scoring as well (`pairing_p_value`)."""
    accuracy: dict[str, float]
    """Nearest-kind accuracy per row ("video" / "audio" suffixes)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Clips behind each row."""
    peaks: dict[str, list[float]] = field(default_factory=dict)
    """Per row of true pairs, the mean number of motion peaks and of sound onsets per clip: the more peaks, the
    more hits by chance, so the shuffled pairs of a set with many peaks score high."""
    correlation: dict[str, list[float]] = field(default_factory=dict)
    """Per row of true pairs, the mean motion-onset correlation of the true pairs and of the shuffled pairs
    (`demo.measure.correlation_scores`)."""
    correlation_p_values: dict[str, float] = field(default_factory=dict)
    """Per row of true pairs, the share of random re-pairings whose correlation is as high."""
    sheet: str = ""
    spans: dict[str, SpanCheck] = field(default_factory=dict)
    """Per span output (`demo.spans`): its lengths and how what it was given came through."""


def default_recipe() -> Path:
    """recipes/demo.toml of the source tree this package is installed from."""
    path = Path(__file__).resolve().parents[2] / "recipes" / "demo.toml"
    if not path.is_file():
        raise DemoError(f"cannot find the demo recipe at {path}; pass --recipe PATH (a copy of recipes/demo.toml)")
    return path


def prepare_out(out: Path) -> None:
    """Make OUT ready: an empty or new folder, or one an earlier demo made (its products are removed)."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise DemoError(f"--out {out} is not empty and was not made by `uniform demo`; give a new or empty folder")
        for name in PRODUCTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `uniform demo`; a rerun with the same --out replaces its contents\n")


class Stages:
    """Runs `uniform` subcommands in OUT and keeps the wall-clock time of each named stage."""

    def __init__(self, out: Path, console) -> None:
        self.out = out
        self.console = console
        self.seconds: dict[str, float] = {}

    def timed(self, name: str):
        stages = self

        class _Timer:
            def __enter__(self):
                stages.console.rule(f"[bold]{name}")
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                stages.seconds[name] = stages.seconds.get(name, 0.0) + time.perf_counter() - self.start
                return False

        return _Timer()

    def uniform(self, *args: str) -> None:
        """`uniform ARGS` in OUT (as `python -m uniform_cli.cli.main`, the same program); DemoError on failure."""
        command = [sys.executable, "-m", "uniform_cli.cli.main", *map(str, args)]
        self.console.print(f"$ uniform {' '.join(map(str, args))}", style="dim", markup=False, highlight=False)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        done = subprocess.run(command, cwd=self.out, env=env)
        if done.returncode != 0:
            raise DemoError(f"`uniform {' '.join(map(str, args))}` failed (exit {done.returncode}) in {self.out}; "
                            f"its messages are above")


def _sampling_flags(settings: DemoSettings) -> list:
    """`uniform generate` flags of the demo's sampling settings."""
    flags = [] if settings.sample_steps is None else ["--steps", settings.sample_steps]
    return flags + ([] if settings.cache is None else ["--cache", settings.cache])


def run_demo(out: str | Path, recipe: str | Path | None = None, settings: DemoSettings = DemoSettings(),
             console=None) -> DemoReport:
    """Run the whole demo into `out`; prints the stages' output and the final table, returns the numbers."""
    from rich.console import Console

    from uniform_cli.config import load_recipe, recipe_to_toml
    from uniform_cli.demo.world import WorldSpec, write_long_sources, write_world

    console = console or Console()
    start = time.perf_counter()
    out = Path(out).resolve()
    recipe_path = Path(recipe) if recipe is not None else default_recipe()
    overrides = ['data.shards=["data/shards"]', 'train.output_dir="runs"', f"train.seed={settings.seed}"]
    if settings.steps is not None:
        overrides += [f"train.steps={settings.steps}", f"train.checkpoint_every={settings.steps}"]
    recipe = load_recipe(recipe_path, overrides)
    if recipe.codec.text_encoder != "hash" or recipe.codec.video != "pixel" or recipe.codec.audio != "mel":
        console.print("[yellow]note:[/yellow] this recipe does not use the weight-free demo codecs; they need weights")
    prepare_out(out)
    write_text_atomic(out / "recipe.toml", f"# resolved from {recipe_path} by `uniform demo`\n" + recipe_to_toml(recipe))
    stages = Stages(out, console)
    data = recipe.data

    with stages.timed("world"):
        spec = WorldSpec()
        _, clips = write_world(out / "world", {"train": settings.train_per_kind, "test": settings.test_per_kind},
                               seed=settings.seed, spec=spec)
        console.print(f"{len(clips)} sources of {spec.seconds:g} s at {spec.width}x{spec.height}, {spec.fps:g} fps, "
                      f"{spec.sample_rate} Hz in {out / 'world/sources'}; manifest {out / 'world/world.csv'}")
        long, (long_source,) = write_long_sources(out / "world", [SPAN_KINDS["v2a"]], settings.long_seconds,
                                                  seed=settings.seed, spec=spec)
        console.print(f"a held-out {settings.long_seconds:g} s source for V2A: {out / 'world' / long_source.path}; "
                      f"manifest {long}")
    with stages.timed("clip"):
        # lossless clips (in yuv420p): a rerun gives exactly the same clips (see write_mp4)
        stages.uniform("clip", "world/world.csv", "--root", "data", "--fps", data.fps, "--size", data.size,
                       "--seconds", data.seconds, "--sample-rate", data.sample_rate, "--crf", 0,
                       "--workers", settings.workers)
    with stages.timed("caption"):
        stages.uniform("caption", "world/world.csv", "--root", "data", "--captioner", "labels")
    with stages.timed("encode"):
        stages.uniform("encode", "world/world.csv", "--root", "data", "--recipe", "recipe.toml",
                       "--workers", settings.workers)
    with stages.timed("train"):
        stages.uniform("train", "recipe.toml")
    checkpoint = Path("runs") / recipe.train.name / "checkpoints" / "latest"

    test = [c for c in clips if c.split == "test"]
    with stages.timed("generate"):
        for task in TASKS:
            samples = samples_per_prompt(task, settings.t2av_samples)
            prompts = write_prompts(out / "prompts" / f"{task}.csv", task, test, samples)
            args = ["generate", prompts.relative_to(out), "--checkpoint", checkpoint, "--task", task,
                    "--out", f"generated/{task}", "--num-samples", samples]
            stages.uniform(*args, *_sampling_flags(settings))
    spans = span_jobs(long_source, test)
    with stages.timed("spans"):
        prompts = write_span_prompts(out, spans)
        stages.uniform("generate", prompts.relative_to(out), "--checkpoint", checkpoint, "--out", SPAN_FOLDER,
                       *_sampling_flags(settings))

    with stages.timed("eval"):
        from uniform_cli.eval.run import evaluate, write_metrics

        for task in TASKS:
            folder = out / "generated" / task
            result = evaluate(folder, metrics=["av-align"])
            write_metrics(folder / "metrics.json", result)
            base = result.details["baselines"]["AV-Align"]["all"]
            console.print(f"{folder / 'metrics.json'}: AV-Align {result.values['AV-Align']:.3f} (shuffled pairs "
                          f"{base['shuffled']:.3f}, re-paired as good: {100 * base['p_value']:.1f}%)")
    with stages.timed("report"):
        report = measure(out, clips, recipe, console, settings.t2av_samples, spans)
    stages.seconds["total"] = time.perf_counter() - start
    report.seconds = stages.seconds
    write_text_atomic(out / "summary.json", json.dumps(asdict(report), indent=2) + "\n")
    print_report(report, console)
    return report


def samples_per_prompt(task: str, t2av_samples: int) -> int:
    """Clips generated per prompt row: `t2av_samples` for T2AV, one for A2V and V2A (one per given clip)."""
    return t2av_samples if task == "t2av" else 1


def write_prompts(path: Path, task: str, test: list, samples: int = 1) -> Path:
    """The prompts CSV of one task: T2AV asks for each test clip's kind by its caption; A2V and V2A give the
    test clip's prepared sound or picture and no text. Row i's seed is i * samples, so that the `samples`
    clips of each row (seeds seed .. seed + samples - 1, `uniform generate --num-samples`) start from noise
    no other row uses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "task", "video", "audio", "seed"])
        for i, c in enumerate(test):
            clip, seed = f"../data/clips/{c.key}", i * samples
            if task == "t2av":
                w.writerow([c.key, c.label, task, "", "", seed])
            elif task == "a2v":
                w.writerow([c.key, "", task, "", f"{clip}.wav", seed])
            else:
                w.writerow([c.key, "", task, f"{clip}.mp4", "", seed])
    return path


# ------------------------------------------------------------------------------------------------ measuring


def _load(folder: Path, key: str) -> tuple[np.ndarray, float, np.ndarray, int]:
    from uniform_cli.media.io import read_audio, read_video

    frames, fps = read_video(folder / f"{key}.mp4")
    wave, rate = read_audio(folder / f"{key}.wav")
    return frames, fps, wave, rate


def measure(out: Path, clips: list, recipe: Recipe, console, t2av_samples: int = 1,
            spans: list[SpanJob] | None = None) -> DemoReport:
    """AV-Align rows, nearest-kind accuracies, the span outputs' checks and the contact sheet, from the files
    the stages wrote."""
    import torch

    from uniform_cli.demo.measure import (
        NearestKind,
        audio_features,
        correlation_scores,
        motion_energy,
        onset_strength_at_frames,
        video_features,
    )
    from uniform_cli.demo.sheet import SheetBlock, SheetRow, write_contact_sheet
    from uniform_cli.demo.spans import check_span, load_span, span_blocks
    from uniform_cli.eval.av_align import av_align_scores, clip_peaks
    from uniform_cli.eval.pairing import pairing_p_value, shuffled_pairs, true_pairs
    from uniform_cli.generate.prompts import sample_names
    from uniform_cli.latents.codecs import build_audio_codec, build_video_codec

    clip_dir = out / "data" / "clips"
    train = [c for c in clips if c.split == "train"]
    test = [c for c in clips if c.split == "test"]

    train_media = [_load(clip_dir, c.key) for c in train]
    video_kind = NearestKind.fit(np.stack([video_features(m[0]) for m in train_media]), [c.kind for c in train])
    audio_kind = NearestKind.fit(np.stack([audio_features(m[2], m[3]) for m in train_media]), [c.kind for c in train])

    # media sets: output name -> (frames, fps, wave, rate); every name belongs to one test clip
    samples = {task: samples_per_prompt(task, t2av_samples) for task in TASKS}
    names = {task: {name: c for c in test for name in sample_names(c.key, samples[task])} for task in TASKS}
    kind_of = {name: c.kind for task in TASKS for name, c in names[task].items()}
    reference = {c.key: _load(clip_dir, c.key) for c in test}
    generated = {task: {name: _load(out / "generated" / task, name) for name in names[task]} for task in TASKS}
    # The reference through the weight-free codecs: what a perfect model could give back at best.
    video_codec, audio_codec = build_video_codec(recipe.codec), build_audio_codec(recipe.codec)
    roundtrip = {}
    for c in test:
        frames, clip_fps, wave, rate = reference[c.key]
        video = video_codec.decode(video_codec.encode(torch.from_numpy(frames)[None]), len(frames))[0].numpy()
        audio = audio_codec.decode(audio_codec.encode(torch.from_numpy(wave)[None]))[0].numpy()
        roundtrip[c.key] = (video, clip_fps, audio, rate)

    rows = [  # (row, its shuffled-pairs row, clips)
        ("reference", "reference, shuffled pairs", reference),
        ("reference through the codecs", "reference through the codecs, shuffled pairs", roundtrip),
        ("T2AV generated", "T2AV generated, shuffled pairs", generated["t2av"]),
        ("A2V generated (sound given)", "A2V generated, shuffled pairs", generated["a2v"]),
        ("V2A generated (picture given)", "V2A generated, shuffled pairs", generated["v2a"]),
    ]
    av_align, p_values, peak_counts, correlation, correlation_p = {}, {}, {}, {}, {}
    for name, shuffled_name, media in rows:
        peaks = [clip_peaks(*m) for m in media.values()]
        pairs = av_align_scores(peaks)
        av_align[name], av_align[shuffled_name] = true_pairs(pairs), shuffled_pairs(pairs)
        p_values[name] = pairing_p_value(pairs)
        peak_counts[name] = [float(np.mean([len(p.video) for p in peaks])),
                             float(np.mean([len(p.audio) for p in peaks]))]
        curves = correlation_scores([motion_energy(m[0]) for m in media.values()],
                                    [onset_strength_at_frames(m[2], m[3], len(m[0]), m[1]) for m in media.values()])
        correlation[name] = [float(true_pairs(curves).mean()), float(shuffled_pairs(curves).mean())]
        correlation_p[name] = pairing_p_value(curves)

    def accuracy(media: dict, modality: str) -> float:
        kinds = [kind_of[name] for name in media]
        if modality == "video":
            return video_kind.accuracy(np.stack([video_features(m[0]) for m in media.values()]), kinds)
        return audio_kind.accuracy(np.stack([audio_features(m[2], m[3]) for m in media.values()]), kinds)

    acc = {
        "reference video": accuracy(reference, "video"),
        "reference audio": accuracy(reference, "audio"),
        "reference through the codecs video": accuracy(roundtrip, "video"),
        "reference through the codecs audio": accuracy(roundtrip, "audio"),
        "T2AV generated video": accuracy(generated["t2av"], "video"),
        "T2AV generated audio": accuracy(generated["t2av"], "audio"),
        "A2V generated (sound given) video": accuracy(generated["a2v"], "video"),
        "V2A generated (picture given) audio": accuracy(generated["v2a"], "audio"),
    }

    blocks = []
    for kind in sorted({c.kind for c in test}):
        c = next(x for x in test if x.kind == kind)
        shown = {t: generated[t][sample_names(c.key, samples[t])[0]] for t in TASKS}  # the clip's first sample
        pred_v = {t: video_kind.predict(video_features(shown[t][0]))[0] for t in TASKS}
        pred_a = {t: audio_kind.predict(audio_features(shown[t][2], shown[t][3]))[0] for t in TASKS}
        rows = [
            SheetRow("reference", reference[c.key][0], reference[c.key][2], reference[c.key][3], f"{c.key}"),
            SheetRow("T2AV", shown["t2av"][0], shown["t2av"][2], shown["t2av"][3],
                     f"looks {pred_v['t2av']}, sounds {pred_a['t2av']}"),
            SheetRow("A2V (sound given)", shown["a2v"][0], shown["a2v"][2], shown["a2v"][3], f"looks {pred_v['a2v']}"),
            SheetRow("V2A (picture given)", shown["v2a"][0], shown["v2a"][2], shown["v2a"][3],
                     f"sounds {pred_a['v2a']}"),
        ]
        blocks.append(SheetBlock(f"{kind}: \"{c.label}\"", rows))
    span_media = [load_span(out, job, recipe.data.clip) for job in spans or []]
    blocks += span_blocks(span_media)
    sheet = write_contact_sheet(out / "contact_sheet.png", blocks,
                                "uniform demo: frames (left) and log-mel (right, time across, pitch up)")
    console.print(f"contact sheet: {sheet}")
    counts = {name: int(len(v)) for name, v in av_align.items()}
    return DemoReport(
        out=str(out),
        seconds={},
        av_align={name: float(np.mean(v)) for name, v in av_align.items()},
        p_values=p_values,
        accuracy=acc,
        counts=counts,
        peaks=peak_counts,
        correlation=correlation,
        correlation_p_values=correlation_p,
        sheet=str(sheet),
        spans={m.job.name: check_span(out, m, recipe.data.clip, video_codec) for m in span_media},
    )


def print_report(report: DemoReport, console) -> None:
    """The closing tables: AV-Align and nearest-kind accuracy per row, then the time per stage."""
    from rich.table import Table

    table = Table(title="uniform demo: held-out clips and what the model made of them")
    table.add_column("clips")
    table.add_column("pairs", justify="right")
    table.add_column("AV-Align", justify="right")
    table.add_column("re-paired as good", justify="right")
    table.add_column("motion peaks/sound onsets", justify="right")
    table.add_column("looks like its kind", justify="right")
    table.add_column("sounds like its kind", justify="right")

    def pct(key: str) -> str:
        value = report.accuracy.get(key)
        return "given" if value is None else f"{100 * value:.0f}%"

    for name, value in report.av_align.items():
        shuffled = "shuffled" in name
        video = "" if shuffled else ("given" if "picture given" in name else pct(f"{name} video"))
        audio = "" if shuffled else ("given" if "sound given" in name else pct(f"{name} audio"))
        p = report.p_values.get(name)
        repaired = "" if p is None else f"{100 * p:.1f}%"
        peaks = report.peaks.get(name)
        per_clip = "" if peaks is None else f"{peaks[0]:.1f}/{peaks[1]:.1f}"
        table.add_row(name, str(report.counts.get(name, "")), f"{value:.3f}", repaired, per_clip, video, audio)
    console.print(table)
    console.print("AV-Align: IoU of sound onsets and motion peaks (eval stage); shuffled pairs put one clip's "
                  "picture with another's sound; re-paired as good: how often a random re-pairing of the clips "
                  "scores at least as high as their true pairs (small: sync beyond chance); motion peaks/sound "
                  "onsets: per clip (the more there are, the more hits by chance). Kind: nearest kind centroid of "
                  "the training clips on simple picture / sound features; chance is 1 in 4.")
    sync = Table(title="motion-onset correlation: the same sync, measured on curves instead of peaks")
    sync.add_column("clips")
    sync.add_column("true pairs", justify="right")
    sync.add_column("shuffled pairs", justify="right")
    sync.add_column("re-paired as good", justify="right")
    for name, (true, shuffled) in report.correlation.items():
        sync.add_row(name, f"{true:.3f}", f"{shuffled:.3f}", f"{100 * report.correlation_p_values[name]:.1f}%")
    console.print(sync)
    console.print("Motion-onset correlation: per frame, the mean change of the grey picture against the sound's "
                  "onset strength, correlated over the clip; unlike AV-Align, grain hardly moves it "
                  "(uniform_cli/demo/measure.py).")
    if report.spans:
        from uniform_cli.demo.spans import print_spans

        print_spans(report.spans, console)
    times = ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items() if k != "total")
    total = report.seconds["total"]
    console.print(f"time: {times}; [bold]total {total:.0f} s[/bold] ({total / 60:.1f} min)")
    console.print(f"outputs: {report.out}/generated/{{t2av,a2v,v2a,spans}}/*.mp4, contact sheet {report.sheet}, "
                  f"numbers {report.out}/summary.json")
