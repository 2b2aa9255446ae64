"""The `uniform eval` driver: find clips, extract features from local weights, compute metrics, write metrics.json.

A clip is a stem in a folder: `{stem}.mp4` gives the frames, `{stem}.wav` the sound (else the mp4's audio
track). Paired metrics (KL) match generated and reference clips by stem; set metrics (FAD, FD, FVD, KVD)
compare the two folders as wholes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from uniform_cli.atomic import write_text_atomic
from uniform_cli.eval.metrics import frechet_distance, inception_score, kernel_distance, kl_divergence
from uniform_cli.eval.weights import WEIGHT_FILES, FeatureInputError, WeightsError, weight_path


@dataclass(frozen=True)
class MetricSpec:
    """What a metric needs: a feature extractor (a WEIGHT_FILES key, or None) and a reference folder."""

    extractor: str | None
    needs_reference: bool
    description: str


METRICS: dict[str, MetricSpec] = {
    "av-align": MetricSpec(None, False, "AV-Align: IoU of audio onsets and motion peaks (higher is better)"),
    "fad": MetricSpec("vggish", True, "Fréchet distance of VGGish embeddings (lower is better)"),
    "fd": MetricSpec("panns", True, "Fréchet distance of PANNs Cnn14 embeddings (lower is better)"),
    "kl": MetricSpec("panns", True, "KL of PANNs class distributions, paired by stem (lower is better)"),
    "is": MetricSpec("panns", False, "Inception Score of PANNs logits (higher is better)"),
    "fvd": MetricSpec("i3d", True, "Fréchet distance of I3D Kinetics logits (lower is better)"),
    "kvd": MetricSpec("i3d", True, "Polynomial-kernel MMD of I3D Kinetics logits (lower is better)"),
}
"""Metric name (as given to --metrics) -> its needs."""

IS_SPLITS = 10
SHUFFLE_SEED = 2020
"""Inception Score splits and the shuffle seed of the AudioLDM toolbox."""


class EvalError(RuntimeError):
    """An evaluation that cannot run as asked; the message lists every problem and what to do."""


@dataclass(frozen=True)
class ClipFiles:
    """The files of one clip: frames from `video`, sound from `audio` (a wav, or the mp4 itself)."""

    stem: str
    video: Path | None
    audio: Path | None


@dataclass
class Features:
    """Per-clip features of one folder, keyed by stem."""

    vggish: dict[str, np.ndarray] = field(default_factory=dict)  # stem -> N_examples 128
    panns_embedding: dict[str, np.ndarray] = field(default_factory=dict)  # stem -> 2048
    panns_logits: dict[str, np.ndarray] = field(default_factory=dict)  # stem -> 527
    i3d: dict[str, np.ndarray] = field(default_factory=dict)  # stem -> 400
    av_align: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    """Metric values (metrics.json's top level) and how they were obtained (its `details`)."""

    values: dict[str, float]
    details: dict[str, object]

    def to_json(self) -> str:
        return json.dumps({**self.values, "details": self.details}, indent=2, ensure_ascii=False) + "\n"


def find_clips(folder: str | Path) -> dict[str, ClipFiles]:
    """Clips of a folder by stem, from its `*.mp4` and `*.wav` files (not recursive), sorted by stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"{folder} is not a folder")
    videos = {p.stem: p for p in folder.glob("*.mp4") if not p.name.startswith(".")}
    wavs = {p.stem: p for p in folder.glob("*.wav") if not p.name.startswith(".")}
    return {
        stem: ClipFiles(stem, videos.get(stem), wavs.get(stem, videos.get(stem)))
        for stem in sorted(videos.keys() | wavs.keys())
    }


def parse_metrics(text: str) -> list[str]:
    """Comma-separated metric names -> a list in METRICS order; unknown names are an error."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise EvalError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return [m for m in METRICS if m in names]


def default_metrics(reference_dir: Path | None, weights_dir: Path | None) -> tuple[list[str], list[str]]:
    """All metrics whose needs are met by the given folders, and notes on the others."""
    chosen, skipped = [], []
    for name, spec in METRICS.items():
        if spec.needs_reference and reference_dir is None:
            skipped.append(f"{name} (needs --reference)")
        elif spec.extractor is not None and weights_dir is None:
            skipped.append(f"{name} (needs --weights-dir with {WEIGHT_FILES[spec.extractor].filename})")
        else:
            chosen.append(name)
    return chosen, skipped


def check_plan(
    names: list[str], generated: dict[str, ClipFiles], reference: dict[str, ClipFiles] | None,
    weights_dir: Path | None,
) -> None:
    """Raise one EvalError listing every unmet need of the chosen metrics, before any work."""
    problems = []
    if not generated:
        problems.append("the generated folder has no .mp4 or .wav files")
    for name in names:
        spec = METRICS[name]
        if spec.needs_reference and reference is None:
            problems.append(f"{name} compares against real clips: pass --reference DIR")
        if spec.extractor is not None:
            try:
                weight_path(weights_dir, spec.extractor)
            except WeightsError as e:
                problems.append(f"{name}: {e}")
    if "av-align" in names:
        without_video = [c.stem for c in generated.values() if c.video is None]
        if without_video:
            problems.append(f"av-align needs an .mp4 for every clip; only a .wav for: {', '.join(without_video[:5])}")
    needs_video = [n for n in names if n in ("fvd", "kvd")]
    for label, clips in (("generated", generated), ("reference", reference or {})):
        if needs_video and any(c.video is None for c in clips.values()):
            problems.append(f"{'/'.join(needs_video)} need an .mp4 for every {label} clip")
    if "kl" in names and reference is not None and not generated.keys() & reference.keys():
        problems.append("kl pairs clips by file stem, and no generated stem has a reference clip")
    for name in (n for n in names if n in ("fd", "fvd", "kvd")):
        if len(generated) < 2 or (reference is not None and len(reference) < 2):
            problems.append(f"{name} fits a distribution to each folder: it needs at least 2 clips in each")
    if reference is not None and not reference and any(METRICS[n].needs_reference for n in names):
        problems.append("the reference folder has no .mp4 or .wav files")
    if problems:
        raise EvalError("cannot evaluate:\n  - " + "\n  - ".join(problems))


def _extract(
    clips: dict[str, ClipFiles], extractors: set[str], with_av_align: bool, models: dict[str, object],
    progress: Callable | None, label: str,
) -> Features:
    """Read each clip once and compute the features the chosen metrics need."""
    from uniform_cli.eval.av_align import AVAlignError, av_align
    from uniform_cli.eval.i3d import i3d_logits
    from uniform_cli.eval.panns import panns_features
    from uniform_cli.eval.vggish import vggish_embeddings
    from uniform_cli.media.io import read_audio, read_video

    out = Features()
    needs_audio = with_av_align or bool(extractors & {"vggish", "panns"})
    needs_video = with_av_align or "i3d" in extractors
    items = list(clips.values())
    for clip in progress(items, description=f"{label} clips") if progress else items:
        wave, rate = read_audio(clip.audio) if needs_audio and clip.audio else (None, 0)
        frames, fps = read_video(clip.video) if needs_video and clip.video else (None, 0.0)
        try:
            if with_av_align:
                out.av_align[clip.stem] = av_align(frames, fps, wave, rate)
            if "vggish" in extractors:
                out.vggish[clip.stem] = vggish_embeddings(models["vggish"], wave, rate)
            if "panns" in extractors:
                out.panns_embedding[clip.stem], out.panns_logits[clip.stem] = panns_features(models["panns"], wave, rate)
            if "i3d" in extractors:
                out.i3d[clip.stem] = i3d_logits(models["i3d"], frames)
        except (AVAlignError, FeatureInputError) as e:
            raise EvalError(f"{label} clip {clip.stem} ({clip.video or clip.audio}): {e}") from None
    return out


def _load_models(extractors: set[str], weights_dir: Path | None, device: str) -> dict[str, object]:
    from uniform_cli.eval.i3d import load_i3d
    from uniform_cli.eval.panns import load_cnn14
    from uniform_cli.eval.vggish import load_vggish

    loaders = {"vggish": load_vggish, "panns": load_cnn14, "i3d": load_i3d}
    return {name: loaders[name](weight_path(weights_dir, name)).to(device) for name in sorted(extractors)}


def _stack(features: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([features[k] for k in sorted(features)])


def evaluate(
    generated_dir: str | Path,
    reference_dir: str | Path | None = None,
    metrics: list[str] | None = None,
    weights_dir: str | Path | None = None,
    device: str | None = None,
    progress: Callable | None = None,
) -> EvalResult:
    """Compute the chosen metrics (default: every metric whose folders and weights are given).

    `progress`, if given, wraps an iterable like rich.progress.track(items, description=...).
    """
    import torch

    generated_dir = Path(generated_dir)
    reference_path = Path(reference_dir) if reference_dir is not None else None
    weights_path = Path(weights_dir) if weights_dir is not None else None
    skipped: list[str] = []
    if metrics is None:
        metrics, skipped = default_metrics(reference_path, weights_path)
    generated = find_clips(generated_dir)
    reference = find_clips(reference_path) if reference_path is not None else None
    check_plan(metrics, generated, reference, weights_path)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractors = {METRICS[m].extractor for m in metrics} - {None}
    models = _load_models(extractors, weights_path, device)  # type: ignore[arg-type]
    gen = _extract(generated, extractors, "av-align" in metrics, models, progress, "generated")  # type: ignore[arg-type]
    ref_extractors = {METRICS[m].extractor for m in metrics if METRICS[m].needs_reference} - {None}
    ref = (
        _extract(reference, ref_extractors, False, models, progress, "reference")  # type: ignore[arg-type]
        if reference is not None and ref_extractors
        else Features()
    )

    values: dict[str, float] = {}
    details: dict[str, object] = {
        "generated_dir": str(generated_dir),
        "reference_dir": str(reference_path) if reference_path else None,
        "weights_dir": str(weights_path) if weights_path else None,
        "metrics": metrics,
        "skipped": skipped,
        "num_generated": len(generated),
        "num_reference": len(reference) if reference is not None else 0,
    }
    if "av-align" in metrics:
        values["av_align"] = float(np.mean(list(gen.av_align.values())))
        details["av_align_per_clip"] = gen.av_align
    if "fad" in metrics:
        values["fad"] = frechet_distance(np.concatenate(list(ref.vggish.values())), np.concatenate(list(gen.vggish.values())))
    if "fd" in metrics:
        values["fd"] = frechet_distance(_stack(ref.panns_embedding), _stack(gen.panns_embedding))
    if "kl" in metrics:
        pairs = sorted(gen.panns_logits.keys() & ref.panns_logits.keys())
        ref_logits = np.stack([ref.panns_logits[k] for k in pairs])
        gen_logits = np.stack([gen.panns_logits[k] for k in pairs])
        values["kl"] = kl_divergence(ref_logits, gen_logits, "softmax")
        values["kl_sigmoid"] = kl_divergence(ref_logits, gen_logits, "sigmoid")
        details["kl_pairs"] = len(pairs)
    if "is" in metrics:
        logits = _stack(gen.panns_logits)
        logits = logits[np.random.default_rng(SHUFFLE_SEED).permutation(len(logits))]
        values["is"], values["is_std"] = inception_score(logits, splits=min(IS_SPLITS, len(logits)))
    if "fvd" in metrics:
        values["fvd"] = frechet_distance(_stack(ref.i3d), _stack(gen.i3d))
    if "kvd" in metrics:
        values["kvd"], values["kvd_std"] = kernel_distance(_stack(ref.i3d), _stack(gen.i3d))
    return EvalResult({k: float(v) for k, v in values.items()}, details)


def write_metrics(path: str | Path, result: EvalResult) -> None:
    """Write metrics.json atomically (temporary file, then rename)."""
    write_text_atomic(path, result.to_json())
