"""The demo's contact sheet: for each clip, a strip of frames and its mel spectrogram, one row per source.

    ┌──────────────┬───────────────────────────────┬─────────────────────┐
    │ title        │ frame  frame  frame  ...      │ mel (time ->, pitch │
    │ (caption)    │                               │ up), event ticks    │
    └──────────────┴───────────────────────────────┴─────────────────────┘

Rows are grouped into blocks (one per kind of scene: reference, then what each task generated; then one per
output of another span or length: what it was given, then the output), so generated rows can be compared with
the reference right above them. A row spans its own clip, whatever its length (frames sampled evenly across
it); where only part of a row was generated, that part is outlined on its frames and its mel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uniform_cli.atomic import atomic_path

FRAMES_PER_ROW = 8
TILE = 64
"""Side of a frame in the sheet (pixels)."""
MEL_WIDTH = 272
TITLE_WIDTH = 190
GAP = 4
BACKGROUND = (24, 24, 28)
TEXT = (230, 230, 230)
OUTLINE = (250, 200, 90)


@dataclass
class SheetRow:
    """One row: a title, the clip's frames (uint8 `F H W 3`) and its sound (float `S`)."""

    title: str
    frames: np.ndarray
    wave: np.ndarray
    sample_rate: int
    note: str = ""
    """Second title line (e.g. "given" or the predicted kind)."""
    generated: tuple[float, float] | None = None
    """Seconds (start, end) of the row in which its picture and sound were generated, outlined (None: none
    outlined)."""


@dataclass
class SheetBlock:
    heading: str
    rows: list[SheetRow] = field(default_factory=list)


def _colormap(x: np.ndarray) -> np.ndarray:
    """[0, 1] -> uint8 RGB on a dark-blue, magenta, yellow ramp (readable in print and on screen)."""
    stops = np.array([[8, 8, 30], [80, 20, 120], [200, 50, 90], [250, 160, 40], [250, 250, 160]], dtype=np.float64)
    pos = np.clip(x, 0, 1) * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    t = (pos - i)[..., None]
    return (stops[i] * (1 - t) + stops[i + 1] * t).astype(np.uint8)


def mel_image(wave: np.ndarray, sample_rate: int, width: int = MEL_WIDTH, height: int = TILE) -> np.ndarray:
    """uint8 `height width 3` picture of the log-mel (low pitches at the bottom), on a fixed scale so rows compare."""
    import torch
    from PIL import Image

    from uniform_cli.media import mel as melspec

    wave_t = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None]
    if sample_rate != melspec.SAMPLE_RATE:
        raise ValueError(f"the sheet's mel expects {melspec.SAMPLE_RATE} Hz audio, got {sample_rate}")
    log_mel = melspec.log_mel_spectrogram(melspec.normalize_wave(wave_t))[0].numpy()  # T M
    scaled = (log_mel - (-11.5)) / (1.5 - (-11.5))
    picture = _colormap(scaled.T[::-1])  # M T 3, high bins on top
    return np.asarray(Image.fromarray(picture).resize((width, height), Image.BILINEAR))


def strip_index(num_frames: int, count: int = FRAMES_PER_ROW) -> np.ndarray:
    """The frames a strip shows: `count` evenly spread over the clip, first and last included."""
    return np.linspace(0, num_frames - 1, count).round().astype(int)


def frame_strip(frames: np.ndarray, count: int = FRAMES_PER_ROW, tile: int = TILE) -> np.ndarray:
    """`count` frames evenly spread over the clip, side by side, each `tile` x `tile` (the central square of
    a frame that is not square, as clips are cut)."""
    from PIL import Image

    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = frames[:, top : top + side, left : left + side]
    tiles = [np.asarray(Image.fromarray(square[i]).resize((tile, tile), Image.NEAREST))
             for i in strip_index(len(frames), count)]
    gap = np.full((tile, 2, 3), BACKGROUND, np.uint8)
    return np.concatenate([t for pair in zip(tiles, [gap] * count) for t in pair][:-1], axis=1)


def _outline(draw, row: SheetRow, strip_left: int, mel_left: int, top: int) -> None:
    """Outline the frames of `row` that show its generated seconds, and those seconds of its mel."""
    seconds = len(row.wave) / row.sample_rate
    start, end = row.generated
    for k, i in enumerate(strip_index(len(row.frames))):
        if start <= i / len(row.frames) * seconds < end:
            x = strip_left + k * (TILE + 2)
            draw.rectangle((x, top, x + TILE - 1, top + TILE - 1), outline=OUTLINE)
    x0, x1 = (mel_left + round(t / seconds * (MEL_WIDTH - 1)) for t in (start, min(end, seconds)))
    draw.rectangle((x0, top, x1, top + TILE - 1), outline=OUTLINE)


def write_contact_sheet(path: str | Path, blocks: list[SheetBlock], title: str = "") -> Path:
    """Draw `blocks` into a PNG at `path` (atomically) and return the path."""
    from PIL import Image, ImageDraw

    strip_width = FRAMES_PER_ROW * TILE + (FRAMES_PER_ROW - 1) * 2
    width = TITLE_WIDTH + strip_width + GAP + MEL_WIDTH + 2 * GAP
    row_height = TILE + GAP
    heading_height = 18
    height = 24 + sum(heading_height + len(b.rows) * row_height + GAP for b in blocks)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 4), title, fill=TEXT)
    y = 24
    for block in blocks:
        draw.text((GAP, y + 2), block.heading, fill=(250, 200, 90))
        y += heading_height
        for row in block.rows:
            draw.text((GAP, y + 8), row.title, fill=TEXT)
            if row.note:
                draw.text((GAP, y + 26), row.note, fill=(170, 170, 170))
            sheet.paste(Image.fromarray(frame_strip(row.frames)), (TITLE_WIDTH, y))
            mel_left = TITLE_WIDTH + strip_width + GAP
            sheet.paste(Image.fromarray(mel_image(row.wave, row.sample_rate)), (mel_left, y))
            if row.generated is not None:
                _outline(draw, row, TITLE_WIDTH, mel_left, y)
            y += row_height
        y += GAP
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
