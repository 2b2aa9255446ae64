"""VGGish (Hershey et al.) in torchvggish's key layout, and its 96x64 log-mel examples, for FAD.

FAD uses the 128-d output of the last linear layer without its ReLU and without the AudioSet PCA/quantisation
(the `use_pca=False, use_activation=False` convention of the frechet_audio_distance package and the AudioLDM
toolbox). Input examples follow the AudioSet recipe: 16 kHz mono, 25 ms periodic-Hann frames every 10 ms,
512-point FFT magnitude, 64 HTK-mel bands over 125-7500 Hz, log(mel + 0.01), cut into non-overlapping
0.96 s examples of 96 frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from uniform_cli.eval.weights import FeatureInputError, load_into

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
FFT = 512
MEL_BINS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
EMBEDDING_SIZE = 128


def _hz_to_htk_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + hz / 700.0)


def vggish_mel_matrix() -> np.ndarray:
    """The AudioSet mel matrix `FFT/2+1 64`: HTK triangles in mel space, DC bin excluded (not Slaney)."""
    bins_mel = _hz_to_htk_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT // 2 + 1))
    edges = np.linspace(_hz_to_htk_mel(np.float64(MEL_MIN_HZ)), _hz_to_htk_mel(np.float64(MEL_MAX_HZ)), MEL_BINS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def vggish_examples(wave: np.ndarray, sample_rate: int) -> torch.Tensor:
    """Log-mel examples `N 1 96 64` of a mono wave; N = whole 0.96 s examples (a shorter wave is an error)."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise FeatureInputError(f"VGGish needs a mono wave `S`, got shape {wave.shape}")
    if sample_rate != SAMPLE_RATE:
        import librosa

        wave = librosa.resample(wave, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    n_frames = 1 + (len(wave) - WINDOW) // HOP if len(wave) >= WINDOW else 0
    n_examples = n_frames // EXAMPLE_FRAMES
    if n_examples == 0:
        raise FeatureInputError(f"VGGish needs at least 0.975 s of audio, got {len(wave) / SAMPLE_RATE:.3f} s")
    frames = np.lib.stride_tricks.sliding_window_view(wave, WINDOW)[::HOP][:n_frames]
    periodic_hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)
    magnitude = np.abs(np.fft.rfft(frames * periodic_hann, FFT))
    log_mel = np.log(magnitude @ vggish_mel_matrix() + LOG_OFFSET)  # T 64
    examples = log_mel[: n_examples * EXAMPLE_FRAMES].reshape(n_examples, 1, EXAMPLE_FRAMES, MEL_BINS)
    return torch.from_numpy(examples).float()


class VGGish(nn.Module):
    """VGG-11-like audio network; parameter names match torchvggish (`features.*`, `embeddings.{0,2,4}`)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(width), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(width)
        self.features = nn.Sequential(*layers)
        # The published model ends in a ReLU; FAD reads the linear output before it, so it is left out here.
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_SIZE),
        )

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """Log-mel examples `N 1 96 64` -> embeddings `N 128` (pre-activation)."""
        x = self.features(examples)  # N 512 6 4
        # The TF original flattens channels-last; permute so the first linear layer sees the same order.
        x = x.permute(0, 2, 3, 1).reshape(len(x), -1)
        return self.embeddings(x)


def load_vggish(path: str | Path) -> VGGish:
    """VGGish with the published weights of `path` (torchvggish's vggish-10086976.pth layout), in eval mode."""
    return load_into(VGGish, path)


@torch.no_grad()
def vggish_embeddings(model: VGGish, wave: np.ndarray, sample_rate: int, batch_size: int = 64) -> np.ndarray:
    """128-d embeddings `N 128` of every 0.96 s example of one clip."""
    examples = vggish_examples(wave, sample_rate)
    device = next(model.parameters()).device
    out = [model(examples[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(examples), batch_size)]
    return torch.cat(out).numpy()
