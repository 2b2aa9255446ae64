"""Jobs as masks over time: which 0.2 s latent frames of each modality are generated and which are given.

A job's masks are `AV(video=[B, F], audio=[B, F])` bools, True where that modality is generated in that latent
frame (one latent frame is one audible frame: 0.2 s of picture and its sound). The paper's three tasks are
the masks that are the same in every frame:

| task | generated    | given        |
|------|--------------|--------------|
| T2AV | video, audio | (task token) |
| A2V  | video        | audio        |
| V2A  | audio        | video        |

Span jobs generate part of the time: a continuation (both modalities given in the first k frames), a retake
(a span of one or both modalities generated, the rest given), an image head (the first video frame given).
The task token says which modality a job generates anywhere (`task_of`): T2AV when both, A2V when only the
video, V2A when only the audio, so a paper task keeps its own token and a span job takes the nearest one.

A `[B]` mask is one value per sample for every frame (the whole modality), and broadcasts as such.
"""

from __future__ import annotations

import typing

import torch

from uniform_cli.config import Job
from uniform_cli.types import AV, Task

JOBS: tuple[str, ...] = typing.get_args(Job)
"""Job kinds by id: the paper's tasks first (ids = `Task` values), then the span jobs."""
SPAN_JOBS = JOBS[len(Task):]


def check_tasks(task: torch.Tensor) -> None:
    if task.ndim != 1:
        raise ValueError(f"task must be a 1-D tensor of task ids, got shape {tuple(task.shape)}")
    known = (task == Task.T2AV) | (task == Task.A2V) | (task == Task.V2A)
    if not bool(known.all()):
        raise ValueError(f"unknown task ids {sorted(set(task[~known].tolist()))}; use 0 (T2AV), 1 (A2V), 2 (V2A)")


def task_masks(task: torch.Tensor, frames: int) -> AV:
    """The masks `[B, F]` of the paper's tasks (`task` `[B]` ids): a modality is generated in every frame or
    in none."""
    check_tasks(task)
    return AV(video=(task != Task.V2A)[:, None].expand(-1, frames).clone(),
              audio=(task != Task.A2V)[:, None].expand(-1, frames).clone())


def task_of(generated: AV) -> torch.Tensor:
    """The task token `[B]` of each job: T2AV if it generates both modalities somewhere, A2V if only video,
    V2A if only audio. A job that generates nothing is an error (there would be nothing to sample)."""
    video, audio = (m.reshape(m.shape[0], -1).any(dim=1) for m in (generated.video, generated.audio))
    if not bool((video | audio).all()):
        raise ValueError("a job generates nothing: every frame of both modalities is given")
    return torch.where(video & audio, int(Task.T2AV), torch.where(video, int(Task.A2V), int(Task.V2A)))


def job_masks(job: torch.Tensor, frames: int, generator: torch.Generator | None = None) -> AV:
    """Random masks `[B, F]` for job ids `job` `[B]` (indices into `JOBS`), drawn on the CPU from `generator`:

    extend: both modalities given in the first k frames, k uniform in 1..F-1; retake: one span of 1..F-1
    frames, at a uniform start, generated in the video, the audio or both (a third each), the rest given;
    i2av: the first video frame given. The paper's tasks draw nothing, but the draws are made for every
    sample, so a sample's masks do not depend on the other samples' jobs."""
    b = job.shape[0]
    if frames < 2:
        raise ValueError(f"span jobs need at least 2 frames, got {frames}")
    u = torch.rand(b, 3, generator=generator)
    k = 1 + (u[:, 0] * (frames - 1)).long()  # extend: given prefix; retake: span length
    start = (u[:, 1] * (frames - k + 1)).long().clamp(max=frames - k)
    which = (u[:, 2] * 3).long()  # retake: 0 video, 1 audio, 2 both
    f = torch.arange(frames)[None]
    paper = job < len(Task)
    masks = task_masks(torch.where(paper, job, int(Task.T2AV)), frames)
    name = {n: job == i for i, n in enumerate(JOBS)}
    prefix = f >= k[:, None]
    inside = (f >= start[:, None]) & (f < (start + k)[:, None])
    video = torch.where(name["extend"][:, None], prefix, masks.video)
    audio = torch.where(name["extend"][:, None], prefix, masks.audio)
    retake = name["retake"][:, None]
    video = torch.where(retake, inside & (which != 1)[:, None], video)
    audio = torch.where(retake, inside & (which != 0)[:, None], audio)
    video = torch.where(name["i2av"][:, None], f > 0, video)
    return AV(video=video, audio=audio)


def time_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A mask `[B]` or `[B, F]` shaped to broadcast against a video `B C F H W` or audio `B C T M` tensor.

    Audio has T = k F rows: each frame's value covers its k rows."""
    mask = mask.to(like.device)
    b = mask.shape[0]
    if mask.ndim == 1:
        return mask.reshape(b, *([1] * (like.ndim - 1)))
    frames = mask.shape[1]
    steps = like.shape[2]
    if steps % frames:
        raise ValueError(f"a mask of {frames} frames does not divide {steps} time steps")
    mask = mask.repeat_interleave(steps // frames, dim=1)
    return mask.reshape(b, 1, steps, *([1] * (like.ndim - 3)))


def keep_given(x: AV, given: AV, generated: AV) -> AV:
    """`x` at generated positions, `given` (the clean input) everywhere else."""
    return x.map(lambda a, g, m: torch.where(time_mask(m, a), a, g.to(a.dtype)), given, generated)

