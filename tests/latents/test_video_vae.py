"""Open-Sora VAE v1.2: published layout round trip, clip shapes, chunk causality and checkpoint errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fixtures.codecs import OPENSORA_TINY_SPATIAL, OPENSORA_TINY_TEMPORAL, make_opensora_vae_folder
from uniform_cli.config import CodecConfig
from uniform_cli.latents.codecs import build_video_codec
from uniform_cli.latents.temporal_vae import TemporalVAEConfig
from uniform_cli.latents.video_vae import SDXL_VAE_CONFIG, SHIFT, OpenSoraVAE, chunk_lengths, latent_frames
from uniform_cli.pretrained import CodecError

PUBLISHED_BYTES = 1_573_430_548  # size of hpcai-tech/OpenSora-VAE-v1.2 model.safetensors (float32)


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_opensora_vae_folder(tmp_path_factory.mktemp("opensora_vae"))


@pytest.fixture(scope="module")
def vae(vae_folder: Path) -> OpenSoraVAE:
    return OpenSoraVAE.from_pretrained(vae_folder)


def random_frames(num_frames: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, num_frames, size, size, 3), dtype=torch.uint8, generator=g)


def test_latent_frame_counts() -> None:
    assert latent_frames(68) == 20
    assert latent_frames(17) == 5
    assert latent_frames(18) == 6  # a 1-frame tail chunk is padded to 4 frames -> 1 latent frame
    assert latent_frames(21) == 5 + 1
    assert latent_frames(68, micro_frame_size=None) == 17
    assert chunk_lengths(40) == [17, 17, 6]


def test_published_layout_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    original = OpenSoraVAE(
        spatial_config={**SDXL_VAE_CONFIG, **OPENSORA_TINY_SPATIAL},
        temporal_config=TemporalVAEConfig(**OPENSORA_TINY_TEMPORAL),
    ).eval()
    original.save_pretrained(tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "VideoAutoencoderPipeline"
    assert config["micro_frame_size"] == 17
    assert config["shift"] == pytest.approx(list(SHIFT))
    keys = load_file(tmp_path / "model.safetensors").keys()
    for prefix in (
        "spatial_vae.module.encoder.",
        "spatial_vae.module.decoder.",
        "spatial_vae.module.quant_conv.",
        "spatial_vae.module.post_quant_conv.",
        "temporal_vae.encoder.",
        "temporal_vae.decoder.",
    ):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert {"temporal_vae.quant_conv.conv.weight", "temporal_vae.post_quant_conv.conv.weight", "scale", "shift"} <= keys

    reloaded = build_video_codec(CodecConfig(video_vae=str(tmp_path)))
    assert isinstance(reloaded, OpenSoraVAE)
    frames = random_frames(20, 32)
    mean = original.encode(frames, sample=False)
    torch.testing.assert_close(reloaded.encode(frames, sample=False), mean, rtol=0, atol=0)
    sampled = [m.encode(frames, generator=torch.Generator().manual_seed(3)) for m in (original, reloaded)]
    torch.testing.assert_close(sampled[0], sampled[1], rtol=0, atol=0)
    assert not torch.equal(sampled[0], mean)  # sampling is the default, as upstream
    assert torch.equal(reloaded.decode(mean, 20), original.decode(mean, 20))


def test_clip_shapes_at_paper_size(vae: OpenSoraVAE) -> None:
    frames = random_frames(68, 256)
    latents = vae.encode(frames)
    assert latents.shape == (1, 4, 20, 32, 32)
    assert vae.latent_shape(68, 256, 256) == (4, 20, 32, 32)
    video = vae.decode(latents, num_frames=68)
    assert video.dtype == torch.uint8
    assert video.shape == (1, 68, 256, 256, 3)


def test_tail_chunk_shapes(vae: OpenSoraVAE) -> None:
    frames = torch.cat([random_frames(20, 16, seed=1)] * 2)  # B=2, chunks of 17 + 3 frames
    latents = vae.encode(frames, sample=False)
    assert latents.shape == (2, 4, 6, 2, 2)
    # The same clip twice in a batch: equal up to float rounding (batched kernels may sum in another order).
    torch.testing.assert_close(latents[0], latents[1], rtol=1e-5, atol=1e-6)
    assert vae.decode(latents, num_frames=20).shape == (2, 20, 16, 16, 3)


def test_first_chunk_latents_ignore_later_chunks(vae: OpenSoraVAE) -> None:
    frames = random_frames(34, 16, seed=2)
    base = vae.encode(frames, sample=False)

    later = frames.clone()
    later[:, 17:] = 255 - later[:, 17:]  # change only the second chunk
    changed = vae.encode(later, sample=False)
    assert torch.equal(changed[:, :, :5], base[:, :, :5])
    assert not torch.allclose(changed[:, :, 5:], base[:, :, 5:])

    first = frames.clone()
    first[:, 16] = 255 - first[:, 16]  # change only the first chunk's last frame
    changed = vae.encode(first, sample=False)
    assert not torch.allclose(changed[:, :, :5], base[:, :, :5])
    assert torch.equal(changed[:, :, 5:], base[:, :, 5:])


def test_decode_of_first_chunk_ignores_later_latents(vae: OpenSoraVAE) -> None:
    latents = torch.randn(1, 4, 10, 2, 2, generator=torch.Generator().manual_seed(4))
    other = latents.clone()
    other[:, :, 5:] += 1.0
    a, b = vae.decode(latents, 34), vae.decode(other, 34)
    assert torch.equal(a[:, :17], b[:, :17])
    assert not torch.equal(a[:, 17:], b[:, 17:])


def test_bad_input_is_a_clear_error(vae: OpenSoraVAE) -> None:
    with pytest.raises(ValueError, match="uint8 B F H W 3"):
        vae.encode(torch.zeros(1, 17, 16, 16, 3))
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(torch.zeros(1, 17, 20, 16, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="68 frames need 20 latent frames, got 19"):
        vae.decode(torch.zeros(1, 4, 19, 2, 2), num_frames=68)


def test_wrong_keys_are_listed(tmp_path: Path, vae_folder: Path) -> None:
    state = load_file(vae_folder / "model.safetensors")
    state["temporal_vae.encoder.conv_in.weight"] = state.pop("temporal_vae.encoder.conv_in.conv.weight")
    del state["shift"]
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((vae_folder / "config.json").read_text())
    with pytest.raises(CodecError) as err:
        OpenSoraVAE.from_pretrained(tmp_path)
    message = str(err.value)
    assert "2 missing keys" in message and "temporal_vae.encoder.conv_in.conv.weight" in message and "shift" in message
    assert "1 unexpected keys: temporal_vae.encoder.conv_in.weight" in message


def test_widths_that_do_not_match_the_weights(tmp_path: Path, vae_folder: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes((vae_folder / "model.safetensors").read_bytes())
    config = json.loads((vae_folder / "config.json").read_text())
    config["uniform"]["temporal"]["filters"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CodecError, match="wrong shape.*temporal_vae.encoder.conv_in.conv.weight"):
        OpenSoraVAE.from_pretrained(tmp_path)


def test_missing_checkpoint_says_what_to_download(tmp_path: Path) -> None:
    with pytest.raises(CodecError, match=r"hf download hpcai-tech/OpenSora-VAE-v1.2 config.json model.safetensors"):
        OpenSoraVAE.from_pretrained("hpcai-tech/OpenSora-VAE-v1.2", cache_dir=tmp_path)
    with pytest.raises(CodecError, match="does not exist"):
        OpenSoraVAE.from_pretrained(str(tmp_path / "no" / "such" / "folder"))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    with pytest.raises(CodecError, match="lacks model.safetensors"):
        OpenSoraVAE.from_pretrained(tmp_path / "partial")


def test_hub_id_loads_from_the_local_cache(tmp_path: Path, vae_folder: Path, vae: OpenSoraVAE) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--hpcai-tech--OpenSora-VAE-v1.2"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((vae_folder / name).read_bytes())
    cached = OpenSoraVAE.from_pretrained("hpcai-tech/OpenSora-VAE-v1.2", cache_dir=tmp_path)
    assert cached.name_or_path == "hpcai-tech/OpenSora-VAE-v1.2"
    assert cached.checkpoint_dir is not None and cached.checkpoint_dir.name == commit
    frames = random_frames(17, 16)
    assert torch.equal(cached.encode(frames, sample=False), vae.encode(frames, sample=False))


def test_bf16_encode_decode(vae_folder: Path) -> None:
    vae = OpenSoraVAE.from_pretrained(vae_folder, dtype=torch.bfloat16, frames_per_call=5)
    assert next(vae.parameters()).dtype == torch.bfloat16
    latents = vae.encode(random_frames(17, 16))
    assert latents.shape == (1, 4, 5, 2, 2) and latents.dtype == torch.bfloat16
    assert vae.decode(latents, 17).shape == (1, 17, 16, 16, 3)


def test_real_size_architecture_matches_the_published_file() -> None:
    """Our modules at the published widths give exactly upstream's safetensors file size (names, shapes, bytes)."""
    with torch.device("meta"):
        vae = OpenSoraVAE()
    state = vae.state_dict()
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(state):  # safetensors lays tensors out by name; offsets' digits count in the header
        size = state[name].numel() * 4
        header[name] = {"dtype": "F32", "shape": list(state[name].shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_len = len(json.dumps(header, separators=(",", ":")))
    assert 8 + header_len + (-header_len) % 8 + offset == PUBLISHED_BYTES
    assert vae.latent_shape(68, 256, 256) == (4, 20, 32, 32)
    assert vae.temporal_config == TemporalVAEConfig()
