"""Frames a video captioner sees: N frames at segment centres of a clip, and CLIP-style pixel preparation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def segment_centres(total: int, num: int) -> list[int]:
    """Indices of `num` frames at the centres of equal segments of `total` frames (Open-Sora / PLLaVA's choice).

    E.g. 68 frames, 4 segments -> [8, 25, 42, 58].
    """
    if total < 1 or num < 1:
        raise ValueError(f"need at least one frame and one segment, got total={total}, num={num}")
    seg = (total - 1) / num
    start = int(seg / 2)
    return [min(total - 1, start + int(np.round(seg * i))) for i in range(num)]


def sample_frames(path: str | Path, num: int) -> np.ndarray:
    """uint8 `F H W 3` with F = `num` frames at segment centres of the video at `path`."""
    from uniform_cli.media.io import read_video

    frames, _ = read_video(path)
    return frames[segment_centres(len(frames), num)]


def clip_pixels(
    frames: np.ndarray | torch.Tensor,
    size: int,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """uint8 `F H W 3` -> float `F 3 size size`: shortest edge to `size` (bicubic), centre crop, normalise."""
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float() / 255.0  # F 3 H W
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
