"""Synchformer's visual encoder: MotionFormer (divided space-time ViT-B/16) in the published key layout.

Each segment of 16 frames at 224x224 becomes 8 x 14 x 14 tubelets (2 frames x 16 x 16 pixels); twelve
blocks attend first along time (each patch position over the 8 steps), then along space (each step over its
196 patches), with the CLS token attending to everything. A CLS-token encoder layer then pools each time
step's 196 patches, so a segment gives 8 feature vectors. Names follow the Synchformer checkpoint under
`vfeat_extractor.` (`blocks.N.timeattn.qkv`, `spatial_attn_agg.self_attn.in_proj_weight`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FRAME_SIZE = 224
PATCH = 16
TUBELET = 2
"""Frames per tubelet: a 16-frame segment gives 8 time steps."""
SEGMENT_FRAMES = 16
PATCHES = (FRAME_SIZE // PATCH) ** 2
STEPS = SEGMENT_FRAMES // TUBELET


class ClsPooling(nn.TransformerEncoderLayer):
    """A pre-norm encoder layer (GELU, LayerNorm eps 1e-6) over a learnt CLS token and a sequence; returns
    the CLS output. Synchformer pools space (video) and frequency (audio) this way."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__(
            d_model=width, nhead=heads, dim_feedforward=hidden, dropout=0.0, activation=nn.GELU(),
            layer_norm_eps=1e-6, batch_first=True, norm_first=True,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Sequences `N L D` -> pooled `N D`."""
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        return super().forward(x)[:, 0]


class DividedAttention(nn.Module):
    """Self-attention within groups (one time line, or one frame) of `1 + steps * patches` tokens; the CLS
    query sees all tokens, and every group sees the CLS key and value."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, steps: int, along_time: bool) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # B h N d
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # B h 1 d

        def grouped(t: torch.Tensor) -> torch.Tensor:
            t = t[:, :, 1:].unflatten(2, (steps, -1))  # B h steps patches d
            return t.transpose(2, 3) if along_time else t  # B h groups length d

        def with_cls(t: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
            cls = t[:, :, None, :1].expand(-1, -1, groups.shape[2], -1, -1)
            return torch.cat([cls, groups], dim=3)

        gq, gk, gv = grouped(q), grouped(k), grouped(v)
        out = F.scaled_dot_product_attention(gq, with_cls(k, gk), with_cls(v, gv))
        out = (out.transpose(2, 3) if along_time else out).flatten(2, 3)  # B h (steps patches) d
        out = torch.cat([cls_out, out], dim=2).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class _Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Time attention (norm3), then space attention (norm1), then the MLP (norm2), each residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.norm3 = nn.LayerNorm(width, eps=1e-6)
        self.attn = DividedAttention(width, heads)
        self.timeattn = DividedAttention(width, heads)
        self.mlp = _Mlp(width, mlp_ratio * width)

    def forward(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), steps, along_time=True)
        x = x + self.attn(self.norm1(x), steps, along_time=False)
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.proj = conv


class MotionFormer(nn.Module):
    """Segments `N 3 16 224 224` in [-1, 1] -> features `N 8 D` (one per tubelet step)."""

    def __init__(self, width: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: int = 4) -> None:
        super().__init__()
        # The 2-D patch embedding is never applied (tubelets replace it), but the checkpoint holds it.
        self.patch_embed = _PatchEmbed(nn.Conv2d(3, width, PATCH, stride=PATCH))
        self.patch_embed_3d = _PatchEmbed(nn.Conv3d(3, width, (TUBELET, PATCH, PATCH), stride=(TUBELET, PATCH, PATCH)))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + PATCHES, width))
        self.temp_embed = nn.Parameter(torch.zeros(1, STEPS, width))
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.spatial_attn_agg = ClsPooling(width, heads, mlp_ratio * width)

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        n = len(segments)
        x = self.patch_embed_3d.proj(segments).flatten(2).transpose(1, 2)  # N (steps patches) D
        # The same spatial embedding at every step, plus one temporal embedding per step.
        spatial = self.pos_embed[:, 1:].repeat(1, STEPS, 1)
        temporal = self.temp_embed.repeat_interleave(PATCHES, dim=1)
        pos = torch.cat([self.pos_embed[:, :1], spatial + temporal], dim=1)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1) + pos
        for block in self.blocks:
            x = block(x, STEPS)
        x = self.norm(x[:, 1:]).unflatten(1, (STEPS, PATCHES))  # N steps patches D
        return self.spatial_attn_agg(x.flatten(0, 1)).unflatten(0, (n, STEPS))
