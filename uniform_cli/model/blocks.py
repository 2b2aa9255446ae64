"""The STDiT3 block: adaLN-single self-attention (within a frame, or across frames), cross-attention to
text, MLP; every token modulated by the timestep of its position (t, or 0 for given positions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uniform_cli.config import QKNorm
from uniform_cli.model.layers import Attention, Mlp, MultiHeadCrossAttention, t2i_modulate


class STDiT3Block(nn.Module):
    """One spatial (attention over the S tokens of a frame) or temporal (attention over the F frames at
    one position, RoPE over time) block. Parameter names follow Open-Sora's `STDiT3Block`."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: QKNorm = "rms",
                 temporal: bool = False):
        super().__init__()
        self.temporal = temporal
        self.hidden_size = hidden_size
        self.attn = Attention(hidden_size, num_heads, qk_norm=qk_norm)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor,
        t_mod: torch.Tensor,
        t0_mod: torch.Tensor,
        given: torch.Tensor,
        num_frames: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x `B N D` (N = F*S, frame-major); y `B L D` with y_mask `B L`; t_mod, t0_mod `B 6D` (t_block of t
        and of 0); given `B N 1` bool; rope (cos, sin) `F head_dim` for temporal blocks."""
        b, n, c = x.shape
        f, s = num_frames, n // num_frames
        mod = (self.scale_shift_table[None] + t_mod.view(b, 6, c)).unbind(1)  # 6 x B D
        mod0 = (self.scale_shift_table[None] + t0_mod.view(b, 6, c)).unbind(1)
        # Per token: the modulation of t where the position is generated, of t = 0 where it is given.
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            torch.where(given, p0[:, None], p[:, None]) for p, p0 in zip(mod, mod0)
        )

        h = t2i_modulate(F.layer_norm(x, (c,), eps=1e-6), shift_msa, scale_msa)
        if self.temporal:
            h = h.view(b, f, s, c).transpose(1, 2).reshape(b * s, f, c)
            h = self.attn(h, rope)
            h = h.view(b, s, f, c).transpose(1, 2).reshape(b, n, c)
        else:
            h = self.attn(h.view(b * f, s, c)).view(b, n, c)
        x = torch.addcmul(x, gate_msa, h)

        x = x + self.cross_attn(x, y, y_mask)

        h = self.mlp(t2i_modulate(F.layer_norm(x, (c,), eps=1e-6), shift_mlp, scale_mlp))
        return torch.addcmul(x, gate_mlp, h)
