"""The IDDPM Gaussian diffusion: linear schedule, respacing, forward noising, posterior and the learned-range
reverse step, as small functions over tensors.

Schedule arrays are float64 `[N]` on the CPU; `extract` gathers them at a batch of step indices and broadcasts
them to a latent (`B C F H W` video or `B C T M` audio). Every tensor function here works on one modality;
`uniform_cli.types.AV.map` applies it to both.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass

import torch

from uniform_cli.config import ClipSpec, DiffusionConfig, Prediction
from uniform_cli.diffusion.flow import FlowSchedule, make_flow_schedule


@dataclass(frozen=True)
class Schedule:
    """A discrete diffusion schedule of N steps (all arrays float64 `[N]`).

    `timestep_map[i]` is the original (training) step that index i stands for: the identity for the training
    schedule, a subset for a respaced sampling schedule. The model is always called with original steps.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    timestep_map: torch.Tensor  # long [N]
    training_timesteps: int
    """Steps of the training schedule this one was derived from (for the IDDPM loss scaling)."""
    prediction: Prediction = "eps"
    """What the model's first C output channels are: "eps" (the noise), "v" (see `eps_from_v`) or "x0"."""

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def schedule_from_betas(betas: torch.Tensor, timestep_map: torch.Tensor | None = None,
                        training_timesteps: int | None = None, prediction: Prediction = "eps") -> Schedule:
    """All derived IDDPM arrays of a beta sequence."""
    betas = betas.to(torch.float64)
    if betas.ndim != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
        raise ValueError("betas must be a 1-D sequence of at least 2 values in (0, 1]")
    if prediction not in typing.get_args(Prediction):
        raise ValueError(f"prediction must be one of {', '.join(typing.get_args(Prediction))}, not {prediction!r}")
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # The posterior variance is 0 at the first step; the log uses the next step's value there (IDDPM).
    posterior_log_variance_clipped = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
    if timestep_map is None:
        timestep_map = torch.arange(betas.numel(), dtype=torch.long)
    return Schedule(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        timestep_map=timestep_map.to(torch.long),
        training_timesteps=training_timesteps or betas.numel(),
        prediction=prediction,
    )


def make_schedule(cfg: DiffusionConfig, spec: ClipSpec | None = None) -> Schedule | FlowSchedule:
    """The training schedule of `cfg.objective`. IDDPM's is linear; its betas are scaled by 1000 / num_timesteps
    so any step count spans the same noise levels as the 1,000-step schedule. Rectified flow's shift follows the
    clip `spec` (the recipe's `data`) unless `cfg.flow_shift` is set."""
    if cfg.num_timesteps < 2:
        raise ValueError(f"diffusion.num_timesteps must be at least 2, not {cfg.num_timesteps}")
    if cfg.objective == "rflow":
        if spec is None and cfg.flow_shift == 0:
            raise ValueError("rflow with flow_shift = 0 takes its shift from the clip: pass the recipe's data")
        return make_flow_schedule(cfg, spec or ClipSpec())
    scale = 1000.0 / cfg.num_timesteps
    betas = torch.linspace(scale * cfg.beta_start, scale * cfg.beta_end, cfg.num_timesteps, dtype=torch.float64)
    return schedule_from_betas(betas, prediction=cfg.prediction)


def spaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` evenly spaced original steps from 0 to num_timesteps - 1, both ends included (IDDPM's
    `space_timesteps(num_timesteps, [steps])`)."""
    if not 2 <= steps <= num_timesteps:
        raise ValueError(f"sampling steps must be between 2 and {num_timesteps}, not {steps}")
    stride = (num_timesteps - 1) / (steps - 1)
    return sorted({round(i * stride) for i in range(steps)})


def respace(schedule: Schedule, timesteps: list[int]) -> Schedule:
    """The schedule that jumps between the kept `timesteps` (of `schedule`) with the same alphas_cumprod there.

    The new betas are `1 - abar[t_i] / abar[t_{i-1}]`; `timestep_map` points each new index at its original step.
    """
    kept = sorted(set(int(t) for t in timesteps))
    if len(kept) < 2 or kept[0] < 0 or kept[-1] >= schedule.num_timesteps:
        raise ValueError(f"respacing needs at least 2 distinct timesteps in [0, {schedule.num_timesteps - 1}]")
    index = torch.tensor(kept, dtype=torch.long)
    abar = schedule.alphas_cumprod[index]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return schedule_from_betas(1.0 - abar / abar_prev, schedule.timestep_map[index], schedule.training_timesteps,
                               schedule.prediction)


def extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`arr[t]` as `[B, 1, ...]` in `like`'s dtype and device, ready to broadcast against `like`."""
    out = arr.to(t.device)[t].to(like.dtype)
    return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward noising: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
    abar = extract(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise


def q_posterior_mean_variance(
    schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    return mean, extract(schedule.posterior_variance, t, x_t), extract(schedule.posterior_log_variance_clipped, t, x_t)


def x0_from_eps(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    abar = extract(schedule.alphas_cumprod, t, x_t)
    return (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()


def eps_from_x0(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    abar = extract(schedule.alphas_cumprod, t, x_t)
    return (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()


def v_from_eps(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The v-prediction target: v = sqrt(abar) eps - sqrt(1 - abar) x0."""
    abar = extract(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * eps - (1.0 - abar).sqrt() * x0


def eps_from_v(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(1 - abar) x_t + sqrt(abar) v (so x0 = sqrt(abar) x_t - sqrt(1 - abar) v)."""
    abar = extract(schedule.alphas_cumprod, t, x_t)
    return (1.0 - abar).sqrt() * x_t + abar.sqrt() * v


def output_as_eps(schedule: Schedule, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A model output at x_t with its prediction channels as eps (whatever `schedule.prediction` says they are);
    learned-variance channels, if any, pass through. `t` indexes `schedule`."""
    if schedule.prediction == "eps":
        return out
    pred, var = split_output(out, x_t.shape[1])
    convert = eps_from_v if schedule.prediction == "v" else eps_from_x0
    eps = convert(schedule, x_t, t, pred)
    return eps if var is None else torch.cat([eps, var], dim=1)


def learned_range_log_variance(schedule: Schedule, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """IDDPM's learned range: v = -1 gives the posterior log-variance, v = +1 gives log beta_t, linear between."""
    min_log = extract(schedule.posterior_log_variance_clipped, t, v)
    max_log = extract(schedule.betas.log(), t, v)
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def split_output(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model output of C channels (eps) or 2C channels (eps then variance values) as (eps, v or None)."""
    if out.shape[1] == channels:
        return out, None
    if out.shape[1] == 2 * channels:
        return out[:, :channels], out[:, channels:]
    raise ValueError(
        f"model output has {out.shape[1]} channels for a {channels}-channel latent; expected {channels} (eps) "
        f"or {2 * channels} (eps and learned variance)"
    )


@dataclass
class PMeanVariance:
    """The model's reverse step p(x_{t-1} | x_t) for one modality."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor


def p_mean_variance(schedule: Schedule, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> PMeanVariance:
    """Mean and log-variance of the model's reverse step from its output `out` (eps[, v]) at x_t.

    With v the variance is IDDPM's learned range; without it the posterior variance ("fixed small").
    """
    eps, v = split_output(out, x_t.shape[1])
    if v is None:
        log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
    else:
        log_variance = learned_range_log_variance(schedule, v, t)
    x0 = x0_from_eps(schedule, x_t, t, eps)
    mean, _, _ = q_posterior_mean_variance(schedule, x0, x_t, t)
    return PMeanVariance(mean=mean, log_variance=log_variance, x0=x0, eps=eps)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation IDDPM uses, kept so losses match its numbers.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Log-likelihood (nats, elementwise) of x in [-1, 1] under a Gaussian discretised into 255 bins of width 2/255,
    with open-ended edge bins (IDDPM's decoder at t = 0)."""
    centered = x - mean
    inv_stdv = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))
