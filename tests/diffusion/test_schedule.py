"""The IDDPM schedule against closed forms."""

import math

import pytest
import torch

from uniform_cli.config import DiffusionConfig
from uniform_cli.diffusion.schedule import (
    discretized_gaussian_log_likelihood,
    eps_from_v,
    eps_from_x0,
    learned_range_log_variance,
    make_schedule,
    normal_kl,
    output_as_eps,
    p_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    respace,
    spaced_timesteps,
    v_from_eps,
    x0_from_eps,
)

BASE = make_schedule(DiffusionConfig())


def test_linear_betas_and_rescaling_for_other_step_counts():
    assert BASE.num_timesteps == 1000
    assert BASE.betas[0].item() == pytest.approx(1e-4) and BASE.betas[-1].item() == pytest.approx(0.02)
    assert BASE.betas.dtype == torch.float64
    torch.testing.assert_close(BASE.alphas_cumprod, torch.cumprod(1 - BASE.betas, 0))
    half = make_schedule(DiffusionConfig(num_timesteps=500))
    assert half.betas[0].item() == pytest.approx(2e-4) and half.betas[-1].item() == pytest.approx(0.04)
    # The same span of noise: the final signal level stays tiny.
    assert half.alphas_cumprod[-1].item() < 1e-4 and BASE.alphas_cumprod[-1].item() < 1e-4


def test_forward_noising_moments_match_closed_form_by_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.7, -1.2, 0.0]).reshape(1, 3, 1, 1).expand(200_000, 3, 1, 1)
    for step in (0, 100, 500, 999):
        t = torch.full((x0.shape[0],), step)
        x_t = q_sample(BASE, x0, t, torch.randn(x0.shape, generator=gen))
        abar = BASE.alphas_cumprod[step].item()
        # 200k samples: the standard error of the mean is <= 0.0023, of the variance <= 0.0032.
        torch.testing.assert_close(x_t.mean(0).flatten(), math.sqrt(abar) * x0[0].flatten(), atol=0.01, rtol=0)
        torch.testing.assert_close(x_t.var(0).flatten(), torch.full((3,), 1 - abar), atol=0.015, rtol=0)


