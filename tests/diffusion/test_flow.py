"""Rectified flow against Open-Sora 1.2's `opensora/schedulers/rf` (v1.2.0), whose steps are written out here
from its code on fixed inputs, and the flow's own exactness: a straight path is integrated exactly."""

import math

import pytest
import torch

from uniform_cli.config import ClipSpec, ConfigError, DiffusionConfig, GenerateConfig, Recipe
from uniform_cli.diffusion.flow import (
    FlowSchedule,
    flow_noised,
    opensora_shift,
    sampling_times,
    shift_times,
    training_times,
)
from uniform_cli.diffusion.losses import draw_timesteps, flow_loss, noised_input, training_loss
from uniform_cli.diffusion.samplers import check_sampler, sample_euler
from uniform_cli.diffusion.schedule import make_schedule
from uniform_cli.types import AV

T = 1000


def _opensora_timestep_transform(t, height, width, num_frames, scale=1.0):
    """`timestep_transform` of rectified_flow.py with its defaults (base 512 x 512, one base frame)."""
    t = t / T
    ratio_space = (height * width / (512 * 512)) ** 0.5
    frames = 1 if num_frames == 1 else num_frames // 17 * 5
    ratio = ratio_space * frames**0.5 * scale
    return ratio * t / (1 + (ratio - 1) * t) * T


def _opensora_add_noise(x0, noise, t):
    timepoints = (1 - t.float() / T)[:, None, None, None, None]
    return timepoints * x0 + (1 - timepoints) * noise


def _opensora_loss(v_pred, x0, noise, mask):
    """`mean_flat((v_pred - (x0 - noise))^2, mask)` over the masked frames of a `B C F H W` video."""
    err = (v_pred - (x0 - noise)).pow(2).permute(0, 2, 1, 3, 4).flatten(2)  # B F (C H W)
    return (err * mask[..., None]).sum(dim=(1, 2)) / (mask.sum(dim=1) * err.shape[-1])


def _opensora_sample(v_cond, v_uncond, z, mask, steps, scale, height, width, num_frames):
    """RFLOW.sample with use_timestep_transform: CFG on v, Euler steps, given frames (mask 0) reset after each
    step; `v_cond`/`v_uncond` are functions of (z, t, x_mask)."""
    timesteps = [(1.0 - i / steps) * T for i in range(steps)]
    timesteps = [torch.tensor([t] * z.shape[0]) for t in timesteps]
    timesteps = [_opensora_timestep_transform(t, height, width, num_frames) for t in timesteps]
    noise_added = mask == 1
    for i, t in enumerate(timesteps):
        mask_t = mask * T
        x0 = z.clone()
        x_noise = _opensora_add_noise(x0, torch.randn_like(x0), t)
        mask_t_upper = mask_t >= t.unsqueeze(1)
        mask_add_noise = mask_t_upper & ~noise_added
        z = torch.where(mask_add_noise[:, None, :, None, None], x_noise, x0)
        noise_added = mask_t_upper
        pred_cond, pred_uncond = v_cond(z, t, mask_t_upper), v_uncond(z, t, mask_t_upper)
        v_pred = pred_uncond + scale * (pred_cond - pred_uncond)
        dt = (timesteps[i] - timesteps[i + 1] if i < len(timesteps) - 1 else timesteps[i]) / T
        z = z + v_pred * dt[:, None, None, None, None]
        z = torch.where(mask_t_upper[:, None, :, None, None], z, x0)
    return z


def test_shift_is_opensora_timestep_transform():
    spec = ClipSpec()  # 256 px, 68 frames
    assert opensora_shift(spec) == pytest.approx(0.5 * math.sqrt(20))
    schedule = FlowSchedule(shift=opensora_shift(spec))
    t = torch.linspace(0, T, 11)
    torch.testing.assert_close(shift_times(t, schedule), _opensora_timestep_transform(t, 256, 256, 68))
    assert sampling_times(schedule, 4)[0] == pytest.approx(T)  # the first step is pure noise whatever the shift
    assert make_schedule(DiffusionConfig(objective="rflow"), spec).shift == pytest.approx(opensora_shift(spec))
    assert make_schedule(DiffusionConfig(objective="rflow", flow_shift=1.5)).shift == 1.5
    with pytest.raises(ValueError, match="clip"):
        make_schedule(DiffusionConfig(objective="rflow"))


def test_logit_normal_times_follow_opensora_law():
    """LogisticNormal(0, 1)'s first component is sigmoid of a standard normal: same draws from the same stream."""
    torch.manual_seed(3)
    theirs = torch.distributions.LogisticNormal(torch.tensor([0.0]), torch.tensor([1.0])).sample((64,))[:, 0] * T
    ours = training_times(FlowSchedule(shift=1.0), 64, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, theirs)
    uniform = training_times(FlowSchedule(shift=2.0, times="uniform"), 10_000, torch.Generator().manual_seed(0))
    assert 0 <= uniform.min() and uniform.max() <= T
    assert uniform.mean() > T / 2  # a shift of 2 moves mass toward noise


