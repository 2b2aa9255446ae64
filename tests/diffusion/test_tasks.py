"""Jobs as masks over time follow uniform_cli.diffusion.tasks; the paper's three tasks give the same model
outputs, losses and samples as per-sample masks (what a task id meant before masks over time)."""

import pytest
import torch

from tests.model.util import debug_config, inputs, random_model
from uniform_cli.config import DiffusionConfig
from uniform_cli.diffusion.guidance import conditional_model_fn, guided_model_fn
from uniform_cli.diffusion.losses import hybrid_loss, noised_input
from uniform_cli.diffusion.samplers import SAMPLERS
from uniform_cli.diffusion.schedule import make_schedule
from uniform_cli.diffusion.tasks import JOBS, SPAN_JOBS, job_masks, keep_given, task_masks, task_of, time_mask
from uniform_cli.types import AV, Task

PAPER = torch.tensor([Task.T2AV, Task.A2V, Task.V2A])


def _whole_modality(task: torch.Tensor) -> AV:
    """Per-sample `[B]` masks of the task table: one value for every frame (the representation before #17)."""
    return AV(video=task != Task.V2A, audio=task != Task.A2V)


def _job(name: str, batch: int) -> torch.Tensor:
    return torch.full((batch,), JOBS.index(name))


# -- the paper's tasks ------------------------------------------------------------------------------------


def test_task_masks_follow_the_task_table():
    masks = task_masks(PAPER, 3)
    assert masks.video.dtype == masks.audio.dtype == torch.bool
    assert masks.video.tolist() == [[True] * 3, [True] * 3, [False] * 3]
    assert masks.audio.tolist() == [[True] * 3, [False] * 3, [True] * 3]
    assert JOBS[: len(Task)] == ("t2av", "a2v", "v2a") and SPAN_JOBS == ("extend", "retake", "i2av")


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task ids"):
        task_masks(torch.tensor([0, 3]), 4)
    with pytest.raises(ValueError, match="1-D"):
        task_masks(torch.tensor(1), 4)


def test_keep_given_takes_clean_values_at_given_positions_for_either_mask_shape():
    x = AV(torch.randn(3, 4, 2, 4, 4), torch.randn(3, 8, 10, 4))
    given = AV(torch.randn(3, 4, 2, 4, 4), torch.randn(3, 8, 10, 4))
    out = keep_given(x, given, _whole_modality(PAPER))
    assert torch.equal(out.video[:2], x.video[:2]) and torch.equal(out.video[2], given.video[2])
    assert torch.equal(out.audio[[0, 2]], x.audio[[0, 2]]) and torch.equal(out.audio[1], given.audio[1])
    per_frame = keep_given(x, given, task_masks(PAPER, 2))
    assert torch.equal(per_frame.video, out.video) and torch.equal(per_frame.audio, out.audio)


def test_time_mask_covers_each_frames_audio_rows_and_video_frame():
    mask = torch.tensor([[True, False, True, False]])
    audio = time_mask(mask, torch.zeros(1, 8, 20, 4))  # 5 rows per latent frame
    assert audio.shape == (1, 1, 20, 1)
    assert audio[0, 0, :, 0].tolist() == [True] * 5 + [False] * 5 + [True] * 5 + [False] * 5
    video = time_mask(mask, torch.zeros(1, 4, 4, 8, 8))
    assert video.shape == (1, 1, 4, 1, 1) and video.flatten().tolist() == mask[0].tolist()
    assert time_mask(torch.tensor([True, False]), torch.zeros(2, 8, 20, 4)).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="does not divide"):
        time_mask(torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 8, 20, 4))


