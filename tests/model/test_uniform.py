import math

import pytest
import torch

from tests.model.util import debug_config, inputs, random_model
from uniform_cli.config import PRESETS, ConfigError, DiffusionConfig
from uniform_cli.diffusion.guidance import conditional_model_fn
from uniform_cli.diffusion.samplers import sample_ddim
from uniform_cli.diffusion.schedule import make_schedule
from uniform_cli.diffusion.tasks import task_masks, time_mask
from uniform_cli.model.layers import apply_rope, rope_cos_sin
from uniform_cli.model.uniform import build_model, flops_per_sample, num_parameters, num_tokens
from uniform_cli.types import AV, Task

FRAMES = PRESETS["debug"].video_latent[1]  # 4 latent frames; the audio has 5 rows a frame
TASKS = task_masks(torch.tensor([Task.T2AV, Task.A2V]), FRAMES)


def _frames(*rows: str) -> torch.Tensor:
    """Masks `[B, F]` written as strings, one a sample: "g" generated, "." given."""
    return torch.tensor([[c == "g" for c in row] for row in rows])


EXTEND = AV(_frames("..gg", "..gg"), _frames("..gg", "..gg"))  # both modalities given in frames 0 and 1
I2AV = AV(_frames(".ggg", ".ggg"), _frames("gggg", "gggg"))  # the first video frame given


def test_output_shapes_noise_then_variance():
    cfg = debug_config()
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg)
    out = model(x, t, TASKS, text, mask)
    assert out.video.shape == (2, 8, *cfg.video_latent[1:]) and out.audio.shape == (2, 16, *cfg.audio_latent[1:])
    assert out.video.dtype == torch.float32 and torch.isfinite(out.video).all()
    plain = random_model(debug_config(pred_sigma=False))
    out = plain(x, t, TASKS, text, mask)
    assert out.video.shape[1] == 4 and out.audio.shape[1] == 8


def test_same_seed_same_model_and_output():
    cfg = debug_config()
    x, t, text, mask = inputs(cfg)
    a, b = random_model(cfg, seed=3), random_model(cfg, seed=3)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    out_a, out_b = a(x, t, TASKS, text, mask), b(x, t, TASKS, text, mask)
    assert torch.equal(out_a.video, out_b.video) and torch.equal(out_a.audio, out_b.audio)
    assert not torch.equal(random_model(cfg, seed=4)(x, t, TASKS, text, mask).video, out_a.video)


