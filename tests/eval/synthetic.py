"""Synthetic audible clips for the eval tests: white flashes and clicks at chosen instants."""

from __future__ import annotations

import numpy as np

FPS = 17
SAMPLE_RATE = 16000
FRAMES = 68  # 4 s
EVENT_FRAMES = (10, 27, 44, 61)


def flash_frames(events=EVENT_FRAMES, frames: int = FRAMES, size: int = 64) -> np.ndarray:
    """Black uint8 frames `F H W 3` with a white square flashed on for one frame at each event."""
    video = np.zeros((frames, size, size, 3), np.uint8)
    for k in events:
        # A square rather than the whole frame: a uniformly white frame has no texture and so no optical flow.
        video[k, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return video


def click_wave(
    events=EVENT_FRAMES, shift_s: float = 0.0, seconds: float = FRAMES / FPS, seed: int = 0
) -> np.ndarray:
    """Silence with a 10 ms decaying noise click at each event time (+ shift), mono float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    wave = np.zeros(int(round(seconds * SAMPLE_RATE)), np.float32)
    length = SAMPLE_RATE // 100
    for k in events:
        start = int(round((k / FPS + shift_s) * SAMPLE_RATE))
        if 0 <= start <= len(wave) - length:
            wave[start : start + length] += 0.8 * rng.standard_normal(length) * np.exp(-np.arange(length) / 40)
    return wave