@pytest.mark.parametrize("step", [1, 10, 400, 999])
def test_posterior_matches_gaussian_conditioning(step):
    # Joint of (x_{t-1}, x_t) given x0: x_{t-1} ~ N(sqrt(abar_prev) x0, 1 - abar_prev), x_t = sqrt(alpha) x_{t-1} + sqrt(beta) z.
    abar_prev = BASE.alphas_cumprod[step - 1]
    alpha = 1 - BASE.betas[step]
    s11, s12, s22 = 1 - abar_prev, alpha.sqrt() * (1 - abar_prev), alpha * (1 - abar_prev) + BASE.betas[step]
    x0 = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    x_t = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    t = torch.full((4,), step)
    mean, var, log_var = q_posterior_mean_variance(BASE, x0, x_t, t)
    expected_mean = abar_prev.sqrt() * x0 + s12 / s22 * (x_t - alpha.sqrt() * abar_prev.sqrt() * x0)
    torch.testing.assert_close(mean, expected_mean, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(var.flatten(), (s11 - s12**2 / s22).expand(4), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(log_var.flatten(), var.log().flatten())


def test_posterior_at_first_step_returns_x0_and_clips_log_variance():
    x0, x_t = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    mean, var, log_var = q_posterior_mean_variance(BASE, x0, x_t, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(mean, x0)
    assert var.abs().max().item() == 0
    torch.testing.assert_close(log_var.flatten(), BASE.posterior_variance[1].log().expand(2))


def test_learned_range_endpoints():
    t = torch.tensor([0, 5, 999])
    ones = torch.ones(3, 2, 4, 4, dtype=torch.float64)
    lo = learned_range_log_variance(BASE, -ones, t)
    hi = learned_range_log_variance(BASE, ones, t)
    mid = learned_range_log_variance(BASE, 0 * ones, t)
    torch.testing.assert_close(lo[:, 0, 0, 0], BASE.posterior_log_variance_clipped[t])
    torch.testing.assert_close(hi[:, 0, 0, 0], BASE.betas[t].log())
    torch.testing.assert_close(mid, (lo + hi) / 2)


def test_eps_x0_conversions_invert_forward_noising():
    x0, noise = torch.randn(3, 4, 2, 4, 4, dtype=torch.float64), torch.randn(3, 4, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 300, 999])
    x_t = q_sample(BASE, x0, t, noise)
    torch.testing.assert_close(x0_from_eps(BASE, x_t, t, noise), x0)
    torch.testing.assert_close(eps_from_x0(BASE, x_t, t, x0), noise)


def test_v_and_x0_predictions_convert_to_the_true_noise_and_keep_variance_channels():
    x0, noise = torch.randn(3, 4, 2, 4, 4, dtype=torch.float64), torch.randn(3, 4, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 300, 999])
    x_t = q_sample(BASE, x0, t, noise)
    v = v_from_eps(BASE, x0, t, noise)
    torch.testing.assert_close(eps_from_v(BASE, x_t, t, v), noise)
    # x0 = sqrt(abar) x_t - sqrt(1 - abar) v
    abar = BASE.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(abar.sqrt() * x_t - (1 - abar).sqrt() * v, x0)
    var = torch.rand_like(x0)
    v_schedule = make_schedule(DiffusionConfig(prediction="v"))
    torch.testing.assert_close(output_as_eps(v_schedule, torch.cat([v, var], 1), x_t, t), torch.cat([noise, var], 1))
    x0_schedule = make_schedule(DiffusionConfig(prediction="x0"))
    torch.testing.assert_close(output_as_eps(x0_schedule, torch.cat([x0, var], 1), x_t, t), torch.cat([noise, var], 1))
    assert output_as_eps(BASE, v, x_t, t) is v  # an eps schedule leaves the output alone
    assert respace(v_schedule, [0, 500, 999]).prediction == "v"
    with pytest.raises(ValueError, match="prediction"):
        DiffusionConfig(prediction="noise")


def test_p_mean_variance_with_true_noise_is_the_posterior():
    x0, noise = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([10, 700])
    x_t = q_sample(BASE, x0, t, noise)
    out = torch.cat([noise, torch.ones_like(noise)], dim=1)
    p = p_mean_variance(BASE, out, x_t, t)
    mean, _, _ = q_posterior_mean_variance(BASE, x0, x_t, t)
    torch.testing.assert_close(p.mean, mean)
    torch.testing.assert_close(p.log_variance[:, 0, 0, 0], BASE.betas[t].log())
    fixed = p_mean_variance(BASE, noise, x_t, t)  # eps only: the posterior ("fixed small") variance
    torch.testing.assert_close(fixed.log_variance[:, 0, 0, 0], BASE.posterior_log_variance_clipped[t])
    with pytest.raises(ValueError, match="channels"):
        p_mean_variance(BASE, out[:, :4], x_t, t)


def test_spaced_timesteps_and_respacing_keep_alphas_cumprod():
    kept = spaced_timesteps(1000, 25)
    assert len(kept) == 25 and kept[0] == 0 and kept[-1] == 999
    assert spaced_timesteps(1000, 1000) == list(range(1000))
    spaced = respace(BASE, kept)
    assert spaced.num_timesteps == 25 and spaced.training_timesteps == 1000
    assert spaced.timestep_map.tolist() == kept
    torch.testing.assert_close(spaced.alphas_cumprod, BASE.alphas_cumprod[kept], atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(respace(BASE, list(range(1000))).betas, BASE.betas)
    with pytest.raises(ValueError):
        spaced_timesteps(1000, 1)
    with pytest.raises(ValueError):
        respace(BASE, [0, 1000])


def test_normal_kl_and_discretized_likelihood():
    m, lv = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(normal_kl(m, lv, m, lv), torch.zeros(10))
    assert (normal_kl(m, lv, m + 0.3, lv - 0.2) > 0).all()
    # The 256 pixel values of [-1, 1] tile the line, so their probabilities sum to 1 for any Gaussian.
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.0, -1.0), (0.4, -3.0), (-0.9, 0.5)):
        ll = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
