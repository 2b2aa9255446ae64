"""The codec contract, checked for each of the four codecs (Open-Sora VAE, AudioLDM, pixel, mel).

The pipeline relies on exactly this: `latent_shape` predicts what `encode` returns, `encode(sample=False)` is
deterministic, a sampled encode is reproducible under a seeded generator, and `decode` gives the clip's shape
back. The VAEs are tiny random checkpoints loaded from their published on-disk layouts.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from tests.fixtures.codecs import make_audioldm_folder, make_opensora_vae_folder
from uniform_cli.latents.audio_vae import AudioLDMCodec
from uniform_cli.latents.codecs import AudioCodec, VideoCodec
from uniform_cli.latents.melcodec import MelCodec
from uniform_cli.latents.pixel import PixelCodec
from uniform_cli.latents.video_vae import OpenSoraVAE

FRAMES, SIZE = 17, 16  # one Open-Sora chunk, two latent pixels a side
SAMPLES = 6400  # 0.4 s at 16 kHz: ten latent rows of either audio codec


@pytest.fixture(scope="module")
def video_codecs(tmp_path_factory) -> dict:
    vae = OpenSoraVAE.from_pretrained(make_opensora_vae_folder(tmp_path_factory.mktemp("opensora")))
    return {"opensora": vae, "pixel": PixelCodec()}


@pytest.fixture(scope="module")
def audio_codecs(tmp_path_factory) -> dict:
    vae = AudioLDMCodec.from_pretrained(make_audioldm_folder(tmp_path_factory.mktemp("audioldm")))
    return {"audioldm": vae, "mel": MelCodec()}


def frames() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)


def wave() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(SAMPLES) / 16000
    return torch.stack([0.5 * torch.sin(2 * torch.pi * 440 * t), 0.2 * torch.randn(SAMPLES, generator=g)])


def signature_of(method) -> list[tuple[str, inspect._ParameterKind, object]]:
    params = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
    return [(p.name, p.kind, p.default) for p in params]


def check_protocol(codec, protocol) -> None:
    """Every method of `protocol` exists on `codec` with the same parameters (names, kinds, defaults)."""
    for name in ("latent_shape", "encode", "decode"):
        want = signature_of(getattr(protocol, name))
        got = signature_of(getattr(codec, name))
        assert got[: len(want)] == want, f"{type(codec).__name__}.{name}"
        assert all(p[2] is not inspect.Parameter.empty for p in got[len(want):]), f"{type(codec).__name__}.{name}"


@pytest.mark.parametrize("name", ["opensora", "pixel"])
def test_video_codecs_keep_the_contract(video_codecs, name):
    codec = video_codecs[name]
    check_protocol(codec, VideoCodec)
    x = frames()
    mean = codec.encode(x, sample=False)
    assert tuple(mean.shape) == (2, *codec.latent_shape(FRAMES, SIZE, SIZE))
    assert torch.equal(codec.encode(x, sample=False), mean)
    drawn = [codec.encode(x, sample=True, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(drawn[0], drawn[1])
    assert codec.decode(mean, FRAMES).shape == x.shape


@pytest.mark.parametrize("name", ["audioldm", "mel"])
def test_audio_codecs_keep_the_contract(audio_codecs, name):
    codec = audio_codecs[name]
    check_protocol(codec, AudioCodec)
    x = wave()
    mean = codec.encode(x, sample=False)
    assert tuple(mean.shape) == (2, *codec.latent_shape(SAMPLES))
    assert torch.equal(codec.encode(x, sample=False), mean)
    drawn = [codec.encode(x, sample=True, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(drawn[0], drawn[1])
    assert codec.decode(mean).shape == x.shape


def test_weight_free_codecs_have_no_posterior_to_sample(video_codecs, audio_codecs):
    x, w = frames(), wave()
    pixel, mel = video_codecs["pixel"], audio_codecs["mel"]
    assert torch.equal(pixel.encode(x), pixel.encode(x, sample=False))
    assert torch.equal(mel.encode(w), mel.encode(w, sample=False))


def test_audio_latent_shape_refuses_lengths_the_codec_cannot_encode(audio_codecs):
    for codec in audio_codecs.values():
        with pytest.raises(ValueError, match="multiple of 640"):
            codec.latent_shape(SAMPLES + 160)
