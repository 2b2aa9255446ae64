"""The weight-free demo codecs ("pixel" video, "mel" audio, "hash" text): shapes, round trips, recipe fit."""

from pathlib import Path

import numpy as np
import pytest
import torch

from uniform_cli.config import PRESETS, CodecConfig, load_recipe
from uniform_cli.demo.world import WorldSpec, render_scene
from uniform_cli.latents.codecs import build_audio_codec, build_video_codec
from uniform_cli.latents.melcodec import MEL_SCALE, MEL_SHIFT, MelCodec
from uniform_cli.latents.pixel import PixelCodec
from uniform_cli.latents.text import HashTextEncoder, TextEncoder
from uniform_cli.media import mel as melspec
from uniform_cli.model.packing import AudibleFrameLayout

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo.toml"
CLIP = WorldSpec(width=64, height=64, fps=17.0, sample_rate=16000, seconds=4.0, start=0.0, clip_seconds=4.0)


def test_recipe_selects_the_codecs_and_their_latents_fit_the_demo_preset():
    recipe = load_recipe(RECIPE)
    video, audio = build_video_codec(recipe.codec), build_audio_codec(recipe.codec)
    assert isinstance(video, PixelCodec) and isinstance(audio, MelCodec)
    d = recipe.data
    assert video.latent_shape(d.frames, d.size, d.size) == recipe.model.video_latent == (24, 20, 4, 4)
    assert audio.latent_shape(d.samples) == recipe.model.audio_latent == (16, 100, 4)
    assert recipe.model == PRESETS["demo"]
    layout = AudibleFrameLayout.from_config(recipe.model)  # raises PackingError when the shapes do not fit
    # per latent frame: 2 x 2 video tokens | a 5-row audio strip padded to 6 wide -> 3 x 2 | task 1 x 2
    assert layout.num_tokens == 20 * 2 * (2 + 3 + 1)
    text = TextEncoder.from_pretrained(recipe.codec.text_encoder, max_length=recipe.model.text_len)
    assert text.dim == recipe.model.text_dim


def test_unknown_codec_names_list_the_choices():
    from uniform_cli.pretrained import CodecError

    with pytest.raises(CodecError, match="'opensora' or 'pixel'"):
        build_video_codec(CodecConfig(video="pixels"))
    with pytest.raises(CodecError, match="'audioldm' or 'mel'"):
        build_audio_codec(CodecConfig(audio="mels"))


