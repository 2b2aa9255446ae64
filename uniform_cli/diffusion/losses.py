"""Training objectives, masked to the generated positions of each job (`diffusion.tasks`): IDDPM's hybrid loss
(the paper) and rectified flow's velocity error (`diffusion.flow`). `draw_timesteps`, `noised_input` and
`training_loss` take either schedule and do what its objective does.

IDDPM:

loss = MSE + vb. MSE is the error of the model's prediction (`schedule.prediction`): of eps (the paper), of v, or
for x0 the v error that the x0 error implies, (x0_hat - x0) / sqrt(1 - abar), with sqrt(1 - abar) floored at
X0_LOSS_MIN_SIGMA so the nearly clean steps do not dominate (Li & He 2025 floor it the same way). vb is the
variational-bound term for the learned-range variance with the predicted mean detached (so vb trains only the
variance): KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, the discretised Gaussian negative log-likelihood of
x0 at t = 0, in bits, times num_timesteps / 1000 (IDDPM's rescaled hybrid loss, i.e. lambda = 1/1000 on the full
bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from uniform_cli.diffusion.flow import FlowSchedule, flow_noised_input, training_times
from uniform_cli.diffusion.schedule import (
    Schedule,
    discretized_gaussian_log_likelihood,
    extract,
    learned_range_log_variance,
    normal_kl,
    output_as_eps,
    q_posterior_mean_variance,
    q_sample,
    split_output,
    v_from_eps,
    x0_from_eps,
)
from uniform_cli.diffusion.tasks import keep_given, time_mask
from uniform_cli.types import AV

X0_LOSS_MIN_SIGMA = 0.05
"""Floor of sqrt(1 - abar) in the x0-prediction loss (reached below step ~25 of the 1,000-step schedule)."""


def draw_timesteps(schedule: Schedule | FlowSchedule, batch: int, generator: torch.Generator) -> torch.Tensor:
    """A training step's timesteps `[batch]`: uniform step indices (IDDPM), or float times (rectified flow)."""
    if isinstance(schedule, FlowSchedule):
        return training_times(schedule, batch, generator)
    return torch.randint(0, schedule.num_timesteps, (batch,), generator=generator)


def noised_input(schedule: Schedule | FlowSchedule, x0: AV, t: torch.Tensor, noise: AV, generated: AV) -> AV:
    """The model's training input: x_t at generated positions, the clean x0 at given ones."""
    if isinstance(schedule, FlowSchedule):
        return flow_noised_input(schedule, x0, t, noise, generated)
    x_t = x0.map(lambda x, n: q_sample(schedule, x, t, n), noise)
    return keep_given(x_t, x0, generated)


def training_loss(schedule: Schedule | FlowSchedule, x0: AV, t: torch.Tensor, noise: AV, output: AV,
                  generated: AV) -> "LossTerms":
    """The objective's loss of a model `output` computed on `noised_input(schedule, x0, t, noise, generated)`."""
    if isinstance(schedule, FlowSchedule):
        return flow_loss(x0, noise, output, generated)
    return hybrid_loss(schedule, x0, t, noise, output, generated)


def vb_terms(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
             eps: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Elementwise variational-bound term in bits (KL for t > 0, decoder NLL at t = 0) for a predicted eps and
    learned-range value v; gradients flow through v and eps as given (detach eps to train the variance only)."""
    true_mean, _, true_log_var = q_posterior_mean_variance(schedule, x0, x_t, t)
    pred_x0 = x0_from_eps(schedule, x_t, t, eps)
    model_mean, _, _ = q_posterior_mean_variance(schedule, pred_x0, x_t, t)
    model_log_var = learned_range_log_variance(schedule, v, t)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var) / math.log(2.0)
    return torch.where(time_mask(t == 0, x0), nll, kl)


def _mean_where(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean of `x` over the elements where `keep` (broadcast) is True, and their count; a sample
    with none gets 0. torch.where (not a multiply), so a NaN at a left-out position cannot leak in."""
    keep = keep.expand_as(x)
    count = keep.flatten(1).sum(dim=1)
    total = torch.where(keep, x, 0.0).flatten(1).sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=1), 0.0), count


@dataclass
class LossTerms:
    """The hybrid loss of a batch.

    loss: `[B]`, the mean of (mse + vb) over every generated element of each sample (video and audio pooled).
    mse, vb: per modality, `[B]` means over that modality's generated elements; 0 where none is generated.
    generated: per modality, bool `[B]`, whether each sample generated any of it (select these when logging).
    """

    loss: torch.Tensor
    mse: AV
    vb: AV
    """Per modality `[B]`; 0 for rectified flow and for models without variance outputs."""
    generated: AV


