"""AudioLDM's log-mel recipe in torch, with librosa's Slaney mel filters.

The recipe (AudioLDM training data pipeline): the waveform is centred and peak-normalised to 0.5, reflect-padded
by (n_fft - hop) / 2 = 432 samples on each side, framed by an STFT (n_fft 1024, hop 160, Hann window 1024,
center=False), the magnitude is projected on 64 Slaney mel filters over 0-8 kHz, and log(clamp(x, 1e-5)) is taken.

With that padding the frame count is exactly `num_samples // hop` (for a multiple of the hop):
1 + (S + 2 * 432 - 1024) // 160 = 1 + (S - 160) // 160 = S // 160, so 64,000 samples give exactly 400 frames and
no mel padding or truncation is needed (AudioLDM pads/truncates to a target length only because its clips are
10.24 s; at 4 s the STFT already lands on the target).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 1024
HOP_LENGTH = 160
WIN_LENGTH = 1024
N_MELS = 64
FMIN = 0.0
FMAX = 8000.0
LOG_CLAMP = 1e-5


def normalize_wave(wave: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """AudioLDM's waveform normalisation per clip: minus the mean, divided by max |x|, times 0.5.

    wave: `B S` (or `S`); a silent clip stays silent (eps keeps the division finite).
    """
    centred = wave - wave.mean(dim=-1, keepdim=True)
    peak = centred.abs().amax(dim=-1, keepdim=True)
    return 0.5 * centred / (peak + eps)


@functools.lru_cache(maxsize=16)
def _mel_filters_cpu(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    import librosa  # imported here so that `import uniform_cli` stays light

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
    return torch.from_numpy(basis).float()


def mel_filters(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filter bank `M x (n_fft // 2 + 1)` (librosa.filters.mel), cached."""
    return _mel_filters_cpu(sample_rate, n_fft, n_mels, float(fmin), float(fmax)).clone()


def num_mel_frames(num_samples: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> int:
    """Frames the recipe gives for `num_samples` samples (400 for 64,000)."""
    pad = (n_fft - hop_length) // 2
    return 1 + (num_samples + 2 * pad - n_fft) // hop_length


def log_mel_spectrogram(
    wave: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    win_length: int = WIN_LENGTH,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
) -> torch.Tensor:
    """Log-mel spectrogram of a waveform batch: `B S` float -> `B T M` float32.

    The waveform is used as given (call `normalize_wave` first for AudioLDM's input scaling).
    Computed in float32 whatever the input dtype, because the STFT and the log need the range.
    """
    if wave.dim() != 2:
        raise ValueError(f"log_mel_spectrogram expects a waveform batch `B S`, got shape {tuple(wave.shape)}")
    pad = (n_fft - hop_length) // 2
    if wave.shape[-1] <= pad:
        raise ValueError(f"waveform of {wave.shape[-1]} samples is too short for the mel recipe (needs > {pad})")
    x = wave.float()
    # reflect padding (not torch.stft's center=True) is what AudioLDM trained on; it gives S // hop frames
    x = torch.nn.functional.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(win_length, device=x.device, dtype=x.dtype)
    spec = torch.stft(
        x, n_fft=n_fft, hop_length=hop_length, win_length=win_length, window=window,
        center=False, normalized=False, onesided=True, return_complex=True,
    )  # B F T, F = n_fft // 2 + 1
    magnitude = spec.abs()
    basis = mel_filters(sample_rate, n_fft, n_mels, fmin, fmax).to(x.device)
    mel = torch.einsum("mf,bft->btm", basis, magnitude)  # B T M
    return torch.log(torch.clamp(mel, min=LOG_CLAMP))


PICTURE_DB = 80.0
"""Range of a mel picture: the loudest bin is 1, anything this far below it 0 (librosa's `top_db`)."""


def mel_picture(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, top_db: float = PICTURE_DB) -> np.ndarray:
    """float32 `M T` in [0, 1]: the log-mel spectrogram of a mono wave `S` (this recipe, up to the Nyquist
    frequency) to look at: low bands at the bottom (row 0 is the highest band), the loudest bin 1, `top_db`
    below it and silence 0. A wave shorter than one STFT window is padded with silence."""
    wave = np.asarray(wave, np.float32)
    if len(wave) < N_FFT:
        wave = np.pad(wave, (0, N_FFT - len(wave)))
    log_mel = log_mel_spectrogram(torch.from_numpy(wave)[None], sample_rate=sample_rate,
                                  fmax=min(FMAX, sample_rate / 2))[0]  # T M, natural log of the magnitude
    db = log_mel.numpy() * (20 / math.log(10))
    top = float(db.max())
    floor = max(top - top_db, 20 * math.log10(LOG_CLAMP))
    if top - floor < 1e-3:  # silence: every bin at the clamp
        return np.zeros(db.shape[::-1], np.float32)
    return np.clip((db - floor) / (top - floor), 0.0, 1.0).T[::-1].astype(np.float32)
