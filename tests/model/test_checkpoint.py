import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tests.model.util import debug_config, inputs, random_model
from uniform_cli.diffusion.tasks import task_masks
from uniform_cli.model.checkpoint import (
    CheckpointError,
    load_opensora_weights,
    load_pixart_weights,
    load_pretrained,
    save_pretrained,
)
from uniform_cli.model.layers import timestep_embedding
from uniform_cli.types import Task

C, HEADS, DEPTH, TEXT_DIM = 64, 4, 2, 32  # the debug preset's sizes


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) * 0.1 for k, s in shapes.items()}


def _linear(name: str, out: int, inp: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}


def _pixart_block(prefix: str) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.scale_shift_table": (6, C)}
    for name, out, inp in [("attn.qkv", 3 * C, C), ("attn.proj", C, C), ("cross_attn.q_linear", C, C),
                           ("cross_attn.kv_linear", 2 * C, C), ("cross_attn.proj", C, C), ("mlp.fc1", 4 * C, C),
                           ("mlp.fc2", C, 4 * C)]:
        shapes.update(_linear(f"{prefix}.{name}", out, inp))
    return shapes


def _embedders(text_tokens: int) -> dict[str, tuple[int, ...]]:
    shapes = {"y_embedder.y_embedding": (text_tokens, TEXT_DIM)}
    for name, out, inp in [("t_embedder.mlp.0", C, 256), ("t_embedder.mlp.2", C, C), ("t_block.1", 6 * C, C),
                           ("y_embedder.y_proj.fc1", C, TEXT_DIM), ("y_embedder.y_proj.fc2", C, C)]:
        shapes.update(_linear(name, out, inp))
    return shapes


def pixart_original_shapes(cin: int = 4, cout: int = 8, text_tokens: int = 10) -> dict[str, tuple[int, ...]]:
    """PixArt-alpha/Sigma `PixArt` state dict names and shapes (patch 2, 4x4 patches, depth 2)."""
    shapes = {"x_embedder.proj.weight": (C, cin, 2, 2), "x_embedder.proj.bias": (C,), "pos_embed": (1, 16, C),
              "final_layer.scale_shift_table": (2, C), **_linear("final_layer.linear", 4 * cout, C),
              **_embedders(text_tokens)}
    for i in range(DEPTH):
        shapes.update(_pixart_block(f"blocks.{i}"))
    return shapes


