"""Building blocks of STDiT3 (Open-Sora 1.2) and PixArt, with their parameter names.

Attention runs through `F.scaled_dot_product_attention` only, so no kernel package is needed; on a GPU
PyTorch picks its flash or memory-efficient kernel itself.
"""

from __future__ import annotations

import math
import typing

import torch
import torch.nn.functional as F
from torch import nn

from uniform_cli.config import QKNorm

# -- pure functions -----------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding `B dim` of (possibly fractional) timesteps `B`, cos half first (GLIDE, PixArt)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """`len(pos) dim` sin-cos embedding of positions (MAE): sines then cosines."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double().reshape(-1, 1) * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, height: int, width: int, spacing: float = 1.0) -> torch.Tensor:
    """2D sin-cos positions `height*width dim` over a row-major grid; first half encodes the column
    and second half the row, as PixArt's `get_2d_sincos_pos_embed` does."""
    rows = torch.arange(height, dtype=torch.float64) * spacing
    cols = torch.arange(width, dtype=torch.float64) * spacing
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
    return torch.cat([sincos_1d(dim // 2, grid_c), sincos_1d(dim // 2, grid_r)], dim=1)


def rope_cos_sin(length: int, dim: int, theta: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `length dim` of rotary position embeddings, each frequency repeated for its pair of
    channels (the interleaved convention of rotary-embedding-torch, which Open-Sora's weights were trained with)."""
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim)
    angles = torch.arange(length, dtype=torch.float32, device=device)[:, None] * freqs[None]
    angles = angles.repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of `... L D` by position; cos/sin are `L D`."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def t2i_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN-single modulation x * (1 + scale) + shift."""
    return torch.addcmul(shift, x, 1 + scale)


# -- modules ------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm over the last axis with a learned scale (Open-Sora's `LlamaRMSNorm`, used per head on q and k)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def qk_norm_layer(kind: QKNorm, dim: int, num_heads: int) -> nn.Module:
    """The norm of queries or keys of `kind` (`config.QKNorm`): per head, over the width, or none."""
    if kind == "rms":
        return RMSNorm(dim // num_heads)
    if kind == "layernorm":
        return nn.LayerNorm(dim)  # PixArt's: eps 1e-5, weight and bias
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"qk_norm must be one of {', '.join(typing.get_args(QKNorm))}, not {kind!r}")


class Attention(nn.Module):
    """Multi-head self-attention over `B N C` with QK normalisation (`qk_norm_layer`) and optional RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: QKNorm = "rms"):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = qk_norm_layer(qk_norm, dim, num_heads)
        self.k_norm = qk_norm_layer(qk_norm, dim, num_heads)
        self.norm_per_head = qk_norm == "rms"
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, n, c = x.shape
        heads = (b, n, self.num_heads, self.head_dim)
        q, k, v = self.qkv(x).view(b, n, 3, c).unbind(2)
        if self.norm_per_head:
            q, k = self.q_norm(q.view(heads)), self.k_norm(k.view(heads))
        else:
            q, k = self.q_norm(q).view(heads), self.k_norm(k).view(heads)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(heads).transpose(1, 2)  # B heads N D
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class MultiHeadCrossAttention(nn.Module):
    """Attention from tokens `B N C` to text `B L C` under a padding mask `B L` (True = real token)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q_linear(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_linear(y).view(b, y.shape[1], 2, self.num_heads, self.head_dim).unbind(2)
        # A text with no real token would give an all-masked softmax (NaN): let it attend everywhere with
        # zero values instead, so it contributes nothing.
        has_text = y_mask.any(dim=1)
        y_mask = y_mask | ~has_text[:, None]
        v = v * has_text[:, None, None, None].to(v.dtype)
        x = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=y_mask[:, None, None, :])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2 (timm's `Mlp` names)."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed3D(nn.Module):
    """`B C F H W` -> tokens `B N D` by a strided Conv3d, tokens ordered (frame, row, column)."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Timesteps `B` -> `B D`: 256-d sinusoid, Linear, SiLU, Linear."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_size).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class CaptionEmbedder(nn.Module):
    """Text `B L text_dim` -> `B L D` (Linear, GELU(tanh), Linear), plus the learned null text."""

    def __init__(self, text_dim: int, hidden_size: int, text_len: int):
        super().__init__()
        self.y_proj = Mlp(text_dim, hidden_size, hidden_size)
        self.y_embedding = nn.Parameter(torch.randn(text_len, text_dim) / text_dim**0.5)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


class T2IFinalLayer(nn.Module):
    """PixArt's final layer: LayerNorm, adaLN-single shift/scale from t, Linear to patch values."""

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor, t0: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """x `B N D`, t and t0 `B D` (embeddings of t and of 0), given `B N 1` bool."""
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        shift0, scale0 = (self.scale_shift_table[None] + t0[:, None]).chunk(2, dim=1)
        x = t2i_modulate(self.norm_final(x), torch.where(given, shift0, shift), torch.where(given, scale0, scale))
        return self.linear(x)
