"""Small builders shared by the model tests."""

from __future__ import annotations

import dataclasses

import torch

from uniform_cli.config import PRESETS, ModelConfig
from uniform_cli.model.uniform import UniForm, build_model
from uniform_cli.types import AV


def debug_config(**changes) -> ModelConfig:
    return dataclasses.replace(PRESETS["debug"], **changes)


def random_model(cfg: ModelConfig | None = None, seed: int = 0) -> UniForm:
    """A model whose zero-initialised tensors (temporal output projections, final layer) are random too,
    so every path from input to output carries signal."""
    torch.manual_seed(seed)
    model = build_model(cfg or debug_config())
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model.eval()


def inputs(cfg: ModelConfig, batch: int = 2, text_len: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = AV(torch.randn(batch, *cfg.video_latent, generator=g), torch.randn(batch, *cfg.audio_latent, generator=g))
    t = torch.randint(0, 1000, (batch,), generator=g)
    text = torch.randn(batch, text_len, cfg.text_dim, generator=g)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    return x, t, text, mask