def _pool(mse: AV, vb: AV, count: AV, generated: AV) -> LossTerms:
    """Per-sample loss over every generated element, video and audio pooled, and which modalities each generated."""
    loss = ((mse.video + vb.video) * count.video + (mse.audio + vb.audio) * count.audio) / (count.video + count.audio)
    anywhere = generated.map(lambda m: m.reshape(m.shape[0], -1).any(dim=1))
    return LossTerms(loss=loss, mse=mse, vb=vb, generated=anywhere)


def hybrid_loss(schedule: Schedule, x0: AV, t: torch.Tensor, noise: AV, output: AV,
                generated: AV) -> LossTerms:
    """IDDPM hybrid loss of a model `output` (the prediction, optionally followed by the learned-range variance
    values, per modality) computed on `noised_input(schedule, x0, t, noise, generated)`; given positions contribute
    nothing. The prediction is eps, v or x0 as `schedule.prediction` says (see the module docstring for its MSE).

    `t` are indices into `schedule` (the training schedule). Without variance channels the loss is the MSE alone.
    """
    x_t = x0.map(lambda x, n: q_sample(schedule, x, t, n), noise)
    scale = schedule.training_timesteps / 1000.0

    def terms(x0_m: torch.Tensor, x_t_m: torch.Tensor, noise_m: torch.Tensor, out_m: torch.Tensor,
              gen_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if out_m.shape[0] != x0_m.shape[0] or out_m.shape[2:] != x0_m.shape[2:]:
            raise ValueError(f"model output {tuple(out_m.shape)} does not match latent {tuple(x0_m.shape)}")
        pred, v = split_output(out_m.float(), x0_m.shape[1])
        x0_m, x_t_m, noise_m = x0_m.float(), x_t_m.float(), noise_m.float()
        if schedule.prediction == "v":
            error = pred - v_from_eps(schedule, x0_m, t, noise_m)
        elif schedule.prediction == "x0":
            sigma = (1.0 - extract(schedule.alphas_cumprod, t, x0_m)).sqrt().clamp(min=X0_LOSS_MIN_SIGMA)
            error = (pred - x0_m) / sigma
        else:
            error = pred - noise_m
        keep = time_mask(gen_m, x0_m)
        mse, count = _mean_where(error**2, keep)
        eps = output_as_eps(schedule, pred, x_t_m, t)
        if v is None:
            vb = torch.zeros_like(mse)
        else:
            vb = _mean_where(vb_terms(schedule, x0_m, x_t_m, t, eps.detach(), v), keep)[0] * scale
        return mse, vb, count.float()

    mse_v, vb_v, n_v = terms(x0.video, x_t.video, noise.video, output.video, generated.video)
    mse_a, vb_a, n_a = terms(x0.audio, x_t.audio, noise.audio, output.audio, generated.audio)
    return _pool(AV(mse_v, mse_a), AV(vb_v, vb_a), AV(n_v, n_a), generated)


def flow_loss(x0: AV, noise: AV, output: AV, generated: AV) -> LossTerms:
    """Rectified flow's loss (Open-Sora 1.2's `training_losses`): the mean squared error of the velocity, the
    model's first C output channels, against x0 - noise over the generated elements; variance channels, if any,
    are not trained."""

    def terms(x0_m: torch.Tensor, noise_m: torch.Tensor, out_m: torch.Tensor, gen_m: torch.Tensor):
        if out_m.shape[0] != x0_m.shape[0] or out_m.shape[2:] != x0_m.shape[2:]:
            raise ValueError(f"model output {tuple(out_m.shape)} does not match latent {tuple(x0_m.shape)}")
        velocity = split_output(out_m.float(), x0_m.shape[1])[0]
        mse, count = _mean_where((velocity - (x0_m.float() - noise_m.float())) ** 2, time_mask(gen_m, x0_m))
        return mse, count.float()

    (mse_v, n_v), (mse_a, n_a) = (terms(x0.video, noise.video, output.video, generated.video),
                                  terms(x0.audio, noise.audio, output.audio, generated.audio))
    zero = AV(torch.zeros_like(mse_v), torch.zeros_like(mse_a))
    return _pool(AV(mse_v, mse_a), zero, AV(n_v, n_a), generated)