def test_noising_and_loss_equal_opensora_on_fixed_inputs():
    g = torch.Generator().manual_seed(0)
    b, c, f = 3, 4, 5
    x0, noise = torch.randn(b, c, f, 2, 2, generator=g), torch.randn(b, c, f, 2, 2, generator=g)
    t = torch.tensor([10.0, 500.0, 990.0])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1]], dtype=torch.bool)
    theirs_x_t = torch.where(mask[:, None, :, None, None], _opensora_add_noise(x0, noise, t),
                             _opensora_add_noise(x0, noise, torch.zeros_like(t)))
    audio = AV(x0, torch.zeros(b, 8, f * 2, 3))
    schedule = FlowSchedule()
    generated = AV(mask, torch.zeros(b, f, dtype=torch.bool))  # no audio generated: the loss is the video's
    noise_av = AV(noise, torch.randn(audio.audio.shape, generator=g))
    ours_x_t = noised_input(schedule, audio, t, noise_av, generated)
    torch.testing.assert_close(ours_x_t.video, theirs_x_t)
    assert torch.equal(ours_x_t.audio, audio.audio)
    v_pred = torch.randn(b, 2 * c, f, 2, 2, generator=g)  # velocity, then (untrained) variance channels
    output = AV(v_pred, torch.randn(b, 16, f * 2, 3, generator=g))
    terms = training_loss(schedule, audio, t, noise_av, output, generated)
    torch.testing.assert_close(terms.loss, _opensora_loss(v_pred[:, :c], x0, noise, mask.float()))
    assert torch.equal(terms.vb.video, torch.zeros(b)) and torch.equal(terms.generated.audio, torch.zeros(b, dtype=torch.bool))
    changed = AV(torch.cat([v_pred[:, :c], v_pred[:, c:] + 5], dim=1), output.audio)
    assert torch.equal(flow_loss(audio, noise_av, changed, generated).loss, terms.loss)


def test_euler_sampler_equals_opensora_sample_with_guidance_and_given_frames():
    g = torch.Generator().manual_seed(1)
    b, c, f, steps, scale = 2, 4, 5, 7, 4.0
    given_video = torch.randn(b, c, f, 2, 2, generator=g)
    noise = torch.randn(b, c, f, 2, 2, generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    w_c, w_u = torch.randn(c, c, generator=g) * 0.3, torch.randn(c, c, generator=g) * 0.3

    def field(w):  # a velocity that depends on z, t and which frames are given
        def v(z, t, x_mask):
            return torch.einsum("oc,bcfhw->bofhw", w, z) * (t / T)[:, None, None, None, None] + x_mask[:, None, :, None, None]
        return v

    z0 = torch.where(mask[:, None, :, None, None], noise, given_video)
    theirs = _opensora_sample(field(w_c), field(w_u), z0, mask.float(), steps, scale, 256, 256, 68)

    def model_fn(x: AV, t: torch.Tensor) -> AV:
        cond, uncond = field(w_c)(x.video, t, mask), field(w_u)(x.video, t, mask)
        return AV(uncond + scale * (cond - uncond), torch.zeros_like(x.audio))

    audio = torch.randn(b, 8, f, 3, generator=g)
    schedule = FlowSchedule(shift=opensora_shift(ClipSpec()))
    ours = sample_euler(model_fn, schedule, AV(noise, audio), AV(given_video, audio),
                        AV(mask, torch.zeros(b, f, dtype=torch.bool)), steps)
    torch.testing.assert_close(ours.video, theirs)
    assert torch.equal(ours.video[0, :, :2], given_video[0, :, :2])


@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("shift", [1.0, 2.24])
def test_euler_integrates_a_straight_path_exactly(steps, shift):
    """For data that is one point x*, the true velocity at x_t is (x* - x_t) / (t / T): straight lines, which
    Euler follows without error at any step count and shift."""
    g = torch.Generator().manual_seed(2)
    target = AV(torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(2, 5, 8, 3, generator=g))
    noise = target.map(lambda a: torch.randn(a.shape, generator=g))
    everything = AV(torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))

    def exact(x: AV, t: torch.Tensor) -> AV:
        s = (t / T).view(-1, 1, 1, 1)
        return x.map(lambda x_m, x_star: (x_star - x_m) / s.view(-1, *[1] * (x_m.dim() - 1)), target)

    out = sample_euler(exact, FlowSchedule(shift=shift), noise, target.map(torch.zeros_like), everything, steps)
    torch.testing.assert_close(out.video, target.video, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.audio, target.audio, rtol=1e-5, atol=1e-5)


def test_flow_noised_endpoints():
    x0, noise = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(flow_noised(x0, torch.zeros(2), noise, T), x0)
    assert torch.equal(flow_noised(x0, torch.full((2,), float(T)), noise, T), noise)


def test_draw_timesteps_keeps_iddpm_draws_and_gives_flow_floats():
    iddpm = make_schedule(DiffusionConfig())
    t = draw_timesteps(iddpm, 8, torch.Generator().manual_seed(0))
    assert torch.equal(t, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(0)))
    flow_t = draw_timesteps(FlowSchedule(), 8, torch.Generator().manual_seed(0))
    assert flow_t.dtype == torch.float32 and bool(((flow_t > 0) & (flow_t < T)).all())


def test_objective_and_sampler_must_agree():
    with pytest.raises(ConfigError, match='sampler = "euler"'):
        Recipe(diffusion=DiffusionConfig(objective="rflow"))
    with pytest.raises(ConfigError, match="ddpm, ddim or dpm"):
        Recipe(generate=GenerateConfig(sampler="euler"))
    Recipe(diffusion=DiffusionConfig(objective="rflow"), generate=GenerateConfig(sampler="euler"))
    with pytest.raises(ConfigError, match="IDDPM setting"):
        DiffusionConfig(objective="rflow", prediction="v")
    check_sampler("euler", FlowSchedule())
    with pytest.raises(ValueError, match='use sampler "euler"'):
        check_sampler("dpm++", FlowSchedule())
    with pytest.raises(ValueError, match="IDDPM"):
        check_sampler("euler", make_schedule(DiffusionConfig()))
