"""A weight-free audio codec: the log-mel itself as the latent, and Griffin-Lim back to a waveform.

It needs no download, so the demo (and anyone without AudioLDM) can run the whole pipeline. The latent is
AudioLDM's own log-mel (`uniform_cli.media.mel`: peak-normalised wave, 64 Slaney mel bins, hop 160), averaged
over 4 mel frames (AudioLDM's VAE also halves time twice, so T matches its 100 rows per 4 s), shifted and
scaled to about unit range, with its 64 bins folded into 16 channels of 4 bins:

    encode: float `B S` -> log-mel `B S/160 64` -> mean over 4 frames -> (x - MEL_SHIFT) / MEL_SCALE
            -> `B 16 S/640 4` (channel c holds mel bins 4c .. 4c+3)
    decode: `B 16 T 4` -> log-mel `B T 64` -> linear interpolation to 4T frames -> clamp to the recipe's range
            -> mel magnitude
            -> linear-frequency magnitude by the filter bank's pseudo-inverse (clamped at 0)
            -> Griffin-Lim (fast, momentum 0.99) with torch.stft / torch.istft -> exactly 4T * 160 samples

Folding bins into channels keeps every mel bin (no loss in frequency) while the latent stays only 4 bins
high, so it fits an audible frame next to a small video latent (the packing needs M <= the video latent's H:
a 32 x 32 clip's pixel latent is 4 high).
Griffin-Lim starts from a fixed phase, so decoding is deterministic. What is lost: phase (Griffin-Lim's
estimate sounds slightly rough), detail finer than 40 ms in time and than the mel bands in frequency.

Shapes: 64,000 samples (4 s at 16 kHz) -> `[16, 100, 4]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uniform_cli.media import mel as melspec

TIME_POOL = 4
"""Mel frames averaged into one latent row (40 ms)."""
BINS_PER_CHANNEL = 4
"""Mel bins per latent channel."""
MEL_SHIFT = -6.0
MEL_SCALE = 1.0
"""latent = (log-mel - MEL_SHIFT) / MEL_SCALE: AudioLDM log-mels (-11.5 at the clamp, about 1 at the loudest)
-> about [-5.5, 7], with a standard deviation near 1 on typical sound (the scale the diffusion noise assumes)."""
LOG_MEL_MIN = float(torch.log(torch.tensor(melspec.LOG_CLAMP)))
LOG_MEL_MAX = 6.0
"""The log-mel range of a peak-0.5 wave (a full-scale sine in one bin stays below 6); decoding clamps to it."""
GRIFFIN_LIM_ITERS = 32
MOMENTUM = 0.99
"""Fast Griffin-Lim (Perraudin et al. 2013), as librosa.griffinlim does."""


class MelCodec:
    """The weight-free `AudioCodec` ("mel" in a recipe's [codec] audio). Deterministic; works on any device."""

    sample_rate = melspec.SAMPLE_RATE
    n_mels = melspec.N_MELS

    def __init__(self, griffin_lim_iters: int = GRIFFIN_LIM_ITERS) -> None:
        if griffin_lim_iters < 1:
            raise ValueError(f"griffin_lim_iters must be positive, got {griffin_lim_iters}")
        self.griffin_lim_iters = griffin_lim_iters

    @property
    def channels(self) -> int:
        return self.n_mels // BINS_PER_CHANNEL

    @property
    def hop(self) -> int:
        """Samples per latent row (640)."""
        return melspec.HOP_LENGTH * TIME_POOL

    def latent_shape(self, num_samples: int) -> tuple[int, int, int]:
        """`C T M` of a clip of `num_samples` samples (64,000 -> (16, 100, 4))."""
        self._check_length(num_samples)
        return (self.channels, num_samples // self.hop, BINS_PER_CHANNEL)

    def _check_length(self, num_samples: int) -> None:
        if num_samples <= 0 or num_samples % self.hop:
            raise ValueError(
                f"the mel codec needs a sample count that is a multiple of {self.hop} "
                f"({melspec.HOP_LENGTH}-sample hops x {TIME_POOL}), got {num_samples}; 4 s at 16 kHz is 64,000"
            )

    # -- waveform <-> log-mel --------------------------------------------------------------------------------------

    def wave_to_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """float `B S` -> log-mel `B S/160 64` by AudioLDM's recipe (peak-normalised to 0.5 first)."""
        if wave.dim() != 2:
            raise ValueError(f"mel codec expects a waveform batch `B S`, got shape {tuple(wave.shape)}")
        self._check_length(wave.shape[-1])
        return melspec.log_mel_spectrogram(melspec.normalize_wave(wave.float()))

    @torch.no_grad()
    def mel_to_wave(self, log_mel: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """log-mel `B T 64` -> float32 waveform `B S`, S = T * 160 unless given, peak at most 0.99."""
        if log_mel.dim() != 3 or log_mel.shape[-1] != self.n_mels:
            raise ValueError(f"mel_to_wave expects a log-mel `B T {self.n_mels}`, got shape {tuple(log_mel.shape)}")
        b, t, _ = log_mel.shape
        s = t * melspec.HOP_LENGTH if num_samples is None else num_samples
        basis = melspec.mel_filters().to(log_mel.device)  # M K
        # A generated log-mel can leave the range the recipe produces; exp() of it would overflow to inf.
        log_mel = log_mel.float().clamp(LOG_MEL_MIN, LOG_MEL_MAX)
        magnitude = torch.einsum("km,btm->bkt", torch.linalg.pinv(basis), log_mel.exp()).clamp_min(0)
        # The recipe's frame t is centred on sample 160 t + 80; torch.stft(center=True) frames are centred on
        # 160 j, so frame j takes the mean of recipe frames j - 1 and j (edges repeated): T + 1 frames.
        padded = F.pad(magnitude, (1, 1), mode="replicate")
        magnitude = 0.5 * (padded[..., :-1] + padded[..., 1:])  # B K T+1
        wave = griffin_lim(magnitude, s, self.griffin_lim_iters)
        peak = wave.abs().amax(dim=-1, keepdim=True)
        return wave / torch.clamp(peak / 0.99, min=1.0)

    # -- the AudioCodec protocol -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, wave: torch.Tensor, *, sample: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """float `B S` -> latent `B 16 S/640 4` (64,000 samples -> `B 16 100 4`).

        The latent is a fixed function of the wave (no posterior), so `sample` and `generator`, taken for the
        `AudioCodec` contract, change nothing.
        """
        log_mel = self.wave_to_mel(wave)  # B T M
        b, t, m = log_mel.shape
        pooled = log_mel.reshape(b, t // TIME_POOL, TIME_POOL, m).mean(dim=2)  # B T/4 M
        z = (pooled - MEL_SHIFT) / MEL_SCALE
        # B T (C m) -> B C T m: channel c holds mel bins c*4 .. c*4+3
        return z.reshape(b, t // TIME_POOL, self.channels, BINS_PER_CHANNEL).permute(0, 2, 1, 3).contiguous()

    def decode_mel(self, latents: torch.Tensor) -> torch.Tensor:
        """latent `B 16 T 4` -> log-mel `B 4T 64` (linear interpolation in time between row centres)."""
        if latents.dim() != 4 or latents.shape[1] != self.channels or latents.shape[3] != BINS_PER_CHANNEL:
            raise ValueError(
                f"mel codec decodes latents `B {self.channels} T {BINS_PER_CHANNEL}`, got shape {tuple(latents.shape)}"
            )
        b, c, t, m = latents.shape
        log_mel = latents.float().permute(0, 2, 1, 3).reshape(b, t, c * m) * MEL_SCALE + MEL_SHIFT  # B T M
        log_mel = F.interpolate(log_mel.transpose(1, 2), scale_factor=TIME_POOL, mode="linear", align_corners=False)
        return log_mel.transpose(1, 2)  # B 4T M

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latent `B 16 T 4` -> float32 waveform `B S` in [-1, 1], S = 640 T (64,000 for T = 100)."""
        return self.mel_to_wave(self.decode_mel(latents))


def griffin_lim(magnitude: torch.Tensor, num_samples: int, iters: int = GRIFFIN_LIM_ITERS,
                momentum: float = MOMENTUM) -> torch.Tensor:
    """A waveform `B S` whose STFT magnitude (n_fft 1024, hop 160, Hann, centred frames) approximates `B K T`.

    Fast Griffin-Lim from a zero phase: deterministic, no random initialisation.
    """
    n_fft, hop = melspec.N_FFT, melspec.HOP_LENGTH
    window = torch.hann_window(melspec.WIN_LENGTH, device=magnitude.device)

    def stft(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, n_fft, hop, melspec.WIN_LENGTH, window, center=True, return_complex=True)

    def istft(spec: torch.Tensor) -> torch.Tensor:
        return torch.istft(spec, n_fft, hop, melspec.WIN_LENGTH, window, center=True, length=num_samples)

    angles = torch.ones_like(magnitude, dtype=torch.complex64)
    previous = torch.zeros_like(angles)
    for _ in range(iters):
        rebuilt = stft(istft(magnitude * angles))
        accelerated = rebuilt - (momentum / (1 + momentum)) * previous
        angles = accelerated / accelerated.abs().clamp_min(1e-8)
        previous = rebuilt
    return istft(magnitude * angles)
