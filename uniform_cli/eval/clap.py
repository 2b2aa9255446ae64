"""The CLAP text-audio score: LAION CLAP through transformers' `ClapModel` + `ClapProcessor`.

Score of a clip = cosine similarity of the CLAP embeddings of its caption and its sound, as av-benchmark's
"LAION-CLAP-Score" (which averages it over clips). Sound is resampled to CLAP's 48 kHz with PyAV (the
resampler `media.io` decodes with), and each window is at most the model's 10 s input.

The model is a folder in Hugging Face layout (config.json, model weights, preprocessor_config.json and
the tokenizer files) or a hub id already in the local Hugging Face cache; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uniform_cli.eval.weights import FeatureInputError, WeightsError

CLAP_MODEL = "laion/larger_clap_music_and_speech"
"""The default: LAION's HTSAT-base CLAP trained on music, speech and AudioSet, the family of av-benchmark's
music_speech_audioset_epoch_15_esc_89.98.pt, in transformers' layout."""
CLAP_FILES = ("config.json", "preprocessor_config.json")
SAMPLE_RATE = 48000
WINDOW_SECONDS = 10.0
"""HTSAT's input length; longer sound is scored in windows of this length."""


@dataclass
class Clap:
    """A loaded CLAP model and its processor, on one device."""

    model: object
    processor: object
    device: str
    source: Path


def locate_clap(id_or_path: str | Path) -> Path:
    """The local folder of a CLAP model (a folder, or a hub id in the local HF cache); a missing one is a
    WeightsError saying what to download."""
    from uniform_cli.pretrained import resolve_pretrained

    return resolve_pretrained(id_or_path, CLAP_FILES, "CLAP (the clap metric)", example=CLAP_MODEL, error=WeightsError)


def load_clap(id_or_path: str | Path, device: str = "cpu") -> Clap:
    """CLAP from a local folder or a hub id in the local HF cache, through transformers."""
    from transformers import ClapModel, ClapProcessor

    folder = locate_clap(id_or_path)
    try:
        model = ClapModel.from_pretrained(folder).to(device).eval()
        processor = ClapProcessor.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{folder}: cannot load CLAP from it ({e}); is it a transformers CLAP checkpoint?") from None
    return Clap(model, processor, device, folder)


def resample(wave: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float `S` at `rate` -> mono float32 at `target`, through PyAV's (FFmpeg's swr) resampler."""
    import av

    wave = np.ascontiguousarray(np.asarray(wave, dtype=np.float32).reshape(1, -1))
    if rate == target:
        return wave[0].copy()
    frame = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    chunks = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def _pooled(output) -> "torch.Tensor":  # noqa: F821
    # transformers >= 5 returns a model output whose pooler_output is the projected embedding; 4.x the tensor.
    return output if hasattr(output, "shape") else output.pooler_output


def audio_embedding(clap: Clap, wave: np.ndarray, rate: int) -> np.ndarray:
    """Unit-length CLAP embedding `D` of one mono wave (any rate; resampled to 48 kHz)."""
    import torch

    if len(wave) == 0:
        raise FeatureInputError("CLAP needs some sound, got 0 samples")
    inputs = clap.processor.feature_extractor([resample(wave, rate)], sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with torch.inference_mode():
        out = _pooled(clap.model.get_audio_features(**{k: v.to(clap.device) for k, v in inputs.items()}))
    return _unit(out[0].float().cpu().numpy())


def text_embedding(clap: Clap, text: str) -> np.ndarray:
    """Unit-length CLAP embedding `D` of one caption."""
    import torch

    inputs = clap.processor.tokenizer([text], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = _pooled(clap.model.get_text_features(**{k: v.to(clap.device) for k, v in inputs.items()}))
    return _unit(out[0].float().cpu().numpy())


def clap_features(clap: Clap, wave: np.ndarray, rate: int, text: str) -> dict[str, np.ndarray]:
    """The embeddings of one window's sound and caption, under `audio` and `text`."""
    return {"audio": audio_embedding(clap, wave, rate), "text": text_embedding(clap, text)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (0 when one is zero)."""
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm > 0 else 0.0
