import pytest
import torch

from tests.model.util import debug_config, inputs, random_model
from uniform_cli.config import DiffusionConfig, GenerateConfig
from uniform_cli.diffusion.guidance import guided_model_fn
from uniform_cli.diffusion.samplers import SAMPLERS
from uniform_cli.diffusion.schedule import make_schedule
from uniform_cli.diffusion.tasks import task_masks
from uniform_cli.model.cache import FirstBlockCache, relative_change
from uniform_cli.types import AV, Task

STEPS = 10


def _sample(model, sampler: str = "dpm++", steps: int = STEPS):
    """A guided T2AV/V2A batch sampled with `model` (the UniForm or a cache around it)."""
    cfg = debug_config()
    x, _, text, mask = inputs(cfg)
    generated = task_masks(torch.tensor([Task.T2AV, Task.V2A]), cfg.video_latent[1])
    noise = x.map(lambda a: torch.randn(a.shape, generator=torch.Generator().manual_seed(7)))
    model_fn = guided_model_fn(model, generated, text, mask, cfg_video=4.0, cfg_audio=3.0)
    return SAMPLERS[sampler](model_fn, make_schedule(DiffusionConfig()), noise, x, generated, steps,
                             generator=torch.Generator().manual_seed(8))


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "ddpm"])
def test_threshold_zero_gives_bit_identical_samples(sampler):
    model = random_model()
    cache = FirstBlockCache(model, 0.0)
    plain, cached = _sample(model, sampler), _sample(cache, sampler)
    assert torch.equal(plain.video, cached.video) and torch.equal(plain.audio, cached.audio)
    assert cache.calls == STEPS and cache.skipped == 0


def test_a_loose_threshold_skips_steps_and_counts_them():
    model = random_model()
    plain = _sample(model)
    loose = FirstBlockCache(model, 0.05)
    cached = _sample(loose)
    assert loose.calls == STEPS  # one decision per guided forward: conditional and unconditional rows together
    assert 0 < loose.skipped < STEPS - 1  # the first step always runs in full, and some later ones did too
    assert not torch.equal(plain.video, cached.video)
    # skipping reuses a nearby step's residual: the sample moves, but stays near the uncached one
    error = (cached.video - plain.video).abs().mean() / plain.video.abs().mean()
    assert error < 1e-2
    everything = FirstBlockCache(model, float("inf"))
    _sample(everything)
    assert everything.skipped == STEPS - 1


def test_a_skipped_step_adds_the_last_full_steps_residual():
    """Same input twice: the first-pair residual is unchanged, so the second call skips and must give the same
    output as the full forward (the cached residual is exactly what the remaining blocks added)."""
    cfg = debug_config()
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg)
    generated = task_masks(torch.tensor([Task.T2AV, Task.A2V]), cfg.video_latent[1])
    cache = FirstBlockCache(model, 1e-3)
    with torch.no_grad():
        full = model(x, t, generated, text, mask)
        cache(x, t, generated, text, mask)
        again = cache(x, t, generated, text, mask)
        other = cache(x.map(lambda a: a + 1.0), t, generated, text, mask)
    assert cache.skipped == 1 and cache.calls == 3
    assert torch.allclose(again.video, full.video, atol=1e-5) and torch.allclose(again.audio, full.audio, atol=1e-5)
    assert not torch.allclose(other.video, full.video, atol=1e-3)  # a changed input ran every block again


def test_relative_change():
    ref = torch.tensor([1.0, -2.0, 3.0])
    assert relative_change(ref, ref) == 0.0
    assert relative_change(ref + 0.5, ref) == pytest.approx(0.25)
    assert relative_change(ref, torch.zeros(3)) == float("inf")


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        FirstBlockCache(random_model(), -0.1)
    with pytest.raises(Exception, match="generate.cache"):
        GenerateConfig(cache=-1.0)


def test_cache_follows_the_batch_shape():
    """A new batch size (another window of a pipeline) never reuses residuals of another shape."""
    cfg = debug_config()
    model = random_model(cfg)
    cache = FirstBlockCache(model, float("inf"))
    with torch.no_grad():
        for batch in (2, 1):
            x, t, text, mask = inputs(cfg, batch=batch)
            generated = AV(torch.ones(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool))
            out = cache(x, t, generated, text, mask)
            assert torch.equal(out.video, model(x, t, generated, text, mask).video)
    assert cache.skipped == 0
