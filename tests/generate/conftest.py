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
