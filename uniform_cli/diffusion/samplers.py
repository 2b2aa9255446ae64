"""Samplers: over a respaced IDDPM schedule, ancestral DDPM (learned variance), DDIM and DPM-Solver++(2M); over a
rectified-flow schedule (`diffusion.flow`), Open-Sora 1.2's Euler sampler.

Each is one short loop. `model_fn(x, t_original) -> AV` returns the model's prediction (eps, v or x0, as
the schedule's `prediction` says; the loops turn it into eps), optionally followed by the learned-range variance
values, per modality, already guided (see `uniform_cli.diffusion.guidance`); for rectified flow it is the
velocity. Given positions (where the job's
`generated` masks, `diffusion.tasks`, are False) are reset to their clean values before every model call and in
the result, so only generated positions are sampled.
Noise and given latents should be float32; the loops compute in the noise's dtype.

All three take the same arguments, `(model_fn, schedule, noise, given, generated, steps, *, generator=None,
progress=None)`, so a caller picks one by name from `SAMPLERS` and calls it the same way.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

from uniform_cli.config import Sampler
from uniform_cli.diffusion.flow import FlowSchedule, sampling_times
from uniform_cli.diffusion.schedule import (
    Schedule,
    extract,
    output_as_eps,
    p_mean_variance,
    respace,
    spaced_timesteps,
    split_output,
    x0_from_eps,
)
from uniform_cli.diffusion.tasks import keep_given
from uniform_cli.types import AV

ModelFn = Callable[[AV, torch.Tensor], AV]
Progress = Callable[[int, int], None]


def sampling_schedule(schedule: Schedule, steps: int) -> Schedule:
    """The training schedule respaced to `steps` evenly spaced steps (first and last included)."""
    return respace(schedule, spaced_timesteps(schedule.num_timesteps, steps))


def _steps(spaced: Schedule, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(respaced index, original step) pairs `[B]` from the noisiest to the cleanest step."""
    out = []
    for i in reversed(range(spaced.num_timesteps)):
        index = torch.full((batch,), i, dtype=torch.long, device=device)
        out.append((index, spaced.timestep_map.to(device)[index]))
    return out


Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the batch, or one per sample (each row's noise then does not depend on the others)."""


class SamplerFn(Protocol):
    """What every sampler is: `steps` respaced steps from `noise` to clean latents, given positions kept."""

    def __call__(self, model_fn: ModelFn, schedule: Schedule | FlowSchedule, noise: AV, given: AV, generated: AV,
                 steps: int, *, generator: Generators = None, progress: Progress | None = None) -> AV: ...


def _randn_like(x: AV, generator: Generators) -> AV:
    if generator is None or isinstance(generator, torch.Generator):
        return x.map(lambda a: torch.randn(a.shape, generator=generator, device=a.device, dtype=a.dtype))
    if len(generator) != x.batch_size:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.batch_size}")
    return x.map(lambda a: torch.cat([torch.randn((1, *a.shape[1:]), generator=g, device=a.device, dtype=a.dtype)
                                      for g in generator]))


def _eps(model_fn: ModelFn, spaced: Schedule, x: AV, i: torch.Tensor, t: torch.Tensor) -> AV:
    """The model's output at x (respaced index i, original step t) in x's dtype, with eps as its prediction
    channels."""
    return x.map(lambda x_m, o: output_as_eps(spaced, o.to(x_m.dtype), x_m, i), model_fn(x, t))


def _check(noise: AV, given: AV, generated: AV) -> None:
    if noise.video.shape != given.video.shape or noise.audio.shape != given.audio.shape:
        raise ValueError(
            f"noise {tuple(noise.video.shape)}/{tuple(noise.audio.shape)} and given "
            f"{tuple(given.video.shape)}/{tuple(given.audio.shape)} latents must have the same shapes"
        )
    for name, mask in (("video", generated.video), ("audio", generated.audio)):
        if mask.shape[0] != noise.batch_size or mask.dtype != torch.bool:
            raise ValueError(f"generated.{name} must be a bool mask with {noise.batch_size} rows, got "
                             f"{mask.dtype} {tuple(mask.shape)}")


@torch.no_grad()
def sample_ddpm(model_fn: ModelFn, schedule: Schedule, noise: AV, given: AV, generated: AV,
                steps: int, *, generator: Generators = None,
                progress: Progress | None = None) -> AV:
    """Ancestral sampling on the respaced schedule with the model's learned variance (posterior variance when
    the model predicts eps only); no noise is added at the last step."""
    _check(noise, given, generated)
    spaced = sampling_schedule(schedule, steps)
    x = keep_given(noise, given, generated)
    plan = _steps(spaced, noise.batch_size, noise.video.device)
    for n, (i, t) in enumerate(plan):
        out = _eps(model_fn, spaced, x, i, t)
        step = x.map(lambda x_m, o: p_mean_variance(spaced, o, x_m, i), out)
        if n == len(plan) - 1:
            x = step.map(lambda p: p.mean)
        else:
            x = step.map(lambda p, z: p.mean + torch.exp(0.5 * p.log_variance) * z, _randn_like(x, generator))
        x = keep_given(x, given, generated)
        if progress is not None:
            progress(n + 1, len(plan))
    return x


