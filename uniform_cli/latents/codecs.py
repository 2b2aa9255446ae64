"""What a codec is, and the one place a codec name in a recipe maps to a class.

Codecs turn prepared media into the latents the model sees and back:
    video: uint8 `B F H W 3` <-> `B C F' H' W'`
    audio: float32 `B S` in [-1, 1] <-> `B C T M`
"""

from __future__ import annotations

from typing import Protocol

import torch

from uniform_cli.config import CodecConfig


class VideoCodec(Protocol):
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 `B F H W 3` -> latent `B C F' H' W'` (already shifted/scaled for the model)."""
        ...

    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """latent `B C F' H' W'` -> uint8 `B F H W 3` with exactly `num_frames` frames."""
        ...


class AudioCodec(Protocol):
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """float `B S` -> latent `B C T M` (already scaled for the model)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latent `B C T M` -> float `B S` waveform in [-1, 1]."""
        ...


class CodecError(RuntimeError):
    """A codec's weights are missing or do not match; the message says what to download and where."""


def build_video_codec(cfg: CodecConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VideoCodec:
    """The video codec a recipe names."""
    if cfg.video == "opensora":
        from uniform_cli.latents.video_vae import OpenSoraVAE

        return OpenSoraVAE.from_pretrained(cfg.video_vae, device=device, dtype=dtype)
    if cfg.video == "pixel":
        from uniform_cli.latents.pixel import PixelCodec

        return PixelCodec()
    raise CodecError(f"unknown video codec {cfg.video!r} in [codec] video; choose 'opensora' or 'pixel'")


def build_audio_codec(cfg: CodecConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AudioCodec:
    """The audio codec a recipe names."""
    if cfg.audio == "audioldm":
        from uniform_cli.latents.audio_vae import AudioLDMCodec

        return AudioLDMCodec.from_pretrained(cfg.audio_vae, device=device, dtype=dtype)
    if cfg.audio == "mel":
        from uniform_cli.latents.melcodec import MelCodec

        return MelCodec()
    raise CodecError(f"unknown audio codec {cfg.audio!r} in [codec] audio; choose 'audioldm' or 'mel'")
