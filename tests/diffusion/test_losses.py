"""The masked hybrid loss: given positions never count, the variance term trains the variance only."""

import pytest
import torch

from uniform_cli.config import DiffusionConfig
from uniform_cli.diffusion.losses import X0_LOSS_MIN_SIGMA, hybrid_loss, noised_input, vb_terms
from uniform_cli.diffusion.schedule import make_schedule, q_sample, v_from_eps
from uniform_cli.diffusion.tasks import task_masks, time_mask
from uniform_cli.types import AV, Task

BASE = make_schedule(DiffusionConfig())
B = 4
F = 2  # latent frames of _batch: video B 4 2 4 4, audio B 8 10 4 (5 rows a frame)
T2AV = task_masks(torch.zeros(B, dtype=torch.long), F)


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = AV(torch.randn(B, 4, 2, 4, 4, generator=gen), torch.randn(B, 8, 10, 4, generator=gen))
    noise = AV(torch.randn(B, 4, 2, 4, 4, generator=gen), torch.randn(B, 8, 10, 4, generator=gen))
    output = AV(torch.randn(B, 8, 2, 4, 4, generator=gen), torch.randn(B, 16, 10, 4, generator=gen))
    t = torch.tensor([0, 1, 500, 999])
    return x0, noise, output, t


@pytest.mark.parametrize("task", list(Task))
def test_loss_ignores_predictions_at_given_positions(task):
    x0, noise, output, t = _batch()
    generated = task_masks(torch.full((B,), int(task)), F)
    ref = hybrid_loss(BASE, x0, t, noise, output, generated)
    assert torch.isfinite(ref.loss).all()
    given_video, given_audio = task == Task.V2A, task == Task.A2V
    changed = AV(
        output.video + 5.0 if given_video else output.video,
        output.audio - 3.0 if given_audio else output.audio,
    )
    assert torch.equal(hybrid_loss(BASE, x0, t, noise, changed, generated).loss, ref.loss)
    # ... while a change at the generated positions moves it.
    moved = AV(output.video if given_video else output.video + 0.5,
                    output.audio if given_audio else output.audio + 0.5)
    assert (hybrid_loss(BASE, x0, t, noise, moved, generated).loss != ref.loss).all()
    # Components of a given modality are zero and flagged as not generated.
    if given_video:
        assert not ref.generated.video.any() and (ref.mse.video == 0).all() and (ref.vb.video == 0).all()
    if given_audio:
        assert not ref.generated.audio.any() and (ref.mse.audio == 0).all() and (ref.vb.audio == 0).all()


def test_noised_input_keeps_given_positions_clean():
    x0, noise, _, t = _batch()
    generated = task_masks(torch.tensor([Task.T2AV, Task.A2V, Task.V2A, Task.A2V]), F)
    x_in = noised_input(BASE, x0, t, noise, generated)
    x_t = x0.map(lambda x, n: q_sample(BASE, x, t, n), noise)
    video_generated, audio_generated = [0, 1, 3], [0, 2]
    assert torch.equal(x_in.video[video_generated], x_t.video[video_generated])
    assert torch.equal(x_in.video[2], x0.video[2])
    assert torch.equal(x_in.audio[audio_generated], x_t.audio[audio_generated])
    assert torch.equal(x_in.audio[[1, 3]], x0.audio[[1, 3]])


def test_loss_pools_generated_elements_and_mse_is_the_noise_error():
    x0, noise, output, t = _batch()
    exact = AV(torch.cat([noise.video + 0.1, output.video[:, 4:]], 1),
                    torch.cat([noise.audio - 0.2, output.audio[:, 8:]], 1))
    terms = hybrid_loss(BASE, x0, t, noise, exact, T2AV)
    torch.testing.assert_close(terms.mse.video, torch.full((B,), 0.01))
    torch.testing.assert_close(terms.mse.audio, torch.full((B,), 0.04))
    n_v, n_a = x0.video[0].numel(), x0.audio[0].numel()
    pooled = ((terms.mse.video + terms.vb.video) * n_v + (terms.mse.audio + terms.vb.audio) * n_a) / (n_v + n_a)
    torch.testing.assert_close(terms.loss, pooled)


