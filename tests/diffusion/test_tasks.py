"""Task masks follow the table in uniform_cli.diffusion.tasks."""

import pytest
import torch

from uniform_cli.diffusion.tasks import generated_masks, keep_given
from uniform_cli.types import AV, Task


def test_generated_masks_follow_the_task_table():
    masks = generated_masks(torch.tensor([Task.T2AV, Task.A2V, Task.V2A]))
    assert masks.video.tolist() == [True, True, False]
    assert masks.audio.tolist() == [True, False, True]


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task ids"):
        generated_masks(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="1-D"):
        generated_masks(torch.tensor(1))


def test_keep_given_takes_clean_values_at_given_positions():
    x = AV(torch.randn(3, 4, 2, 4, 4), torch.randn(3, 8, 10, 4))
    given = AV(torch.randn(3, 4, 2, 4, 4), torch.randn(3, 8, 10, 4))
    out = keep_given(x, given, generated_masks(torch.tensor([0, 1, 2])))
    assert torch.equal(out.video[:2], x.video[:2]) and torch.equal(out.video[2], given.video[2])
    assert torch.equal(out.audio[[0, 2]], x.audio[[0, 2]]) and torch.equal(out.audio[1], given.audio[1])
