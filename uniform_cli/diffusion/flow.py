"""Open-Sora 1.2's rectified flow (`opensora/schedulers/rf`, tag v1.2.0), the objective the published
`hpcai-tech/OpenSora-STDiT-v3` weights were trained with, as small functions over tensors.

Time runs as IDDPM's steps do, from t = 0 (clean) to t = T = num_timesteps (pure noise), so the model takes the
same timestep input (a float here) and given positions keep their t = 0 modulation:

    x_t = (1 - t/T) x0 + (t/T) noise        the model's first C output channels predict v = x0 - noise

Sampling integrates dx = v dt / T with Euler steps from t = T down to 0 (`samplers.sample_euler`). Training
draws t/T from a logit-normal law (sigmoid of a standard normal) or a uniform one, and training and sampling
times both pass through Open-Sora's `timestep_transform`, t/T -> r (t/T) / (1 + (r - 1) t/T), which for
r > 1 spends more of the steps at high noise (`shift`, larger for larger and longer clips: `opensora_shift`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from uniform_cli.config import ClipSpec, DiffusionConfig, FlowTimes
from uniform_cli.diffusion.tasks import keep_given
from uniform_cli.types import AV


@dataclass(frozen=True)
class FlowSchedule:
    """A rectified-flow schedule: times in [0, num_timesteps], their shift and the training time law."""

    num_timesteps: int = 1000
    shift: float = 1.0
    """Open-Sora's timestep-transform ratio r (1: no shift)."""
    times: FlowTimes = "logit-normal"
    """How training draws t / T."""


def opensora_shift(spec: ClipSpec) -> float:
    """Open-Sora 1.2's ratio r for a clip: sqrt(H W / 512^2) * sqrt(latent frames), with its VAE's latent frames
    = frames // 17 * 5 (at least 1). 256 px, 68 frames: 0.5 * sqrt(20) = 2.24."""
    latent_frames = max(1, spec.frames // 17 * 5)
    return math.sqrt(spec.size * spec.size / 512**2) * math.sqrt(latent_frames)


def describe_objective(cfg: DiffusionConfig, spec: ClipSpec) -> str:
    """One line on what a recipe trains, for the dry run: the objective, its target and, for rflow, the shift."""
    if cfg.objective == "iddpm":
        return f"iddpm, {cfg.prediction} prediction, {cfg.num_timesteps} steps"
    schedule = make_flow_schedule(cfg, spec)
    rule = (f"Open-Sora's rule for {spec.size} px and {spec.frames} frames; set diffusion.flow_shift to choose"
            if cfg.flow_shift == 0 else "diffusion.flow_shift")
    return f"rflow, velocity target, {cfg.flow_times} times, shift {schedule.shift:.3g} ({rule})"


def make_flow_schedule(cfg: DiffusionConfig, spec: ClipSpec) -> FlowSchedule:
    """The recipe's flow schedule; `cfg.flow_shift` 0 takes Open-Sora's rule for the recipe's clip."""
    shift = cfg.flow_shift if cfg.flow_shift > 0 else opensora_shift(spec)
    return FlowSchedule(num_timesteps=cfg.num_timesteps, shift=shift, times=cfg.flow_times)


def shift_times(t: torch.Tensor, schedule: FlowSchedule) -> torch.Tensor:
    """Open-Sora's `timestep_transform` of times t in [0, T]."""
    s = t / schedule.num_timesteps
    return schedule.shift * s / (1 + (schedule.shift - 1) * s) * schedule.num_timesteps


def training_times(schedule: FlowSchedule, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Float32 times `[batch]` in [0, T] for a training step: the law of `schedule.times`, then shifted."""
    if schedule.times == "uniform":
        u = torch.rand(batch, generator=generator)
    else:  # LogisticNormal(0, 1) over two classes: its first component is the sigmoid of a standard normal
        u = torch.sigmoid(torch.randn(batch, generator=generator))
    return shift_times(u * schedule.num_timesteps, schedule)


def sampling_times(schedule: FlowSchedule, steps: int) -> list[float]:
    """The `steps` times Open-Sora's sampler visits, from T down: (1 - i / steps) T for i < steps, shifted."""
    if steps < 1:
        raise ValueError(f"sampling steps must be at least 1, not {steps}")
    plain = torch.tensor([(1.0 - i / steps) * schedule.num_timesteps for i in range(steps)], dtype=torch.float64)
    return shift_times(plain, schedule).tolist()


def flow_noised(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, num_timesteps: int) -> torch.Tensor:
    """x_t = (1 - t/T) x0 + (t/T) noise for one modality (`t` `[B]`)."""
    s = (t.to(torch.float32) / num_timesteps).view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def flow_noised_input(schedule: FlowSchedule, x0: AV, t: torch.Tensor, noise: AV, generated: AV) -> AV:
    """The model's training input: x_t at generated positions, the clean x0 at given ones (Open-Sora's
    `add_noise(x0, noise, 0)` there)."""
    x_t = x0.map(lambda x, n: flow_noised(x, t, n, schedule.num_timesteps), noise)
    return keep_given(x_t, x0, generated)