def test_v_prediction_loss_is_the_v_error_and_its_vb_matches_eps_prediction():
    x0, noise, output, t = _batch()
    v_schedule = make_schedule(DiffusionConfig(prediction="v"))
    v = x0.map(lambda x, n: v_from_eps(v_schedule, x, t, n), noise)
    out_v = AV(torch.cat([v.video + 0.1, output.video[:, 4:]], 1), torch.cat([v.audio, output.audio[:, 8:]], 1))
    terms = hybrid_loss(v_schedule, x0, t, noise, out_v, T2AV)
    torch.testing.assert_close(terms.mse.video, torch.full((B,), 0.01))
    torch.testing.assert_close(terms.mse.audio, torch.zeros(B), atol=1e-10, rtol=0)
    # The exact v is the exact eps: the variance term is the one an eps model with the true noise gets.
    out_eps = AV(torch.cat([noise.video, output.video[:, 4:]], 1),
                      torch.cat([noise.audio, output.audio[:, 8:]], 1))
    torch.testing.assert_close(terms.vb.audio, hybrid_loss(BASE, x0, t, noise, out_eps, T2AV).vb.audio,
                               atol=1e-4, rtol=1e-4)


def test_x0_prediction_loss_is_the_implied_v_error_with_a_floored_noise_level():
    x0, noise, output, t = _batch()  # t = 0, 1, 500, 999
    schedule = make_schedule(DiffusionConfig(prediction="x0"))
    out = AV(torch.cat([x0.video + 0.1, output.video[:, 4:]], 1), torch.cat([x0.audio, output.audio[:, 8:]], 1))
    terms = hybrid_loss(schedule, x0, t, noise, out, T2AV)
    sigma = (1 - schedule.alphas_cumprod[t]).sqrt().clamp(min=X0_LOSS_MIN_SIGMA).float()
    torch.testing.assert_close(terms.mse.video, 0.01 / sigma**2)
    assert sigma[0] == sigma[1] == X0_LOSS_MIN_SIGMA  # the nearly clean steps share the floor
    torch.testing.assert_close(terms.mse.audio, torch.zeros(B))


def test_vb_is_zero_for_the_true_mean_and_posterior_variance():
    x0, noise, output, _ = _batch()
    t = torch.tensor([1, 10, 500, 999])
    # eps = the true noise gives the true posterior mean; v = -1 gives the posterior variance: KL = 0.
    out = AV(torch.cat([noise.video, -torch.ones_like(noise.video)], 1),
                  torch.cat([noise.audio, -torch.ones_like(noise.audio)], 1))
    terms = hybrid_loss(BASE, x0, t, noise, out, T2AV)
    torch.testing.assert_close(terms.vb.video, torch.zeros(B), atol=1e-5, rtol=0)
    torch.testing.assert_close(terms.loss, torch.zeros(B), atol=1e-5, rtol=0)
    # At t = 0 the term is the decoder's negative log-likelihood: positive.
    terms0 = hybrid_loss(BASE, x0, torch.zeros(B, dtype=torch.long), noise, out, T2AV)
    assert (terms0.vb.video > 0).all() and (terms0.vb.audio > 0).all()


def test_vb_trains_the_variance_only_and_scales_with_num_timesteps():
    x0, noise, output, t = _batch()
    out = output.map(lambda o: o.clone().requires_grad_(True))
    terms = hybrid_loss(BASE, x0, t, noise, out, T2AV)
    (terms.vb.video.sum() + terms.vb.audio.sum()).backward()
    assert out.video.grad[:, :4].abs().max() == 0 and out.video.grad[:, 4:].abs().max() > 0
    assert out.audio.grad[:, :8].abs().max() == 0 and out.audio.grad[:, 8:].abs().max() > 0
    # IDDPM's rescaling: vb x num_timesteps / 1000, with a 500-step schedule's own noise levels.
    half = make_schedule(DiffusionConfig(num_timesteps=500))
    t_half = t // 2
    x_t = q_sample(half, x0.video, t_half, noise.video)
    raw = vb_terms(half, x0.video, x_t, t_half, output.video[:, :4], output.video[:, 4:]).flatten(1).mean(1)
    torch.testing.assert_close(hybrid_loss(half, x0, t_half, noise, output, T2AV).vb.video, raw * 0.5)


