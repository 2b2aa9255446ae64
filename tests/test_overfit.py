"""Integration: a `debug` UniForm trained by `train_step` (the step `uniform train` runs: random tasks, the masked
loss of the objective, the DeepSpeed engine's AdamW) overfits one (video, audio, text) example, and its A2V and V2A
samples land near the held example, for IDDPM (sampled with DDIM) and for rectified flow (Euler). Run with
`pytest -s` to see the numbers."""

import itertools
import time

import pytest
import torch

from uniform_cli.config import PRESETS, ClipSpec, DataConfig, DiffusionConfig, TrainConfig
from uniform_cli.diffusion.guidance import conditional_model_fn
from uniform_cli.diffusion.samplers import sample_ddim, sample_euler
from uniform_cli.diffusion.schedule import make_schedule
from uniform_cli.diffusion.tasks import task_masks
from uniform_cli.latents.loader import LatentBatch
from uniform_cli.model.uniform import build_model
from uniform_cli.train.ema import make_ema
from uniform_cli.train.engine import build_engine, init_distributed
from uniform_cli.train.step import StepParts, train_step
from uniform_cli.types import AV, Task

STEPS = 300
BATCH = 2
LR = 3e-3
SEED = 0


def _example(cfg, gen: torch.Generator):
    """One fixed example of unit scale: video and audio smooth over space and mel bins and the same in every
    0.2 s frame (positions inside a frame are embedded absolutely, frames only relative to each other, so a
    pattern that changes over time could not be told apart at high noise), and a 10-token text."""
    c_v, f, h, w = cfg.video_latent
    c_a, t, m = cfg.audio_latent
    video = torch.nn.functional.interpolate(torch.randn(1, c_v, 2, 2, generator=gen), size=(h, w), mode="bilinear")
    audio = torch.nn.functional.interpolate(torch.randn(1, c_a, 2, 2, generator=gen), size=(t // f, m),
                                            mode="bilinear")
    video = video[:, :, None].expand(1, c_v, f, h, w)
    audio = audio.repeat(1, 1, f, 1)
    x0 = AV((video / video.std()).contiguous(), (audio / audio.std()).contiguous())
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)
    mask = torch.arange(cfg.text_len)[None] < 10
    return x0, text, mask


def _samples(model_fn, schedule, noise, x0, generated, gen, objective: str) -> tuple[AV, AV]:
    """A stochastic and a deterministic sample: DDIM-25 with eta 1 and 0 (IDDPM); Euler-10 twice (rflow, which
    has only the deterministic sampler)."""
    if objective == "rflow":
        sample = sample_euler(model_fn, schedule, noise, x0, generated, 10)
        return sample, sample
    # eta = 1: after a few hundred CPU steps the noise prediction at the noisiest steps still carries a
    # small systematic error that deterministic DDIM (eta = 0) accumulates; fresh noise at each step
    # washes it out. The eta = 0 distance is printed for the record.
    return (sample_ddim(model_fn, schedule, noise, x0, generated, 25, eta=1.0, generator=gen),
            sample_ddim(model_fn, schedule, noise, x0, generated, 25, eta=0.0))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["iddpm", "rflow"])
def test_debug_model_overfits_one_example_and_samples_near_it(objective):
    init_distributed()
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    cfg = PRESETS["debug"]
    train = TrainConfig(batch_size=BATCH, micro_batch=BATCH, lr=LR, seed=SEED)
    # Linear decay to 0 (DeepSpeed's own scheduler, through the raw [deepspeed] table): the last steps settle
    # instead of bouncing at the noise floor of a high rate.
    decay = {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": LR, "warmup_num_steps": 1,
                                                 "total_num_steps": STEPS, "warmup_type": "linear"}}
    engine = build_engine(build_model(cfg), train, world_size=1, raw={"scheduler": decay})
    schedule = make_schedule(DiffusionConfig(objective=objective), ClipSpec())
    parts = StepParts(engine, make_ema(engine.module), schedule, train, DataConfig(), rank=0, device=torch.device("cpu"))
    x0, text, mask = _example(cfg, gen)
    batch = LatentBatch(x0.map(lambda a: a.expand(BATCH, *a.shape[1:])), [""] * BATCH, ["example"] * BATCH,
                        text.expand(BATCH, -1, -1), mask.expand(BATCH, -1))
    batches = itertools.repeat(batch)

    start = time.perf_counter()
    losses = [train_step(parts, batches, step).loss.mean().item() for step in range(STEPS)]
    train_s = time.perf_counter() - start
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10

    model = engine.module.eval()
    noise = x0.map(lambda a: torch.randn(a.shape, generator=gen))
    results = {}
    for task in (Task.A2V, Task.V2A):
        generated = task_masks(torch.full((1,), int(task)), x0.video.shape[2])
        model_fn = conditional_model_fn(model, generated, text, mask)
        name = "video" if task == Task.A2V else "audio"
        target = getattr(x0, name)
        sample, deterministic = _samples(model_fn, schedule, noise, x0, generated, gen, objective)
        results[task.name] = (
            torch.mean((getattr(sample, name) - target) ** 2).item(),
            torch.mean((getattr(noise, name) - target) ** 2).item(),
            torch.mean((getattr(deterministic, name) - target) ** 2).item(),
        )
    print(f"\noverfit ({objective}): {STEPS} steps x batch {BATCH} in {train_s:.1f} s; loss first-10 mean {first:.4f}, "
          f"last-10 mean {last:.4f} ({first / last:.1f}x lower)")
    for name, (mse_sample, mse_noise, mse_eta0) in results.items():
        print(f"overfit ({objective}): {name} sample MSE to the example {mse_sample:.4f}, pure noise "
              f"{mse_noise:.4f} (deterministic: {mse_eta0:.4f})")

    assert last * 10 <= first
    for mse_sample, mse_noise, _ in results.values():
        assert mse_sample < mse_noise