def test_backward_reaches_every_trained_parameter():
    cfg = debug_config()
    model = random_model(cfg).train()
    x, t, text, mask = inputs(cfg)
    out = model(x, t, task_masks(torch.tensor([Task.A2V, Task.V2A]), FRAMES), text, mask,
                drop_text=torch.tensor([True, False]))
    (out.video.square().mean() + out.audio.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "task_embedder.weight":  # only the rows of the tasks in the batch
            assert p.grad.any(), name


def test_state_dict_round_trip():
    cfg = debug_config()
    a = random_model(cfg, seed=5)
    b = build_model(cfg)
    b.load_state_dict(a.state_dict())
    x, t, text, mask = inputs(cfg)
    assert torch.equal(a(x, t, TASKS, text, mask).audio, b.eval()(x, t, TASKS, text, mask).audio)


def test_fresh_temporal_blocks_are_identities():
    cfg = debug_config()
    torch.manual_seed(0)
    model = build_model(cfg)
    n, d = num_tokens(cfg), cfg.hidden_size
    h = torch.randn(2, n, d)
    y, y_mask = torch.randn(2, 5, d), torch.ones(2, 5, dtype=torch.bool)
    mod = torch.randn(2, 6 * d)
    given = torch.zeros(2, n, 1, dtype=torch.bool)
    rope = rope_cos_sin(cfg.video_latent[1], d // cfg.num_heads)
    out = model.temporal_blocks[0](h, y, y_mask, mod, mod, given, cfg.video_latent[1], rope)
    assert torch.allclose(out, h, atol=1e-6)


def test_rope_scores_depend_on_relative_position_only():
    cos, sin = rope_cos_sin(12, 8)
    q, k = torch.randn(8), torch.randn(8)
    rq, rk = apply_rope(q.expand(12, 8), cos, sin), apply_rope(k.expand(12, 8), cos, sin)
    scores = rq @ rk.T
    assert torch.allclose(scores[3, 1], scores[10, 8], atol=1e-5)
    assert torch.allclose(scores.diagonal(), (q @ k).expand(12), atol=1e-5)
    assert not torch.allclose(scores[3, 1], scores[3, 2])


@pytest.mark.parametrize("task, given, generated", [(Task.A2V, "audio", "video"), (Task.V2A, "video", "audio")])
def test_given_modality_steers_generated_positions(task, given, generated):
    cfg = debug_config()
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg)
    changed = AV(**{**vars(x), given: getattr(x, given) + 1.0})
    masks = task_masks(torch.full((2,), int(task)), FRAMES)
    out, out_changed = model(x, t, masks, text, mask), model(changed, t, masks, text, mask)
    assert not torch.allclose(getattr(out, generated), getattr(out_changed, generated), atol=1e-4)


def _attention_free(model):
    """Isolate the per-token modulation: no attention between tokens, nor to the text."""
    with torch.no_grad():
        for block in [*model.spatial_blocks, *model.temporal_blocks]:
            block.attn.proj.weight.zero_()
            block.cross_attn.proj.weight.zero_()
    return model


def test_given_positions_are_modulated_with_t_zero():
    """A given modality's tokens see t = 0 whatever t is; the generated ones see t."""
    cfg = debug_config(depth=1)
    model = _attention_free(random_model(cfg))
    x, _, text, mask = inputs(cfg, batch=1)
    tasks = task_masks(torch.tensor([Task.V2A]), FRAMES)
    early, late = model(x, torch.tensor([10]), tasks, text, mask), model(x, torch.tensor([900]), tasks, text, mask)
    assert torch.allclose(early.video, late.video, atol=1e-6)
    assert not torch.allclose(early.audio, late.audio, atol=1e-4)


def _split(out: AV, generated: AV) -> tuple[AV, AV]:
    """The values of `out` at given positions, and at generated ones (flattened)."""
    def at(keep_generated: bool) -> AV:
        return out.map(lambda o, m: o[time_mask(m if keep_generated else ~m, o).expand_as(o)], generated)

    return at(False), at(True)


def test_given_frames_of_a_span_are_modulated_with_t_zero_frame_by_frame():
    cfg = debug_config(depth=1)
    model = _attention_free(random_model(cfg))
    x, _, text, mask = inputs(cfg)
    early, late = (model(x, torch.tensor([s, s]), EXTEND, text, mask) for s in (10, 900))
    (early_given, early_generated), (late_given, late_generated) = _split(early, EXTEND), _split(late, EXTEND)
    for m in ("video", "audio"):
        assert torch.allclose(getattr(early_given, m), getattr(late_given, m), atol=1e-6), m
        assert not torch.allclose(getattr(early_generated, m), getattr(late_generated, m), atol=1e-4), m


@pytest.mark.parametrize("job", ["extend", "i2av"])
def test_given_frames_of_a_span_steer_the_generated_frames(job):
    cfg = debug_config()
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg)
    generated = {"extend": EXTEND, "i2av": I2AV}[job]
    changed = x.map(lambda a, m: torch.where(time_mask(m, a), a, a + 1.0), generated)  # only the given frames
    out, out_changed = model(x, t, generated, text, mask), model(changed, t, generated, text, mask)
    _, at_generated = _split(out, generated)
    _, at_generated_changed = _split(out_changed, generated)
    for m in ("video", "audio"):
        assert not torch.allclose(getattr(at_generated, m), getattr(at_generated_changed, m), atol=1e-4), m