def test_loss_without_variance_channels_is_the_mse():
    x0, noise, output, t = _batch()
    eps_only = AV(output.video[:, :4], output.audio[:, :8])
    terms = hybrid_loss(BASE, x0, t, noise, eps_only, T2AV)
    assert (terms.vb.video == 0).all() and (terms.vb.audio == 0).all()
    with pytest.raises(ValueError, match="channels"):
        hybrid_loss(BASE, x0, t, noise, AV(output.video[:, :5], output.audio), T2AV)


# A span job of each kind over F = 2 frames: extend (frame 0 of both given), a retake of the audio's frame 1,
# i2av (video frame 0 given) and a retake of the video's frame 0.
SPANS = AV(video=torch.tensor([[False, True], [False, False], [False, True], [True, False]]),
           audio=torch.tensor([[False, True], [False, True], [True, True], [False, False]]))


def _at(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The positions of `like` (all channels) where `mask` `[B, F]` is True."""
    return time_mask(mask, like).expand_as(like)


def test_span_loss_ignores_given_frames_and_moves_with_generated_ones():
    x0, noise, output, t = _batch()
    ref = hybrid_loss(BASE, x0, t, noise, output, SPANS)
    assert torch.isfinite(ref.loss).all()
    # Anything at given frames (prediction and variance channels, even NaN) leaves every term unchanged.
    spoiled = output.map(lambda o, m: torch.where(_at(~m, o), torch.nan, o), SPANS)
    terms = hybrid_loss(BASE, x0, t, noise, spoiled, SPANS)
    for a, b in ((terms.loss, ref.loss), (terms.mse.video, ref.mse.video), (terms.mse.audio, ref.mse.audio),
                 (terms.vb.video, ref.vb.video), (terms.vb.audio, ref.vb.audio)):
        assert torch.equal(a, b)
    moved = output.map(lambda o, m: torch.where(_at(m, o), o + 0.5, o), SPANS)
    assert (hybrid_loss(BASE, x0, t, noise, moved, SPANS).loss != ref.loss).all()
    # A modality generated in some frame is flagged; one given in every frame has zero terms.
    assert ref.generated.video.tolist() == [True, False, True, True]
    assert ref.generated.audio.tolist() == [True, True, True, False]
    assert ref.mse.video[1] == ref.vb.video[1] == ref.mse.audio[3] == ref.vb.audio[3] == 0


def test_span_loss_means_over_the_generated_elements_only():
    x0, noise, output, t = _batch()
    eps_only = AV(output.video[:, :4], output.audio[:, :8])
    terms = hybrid_loss(BASE, x0, t, noise, eps_only, SPANS)
    sq = eps_only.map(lambda o, n: (o - n) ** 2, noise)
    for i in range(B):
        for name in ("video", "audio"):
            keep = _at(getattr(SPANS, name), getattr(sq, name))[i]
            expected = getattr(sq, name)[i][keep].mean() if keep.any() else torch.tensor(0.0)
            torch.testing.assert_close(getattr(terms.mse, name)[i], expected)
        kv, ka = _at(SPANS.video, sq.video)[i], _at(SPANS.audio, sq.audio)[i]
        pooled = torch.cat([sq.video[i][kv], sq.audio[i][ka]]).mean()  # video and audio elements pooled
        torch.testing.assert_close(terms.loss[i], pooled)


def test_noised_input_keeps_given_frames_of_a_span_clean():
    x0, noise, _, t = _batch()
    x_in = noised_input(BASE, x0, t, noise, SPANS)
    x_t = x0.map(lambda x, n: q_sample(BASE, x, t, n), noise)
    for name in ("video", "audio"):
        keep = _at(getattr(SPANS, name), getattr(x0, name))
        got = getattr(x_in, name)
        assert torch.equal(got[keep], getattr(x_t, name)[keep]) and torch.equal(got[~keep], getattr(x0, name)[~keep])