def test_pixel_codec_shapes_and_exact_frame_count():
    codec = PixelCodec()
    frames = torch.randint(0, 256, (2, 68, 64, 64, 3), dtype=torch.uint8)
    z = codec.encode(frames)
    assert z.shape == (2, 24, 20, 8, 8) and z.dtype == torch.float32
    assert z.min() >= -2 and z.max() <= 2  # pixels in [-1, 1] over PIXEL_SCALE 0.5
    out = codec.decode(z, 68)
    assert out.shape == frames.shape and out.dtype == torch.uint8
    assert codec.latent_shape(68, 256, 256) == (24, 20, 32, 32)
    assert codec.latent_shape(17, 64, 96) == (24, 5, 8, 12)
    with pytest.raises(ValueError, match="multiples of 8"):
        codec.encode(torch.zeros(1, 68, 60, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="cannot decode to 50 frames"):
        codec.decode(z, 50)


def test_pixel_codec_keeps_flat_colour_exactly_and_world_clips_closely():
    codec = PixelCodec()
    flat = torch.zeros(1, 68, 64, 64, 3, dtype=torch.uint8)
    flat[..., 0], flat[..., 1], flat[..., 2] = 200, 30, 90
    assert (codec.decode(codec.encode(flat), 68).int() - flat.int()).abs().max() <= 1
    for kind in ("ball", "block"):
        frames = torch.from_numpy(render_scene(kind, 4, CLIP).frames)[None]
        rec = codec.decode(codec.encode(frames), 68)
        psnr = 10 * np.log10(255**2 / ((rec.float() - frames.float()) ** 2).mean().item())
        assert psnr > 20, f"{kind}: {psnr:.1f} dB"
        # the object is where it was: the most colourful 8 x 8 block of the middle frame matches
        mid = 34
        def argmax_block(x):
            rgb = x[0, mid].float()
            saturation = rgb.amax(-1) - rgb.amin(-1)
            pooled = torch.nn.functional.avg_pool2d(saturation[None, None], 8)[0, 0]
            return divmod(int(pooled.argmax()), pooled.shape[1])
        assert argmax_block(rec) == argmax_block(frames)


def test_pixel_codec_keeps_a_flash_sharp_in_time():
    # a lamp switching on at frame 30: sub-frames keep the step within a frame or two (a 0.2 s average per
    # latent frame would ramp it over 4 or more frames, too slow for AV-Align's one-frame tolerance)
    codec = PixelCodec()
    frames = torch.zeros(1, 68, 32, 32, 3, dtype=torch.uint8)
    frames[:, 30:] = 255
    brightness = codec.decode(codec.encode(frames), 68)[0].float().mean(dim=(1, 2, 3)) / 255
    ramp = torch.nonzero((brightness > 0.1) & (brightness < 0.9)).flatten().tolist()
    assert len(ramp) <= 2 and all(28 <= i <= 31 for i in ramp), brightness[26:34]
    assert brightness[:27].max() < 0.02 and brightness[32:].min() > 0.98


def test_mel_codec_shapes_and_exact_sample_count():
    codec = MelCodec()
    wave = torch.randn(2, 64000) * 0.1
    z = codec.encode(wave)
    assert z.shape == (2, 16, 100, 4) and torch.isfinite(z).all()
    out = codec.decode(z)
    assert out.shape == (2, 64000) and out.dtype == torch.float32 and out.abs().max() <= 1.0
    with pytest.raises(ValueError, match="multiple of 640"):
        codec.encode(torch.zeros(1, 64001))
    # a generated latent far outside the data range still decodes to finite sound
    assert torch.isfinite(codec.decode(torch.randn(1, 16, 100, 4) * 200)).all()


def test_mel_codec_latent_is_the_pooled_log_mel():
    codec = MelCodec()
    wave = torch.from_numpy(render_scene("whistle", 1, CLIP).wave)[None]
    z = codec.encode(wave)
    log_mel = melspec.log_mel_spectrogram(melspec.normalize_wave(wave))[0]  # 400 64
    row, channel, bin_ = 37, 7, 1  # latent row 37 = mel frames 148..151; channel 7 bin 1 = mel bin 29
    expected = (log_mel[148:152, 29].mean() - MEL_SHIFT) / MEL_SCALE
    assert torch.isclose(z[0, channel, row, bin_], expected, atol=1e-5)


def test_mel_codec_round_trip_keeps_pitch_and_timing():
    codec = MelCodec()
    t = torch.arange(64000) / 16000
    tone = 0.4 * torch.sin(2 * torch.pi * 880.0 * t) * (t > 1.0) * (t < 3.0)  # 880 Hz from 1 s to 3 s
    out = codec.decode(codec.encode(tone[None]))[0]
    spectrum = torch.fft.rfft(out[24000:40000]).abs()
    assert abs(spectrum.argmax().item() * 16000 / 16000 - 880.0) < 15.0  # 1 Hz bins: the loudest is 880 Hz
    envelope = out.abs().unfold(0, 800, 800).amax(1)  # 50 ms blocks
    loud = torch.nonzero(envelope > 0.5 * envelope.max()).flatten()
    assert abs(loud.min().item() * 0.05 - 1.0) <= 0.1 and abs(loud.max().item() * 0.05 + 0.05 - 3.0) <= 0.1
    # on world clips the decoded sound's log-mel follows the original's; the level may shift as a whole
    # (both are peak-normalised, and Griffin-Lim spreads a click's peak), so the shift is taken out first
    for kind in ("ball", "whistle"):
        wave = torch.from_numpy(render_scene(kind, 2, CLIP).wave)[None]
        before = codec.wave_to_mel(wave)
        after = codec.wave_to_mel(codec.decode(codec.encode(wave)))
        diff = before - after
        assert (diff - diff.mean()).abs().mean() < 0.4, kind
        assert torch.corrcoef(torch.stack([before.flatten(), after.flatten()]))[0, 1] > 0.9, kind


def test_hash_text_encoder_is_deterministic_per_word():
    enc = TextEncoder.from_pretrained("hash:16", max_length=4)
    assert isinstance(enc, HashTextEncoder) and enc.dim == 16
    emb, mask = enc(["Bouncing ball", "a ball, bouncing!", "one two three four five six"])
    assert emb.shape == (3, 4, 16) and mask.tolist()[0] == [True, True, False, False]
    assert mask[2].all()  # cut at max_length words
    torch.testing.assert_close(emb[0, 0], emb[1, 2])  # "bouncing" is the same vector wherever it stands
    torch.testing.assert_close(emb[0, 1], emb[1, 1])  # "ball"
    assert (emb[0, 2:] == 0).all()
    assert not torch.allclose(emb[0, 0], emb[0, 1])
    again, _ = TextEncoder.from_pretrained("hash:16", max_length=4)(["bouncing ball"])
    torch.testing.assert_close(again[0, :2], emb[0, :2])
    from uniform_cli.latents.text import TextEncoderError

    with pytest.raises(TextEncoderError, match="hash:DIM"):
        TextEncoder.from_pretrained("hash:wide")
