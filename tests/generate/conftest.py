"""A tiny checkpoint with tiny codecs, and source media in formats unlike the clip format, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.checkpoint import make_checkpoint, make_codecs


@pytest.fixture(scope="package")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generate-checkpoint")
    codec = make_codecs(root / "codecs")
    return make_checkpoint(root / "run" / "checkpoints" / "step_000010", codec)


def moving_gradient(frames: int, height: int, width: int) -> np.ndarray:
    """uint8 `F H W 3`: smooth colour ramps that drift a little each frame (compresses well, so a lossy copy
    stays within a few levels)."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    r = (x * 200 / width + t + 0 * y) % 256
    g = (y * 200 / height + 2 * t + 0 * x) % 256
    b = (x + y) * 100 / (width + height) + 60 + 0 * t
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def chirp(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * (300 + 200 * t) * t)).astype(np.float32)


@pytest.fixture(scope="package")
def media(tmp_path_factory) -> dict[str, Path]:
    """A 25 fps 160x120 mp4 with 44.1 kHz AAC (5 s) and a 22.05 kHz wav (4.5 s) in a media/ subfolder."""
    from uniform_cli.media.io import write_mp4, write_wav

    folder = tmp_path_factory.mktemp("generate-media") / "media"
    folder.mkdir()
    video = folder / "scene.mp4"
    write_mp4(video, moving_gradient(125, 120, 160), 25, audio=chirp(5.0, 44100), sample_rate=44100)
    sound = folder / "drums.wav"
    write_wav(sound, chirp(4.5, 22050), 22050)
    return {"video": video, "audio": sound}


@pytest.fixture(scope="package")
def light_checkpoint(tmp_path_factory) -> Path:
    """A random tiny model over the weight-free codecs at 32 px (pixel video [24, 20, 4, 4], mel audio
    [16, 100, 4], hash text): fast enough for many windows. It predicts v, as the demo does, so its samples stay
    in the codecs' range (a random eps model's x0 is ~100x the data's at high noise, and the mel codec then
    scales a whole window's sound down to its peak)."""
    from tests.fixtures.checkpoint import make_checkpoint, tiny_model_config
    from uniform_cli.config import CodecConfig, DataConfig, DiffusionConfig, GenerateConfig

    codec = CodecConfig(video="pixel", audio="mel", video_vae="pixel", audio_vae="mel", text_encoder="hash:16")
    model = tiny_model_config(video_latent=(24, 20, 4, 4), audio_latent=(16, 100, 4))
    return make_checkpoint(tmp_path_factory.mktemp("light") / "ckpt", codec, model=model,
                           data=DataConfig(fps=17, size=32, seconds=4.0, sample_rate=16000),
                           generate=GenerateConfig(sampler="ddim", steps=2, cfg_video=2.0, cfg_audio=2.0),
                           diffusion=DiffusionConfig(prediction="v"))


@pytest.fixture(scope="package")
def light_pipe(light_checkpoint):
    """`light_checkpoint` loaded on the CPU."""
    from uniform_cli.generate.pipeline import UniFormPipeline

    return UniFormPipeline.from_pretrained(light_checkpoint, device="cpu")