def test_a_span_job_takes_the_task_token_of_what_it_generates():
    """A video-only retake is an A2V job to the model, an extend a T2AV one: only that task token row counts."""
    cfg = debug_config()
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg)
    retake_video = AV(_frames(".gg.", ".gg."), _frames("....", "...."))
    before = [model(x, t, g, text, mask) for g in (retake_video, EXTEND)]
    with torch.no_grad():
        model.task_embedder.weight[Task.A2V] += 1.0
    after = [model(x, t, g, text, mask) for g in (retake_video, EXTEND)]
    assert not torch.allclose(before[0].video, after[0].video, atol=1e-4)
    assert torch.equal(before[1].video, after[1].video) and torch.equal(before[1].audio, after[1].audio)


def test_sampling_a_span_keeps_the_given_frames_and_follows_them():
    """An extend job sampled with the model: the prefix comes back bit-exact, and another prefix gives
    another continuation from the same noise."""
    cfg = debug_config()
    model = random_model(cfg)
    x, _, text, mask = inputs(cfg)
    other = x.map(lambda a: torch.randn(a.shape, generator=torch.Generator().manual_seed(11)))
    noise = x.map(lambda a: torch.randn(a.shape, generator=torch.Generator().manual_seed(12)))
    schedule = make_schedule(DiffusionConfig())
    model_fn = conditional_model_fn(model, EXTEND, text, mask)
    samples = [sample_ddim(model_fn, schedule, noise, given, EXTEND, 3) for given in (x, other)]
    for sample, given in zip(samples, (x, other)):
        given_part, _ = _split(sample, EXTEND)
        clean, _ = _split(given, EXTEND)
        assert torch.equal(given_part.video, clean.video) and torch.equal(given_part.audio, clean.audio)
    (_, first), (_, second) = _split(samples[0], EXTEND), _split(samples[1], EXTEND)
    assert not torch.allclose(first.video, second.video, atol=1e-4)
    assert not torch.allclose(first.audio, second.audio, atol=1e-4)


def test_text_padding_is_ignored():
    cfg = debug_config()
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg, text_len=5)
    mask[1, 3:] = False
    out = model(x, t, TASKS, text, mask)
    garbage = torch.randn(2, 4, cfg.text_dim) * 10
    text_padded = torch.cat([text.clone(), garbage], dim=1)
    text_padded[1, 3:5] = torch.randn(2, cfg.text_dim)
    mask_padded = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    out_padded = model(x, t, TASKS, text_padded, mask_padded)
    assert torch.allclose(out.video, out_padded.video, atol=1e-5)
    assert torch.allclose(out.audio, out_padded.audio, atol=1e-5)
    # and real tokens do matter
    text_other = text.clone()
    text_other[1, 0] += 1
    assert not torch.allclose(model(x, t, TASKS, text_other, mask).video[1], out.video[1], atol=1e-5)


def test_text_without_tokens_gives_finite_output():
    cfg = debug_config()
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg)
    mask[0] = False
    out = model(x, t, TASKS, text, mask)
    assert torch.isfinite(out.video).all() and torch.isfinite(out.audio).all()


def test_dropped_text_ignores_the_caption():
    cfg = debug_config()
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg)
    drop = torch.tensor([True, False])
    out = model(x, t, TASKS, text, mask, drop_text=drop)
    other = model(x, t, TASKS, torch.randn_like(text), mask, drop_text=drop)
    assert torch.equal(out.video[0], other.video[0])
    assert not torch.allclose(out.video[1], other.video[1], atol=1e-5)
    assert not torch.allclose(out.video[0], model(x, t, TASKS, text, mask).video[0], atol=1e-5)


def test_too_long_text_is_an_error():
    cfg = debug_config()
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg, text_len=cfg.text_len + 1)
    with pytest.raises(ValueError, match="text_len"):
        model(x, t, TASKS, text, mask)


def test_grad_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        cfg = debug_config(depth=1, grad_checkpointing=checkpointing)
        model = random_model(cfg).train()
        x, t, text, mask = inputs(cfg)
        out = model(x, t, TASKS, text, mask, drop_text=torch.tensor([True, False]))
        (out.video.square().mean() + out.audio.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6, rtol=1e-5), name


