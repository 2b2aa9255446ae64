"""Open-Sora v1.2's temporal VAE (`VAE_Temporal_SD`): MAGVIT-v2 style causal 3D convolutions over SDXL latents.

It compresses time ×4 (space untouched) in chunks whose length is zero-padded at the front to a multiple of 4.
Module and parameter names follow upstream (`opensora/models/vae/vae_temporal.py`) exactly, so the published
`temporal_vae.*` keys load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TemporalVAEConfig:
    """Widths of the temporal VAE (the published model is the default; tests shrink the widths only)."""

    in_out_channels: int = 4
    """Channels of the spatial latent it compresses."""
    latent_channels: int = 4
    """Channels of its own latent."""
    filters: int = 128
    """Width of the first stage."""
    num_res_blocks: int = 4
    """Residual blocks per stage."""
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    """Width of each stage as a multiple of `filters`."""
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    """Whether the transition after stage i halves time (one flag fewer than stages)."""
    num_groups: int = 32
    """GroupNorm groups."""

    def __post_init__(self) -> None:
        if len(self.temporal_downsample) != len(self.channel_multipliers) - 1:
            raise ValueError("temporal_downsample needs one flag per stage transition (len(channel_multipliers) - 1)")
        for width in (self.filters * m for m in self.channel_multipliers):
            if width % self.num_groups:
                raise ValueError(f"width {width} is not divisible by num_groups {self.num_groups}")

    @property
    def time_factor(self) -> int:
        """How many frames make one latent frame."""
        return 2 ** sum(self.temporal_downsample)


def front_padding(num_frames: int, factor: int) -> int:
    """Zero frames put before a chunk of `num_frames` so its length is a multiple of `factor`."""
    return (-num_frames) % factor


def latent_length(num_frames: int, factor: int) -> int:
    """Latent frames of one chunk of `num_frames` frames."""
    return (num_frames + front_padding(num_frames, factor)) // factor


def gaussian_latent(moments: torch.Tensor, sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean (or a draw) of the diagonal Gaussian whose mean and log-variance are stacked on dim 1."""
    mean, logvar = moments.chunk(2, dim=1)
    if not sample:
        return mean
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise


