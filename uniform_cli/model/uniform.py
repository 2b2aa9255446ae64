"""UniForm: one STDiT3 backbone over audible frames (video | audio strip | task token) for T2AV, A2V, V2A."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from uniform_cli.config import ModelConfig
from uniform_cli.diffusion.tasks import task_of
from uniform_cli.model.blocks import STDiT3Block
from uniform_cli.model.layers import (
    CaptionEmbedder,
    PatchEmbed3D,
    T2IFinalLayer,
    TimestepEmbedder,
    rope_cos_sin,
    sincos_2d,
)
from uniform_cli.model.packing import (
    AudibleFrameLayout,
    given_token_mask,
    pack_audible_frames,
    unpack_audible_frames,
)
from uniform_cli.types import AV

POSITION_UNIT = 64
"""Latent rows of a 512-pixel frame. Positions are spaced POSITION_UNIT / H apart (2 at 256 px), the spacing
PixArt-Sigma (pe_interpolation 0.5) and Open-Sora 1.2 use at 256 px, so imported weights see familiar positions."""


@dataclass
class Conditioning:
    """What every block of one forward sees besides the tokens: projected text `B L D` and its mask `B L`, the
    timestep embeddings `B D` of t and of 0 and their modulations `B 6D`, the given-token mask `B N 1`, and RoPE
    (cos, sin) `F head_dim` over time."""

    y: torch.Tensor
    y_mask: torch.Tensor
    t_emb: torch.Tensor
    t0_emb: torch.Tensor
    t_mod: torch.Tensor
    t0_mod: torch.Tensor
    given: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]


class UniForm(nn.Module):
    """The UniForm backbone. `forward` takes noisy latents (clean at given positions) and returns, per
    modality, the predicted noise followed (when `cfg.pred_sigma`) by the learned-range variance values."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.layout = AudibleFrameLayout.from_config(cfg)
        c = cfg.hidden_size
        if c % 4:
            raise ValueError(f"model.hidden_size {c} must be a multiple of 4 for 2D sin-cos positions")
        if (c // cfg.num_heads) % 2:
            raise ValueError(f"head width {c // cfg.num_heads} must be even for RoPE")
        if cfg.num_tasks < 3:
            raise ValueError(f"model.num_tasks {cfg.num_tasks} must be at least 3 (T2AV, A2V, V2A)")
        self.in_channels = self.layout.channels
        self.out_channels = 2 * self.in_channels if cfg.pred_sigma else self.in_channels
        self.task_embedder = nn.Embedding(cfg.num_tasks, math.prod(self.layout.task_block_shape))
        self.x_embedder = PatchEmbed3D(cfg.patch_size, self.in_channels, c)
        self.t_embedder = TimestepEmbedder(c)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        self.y_embedder = CaptionEmbedder(cfg.text_dim, c, cfg.text_len)
        self.spatial_blocks = nn.ModuleList(
            [STDiT3Block(c, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth)]
        )
        self.temporal_blocks = nn.ModuleList(
            [STDiT3Block(c, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm, temporal=True) for _ in range(cfg.depth)]
        )
        self.final_layer = T2IFinalLayer(c, math.prod(cfg.patch_size), self.out_channels)
        self.checkpoint_depth = cfg.depth if cfg.grad_checkpointing else cfg.checkpoint_blocks
        """Leading (spatial, temporal) block pairs whose activations are recomputed in the backward pass."""
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """PixArt/Open-Sora initialisation; temporal blocks start as identities (zero output projections)."""

        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(basic)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)
        for block in self.temporal_blocks:
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.mlp.fc2.weight)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def encode_text(
        self, text: torch.Tensor, text_mask: torch.Tensor, drop_text: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text `B L text_dim` + mask `B L` -> projected text `B L' D` + mask; dropped rows get the learned null
        text, with all of its `text_len` tokens valid (`null_text_mask` "full": nothing of the caption is left, not
        even its length) or the prompt's own mask ("prompt", Open-Sora's; a prompt without tokens gets all)."""
        b, length = text.shape[:2]
        if text.dim() != 3 or text.shape[2] != self.cfg.text_dim:
            raise ValueError(f"text has shape {tuple(text.shape)}; expected (B, L, {self.cfg.text_dim})")
        if length > self.cfg.text_len:
            raise ValueError(f"text has {length} tokens; the model takes at most model.text_len={self.cfg.text_len}")
        if tuple(text_mask.shape) != (b, length):
            raise ValueError(f"text_mask has shape {tuple(text_mask.shape)}; expected {(b, length)}")
        null = self.y_embedder.y_embedding
        text, text_mask = text.to(null.dtype), text_mask.bool()
        if drop_text is not None:
            pad = self.cfg.text_len - length
            text = F.pad(text, (0, 0, 0, pad))
            text_mask = F.pad(text_mask, (0, pad), value=False)
            drop = drop_text.bool().view(b, 1)
            text = torch.where(drop[..., None], null[None], text)
            whole = drop if self.cfg.null_text_mask == "full" else drop & ~text_mask.any(dim=1, keepdim=True)
            text_mask = text_mask | whole
        return self.y_embedder(text), text_mask

    def embed(
        self,
        x: AV,
        t: torch.Tensor,
        generated: AV,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        drop_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Conditioning]:
        """The tokens `B N D` before the first block, and what every block sees besides them (`forward`'s
        arguments)."""
        lay, cfg = self.layout, self.cfg
        dtype = self.x_embedder.proj.weight.dtype
        b = x.video.shape[0]
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},); got {tuple(t.shape)}")
        task = task_of(generated).to(t.device)

        task_block = self.task_embedder(task).view(b, *lay.task_block_shape)
        frames = pack_audible_frames(x.video.to(dtype), x.audio.to(dtype), task_block.to(dtype), lay)
        given = given_token_mask(generated, lay)[..., None]  # B N 1

        tf, th, tw = lay.grid
        h = self.x_embedder(frames)  # B N D
        d = h.shape[-1]
        pos = sincos_2d(d, th, tw, spacing=POSITION_UNIT / lay.video_shape[2]).to(h.device, h.dtype)
        h = (h.view(b, tf, th * tw, d) + pos).view(b, -1, d)

        t_emb, t0_emb = self.t_embedder(torch.cat([t, torch.zeros_like(t)])).chunk(2)
        t_mod, t0_mod = self.t_block(torch.cat([t_emb, t0_emb])).chunk(2)
        y, y_mask = self.encode_text(text, text_mask, drop_text)
        rope = rope_cos_sin(tf, d // cfg.num_heads, device=h.device)
        return h, Conditioning(y, y_mask, t_emb, t0_emb, t_mod, t0_mod, given, rope)

    def run_blocks(self, h: torch.Tensor, cond: Conditioning, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Tokens `B N D` through the (spatial, temporal) block pairs `start` to `stop` (default: the last); pairs
        below `checkpoint_depth` are recomputed in the backward pass when gradients are on."""
        frames = self.layout.grid[0]
        pairs = list(zip(self.spatial_blocks, self.temporal_blocks))
        for i in range(start, len(pairs) if stop is None else stop):
            spatial, temporal = pairs[i]
            args = (cond.y, cond.y_mask, cond.t_mod, cond.t0_mod, cond.given, frames)
            if i < self.checkpoint_depth and torch.is_grad_enabled():
                h = checkpoint(spatial, h, *args, use_reentrant=False)
                h = checkpoint(temporal, h, *args, cond.rope, use_reentrant=False)
            else:
                h = temporal(spatial(h, *args), *args, cond.rope)
        return h

    def head(self, h: torch.Tensor, cond: Conditioning) -> AV:
        """Tokens after the last block -> float32 video and audio outputs (`forward`'s result)."""
        lay, cfg = self.layout, self.cfg
        b = h.shape[0]
        tf, th, tw = lay.grid
        h = self.final_layer(h, cond.t_emb, cond.t0_emb, cond.given)  # B N (pt ph pw Cout)
        pt, ph, pw = cfg.patch_size
        h = h.view(b, tf, th, tw, pt, ph, pw, self.out_channels).float()
        frames = h.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, self.out_channels, tf * pt, th * ph, tw * pw)
        video, audio, _ = unpack_audible_frames(frames, lay)
        return AV(video=video, audio=audio)

    def forward(
        self,
        x: AV,
        t: torch.Tensor,
        generated: AV,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        drop_text: torch.Tensor | None = None,
    ) -> AV:
        """x: video `B C F H W` and audio `B C T M` latents (clean where given); t `B` timesteps; generated: the
        job's masks, per modality `[B]` or `[B, F]`, True where generated (`diffusion.tasks`: given frames get
        t = 0 modulation, and the task token is `task_of(generated)`); text `B L text_dim` with text_mask `B L`
        (True = real token); drop_text `B` bool, True where the text is replaced by the learned null text
        (classifier-free guidance).
        Returns float32 video and audio outputs with 2C channels per modality (noise, then variance) or C without
        pred_sigma. The three stages are separate methods so that a step cache (`model.cache`) can stop after the
        first block pair."""
        h, cond = self.embed(x, t, generated, text, text_mask, drop_text)
        return self.head(self.run_blocks(h, cond), cond)