def _gradients_and_block_calls(cfg) -> tuple[dict, list[int]]:
    """Gradients of one backward, and how often each spatial block ran (a recomputed block runs twice)."""
    model = random_model(cfg).train()
    calls = [0] * cfg.depth
    for i, block in enumerate(model.spatial_blocks):  # counted in forward itself: recomputation skips hooks
        def counted(*args, i=i, forward=block.forward):
            calls[i] += 1
            return forward(*args)

        block.forward = counted
    x, t, text, mask = inputs(cfg)
    out = model(x, t, TASKS, text, mask, drop_text=torch.tensor([True, False]))
    (out.video.square().mean() + out.audio.square().mean()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, calls


def test_selective_checkpointing_recomputes_the_first_blocks_only_with_the_same_gradients():
    plain, plain_calls = _gradients_and_block_calls(debug_config(depth=3))
    some, some_calls = _gradients_and_block_calls(debug_config(depth=3, checkpoint_blocks=2))
    every, every_calls = _gradients_and_block_calls(debug_config(depth=3, grad_checkpointing=True))
    assert plain_calls == [1, 1, 1] and some_calls == [2, 2, 1] and every_calls == [2, 2, 2]
    for name, g in plain.items():
        assert torch.allclose(g, some[name], atol=1e-6, rtol=1e-5), name
        assert torch.allclose(g, every[name], atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("changes", [dict(checkpoint_blocks=3), dict(checkpoint_blocks=-1),
                                     dict(checkpoint_blocks=1, grad_checkpointing=True)])
def test_bad_checkpoint_blocks_are_config_errors(changes):
    with pytest.raises(ConfigError, match="checkpoint_blocks"):
        debug_config(**changes)


def test_paper_model_size():
    cfg = PRESETS["XL/2"]
    with torch.device("meta"):
        model = build_model(cfg)
    params = num_parameters(model)
    assert 1.1e9 <= params <= 1.25e9
    assert num_tokens(cfg) == 6400
    # about 2 FLOPs per parameter per token, plus attention, less the text keys/values (300 tokens, not 6,400)
    ratio = flops_per_sample(cfg) / (2 * params * num_tokens(cfg))
    assert 0.85 < ratio < 1.05
    assert len(model.spatial_blocks) == len(model.temporal_blocks) == 28
    assert model.spatial_blocks[0].attn.qkv.weight.shape == (3 * 1152, 1152)


def test_flops_grow_with_text_length():
    cfg = debug_config()
    assert flops_per_sample(cfg, text_len=1) < flops_per_sample(cfg, text_len=cfg.text_len)
    assert math.isclose(flops_per_sample(cfg), flops_per_sample(cfg, text_len=cfg.text_len))


def test_null_text_follows_the_prompt_mask_when_asked():
    """"prompt" (Open-Sora's): a dropped caption attends to the null text's tokens under the prompt's own mask (all
    of them for a prompt without tokens); "full" (the default): to all of them, whatever the prompt's length."""
    cfg = debug_config()
    text = torch.randn(3, 5, cfg.text_dim)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    drop = torch.tensor([True, True, False])
    padded = torch.nn.functional.pad(mask, (0, cfg.text_len - 5), value=False)
    _, full = random_model(cfg).encode_text(text, mask, drop)
    assert full[:2].all() and torch.equal(full[2], padded[2])
    model = random_model(debug_config(null_text_mask="prompt"))
    y, prompt = model.encode_text(text, mask, drop)
    assert torch.equal(prompt[:2], padded[:2])
    y_other, _ = model.encode_text(torch.randn_like(text), mask, drop)
    assert torch.equal(y[:2], y_other[:2])  # the caption's values still do not reach a dropped row
    _, empty = model.encode_text(text, mask, torch.tensor([False, False, True]))
    assert empty[2].all()
