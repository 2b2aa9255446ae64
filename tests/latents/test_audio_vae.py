"""AudioLDM codec loaded from a tiny checkpoint in the published vae/ + vocoder/ layout."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.fixtures.codecs import AUDIOLDM_SCALING_FACTOR, make_audioldm_folder
from uniform_cli.config import CodecConfig
from uniform_cli.latents.audio_vae import AudioLDMCodec
from uniform_cli.latents.codecs import build_audio_codec
from uniform_cli.media.mel import log_mel_spectrogram, normalize_wave
from uniform_cli.pretrained import CodecError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_audioldm_folder(tmp_path_factory.mktemp("audioldm"))


@pytest.fixture(scope="module")
def codec(folder):
    return AudioLDMCodec.from_pretrained(folder)


@pytest.fixture(scope="module")
def wave():
    torch.manual_seed(0)
    t = torch.arange(64000) / 16000
    return torch.stack([torch.sin(2 * torch.pi * 440 * t), torch.randn(64000) * 0.2])


def test_four_second_clip_encodes_to_8_100_16_and_decodes_to_64000_samples(codec, wave):
    latent = codec.encode(wave)
    assert latent.shape == (2, 8, 100, 16)
    assert latent.dtype == torch.float32
    audio = codec.decode(latent)
    assert audio.shape == (2, 64000)
    assert audio.dtype == torch.float32
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1.0


def test_decode_trims_the_vocoders_32_surplus_samples(codec, wave):
    latent = codec.encode(wave, sample=False)
    mel = codec.decode_mel(latent)
    assert mel.shape == (2, 400, 64)
    raw = codec.vocoder(mel)  # the vocoder alone, mel laid out `B T 64`
    assert raw.shape == (2, 64032)
    torch.testing.assert_close(codec.decode(latent), raw[:, :64000])


def test_scaling_factor_is_read_from_the_checkpoint_config(tmp_path, codec, wave):
    other = AudioLDMCodec.from_pretrained(make_audioldm_folder(tmp_path / "other", scaling_factor=0.5))
    assert codec.scaling_factor == pytest.approx(AUDIOLDM_SCALING_FACTOR)
    assert other.scaling_factor == 0.5
    ours, theirs = codec.encode(wave, sample=False), other.encode(wave, sample=False)
    torch.testing.assert_close(theirs, ours * (0.5 / AUDIOLDM_SCALING_FACTOR))
    # each checkpoint divides by its own factor, so both decode their latents to the same mel
    torch.testing.assert_close(other.decode_mel(theirs), codec.decode_mel(ours), atol=1e-5, rtol=1e-4)


def test_encode_is_the_recipe_mel_then_the_vae(codec, wave):
    mel = log_mel_spectrogram(normalize_wave(wave))
    torch.testing.assert_close(codec.wave_to_mel(wave), mel)
    torch.testing.assert_close(codec.encode(wave, sample=False), codec.encode_mel(mel, sample=False))
    # AudioLDM scales every clip to peak 0.5, so loudness does not change the latent
    torch.testing.assert_close(codec.encode(3 * wave, sample=False), codec.encode(wave, sample=False), atol=1e-3, rtol=1e-3)


def test_posterior_sample_is_seeded_and_differs_from_the_mean(codec, wave):
    first = codec.encode(wave, generator=torch.Generator().manual_seed(1))
    again = codec.encode(wave, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, codec.encode(wave, sample=False))


def test_chunked_calls_give_the_same_result(folder, codec, wave):
    one_at_a_time = AudioLDMCodec.from_pretrained(folder, clips_per_call=1)
    latent = codec.encode(wave, sample=False)
    torch.testing.assert_close(one_at_a_time.encode(wave, sample=False), latent)
    torch.testing.assert_close(one_at_a_time.decode(latent), codec.decode(latent), atol=1e-6, rtol=1e-5)


def test_recipe_builds_the_codec(folder):
    codec = build_audio_codec(CodecConfig(audio="audioldm", audio_vae=str(folder)))
    assert isinstance(codec, AudioLDMCodec)


def test_missing_checkpoint_says_what_to_download(tmp_path, folder):
    with pytest.raises(CodecError, match="hf download"):
        AudioLDMCodec.from_pretrained(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    shutil.copytree(folder / "vae", partial / "vae")
    with pytest.raises(CodecError, match="lacks vocoder/"):
        AudioLDMCodec.from_pretrained(partial)
    with pytest.raises(CodecError, match="hf download uniform-tests/no-such-audioldm"):
        AudioLDMCodec.from_pretrained("uniform-tests/no-such-audioldm")


def test_mismatched_vocoder_is_refused(tmp_path, folder):
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    bad = tmp_path / "bad"
    shutil.copytree(folder / "vae", bad / "vae")
    SpeechT5HifiGan(SpeechT5HifiGanConfig(model_in_dim=80, upsample_initial_channel=32)).save_pretrained(bad / "vocoder")
    with pytest.raises(CodecError, match="80 mel bins"):
        AudioLDMCodec.from_pretrained(bad)


def test_bad_shapes_are_clear_errors(codec):
    with pytest.raises(ValueError, match="multiple of 640"):
        codec.encode(torch.zeros(1, 64100))
    with pytest.raises(ValueError, match="B S"):
        codec.encode(torch.zeros(64000))
    with pytest.raises(ValueError, match="latent"):
        codec.decode(torch.zeros(1, 4, 100, 16))
