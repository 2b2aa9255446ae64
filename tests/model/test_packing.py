import dataclasses

import pytest
import torch

from uniform_cli.config import PRESETS
from uniform_cli.diffusion.tasks import task_masks
from uniform_cli.model.packing import (
    AUDIO,
    TASK,
    VIDEO,
    AudibleFrameLayout,
    PackingError,
    given_token_mask,
    pack_audible_frames,
    token_kinds,
    unpack_audible_frames,
)
from uniform_cli.types import AV, Task


def _random(layout: AudibleFrameLayout, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, *layout.video_shape, generator=g)
    audio = torch.randn(batch, *layout.audio_shape, generator=g)
    task = torch.randn(batch, *layout.task_block_shape, generator=g)
    return video, audio, task


@pytest.mark.parametrize("preset", ["debug", "XL/2"])
def test_pack_then_unpack_is_exact(preset):
    layout = AudibleFrameLayout.from_config(PRESETS[preset])
    video, audio, task = _random(layout)
    frames = pack_audible_frames(video, audio, task, layout)
    v, a, k = unpack_audible_frames(frames, layout)
    assert torch.equal(v, video) and torch.equal(a, audio) and torch.equal(k, task)


def test_paper_shapes():
    layout = AudibleFrameLayout.from_config(PRESETS["XL/2"])
    assert layout.audio_width == 6 and layout.frame_width == 40
    assert layout.grid == (20, 16, 20) and layout.num_tokens == 6400
    video, audio, task = _random(layout, batch=1)
    assert pack_audible_frames(video, audio, task, layout).shape == (1, 4, 20, 32, 40)


