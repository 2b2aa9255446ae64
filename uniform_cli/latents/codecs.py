"""What a codec is, and the one place a codec name in a recipe maps to a class.

Codecs turn prepared media into the latents the model sees and back:
    video: uint8 `B F H W 3` <-> `B C F' H' W'`
    audio: float32 `B S` in [-1, 1] <-> `B C T M`
Every codec encodes under one contract: `sample=True` draws from the posterior (how training latents are
made), `sample=False` takes its mean (deterministic: what generation uses for given media). A weight-free
codec has no posterior, so both give the same latent.
"""

from __future__ import annotations

import typing
from typing import Protocol

import torch

from uniform_cli.config import AudioCodecName, CodecConfig, VideoCodecName
from uniform_cli.pretrained import CodecError


class VideoCodec(Protocol):
    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """`C F' H' W'` that `encode` makes of a clip of `num_frames` frames of `height` x `width` pixels."""
        ...

    def encode(self, frames: torch.Tensor, *, sample: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 `B F H W 3` -> latent `B C F' H' W'` (already shifted/scaled for the model); `sample=False`
        is deterministic, `generator` makes a sampled encode reproducible."""
        ...

    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """latent `B C F' H' W'` -> uint8 `B F H W 3` with exactly `num_frames` frames."""
        ...


class AudioCodec(Protocol):
    def latent_shape(self, num_samples: int) -> tuple[int, int, int]:
        """`C T M` that `encode` makes of a clip of `num_samples` samples."""
        ...

    def encode(self, wave: torch.Tensor, *, sample: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """float `B S` -> latent `B C T M` (already scaled for the model); `sample=False` is deterministic,
        `generator` makes a sampled encode reproducible."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latent `B C T M` -> float `B S` waveform in [-1, 1]."""
        ...


def build_video_codec(cfg: CodecConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VideoCodec:
    """The video codec a recipe names."""
    if cfg.video == "opensora":
        from uniform_cli.latents.video_vae import OpenSoraVAE

        return OpenSoraVAE.from_pretrained(cfg.video_vae, device=device, dtype=dtype)
    if cfg.video == "pixel":
        from uniform_cli.latents.pixel import PixelCodec

        return PixelCodec()
    choices = " or ".join(repr(c) for c in typing.get_args(VideoCodecName))
    raise CodecError(f"unknown video codec {cfg.video!r} in [codec] video; choose {choices}")


def build_audio_codec(cfg: CodecConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AudioCodec:
    """The audio codec a recipe names."""
    if cfg.audio == "audioldm":
        from uniform_cli.latents.audio_vae import AudioLDMCodec

        return AudioLDMCodec.from_pretrained(cfg.audio_vae, device=device, dtype=dtype)
    if cfg.audio == "mel":
        from uniform_cli.latents.melcodec import MelCodec

        return MelCodec()
    choices = " or ".join(repr(c) for c in typing.get_args(AudioCodecName))
    raise CodecError(f"unknown audio codec {cfg.audio!r} in [codec] audio; choose {choices}")
