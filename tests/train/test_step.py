"""What a training step draws: jobs, timesteps, noise, text dropping and the jobs' masks."""

import pytest
import torch

from uniform_cli.config import PRESETS, DataConfig, DiffusionConfig
from uniform_cli.diffusion.schedule import make_schedule
from uniform_cli.diffusion.tasks import JOBS, task_masks
from uniform_cli.train.step import TrainingError, draw_step_inputs, sample_jobs
from uniform_cli.types import AV

DEBUG = PRESETS["debug"]
IDDPM = make_schedule(DiffusionConfig())
B = 6


def _x0() -> AV:
    return AV(torch.zeros(B, *DEBUG.video_latent), torch.zeros(B, *DEBUG.audio_latent))


def _draws_before_span_jobs(data: DataConfig, g: torch.Generator):
    """What a step drew before span jobs existed (task ids over t2av, a2v, v2a, then t, noise, text dropping),
    written out from the code of that time."""
    weights = torch.tensor([data.task_weights.get(n, 0.0) for n in ("t2av", "a2v", "v2a")], dtype=torch.float64)
    draws = 1 if data.task_sampling == "iteration" else B
    tasks = torch.multinomial(weights, draws, replacement=True, generator=g)
    tasks = tasks.expand(B).clone() if draws == 1 else tasks
    t = torch.randint(0, 1000, (B,), generator=g)
    noise = _x0().map(lambda x: torch.randn(x.shape, generator=g))
    drop = torch.rand(B, generator=g) < data.text_drop
    return tasks, t, noise, drop


@pytest.mark.parametrize("sampling", ["iteration", "sample"])
@pytest.mark.parametrize("span_weights", [{}, {"extend": 0.0, "retake": 0.0, "i2av": 0.0}])
def test_without_span_jobs_a_step_draws_what_it_drew_before(sampling, span_weights):
    data = DataConfig(task_weights={"t2av": 2.0, "a2v": 1.0, "v2a": 0.5, **span_weights}, task_sampling=sampling)
    for seed in range(5):
        tasks, t, noise, drop = _draws_before_span_jobs(data, torch.Generator().manual_seed(seed))
        inputs = draw_step_inputs(_x0(), data, IDDPM, torch.Generator().manual_seed(seed))
        assert torch.equal(inputs.job, tasks) and torch.equal(inputs.t, t) and torch.equal(inputs.drop_text, drop)
        assert torch.equal(inputs.noise.video, noise.video) and torch.equal(inputs.noise.audio, noise.audio)
        expected = task_masks(tasks, DEBUG.video_latent[1])
        assert torch.equal(inputs.generated.video, expected.video)
        assert torch.equal(inputs.generated.audio, expected.audio)
        assert torch.equal(sample_jobs(data, B, torch.Generator().manual_seed(seed)), tasks)


def test_span_weights_draw_span_jobs_with_their_masks():
    data = DataConfig(task_weights={"t2av": 1.0, "extend": 1.0, "retake": 1.0, "i2av": 1.0}, task_sampling="sample")
    frames = DEBUG.video_latent[1]
    jobs, rows = [], []
    for seed in range(20):
        inputs = draw_step_inputs(_x0(), data, IDDPM, torch.Generator().manual_seed(seed))
        again = draw_step_inputs(_x0(), data, IDDPM, torch.Generator().manual_seed(seed))
        assert torch.equal(inputs.generated.video, again.generated.video)
        assert torch.equal(inputs.generated.audio, again.generated.audio)
        jobs.append(inputs.job)
        rows.append(inputs.generated)
    job = torch.cat(jobs)
    video, audio = torch.cat([r.video for r in rows]), torch.cat([r.audio for r in rows])
    assert video.shape == audio.shape == (len(job), frames)
    assert {JOBS[j] for j in job.tolist()} == {"t2av", "extend", "retake", "i2av"}  # weight 0: never drawn
    for j, v, a in zip(job.tolist(), video, audio):
        name = JOBS[j]
        if name == "t2av":
            assert v.all() and a.all()
        elif name == "extend":
            assert torch.equal(v, a) and not v[0] and v[-1]
        elif name == "retake":
            span = v | a
            assert span.any() and not span.all()
        else:
            assert v.tolist() == [False] + [True] * (frames - 1) and a.all()


def test_no_job_with_weight_is_a_training_error():
    data = DataConfig(task_weights={"t2av": 0.0, "extend": 0.0})
    with pytest.raises(TrainingError, match="every job weight 0"):
        sample_jobs(data, 2, torch.Generator().manual_seed(0))