def opensora_shapes(text_tokens: int = 16) -> dict[str, tuple[int, ...]]:
    """Open-Sora 1.2 `STDiT3` state dict names and shapes (qk_norm, RoPE module, fps embedder)."""
    shapes = {"x_embedder.proj.weight": (C, 4, 1, 2, 2), "x_embedder.proj.bias": (C,), "rope.freqs": (C // HEADS // 2,),
              "final_layer.scale_shift_table": (2, C), **_linear("final_layer.linear", 4 * 8, C),
              **_linear("fps_embedder.mlp.0", C, 256), **_linear("fps_embedder.mlp.2", C, C),
              **_embedders(text_tokens)}
    for kind in ("spatial_blocks", "temporal_blocks"):
        for i in range(DEPTH):
            shapes.update(_pixart_block(f"{kind}.{i}"))
            shapes[f"{kind}.{i}.attn.q_norm.weight"] = (C // HEADS,)
            shapes[f"{kind}.{i}.attn.k_norm.weight"] = (C // HEADS,)
    return shapes


# -- UniForm checkpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_then_load_is_exact(tmp_path, dtype):
    cfg = debug_config(depth=1)
    model = random_model(cfg).to(dtype)
    save_pretrained(model, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["video_latent"] == list(cfg.video_latent)
    loaded = load_pretrained(tmp_path / "ckpt")
    assert loaded.cfg == cfg
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
    x, t, text, mask = inputs(cfg)
    generated = task_masks(torch.tensor([Task.T2AV, Task.V2A]), cfg.video_latent[1])
    assert torch.equal(model(x, t, generated, text, mask).audio, loaded.eval()(x, t, generated, text, mask).audio)
    assert not list(tmp_path.glob("ckpt/.*"))  # no temporary files left behind


def test_load_pretrained_wrong_layout_lists_keys(tmp_path):
    cfg = debug_config(depth=1)
    save_pretrained(random_model(cfg), tmp_path)
    state = _random_state(opensora_shapes())
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: task_embedder.weight[\s\S]*unexpected keys: fps_embedder"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 3}))
    with pytest.raises(CheckpointError, match="unknown model settings"):
        load_pretrained(tmp_path)


def test_a_config_is_checked_against_the_weights_before_a_model_is_built(tmp_path):
    save_pretrained(random_model(debug_config(depth=1)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "depth": 100_000}))
    with pytest.raises(CheckpointError, match=r"missing keys: spatial_blocks\.1\."):  # at once, not after minutes
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    with pytest.raises(CheckpointError, match=r"does not hold the weights .* describes: .*\[64, 128\]|\[128"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("spoil", ["truncated weights", "config not json", "config of wrong types", "nan weights",
                                   "integer weights"])
def test_broken_checkpoints_are_clear_errors_naming_the_file(tmp_path, spoil):
    model = random_model(debug_config(depth=1))
    save_pretrained(model, tmp_path)
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    if spoil == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif spoil == "config not json":
        config.write_text(config.read_text()[:20])
    elif spoil == "config of wrong types":
        config.write_text(json.dumps({**json.loads(config.read_text()), "depth": "two"}))
    else:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        key = "final_layer.linear.weight"
        state[key] = state[key].fill_(float("nan")) if spoil == "nan weights" else state[key].to(torch.int32)
        save_file(state, str(weights))
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value)


# -- PixArt, original layout --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pixart_original_layout(tmp_path, suffix):
    state = _random_state(pixart_original_shapes())
    path = tmp_path / f"PixArt-XL-2-256x256{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": state}, path)  # as PixArt releases them
    else:
        save_file(state, str(path))
    model = random_model(debug_config())
    temporal_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("temporal_blocks.")}
    report = load_pixart_weights(model, path)
    sd = model.state_dict()
    assert torch.equal(sd["spatial_blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert torch.equal(sd["spatial_blocks.0.mlp.fc2.bias"], state["blocks.0.mlp.fc2.bias"])
    assert torch.equal(sd["x_embedder.proj.weight"], state["x_embedder.proj.weight"].unsqueeze(2))
    assert torch.equal(sd["final_layer.linear.weight"], state["final_layer.linear.weight"])
    null = sd["y_embedder.y_embedding"]
    assert torch.equal(null[:10], state["y_embedder.y_embedding"]) and torch.equal(null[10:], null[9:10].expand(6, -1))
    for k, v in temporal_before.items():
        assert torch.equal(sd[k], v), k
    assert "pos_embed" in report.skipped and "y_embedder.y_embedding" in report.partial
    assert any(k.startswith("temporal_blocks.") for k in report.initial)
    assert "spatial_blocks.0.attn.q_norm.weight" in report.initial  # PixArt XL/2 has no qk-norm
    assert "temporal_blocks" in report.summary()


def _pixart_attention(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """PixArt's `AttentionKVCompress` with qk_norm (no compression), written out: LayerNorm over the width on q and
    k, then heads."""
    b, n, c = x.shape
    q, k, v = (x @ state[f"{prefix}.qkv.weight"].T + state[f"{prefix}.qkv.bias"]).view(b, n, 3, c).unbind(2)
    q = F.layer_norm(q, (c,), state[f"{prefix}.q_norm.weight"], state[f"{prefix}.q_norm.bias"])
    k = F.layer_norm(k, (c,), state[f"{prefix}.k_norm.weight"], state[f"{prefix}.k_norm.bias"])
    q, k, v = (a.view(b, n, HEADS, c // HEADS).transpose(1, 2) for a in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2) / (c // HEADS) ** 0.5, dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, c)
    return out @ state[f"{prefix}.proj.weight"].T + state[f"{prefix}.proj.bias"]


def _qk_norm_pixart_shapes() -> dict[str, tuple[int, ...]]:
    shapes = pixart_original_shapes()
    for i in range(DEPTH):
        for name in ("q_norm", "k_norm"):
            shapes.update({f"blocks.{i}.attn.{name}.weight": (C,), f"blocks.{i}.attn.{name}.bias": (C,)})
    return shapes


def test_pixart_trained_with_qk_norm_imports_as_its_own_function(tmp_path):
    state = _random_state(_qk_norm_pixart_shapes())
    state = {k: (v + 1 if k.endswith("norm.weight") else v) for k, v in state.items()}
    torch.save({"state_dict": state}, tmp_path / "PixArt-qknorm.pth")
    with pytest.raises(CheckpointError, match='qk_norm = "layernorm"'):
        load_pixart_weights(random_model(debug_config()), tmp_path / "PixArt-qknorm.pth")
    model = random_model(debug_config(qk_norm="layernorm"))
    report = load_pixart_weights(model, tmp_path / "PixArt-qknorm.pth")
    assert not report.warnings and "spatial_blocks.1.attn.k_norm.bias" in report.loaded
    x = torch.randn(2, 16, C)
    with torch.no_grad():
        torch.testing.assert_close(model.spatial_blocks[1].attn(x), _pixart_attention(state, "blocks.1.attn", x))


def test_pixart_without_qk_norm_says_what_a_normalising_model_changes(tmp_path):
    save_file(_random_state(pixart_original_shapes()), str(tmp_path / "pixart.safetensors"))
    report = load_pixart_weights(random_model(debug_config()), tmp_path / "pixart.safetensors")
    assert len(report.warnings) == 1 and 'qk_norm = "none"' in report.warnings[0]
    assert "WARNING" in report.summary()
    assert not load_pixart_weights(random_model(debug_config(qk_norm="none")), tmp_path / "pixart.safetensors").warnings


def test_kv_compressed_pixart_is_a_clear_error(tmp_path):
    shapes = {**pixart_original_shapes(), "blocks.0.attn.sr.weight": (C, 1, 2, 2), "blocks.0.attn.sr.bias": (C,)}
    save_file(_random_state(shapes), str(tmp_path / "pixart.safetensors"))
    with pytest.raises(CheckpointError, match="kv_compress"):
        load_pixart_weights(random_model(debug_config()), tmp_path / "pixart.safetensors")


def test_boolean_qk_norm_of_older_configs_reads_as_a_kind(tmp_path):
    model = random_model(debug_config())
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["qk_norm"] == "rms"
    (tmp_path / "config.json").write_text(json.dumps({**config, "qk_norm": True}))
    assert load_pretrained(tmp_path).cfg.qk_norm == "rms"


def test_pixart_other_channel_counts_copy_what_fits(tmp_path):
    state = _random_state(pixart_original_shapes(cin=8, cout=16))
    save_file(state, str(tmp_path / "pixart.safetensors"))
    model = random_model(debug_config())
    report = load_pixart_weights(model, tmp_path / "pixart.safetensors")
    sd = model.state_dict()
    assert torch.equal(sd["x_embedder.proj.weight"], state["x_embedder.proj.weight"][:, :4].unsqueeze(2))
    # rows ordered (patch position, noise|variance, channel): our 4 channels of each half come from theirs
    ours = sd["final_layer.linear.weight"].view(4, 2, 4, C)
    theirs = state["final_layer.linear.weight"].view(4, 2, 8, C)
    assert torch.equal(ours, theirs[:, :, :4])
    assert {"x_embedder.proj.weight", "final_layer.linear.weight", "final_layer.linear.bias"} <= set(report.partial)


def test_pixart_wrong_layout_lists_missing_and_unexpected(tmp_path):
    save_file(_random_state(opensora_shapes()), str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.0[\s\S]*unexpected keys: .*spatial_blocks"):
        load_pixart_weights(random_model(debug_config()), tmp_path / "model.safetensors")


def test_pixart_of_another_size_is_an_error(tmp_path):
    shapes = pixart_original_shapes()
    shapes["blocks.0.attn.qkv.weight"] = (3 * C, C + 1)
    save_file(_random_state(shapes), str(tmp_path / "pixart.safetensors"))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_pixart_weights(random_model(debug_config()), tmp_path / "pixart.safetensors")


# -- PixArt, diffusers layout --------------------------------------------------------------------------------


def test_pixart_diffusers_layout_matches_diffusers_math(tmp_path):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    reference = PixArtTransformer2DModel(
        num_attention_heads=HEADS, attention_head_dim=C // HEADS, in_channels=4, out_channels=8, num_layers=DEPTH,
        cross_attention_dim=C, caption_channels=TEXT_DIM, sample_size=8, patch_size=2,
        norm_type="ada_norm_single", use_additional_conditions=False,
    )
    with torch.no_grad():  # diffusers zero-initialises some tensors; make every one carry signal
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    reference.save_pretrained(tmp_path / "pixart" / "transformer")
    model = random_model(debug_config(qk_norm="none"))
    report = load_pixart_weights(model, tmp_path / "pixart")
    assert "diffusers" in report.layout and not report.partial
    reference.eval()

    t = torch.tensor([3, 700])
    t_mod_ref, t_emb_ref = reference.adaln_single(t, {"resolution": None, "aspect_ratio": None}, batch_size=2,
                                                  hidden_dtype=torch.float32)
    t_emb = model.t_embedder(t)
    t_mod = model.t_block(t_emb)
    assert torch.allclose(t_emb, t_emb_ref, atol=1e-5) and torch.allclose(t_mod, t_mod_ref, atol=1e-5)

    text = torch.randn(2, 5, TEXT_DIM)
    y = model.y_embedder(text)
    assert torch.allclose(y, reference.caption_projection(text), atol=1e-5)

    h = torch.randn(2, 16, C)
    with torch.no_grad():
        ref = reference.transformer_blocks[1](h, encoder_hidden_states=y, timestep=t_mod)
        ours = model.spatial_blocks[1](h, y, torch.ones(2, 5, dtype=torch.bool), t_mod, t_mod,
                                       torch.zeros(2, 16, 1, dtype=torch.bool), 1)
    assert torch.allclose(ours, ref, atol=1e-4)

    with torch.no_grad():
        shift, scale = (reference.scale_shift_table[None] + t_emb_ref[:, None]).chunk(2, dim=1)
        ref = reference.proj_out(reference.norm_out(h) * (1 + scale) + shift)
        ours = model.final_layer(h, t_emb, t_emb, torch.zeros(2, 16, 1, dtype=torch.bool))
    assert torch.allclose(ours, ref, atol=1e-5)

    image = torch.randn(2, 4, 8, 8)
    ref = reference.pos_embed.proj(image).flatten(2).transpose(1, 2)
    assert torch.allclose(model.x_embedder(image[:, :, None]), ref, atol=1e-5)


# -- Open-Sora ------------------------------------------------------------------------------------------------


def test_opensora_layout(tmp_path):
    state = _random_state(opensora_shapes())
    save_file(state, str(tmp_path / "model.safetensors"))  # hpcai-tech/OpenSora-STDiT-v3 file name
    model = random_model(debug_config())
    task_before = model.task_embedder.weight.clone()
    report = load_opensora_weights(model, tmp_path, fps=17)
    sd = model.state_dict()
    for key in ("temporal_blocks.1.attn.q_norm.weight", "spatial_blocks.0.cross_attn.kv_linear.weight",
                "x_embedder.proj.weight", "final_layer.linear.bias", "y_embedder.y_embedding"):
        assert torch.equal(sd[key], state[key]), key
    assert torch.equal(model.task_embedder.weight, task_before)
    assert report.initial == ["task_embedder.weight"]
    # Open-Sora's timestep embedding: mlp(t) + fps_embedder(fps)
    t = torch.tensor([0.0, 250.0])

    def mlp(prefix, x):
        h = F.silu(x @ state[f"{prefix}.0.weight"].T + state[f"{prefix}.0.bias"])
        return h @ state[f"{prefix}.2.weight"].T + state[f"{prefix}.2.bias"]

    expected = mlp("t_embedder.mlp", timestep_embedding(t)) + mlp("fps_embedder.mlp", timestep_embedding(torch.tensor([17.0])))
    assert torch.allclose(model.t_embedder(t), expected, atol=1e-5)
    assert "fps_embedder" in report.skipped and "rope.freqs" in report.skipped


def test_opensora_missing_temporal_blocks_is_an_error(tmp_path):
    state = {k: v for k, v in _random_state(opensora_shapes()).items() if not k.startswith("temporal_blocks.1.")}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: temporal_blocks\.1\."):
        load_opensora_weights(random_model(debug_config()), tmp_path / "model.safetensors")


def test_checkpoint_folder_reads_deepspeeds_latest_tag_file(tmp_path):
    from uniform_cli.model.checkpoint import CheckpointError, checkpoint_folder

    ckpts = tmp_path / "runs" / "x" / "checkpoints"
    (ckpts / "step_000004").mkdir(parents=True)
    (ckpts / "latest").write_text("step_000004")
    assert checkpoint_folder(ckpts / "latest") == ckpts / "step_000004"
    assert checkpoint_folder(tmp_path / "runs" / "x") == ckpts / "step_000004"  # a run folder: its newest
    assert checkpoint_folder(ckpts / "step_000004") == ckpts / "step_000004"
    (ckpts / "latest").write_text("../../elsewhere")
    with pytest.raises(CheckpointError, match="does not name a checkpoint folder beside it"):
        checkpoint_folder(ckpts / "latest")
