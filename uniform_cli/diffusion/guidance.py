"""Model functions for the samplers: conditional, and classifier-free guided in one batched forward."""

from __future__ import annotations

import torch
from torch import nn

from uniform_cli.diffusion.samplers import ModelFn
from uniform_cli.diffusion.schedule import split_output
from uniform_cli.types import AV


def conditional_model_fn(model: nn.Module, generated: AV, text: torch.Tensor, text_mask: torch.Tensor,
                         drop_text: torch.Tensor | None = None) -> ModelFn:
    """`model_fn(x, t)` calling the model once with the given conditioning (no guidance); `generated` are the
    job's masks (`diffusion.tasks`)."""

    def model_fn(x: AV, t: torch.Tensor) -> AV:
        return model(x, t, generated, text, text_mask, drop_text)

    return model_fn


def _guide(out: torch.Tensor, channels: int, scale: float) -> torch.Tensor:
    """Combine a `[2B, ...]` output (conditional half first): prediction = uncond + scale (cond - uncond) (eps, v
    and x0 are affine in each other at a given x_t, so guiding any of them is the same); the variance values, if
    any, are the conditional half's (Open-Sora's `forward_with_cfg`)."""
    cond, uncond = out.chunk(2, dim=0)
    pred_c, var_c = split_output(cond, channels)
    pred_u, _ = split_output(uncond, channels)
    pred = pred_u + scale * (pred_c - pred_u)
    return pred if var_c is None else torch.cat([pred, var_c], dim=1)


def guided_model_fn(model: nn.Module, generated: AV, text: torch.Tensor, text_mask: torch.Tensor,
                    cfg_video: float, cfg_audio: float | None = None) -> ModelFn:
    """`model_fn(x, t)` with classifier-free guidance: one forward of 2B samples (text, then the null
    embedding via drop_text), guidance on the prediction (eps, v or x0) only, scale `cfg_video` for the video and
    `cfg_audio` (default: the same) for the audio. A scale of 1 gives the conditional prediction."""
    audio_scale = cfg_video if cfg_audio is None else cfg_audio
    batch = text.shape[0]
    drop = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)]).to(text.device)
    generated2 = generated.map(lambda m: torch.cat([m, m]))
    text2, mask2 = torch.cat([text, text]), torch.cat([text_mask, text_mask])

    def model_fn(x: AV, t: torch.Tensor) -> AV:
        x2 = x.map(lambda a: torch.cat([a, a]))
        out = model(x2, torch.cat([t, t]), generated2, text2, mask2, drop)
        return AV(
            video=_guide(out.video, x.video.shape[1], cfg_video),
            audio=_guide(out.audio, x.audio.shape[1], audio_scale),
        )

    return model_fn