def build_model(cfg: ModelConfig) -> UniForm:
    """A freshly initialised UniForm for `cfg` (build under `torch.device("meta")` to count without memory)."""
    return UniForm(cfg)


def num_tokens(cfg: ModelConfig) -> int:
    """Tokens per sample: frames x (height / patch) x (audible frame width / patch); 6,400 for XL/2."""
    return AudibleFrameLayout.from_config(cfg).num_tokens


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(cfg: ModelConfig, text_len: int | None = None) -> int:
    """Forward FLOPs of one sample (2 per multiply-add): every matmul, and the attention score and value
    products of spatial, temporal and cross-attention (text over `text_len` tokens, default cfg.text_len)."""
    lay = AudibleFrameLayout.from_config(cfg)
    length = cfg.text_len if text_len is None else text_len
    c, n = cfg.hidden_size, lay.num_tokens
    frames, s = lay.grid[0], lay.grid[1] * lay.grid[2]
    hidden = int(c * cfg.mlp_ratio)
    patch = math.prod(cfg.patch_size)
    out_channels = 2 * lay.channels if cfg.pred_sigma else lay.channels
    linear = n * (3 * c * c + c * c + c * c + c * c + 2 * c * hidden) + length * 2 * c * c
    spatial_attn = 2 * frames * s * s * c
    temporal_attn = 2 * s * frames * frames * c
    cross_attn = 2 * n * length * c
    per_pair = 2 * linear + spatial_attn + temporal_attn + 2 * cross_attn
    embed = n * c * lay.channels * patch + n * c * patch * out_channels
    embed += length * (cfg.text_dim * c + c * c) + 2 * (256 * c + c * c + 6 * c * c)
    return 2 * (cfg.depth * per_pair + embed)


def compile_blocks(model: UniForm, **kwargs) -> UniForm:
    """torch.compile every block in place (one graph per block kind, shared by all blocks of that kind)."""
    for block in [*model.spatial_blocks, *model.temporal_blocks]:
        block.compile(**kwargs)
    return model
