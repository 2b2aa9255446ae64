"""PANNs Cnn14 at 16 kHz (Kong et al.) in the published key layout: 2048-d embeddings for FD, 527 logits for KL/IS.

The 16 kHz checkpoint's front end: 512-point Hann STFT every 160 samples (centred, reflect padding) held as
two frozen convolutions, power spectrum, 64 Slaney mel bands over 50-8000 Hz, 10·log10 with amin 1e-10.
Logits are the AudioSet layer's output before its sigmoid; the metrics choose softmax or sigmoid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uniform_cli.eval.weights import FeatureInputError, load_into

SAMPLE_RATE = 16000
WINDOW = 512
HOP = 160
MEL_BINS = 64
FMIN, FMAX = 50.0, 8000.0
CLASSES = 527
EMBEDDING_SIZE = 2048


class _STFT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        bins = WINDOW // 2 + 1
        # Frozen DFT rows times a periodic Hann window, as torchlibrosa builds them (the checkpoint holds them too).
        n = np.arange(WINDOW)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / WINDOW)
        angle = -2 * np.pi * np.outer(np.arange(bins), n) / WINDOW
        self.conv_real = nn.Conv1d(1, bins, WINDOW, stride=HOP, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, WINDOW, stride=HOP, bias=False)
        self.conv_real.weight.data = torch.tensor(np.cos(angle) * window, dtype=torch.float32)[:, None, :]
        self.conv_imag.weight.data = torch.tensor(np.sin(angle) * window, dtype=torch.float32)[:, None, :]
        self.requires_grad_(False)


class _Spectrogram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stft = _STFT()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Wave `B S` -> power spectrogram `B 1 T F`."""
        x = F.pad(wave[:, None, :], (WINDOW // 2, WINDOW // 2), mode="reflect")
        real, imag = self.stft.conv_real(x), self.stft.conv_imag(x)  # B F T
        return (real**2 + imag**2)[:, None].transpose(2, 3)


class _LogmelFilterBank(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        import librosa

        mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=WINDOW, n_mels=MEL_BINS, fmin=FMIN, fmax=FMAX).T
        self.melW = nn.Parameter(torch.tensor(mel, dtype=torch.float32), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        """Power `B 1 T F` -> log-mel `B 1 T 64` in dB (ref 1.0, amin 1e-10, no top_db)."""
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool)


class Cnn14(nn.Module):
    """Cnn14 with the published parameter names (`spectrogram_extractor.stft.conv_real.weight`, `bn0.*`,
    `conv_block1..6.{conv1,conv2,bn1,bn2}.*`, `fc1.*`, `fc_audioset.*`); inference only (no SpecAugment,
    mixup or dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.spectrogram_extractor = _Spectrogram()
        self.logmel_extractor = _LogmelFilterBank()
        self.bn0 = nn.BatchNorm2d(MEL_BINS)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            self.add_module(f"conv_block{i + 1}", _ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(EMBEDDING_SIZE, EMBEDDING_SIZE)
        self.fc_audioset = nn.Linear(EMBEDDING_SIZE, CLASSES)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz wave `B S` -> (embedding `B 2048`, AudioSet logits `B 527`)."""
        x = self.logmel_extractor(self.spectrogram_extractor(wave))  # B 1 T 64
        # bn0 normalises each mel band, so move the bands onto the channel axis for it.
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, pool=2 if i < 5 else 1)
        x = x.mean(dim=3)  # B 2048 T'
        x = x.amax(dim=2) + x.mean(dim=2)
        embedding = F.relu(self.fc1(x))
        return embedding, self.fc_audioset(embedding)


def load_cnn14(path: str | Path) -> Cnn14:
    """Cnn14 with the weights of the published 16 kHz checkpoint at `path`, in eval mode."""
    return load_into(Cnn14, path)


@torch.no_grad()
def panns_features(model: Cnn14, wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Embedding `2048` and logits `527` of one mono clip (resampled to 16 kHz when needed)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or len(wave) <= WINDOW // 2:
        raise FeatureInputError(f"PANNs needs a mono wave of more than {WINDOW // 2} samples, got shape {wave.shape}")
    if sample_rate != SAMPLE_RATE:
        import librosa

        wave = librosa.resample(wave, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    device = next(model.parameters()).device
    embedding, logits = model(torch.from_numpy(np.ascontiguousarray(wave))[None].to(device))
    return embedding[0].float().cpu().numpy(), logits[0].float().cpu().numpy()
