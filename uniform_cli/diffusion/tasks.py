"""Tasks as masks: which modality of each sample is generated and which is given.

| task | generated    | given        |
|------|--------------|--------------|
| T2AV | video, audio | (task token) |
| A2V  | video        | audio        |
| V2A  | audio        | video        |
"""

from __future__ import annotations

import torch

from uniform_cli.types import AV, Task


def generated_masks(task: torch.Tensor) -> AV:
    """Per-sample bool `[B]` for each modality: True where that modality is generated under `task` (`[B]` ids)."""
    if task.ndim != 1:
        raise ValueError(f"task must be a 1-D tensor of task ids, got shape {tuple(task.shape)}")
    known = (task == Task.T2AV) | (task == Task.A2V) | (task == Task.V2A)
    if not bool(known.all()):
        raise ValueError(f"unknown task ids {sorted(set(task[~known].tolist()))}; use 0 (T2AV), 1 (A2V), 2 (V2A)")
    return AV(video=task != Task.V2A, audio=task != Task.A2V)


def broadcast_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample `[B]` mask shaped `[B, 1, ...]` to broadcast against `like`."""
    return mask.to(like.device).reshape(mask.shape[0], *([1] * (like.ndim - 1)))


def keep_given(x: AV, given: AV, generated: AV) -> AV:
    """`x` at generated positions, `given` (the clean input) everywhere else."""
    return x.map(lambda a, g, m: torch.where(broadcast_mask(m, a), a, g.to(a.dtype)), given, generated)