class CausalConv3d(nn.Module):
    """Conv3d that pads time only at the front (output t sees inputs <= t) and space symmetrically."""

    def __init__(
        self,
        chan_in: int,
        chan_out: int,
        kernel_size: int | tuple[int, int, int],
        time_stride: int = 1,
        bias: bool = True,
        padding: str | int = 0,
    ) -> None:
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError("CausalConv3d needs odd spatial kernels")
        # A strided conv pads one frame less, so T frames (T even) become exactly T / stride.
        time_pad = (kt - 1) + (1 - time_stride)
        self.time_causal_padding = (kw // 2, kw // 2, kh // 2, kh // 2, time_pad, 0)
        self.conv = nn.Conv3d(
            chan_in, chan_out, (kt, kh, kw), stride=(time_stride, 1, 1), bias=bias, padding=padding
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.time_causal_padding))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a 1×1×1 projection on the skip when the width changes."""

    def __init__(self, in_channels: int, filters: int, num_groups: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.filters = filters
        self.activate = nn.SiLU()
        self.norm1 = nn.GroupNorm(num_groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, filters, 3, bias=False)
        self.norm2 = nn.GroupNorm(num_groups, filters)
        self.conv2 = CausalConv3d(filters, filters, 3, bias=False)
        if in_channels != filters:
            self.conv3 = CausalConv3d(in_channels, filters, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.activate(self.norm1(x)))
        h = self.conv2(self.activate(self.norm2(h)))
        skip = self.conv3(x) if self.in_channels != self.filters else x
        return h + skip


class Encoder(nn.Module):
    """`B C T H W` -> moments `B 2*latent T/4 H W`."""

    def __init__(self, cfg: TemporalVAEConfig) -> None:
        super().__init__()
        self.num_blocks = len(cfg.channel_multipliers)
        self.num_res_blocks = cfg.num_res_blocks
        self.activate = nn.SiLU()
        self.conv_in = CausalConv3d(cfg.in_out_channels, cfg.filters, 3, bias=False)

        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        prev = cfg.filters
        for i, mult in enumerate(cfg.channel_multipliers):
            width = cfg.filters * mult
            stage = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.append(ResBlock(prev, width, cfg.num_groups))
                prev = width
            self.block_res_blocks.append(stage)
            if i < self.num_blocks - 1:
                # Upstream keeps an Identity placeholder so the strided convs keep their published indices.
                self.conv_blocks.append(
                    CausalConv3d(prev, width, 3, time_stride=2) if cfg.temporal_downsample[i] else nn.Identity()
                )
        self.res_blocks = nn.ModuleList(ResBlock(prev, prev, cfg.num_groups) for _ in range(cfg.num_res_blocks))
        self.norm1 = nn.GroupNorm(cfg.num_groups, prev)
        self.conv2 = CausalConv3d(prev, 2 * cfg.latent_channels, 1, padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i in range(self.num_blocks):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i < self.num_blocks - 1:
                x = self.conv_blocks[i](x)
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(self.activate(self.norm1(x)))


class Decoder(nn.Module):
    """latent `B latent T H W` -> `B C 4T H W` (depth-to-time upsampling)."""

    def __init__(self, cfg: TemporalVAEConfig) -> None:
        super().__init__()
        self.num_blocks = len(cfg.channel_multipliers)
        self.temporal_downsample = cfg.temporal_downsample
        self.activate = nn.SiLU()
        width = cfg.filters * cfg.channel_multipliers[-1]
        self.conv1 = CausalConv3d(cfg.latent_channels, width, 3)
        self.res_blocks = nn.ModuleList(ResBlock(width, width, cfg.num_groups) for _ in range(cfg.num_res_blocks))

        # Built from the deepest stage up, stored shallowest first (upstream's insert(0, ...)).
        stages: list[nn.ModuleList] = []
        convs: list[nn.Module] = []
        prev = width
        for i in reversed(range(self.num_blocks)):
            width = cfg.filters * cfg.channel_multipliers[i]
            stage = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.append(ResBlock(prev, width, cfg.num_groups))
                prev = width
            stages.insert(0, stage)
            if i > 0:
                up = 2 if cfg.temporal_downsample[i - 1] else 1
                convs.insert(0, CausalConv3d(prev, prev * up, 3) if up > 1 else nn.Identity())
        self.block_res_blocks = nn.ModuleList(stages)
        self.conv_blocks = nn.ModuleList(convs)
        self.norm1 = nn.GroupNorm(cfg.num_groups, prev)
        self.conv_out = CausalConv3d(prev, cfg.in_out_channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z)
        for block in self.res_blocks:
            x = block(x)
        for i in reversed(range(self.num_blocks)):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i > 0 and self.temporal_downsample[i - 1]:
                x = self.conv_blocks[i - 1](x)
                # B (C 2) T H W -> B C (T 2) H W: the doubled channels become consecutive frames.
                b, c2, t, h, w = x.shape
                x = x.reshape(b, c2 // 2, 2, t, h, w).permute(0, 1, 3, 2, 4, 5).reshape(b, c2 // 2, t * 2, h, w)
        return self.conv_out(self.activate(self.norm1(x)))


class TemporalVAE(nn.Module):
    """Upstream `VAE_Temporal`: encoder, 1×1×1 quant convs, decoder; encodes and decodes one chunk at a time."""

    def __init__(self, cfg: TemporalVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = CausalConv3d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = CausalConv3d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg)

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Chunk `B C T H W` -> moments `B 2*latent ceil(T/4) H W` (time zero-padded at the front)."""
        x = F.pad(x, (0, 0, 0, 0, front_padding(x.shape[2], self.cfg.time_factor), 0))
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """latent `B latent T' H W` -> `B C num_frames H W` (drops the front padding encode added)."""
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, front_padding(num_frames, self.cfg.time_factor) :]