@torch.no_grad()
def sample_ddim(model_fn: ModelFn, schedule: Schedule, noise: AV, given: AV, generated: AV,
                steps: int, *, generator: Generators = None, progress: Progress | None = None,
                eta: float = 0.0) -> AV:
    """DDIM on the respaced schedule: deterministic for eta = 0 (the generator is then unused), ancestral-like
    for eta = 1."""
    _check(noise, given, generated)
    spaced = sampling_schedule(schedule, steps)
    x = keep_given(noise, given, generated)
    plan = _steps(spaced, noise.batch_size, noise.video.device)

    def update(x_m: torch.Tensor, out: torch.Tensor, z: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        eps, _ = split_output(out, x_m.shape[1])
        x0 = x0_from_eps(spaced, x_m, i, eps)
        abar = extract(spaced.alphas_cumprod, i, x_m)
        abar_prev = extract(spaced.alphas_cumprod_prev, i, x_m)
        sigma = eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).sqrt()
        mean = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        return mean + sigma * z  # sigma is 0 at the last step (abar_prev = 1)

    for n, (i, t) in enumerate(plan):
        out = _eps(model_fn, spaced, x, i, t)
        z = _randn_like(x, generator) if eta > 0 else x.map(torch.zeros_like)
        x = keep_given(x.map(lambda x_m, o, z_m: update(x_m, o, z_m, i), out, z), given, generated)
        if progress is not None:
            progress(n + 1, len(plan))
    return x


@torch.no_grad()
def sample_dpm_solver(model_fn: ModelFn, schedule: Schedule, noise: AV, given: AV, generated: AV,
                      steps: int, *, generator: Generators = None, progress: Progress | None = None) -> AV:
    """DPM-Solver++(2M): multistep, data prediction, on the respaced discrete schedule.

    It draws no noise after the starting noise, so `generator` is unused; it is accepted so that every sampler
    takes the same arguments.

    The model is evaluated at the `steps` respaced steps from the noisiest to t = 0; each update moves x to the
    next step's noise level (alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma)) using the
    current and previous x0 predictions, and the result is the x0 prediction at t = 0. The first update is
    first order (no history yet), and so is the one into t = 0 (lower_order_final): lambda jumps most there
    (about 1.9 to 4.6 at 25 steps) and the linear extrapolation of x0 overshoots.
    """
    _check(noise, given, generated)
    spaced = sampling_schedule(schedule, steps)
    x = keep_given(noise, given, generated)
    plan = _steps(spaced, noise.batch_size, noise.video.device)
    abar = spaced.alphas_cumprod
    lam = 0.5 * (abar.log() - (1 - abar).log())  # float64 [N]
    x0_prev: AV | None = None

    for n, (i, t) in enumerate(plan):
        out = _eps(model_fn, spaced, x, i, t)
        x0 = x.map(lambda x_m, o: x0_from_eps(spaced, x_m, i, split_output(o, x_m.shape[1])[0]), out)
        if n == len(plan) - 1:
            x = x0
        else:
            s, s_next = int(i[0]), int(i[0]) - 1
            h = float(lam[s_next] - lam[s])
            ratio = float(((1 - abar[s_next]) / (1 - abar[s])).sqrt())  # sigma_next / sigma_s
            phi = float(abar[s_next].sqrt() * (-torch.expm1(torch.tensor(-h, dtype=torch.float64))))  # alpha(1-e^-h)
            if x0_prev is None or s_next == 0:
                d = x0
            else:
                r = float(lam[s] - lam[s + 1]) / h
                d = x0.map(lambda a, b: (1 + 1 / (2 * r)) * a - (1 / (2 * r)) * b, x0_prev)
            x = x.map(lambda x_m, d_m: ratio * x_m + phi * d_m, d)
            x0_prev = x0
        x = keep_given(x, given, generated)
        if progress is not None:
            progress(n + 1, len(plan))
    return x


@torch.no_grad()
def sample_euler(model_fn: ModelFn, schedule: FlowSchedule, noise: AV, given: AV, generated: AV,
                 steps: int, *, generator: Generators = None, progress: Progress | None = None) -> AV:
    """Open-Sora 1.2's rectified-flow sampler: Euler steps x <- x + v (t_i - t_{i+1}) / T over its shifted times
    (`flow.sampling_times`), the last step to t = 0. It draws no noise after the starting noise (`generator` is
    unused, as for DDIM)."""
    _check(noise, given, generated)
    times = sampling_times(schedule, steps)
    x = keep_given(noise, given, generated)
    for n, t in enumerate(times):
        dt = (t - (times[n + 1] if n + 1 < len(times) else 0.0)) / schedule.num_timesteps
        out = model_fn(x, torch.full((noise.batch_size,), t, dtype=torch.float32, device=noise.video.device))
        x = x.map(lambda x_m, o: x_m + split_output(o, x_m.shape[1])[0].to(x_m.dtype) * dt, out)
        x = keep_given(x, given, generated)
        if progress is not None:
            progress(n + 1, len(times))
    return x


SAMPLERS: dict[Sampler, SamplerFn] = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpm++": sample_dpm_solver,
                                      "euler": sample_euler}
"""Sampler by the names `generate.sampler` accepts (`config.Sampler`)."""


def check_sampler(name: str, schedule: Schedule | FlowSchedule) -> None:
    """Raise ValueError unless sampler `name` samples models of `schedule`'s objective."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if (name == "euler") != isinstance(schedule, FlowSchedule):
        raise ValueError('sampler "euler" samples rectified-flow models; this one is IDDPM (use ddpm, ddim or dpm++)'
                         if name == "euler" else
                         f'this model was trained with rectified flow: use sampler "euler", not {name!r}')