def test_keep_given_keeps_given_frames_of_a_span():
    x = AV(torch.randn(1, 4, 4, 2, 2), torch.randn(1, 8, 20, 4))
    given = x.map(torch.randn_like)
    generated = AV(torch.tensor([[False, True, True, False]]), torch.tensor([[True, False, False, True]]))
    out = keep_given(x, given, generated)
    assert torch.equal(out.video[:, :, 1:3], x.video[:, :, 1:3])
    assert torch.equal(out.video[:, :, [0, 3]], given.video[:, :, [0, 3]])
    assert torch.equal(out.audio[:, :, [*range(5), *range(15, 20)]], x.audio[:, :, [*range(5), *range(15, 20)]])
    assert torch.equal(out.audio[:, :, 5:15], given.audio[:, :, 5:15])


# -- span jobs --------------------------------------------------------------------------------------------

F = 5
DRAWS = 300


def _draw(name: str, seed: int = 0) -> AV:
    return job_masks(_job(name, DRAWS), F, torch.Generator().manual_seed(seed))


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D bool tensor."""
    runs, start = [], None
    for i, v in enumerate([*row.tolist(), False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_extend_gives_a_prefix_of_1_to_f_minus_1_frames_of_both_modalities():
    masks = _draw("extend")
    assert torch.equal(masks.video, masks.audio)
    prefixes = set()
    for row in masks.video:
        k = int((~row).sum())
        assert torch.equal(row, torch.arange(F) >= k)  # given frames first, then generated ones
        prefixes.add(k)
    assert prefixes == set(range(1, F))


def test_retake_generates_one_span_of_1_to_f_minus_1_frames_in_video_audio_or_both():
    masks = _draw("retake")
    kinds, lengths, starts = set(), set(), set()
    for video, audio in zip(masks.video, masks.audio):
        span = video | audio
        runs = _runs(span)
        assert len(runs) == 1
        start, length = runs[0]
        assert 1 <= length <= F - 1
        # each modality is either the span or given everywhere
        assert all(torch.equal(m, span) or not m.any() for m in (video, audio))
        kinds.add((bool(video.any()), bool(audio.any())))
        lengths.add(length)
        starts.add(start)
    assert kinds == {(True, False), (False, True), (True, True)}
    assert lengths == set(range(1, F)) and starts == set(range(F))


def test_i2av_gives_only_the_first_video_frame():
    masks = _draw("i2av")
    assert torch.equal(masks.video, (torch.arange(F) > 0).expand(DRAWS, F))
    assert masks.audio.all()


def test_paper_tasks_as_jobs_are_their_task_masks():
    jobs = torch.tensor([0, 1, 2, 2, 1, 0])
    masks = job_masks(jobs, F, torch.Generator().manual_seed(0))
    expected = task_masks(jobs, F)
    assert torch.equal(masks.video, expected.video) and torch.equal(masks.audio, expected.audio)


def test_job_draws_repeat_under_the_same_generator_and_do_not_depend_on_other_samples():
    jobs = torch.arange(len(JOBS)).repeat(20)
    a = job_masks(jobs, F, torch.Generator().manual_seed(7))
    b = job_masks(jobs, F, torch.Generator().manual_seed(7))
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    c = job_masks(jobs, F, torch.Generator().manual_seed(8))
    assert not (torch.equal(a.video, c.video) and torch.equal(a.audio, c.audio))
    # Changing the other samples' jobs leaves a sample's span alone.
    others = torch.where(jobs == JOBS.index("retake"), jobs, JOBS.index("t2av"))
    d = job_masks(others, F, torch.Generator().manual_seed(7))
    retake = jobs == JOBS.index("retake")
    assert torch.equal(d.video[retake], a.video[retake]) and torch.equal(d.audio[retake], a.audio[retake])
    with pytest.raises(ValueError, match="at least 2 frames"):
        job_masks(jobs, 1)


def test_task_of_names_the_modalities_generated_anywhere():
    assert task_of(task_masks(PAPER, 4)).tolist() == PAPER.tolist()
    assert task_of(_whole_modality(PAPER)).tolist() == PAPER.tolist()
    some, none = torch.tensor([[False, True, False]]), torch.zeros(1, 3, dtype=torch.bool)
    assert task_of(AV(some, some)).item() == Task.T2AV
    assert task_of(AV(some, none)).item() == Task.A2V  # a video-only retake
    assert task_of(AV(none, some)).item() == Task.V2A
    jobs = torch.tensor([JOBS.index(n) for n in ("extend", "i2av")])
    assert task_of(job_masks(jobs, F, torch.Generator().manual_seed(0))).tolist() == [Task.T2AV, Task.T2AV]
    with pytest.raises(ValueError, match="generates nothing"):
        task_of(AV(torch.stack([some[0], none[0]]), torch.stack([some[0], none[0]])))


# -- the paper's tasks are bit-identical as [B] and [B, F] masks ----------------------------------------


@pytest.fixture(scope="module")
def paper_tasks():
    """A random debug model (its zero-initialised weights perturbed, so the masks matter) and inputs for one
    sample of each paper task, with the per-sample and the per-frame masks of those tasks."""
    cfg = debug_config()
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg, batch=3)
    return model, x, t, text, mask, _whole_modality(PAPER), task_masks(PAPER, cfg.video_latent[1])


def test_paper_task_masks_give_identical_model_outputs_and_losses(paper_tasks):
    model, x0, t, text, mask, whole, per_frame = paper_tasks
    schedule = make_schedule(DiffusionConfig())
    noise = x0.map(lambda a: torch.randn(a.shape, generator=torch.Generator().manual_seed(5)))
    x_in = noised_input(schedule, x0, t, noise, whole)
    x_in_frames = noised_input(schedule, x0, t, noise, per_frame)
    assert torch.equal(x_in.video, x_in_frames.video) and torch.equal(x_in.audio, x_in_frames.audio)
    drop = torch.tensor([False, True, False])
    out = model(x_in, t, whole, text, mask, drop)
    out_frames = model(x_in, t, per_frame, text, mask, drop)
    assert torch.equal(out.video, out_frames.video) and torch.equal(out.audio, out_frames.audio)
    # ... and the masks do matter to this model: T2AV's masks give another output for the same input.
    t2av = task_masks(torch.zeros(3, dtype=torch.long), x0.video.shape[2])
    assert not torch.allclose(model(x_in, t, t2av, text, mask, drop).video[2], out.video[2], atol=1e-4)
    terms = hybrid_loss(schedule, x0, t, noise, out, whole)
    terms_frames = hybrid_loss(schedule, x0, t, noise, out_frames, per_frame)
    assert torch.isfinite(terms.loss).all()
    for a, b in ((terms.loss, terms_frames.loss), (terms.mse.video, terms_frames.mse.video),
                 (terms.mse.audio, terms_frames.mse.audio), (terms.vb.video, terms_frames.vb.video),
                 (terms.vb.audio, terms_frames.vb.audio)):
        assert torch.equal(a, b)
    assert torch.equal(terms_frames.generated.video, whole.video)
    assert torch.equal(terms_frames.generated.audio, whole.audio)


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_paper_task_masks_give_identical_samples(paper_tasks, name, guided):
    model, x0, _, text, mask, whole, per_frame = paper_tasks
    objective = "rflow" if name == "euler" else "iddpm"
    schedule = make_schedule(DiffusionConfig(objective=objective, flow_shift=1.0))
    noise = x0.map(lambda a: torch.randn(a.shape, generator=torch.Generator().manual_seed(9)))
    samples = []
    for masks in (whole, per_frame):
        if guided:
            model_fn = guided_model_fn(model, masks, text, mask, cfg_video=3.0, cfg_audio=2.0)
        else:
            model_fn = conditional_model_fn(model, masks, text, mask)
        samples.append(SAMPLERS[name](model_fn, schedule, noise, x0, masks, 3,
                                      generator=torch.Generator().manual_seed(4)))
    (a, b) = samples
    assert torch.isfinite(a.video).all() and torch.isfinite(a.audio).all()
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    assert torch.equal(a.video[2], x0.video[2]) and torch.equal(a.audio[1], x0.audio[1])  # V2A / A2V's given