def test_audio_row_lands_in_its_audible_frame():
    layout = AudibleFrameLayout.from_config(PRESETS["XL/2"])
    cv, f, h, w = layout.video_shape
    ca, t, m = layout.audio_shape
    video, _, task = (torch.zeros_like(x) for x in _random(layout, batch=1))
    for r in range(t):
        audio = torch.zeros(1, ca, t, m)
        audio[:, :, r] = torch.arange(1, ca * m + 1, dtype=torch.float32).view(ca, m)
        frames = pack_audible_frames(video, audio, task, layout)
        nonzero = frames.nonzero()
        assert set(nonzero[:, 2].tolist()) == {r // 5}
        strip = frames[0, :, r // 5, :, w : w + layout.audio_width]
        # channel c sits in group c // Cv (stacked along height), time across at column r % 5
        expected = torch.zeros_like(strip)
        for c in range(ca):
            expected[c % cv, (c // cv) * m : (c // cv + 1) * m, r % 5] = audio[0, c, r]
        assert torch.equal(strip, expected)


def test_strip_padding_is_zero():
    layout = AudibleFrameLayout.from_config(PRESETS["XL/2"])
    video, audio, task = _random(layout)
    frames = pack_audible_frames(video, audio, task, layout)
    w = layout.video_shape[3]
    assert not frames[..., w + 5 : w + 6].any()  # 5 time columns, padded to 6


def test_model_output_halves_unpack_separately():
    layout = AudibleFrameLayout.from_config(PRESETS["debug"])
    v1, a1, k1 = _random(layout, seed=1)
    v2, a2, k2 = _random(layout, seed=2)
    both = torch.cat([pack_audible_frames(v1, a1, k1, layout), pack_audible_frames(v2, a2, k2, layout)], dim=1)
    v, a, _ = unpack_audible_frames(both, layout)
    assert torch.equal(v, torch.cat([v1, v2], 1)) and torch.equal(a, torch.cat([a1, a2], 1))


@pytest.mark.parametrize(
    "video_latent, audio_latent, width",
    [
        ((4, 4, 8, 8), (16, 8, 4), 4),  # 4 groups: two columns of two groups, 2 * 2 time columns
        ((4, 2, 8, 8), (6, 6, 4), 4),  # 6 channels: the second group is half zero; 3 rows -> width 4
        ((4, 2, 12, 8), (8, 10, 5), 6),  # 2 groups of 5 mel bins in 12 rows: height padded
    ],
)
def test_general_shapes_pad_and_round_trip(video_latent, audio_latent, width):
    cfg = dataclasses.replace(PRESETS["debug"], video_latent=video_latent, audio_latent=audio_latent)
    layout = AudibleFrameLayout.from_config(cfg)
    assert layout.audio_width == width
    video, audio, task = _random(layout)
    frames = pack_audible_frames(video, audio, task, layout)
    capacity = layout.channels * video_latent[2] * layout.audio_width * video_latent[1]
    assert capacity >= audio[0].numel()
    v, a, k = unpack_audible_frames(frames, layout)
    assert torch.equal(v, video) and torch.equal(a, audio) and torch.equal(k, task)


def test_shapes_that_cannot_be_placed_raise():
    with pytest.raises(PackingError, match="mel bins"):
        AudibleFrameLayout.from_config(dataclasses.replace(PRESETS["debug"], audio_latent=(8, 20, 16)))
    with pytest.raises(PackingError, match="task_width"):
        AudibleFrameLayout.from_config(dataclasses.replace(PRESETS["debug"], task_width=3))
    with pytest.raises(PackingError, match="multiples of the patch"):
        AudibleFrameLayout.from_config(dataclasses.replace(PRESETS["debug"], video_latent=(4, 4, 8, 7)))
    layout = AudibleFrameLayout.from_config(PRESETS["debug"])
    video, audio, task = _random(layout)
    with pytest.raises(PackingError, match="audio latent"):
        pack_audible_frames(video, audio[:, :, :-1], task, layout)


def test_token_kinds_follow_the_columns():
    layout = AudibleFrameLayout.from_config(PRESETS["XL/2"])
    kinds = token_kinds(layout).view(20, 16, 20)
    assert (kinds[..., :16] == VIDEO).all() and (kinds[..., 16:19] == AUDIO).all() and (kinds[..., 19] == TASK).all()


@pytest.mark.parametrize("per_frame", [False, True])
def test_given_mask_per_task(per_frame):
    layout = AudibleFrameLayout.from_config(PRESETS["XL/2"])
    task = torch.tensor([Task.T2AV, Task.A2V, Task.V2A])
    generated = task_masks(task, 20) if per_frame else AV(task != Task.V2A, task != Task.A2V)
    given = given_token_mask(generated, layout).view(3, 20, 16, 20)
    per_column = given[:, 0, 0]  # the same in every frame and row
    assert (given == per_column[:, None, None]).all()
    assert per_column[0].tolist() == [False] * 19 + [True]
    assert per_column[1].tolist() == [False] * 16 + [True] * 4
    assert per_column[2].tolist() == [True] * 16 + [False] * 3 + [True]


def test_given_mask_follows_each_frame_of_a_span():
    layout = AudibleFrameLayout.from_config(PRESETS["XL/2"])  # 20 frames of 16 rows x (16 video, 3 audio, 1 task)
    video = torch.arange(20) >= 3  # the first 3 frames of the video given
    audio = (torch.arange(20) >= 5) & (torch.arange(20) < 9)  # audio generated in frames 5..8 only
    given = given_token_mask(AV(video[None], audio[None]), layout).view(20, 16, 20)
    assert (given[..., :16] == ~video[:, None, None]).all()
    assert (given[..., 16:19] == ~audio[:, None, None]).all()
    assert given[..., 19].all()
    with pytest.raises(ValueError, match="job masks have 19 frames; the model has 20 latent frames"):
        given_token_mask(AV(video[None, :19], audio[None, :19]), layout)


def test_a_token_of_two_latent_frames_is_generated_if_either_is():
    layout = AudibleFrameLayout.from_config(dataclasses.replace(PRESETS["debug"], patch_size=(2, 2, 2)))
    t = layout.grid[0]
    video = torch.tensor([[False, True] + [False] * (2 * t - 2)])  # latent frame 1: token frame 0
    given = given_token_mask(AV(video, torch.zeros_like(video)), layout).view(1, t, -1)
    kinds = token_kinds(layout).view(t, -1)
    assert not given[0, 0][kinds[0] == VIDEO].any() and given[0, 1:][kinds[1:] == VIDEO].all()
