"""The AudioLDM audio codec: waveform <-> log-mel <-> VAE latent, and mel -> waveform by HiFi-GAN.

A checkpoint is a hub id (read from the local Hugging Face cache only) or a folder with the published layout:
    vae/config.json + vae/diffusion_pytorch_model.safetensors       diffusers `AutoencoderKL`
    vocoder/config.json + vocoder/model.safetensors                 transformers `SpeechT5HifiGan`
(e.g. `cvssp/audioldm-s-full-v2`). The latent scaling factor is the one stored in `vae/config.json`.

Shapes at the paper's settings: wave `B 64000` -> mel `B 400 64` -> latent `B 8 100 16`, and back.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from uniform_cli.media import mel as melspec
from uniform_cli.pretrained import CodecError, download_command

DEFAULT_CHECKPOINT = "cvssp/audioldm-s-full-v2"
FILES = ["vae/*", "vocoder/*"]
"""The parts of an AudioLDM repository the codec loads (the UNet and text encoder are not needed)."""
WHAT = "AudioLDM checkpoint"


class AudioLDMCodec:
    """AudioLDM VAE + HiFi-GAN vocoder as an `AudioCodec` (float `B S` <-> latent `B C T M`).

    `clips_per_call` clips go through the networks at a time, so that a large batch fits in memory.
    """

    def __init__(self, vae: torch.nn.Module, vocoder: torch.nn.Module, clips_per_call: int = 16) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.vocoder = vocoder.eval().requires_grad_(False)
        self.clips_per_call = clips_per_call
        self.scaling_factor = float(vae.config.scaling_factor)
        self.sample_rate = int(vocoder.config.sampling_rate)
        self.n_mels = int(vocoder.config.model_in_dim)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)
        self._check_compatible()

    def _check_compatible(self) -> None:
        """The recipe's mel must be what the VAE and the vocoder were trained on."""
        problems = []
        if self.vae.config.in_channels != 1 or self.vae.config.out_channels != 1:
            problems.append(f"VAE has {self.vae.config.in_channels}/{self.vae.config.out_channels} in/out channels, not 1/1")
        if self.n_mels != melspec.N_MELS:
            problems.append(f"vocoder takes {self.n_mels} mel bins, not {melspec.N_MELS}")
        if self.sample_rate != melspec.SAMPLE_RATE:
            problems.append(f"vocoder runs at {self.sample_rate} Hz, not {melspec.SAMPLE_RATE}")
        upsampling = math.prod(self.vocoder.config.upsample_rates)
        if upsampling != melspec.HOP_LENGTH:
            problems.append(f"vocoder upsamples x{upsampling}, not x{melspec.HOP_LENGTH} (the mel hop)")
        if melspec.N_MELS % self.downsample:
            problems.append(f"{melspec.N_MELS} mel bins are not divisible by the VAE's x{self.downsample}")
        if problems:
            raise CodecError("this is not an AudioLDM checkpoint for 16 kHz, 64-mel audio: " + "; ".join(problems))

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str | Path = DEFAULT_CHECKPOINT,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        clips_per_call: int = 16,
    ) -> "AudioLDMCodec":
        """Load `vae/` and `vocoder/` from a local folder or a hub id already in the local HF cache (never
        downloads).

        Raises CodecError saying what to download and where when either part is missing.
        """
        from diffusers import AutoencoderKL
        from transformers import SpeechT5HifiGan

        from uniform_cli.pretrained import resolve_pretrained

        folder = resolve_pretrained(id_or_path, FILES, WHAT, example=DEFAULT_CHECKPOINT, error=CodecError)
        # Without accelerate, diffusers' default low_cpu_mem_usage=True falls back to False with a warning on
        # every load; ask for what is available instead.
        has_accelerate = importlib.util.find_spec("accelerate") is not None
        try:
            vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", local_files_only=True, torch_dtype=dtype,
                                                low_cpu_mem_usage=has_accelerate)
            vocoder = SpeechT5HifiGan.from_pretrained(str(folder), subfolder="vocoder", local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as err:
            raise CodecError(
                f"{WHAT}: cannot load {folder} ({err}); it needs vae/ (config.json + diffusion_pytorch_model."
                f"safetensors) and vocoder/ (config.json + model.safetensors), as "
                f"`{download_command(DEFAULT_CHECKPOINT, FILES)}` downloads them"
            ) from err
        return cls(vae.to(device), vocoder.to(device), clips_per_call=clips_per_call)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_shape(self, num_samples: int) -> tuple[int, int, int]:
        """`C T M` of a clip of `num_samples` samples (64,000 -> (8, 100, 16))."""
        hop = melspec.HOP_LENGTH * self.downsample
        if num_samples <= 0 or num_samples % hop:
            raise ValueError(f"the AudioLDM codec needs a sample count that is a multiple of {hop}, got {num_samples}")
        return (self.latent_channels, num_samples // hop, self.n_mels // self.downsample)

    def _chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.split(self.clips_per_call)) if x.shape[0] else []

    # -- waveform <-> mel ------------------------------------------------------------------------------------------

    def wave_to_mel(self, wave: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """float `B S` -> log-mel `B T M` (float32) by AudioLDM's recipe; `normalize` applies its peak-0.5 scaling."""
        if wave.dim() != 2:
            raise ValueError(f"audio codec expects a waveform batch `B S`, got shape {tuple(wave.shape)}")
        if wave.shape[-1] % melspec.HOP_LENGTH:
            # the STFT would silently drop the partial last hop, and decode would come back shorter
            raise ValueError(
                f"waveform of {wave.shape[-1]} samples is not a whole number of {melspec.HOP_LENGTH}-sample mel hops; "
                f"cut or pad clips to a multiple of {melspec.HOP_LENGTH * self.downsample} samples (64,000 for 4 s)"
            )
        wave = wave.to(self.device, torch.float32)
        if normalize:
            wave = melspec.normalize_wave(wave)
        return melspec.log_mel_spectrogram(wave)

    @torch.no_grad()
    def mel_to_wave(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel `B T M` -> float32 waveform `B S` with exactly S = T * hop samples (64,000 for 400 frames).

        SpeechT5HifiGan's first transposed convolution (kernel 16, stride 5, padding 5) yields 5T + 1 steps, so the
        vocoder returns T * 160 + 32 samples; the 32 surplus samples at the end are cut off, as diffusers'
        AudioLDM pipeline does when it trims to the requested length.
        """
        if mel.dim() != 3 or mel.shape[-1] != self.n_mels:
            raise ValueError(f"vocoder expects a mel `B T {self.n_mels}`, got shape {tuple(mel.shape)}")
        num_samples = mel.shape[1] * melspec.HOP_LENGTH
        waves = []
        for chunk in self._chunks(mel):
            wave = self.vocoder(chunk.to(self.device, self.dtype)).float()  # B S'
            if wave.shape[-1] < num_samples:
                raise CodecError(f"vocoder returned {wave.shape[-1]} samples for {mel.shape[1]} mel frames, expected at least {num_samples}")
            waves.append(wave[:, :num_samples])
        return torch.cat(waves) if waves else mel.new_zeros(0, num_samples, dtype=torch.float32)

    # -- mel <-> latent --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_mel(
        self,
        mel: torch.Tensor,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """log-mel `B T M` -> latent `B C T/4 M/4` (float32) times the checkpoint's scaling factor.

        `sample=True` draws from the posterior as AudioLDM does; `sample=False` takes its mean (deterministic).
        """
        if mel.dim() != 3:
            raise ValueError(f"encode_mel expects a mel `B T M`, got shape {tuple(mel.shape)}")
        frames, bins = mel.shape[1], mel.shape[2]
        if frames % self.downsample or bins % self.downsample:
            raise ValueError(
                f"mel of {frames} frames x {bins} bins is not divisible by the VAE's x{self.downsample}; "
                f"use clips whose sample count is a multiple of {melspec.HOP_LENGTH * self.downsample}"
            )
        latents = []
        for chunk in self._chunks(mel):
            posterior = self.vae.encode(chunk[:, None].to(self.device, self.dtype)).latent_dist  # B 1 T M in
            z = posterior.sample(generator=generator) if sample else posterior.mean
            latents.append(z.float() * self.scaling_factor)
        if not latents:
            return mel.new_zeros(0, self.latent_channels, frames // self.downsample, bins // self.downsample)
        return torch.cat(latents)

    @torch.no_grad()
    def decode_mel(self, latents: torch.Tensor) -> torch.Tensor:
        """latent `B C T M` -> log-mel `B 4T 4M` (float32), dividing by the checkpoint's scaling factor first."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"decode_mel expects a latent `B {self.latent_channels} T M`, got shape {tuple(latents.shape)}")
        mels = []
        for chunk in self._chunks(latents):
            z = chunk.to(self.device, self.dtype) / self.scaling_factor
            mels.append(self.vae.decode(z).sample[:, 0].float())  # B 1 T M -> B T M
        if not mels:
            b, _, t, m = latents.shape
            return latents.new_zeros(b, t * self.downsample, m * self.downsample, dtype=torch.float32)
        return torch.cat(mels)

    # -- the AudioCodec protocol -----------------------------------------------------------------------------------

    def encode(
        self,
        wave: torch.Tensor,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """float `B S` -> latent `B 8 S/640 16` (already scaled for the model); 64,000 samples -> `B 8 100 16`.

        `sample` and `generator` as in `encode_mel`.
        """
        return self.encode_mel(self.wave_to_mel(wave, normalize=normalize), sample=sample, generator=generator)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latent `B 8 T 16` -> float32 waveform `B S` in [-1, 1], S = 4T * 160 (64,000 for T = 100)."""
        return self.mel_to_wave(self.decode_mel(latents))
