import math

import pytest
import torch

from tests.model.util import debug_config, inputs, random_model
from uniform_cli.config import PRESETS
from uniform_cli.model.layers import apply_rope, rope_cos_sin
from uniform_cli.model.uniform import build_model, flops_per_sample, num_parameters, num_tokens
from uniform_cli.types import AV, Task

TASKS = torch.tensor([Task.T2AV, Task.A2V])


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
    out = model(x, t, torch.tensor([Task.A2V, Task.V2A]), text, mask, drop_text=torch.tensor([True, False]))
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
    tasks = torch.full((2,), int(task))
    out, out_changed = model(x, t, tasks, text, mask), model(changed, t, tasks, text, mask)
    assert not torch.allclose(getattr(out, generated), getattr(out_changed, generated), atol=1e-4)


def test_given_positions_are_modulated_with_t_zero():
    """A given modality's tokens see t = 0 whatever t is; the generated ones see t."""
    cfg = debug_config(depth=1)
    model = random_model(cfg)
    with torch.no_grad():  # isolate the per-token modulation: no attention between tokens
        for block in [*model.spatial_blocks, *model.temporal_blocks]:
            block.attn.proj.weight.zero_()
            block.cross_attn.proj.weight.zero_()
    x, _, text, mask = inputs(cfg, batch=1)
    tasks = torch.tensor([Task.V2A])
    early, late = model(x, torch.tensor([10]), tasks, text, mask), model(x, torch.tensor([900]), tasks, text, mask)
    assert torch.allclose(early.video, late.video, atol=1e-6)
    assert not torch.allclose(early.audio, late.audio, atol=1e-4)


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
