"""Classifier-free guidance: one batched forward, eps guided per modality, variance from the conditional half."""

import torch
from torch import nn

from uniform_cli.diffusion.guidance import conditional_model_fn, guided_model_fn
from uniform_cli.diffusion.tasks import task_of
from uniform_cli.types import AV


class TextConditionedToy(nn.Module):
    """A small module with the UniForm call signature whose output depends on x, t, the job's masks and the text
    (replaced by a learned null vector where drop_text is set); records the batch sizes and masks it is called
    with."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.null = nn.Parameter(torch.randn(8))
        self.video = nn.Linear(8, 8)
        self.audio = nn.Linear(8, 16)
        self.batches: list[int] = []
        self.masks: list[AV] = []

    def forward(self, x, t, generated, text, text_mask, drop_text):
        self.batches.append(x.video.shape[0])
        self.masks.append(generated)
        pooled = (text * text_mask[..., None]).sum(1) / text_mask.sum(1, keepdim=True)
        if drop_text is not None:
            pooled = torch.where(drop_text[:, None], self.null.expand_as(pooled), pooled)
        cond = pooled + t[:, None] / 1000 + task_of(generated)[:, None]
        video = x.video.repeat(1, 2, 1, 1, 1) + self.video(cond)[:, :, None, None, None]
        audio = x.audio.repeat(1, 2, 1, 1) * self.audio(cond)[:, :, None, None]
        return AV(video, audio)


def _inputs():
    gen = torch.Generator().manual_seed(3)
    x = AV(torch.randn(2, 4, 2, 4, 4, generator=gen), torch.randn(2, 8, 10, 4, generator=gen))
    text = torch.randn(2, 5, 8, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    generated = AV(torch.tensor([[True, False], [False, False]]), torch.tensor([[True, True], [True, True]]))
    return x, torch.tensor([100, 700]), generated, text, mask


def test_scale_one_equals_the_conditional_prediction_in_one_forward():
    model = TextConditionedToy()
    x, t, generated, text, mask = _inputs()
    cond = conditional_model_fn(model, generated, text, mask)(x, t)
    model.batches.clear()
    guided = guided_model_fn(model, generated, text, mask, cfg_video=1.0)(x, t)
    assert model.batches == [4]  # cond and null batched into a single forward
    torch.testing.assert_close(guided.video, cond.video)
    torch.testing.assert_close(guided.audio, cond.audio)


def test_scales_apply_to_eps_per_modality_and_variance_comes_from_the_conditional_half():
    model = TextConditionedToy()
    x, t, generated, text, mask = _inputs()
    cond = conditional_model_fn(model, generated, text, mask)(x, t)
    uncond = conditional_model_fn(model, generated, text, mask, drop_text=torch.ones(2, dtype=torch.bool))(x, t)
    assert not torch.allclose(cond.video, uncond.video)
    guided = guided_model_fn(model, generated, text, mask, cfg_video=4.0, cfg_audio=2.5)(x, t)
    torch.testing.assert_close(guided.video[:, :4], uncond.video[:, :4] + 4.0 * (cond.video[:, :4] - uncond.video[:, :4]))
    torch.testing.assert_close(guided.audio[:, :8], uncond.audio[:, :8] + 2.5 * (cond.audio[:, :8] - uncond.audio[:, :8]))
    torch.testing.assert_close(guided.video[:, 4:], cond.video[:, 4:])
    torch.testing.assert_close(guided.audio[:, 8:], cond.audio[:, 8:])
    # One scale for both when cfg_audio is left out.
    same = guided_model_fn(model, generated, text, mask, cfg_video=2.5)(x, t)
    torch.testing.assert_close(same.audio, guided.audio)


def test_both_halves_of_the_guided_forward_get_the_jobs_masks():
    model = TextConditionedToy()
    x, t, generated, text, mask = _inputs()
    guided_model_fn(model, generated, text, mask, cfg_video=3.0)(x, t)
    (seen,) = model.masks
    assert torch.equal(seen.video, torch.cat([generated.video, generated.video]))
    assert torch.equal(seen.audio, torch.cat([generated.audio, generated.audio]))
