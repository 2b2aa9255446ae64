"""`uniform gallery OUTDIR`: a static `index.html` beside the outputs of `uniform generate`, to look at them.

Per output (one results.jsonl line): the mp4 with its sound, the caption, task, seed and settings, a
mel-spectrogram image of its sound, and the given input (video, sound or image). The page opens from `file://`
with no server: every link is relative, there are no scripts, fonts or anything else from elsewhere, and a
Content-Security-Policy forbids scripts, so a caption (user input, always escaped) can never run as code.

Files written: `OUTDIR/index.html` and `OUTDIR/gallery/` (`{id}.mel.png`, `{id}.input.mel.png` for a given
sound, `{id}.input.png` for a given image). Images are made again only when their source is newer.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from uniform_cli.generate.results import read_results

INDEX = "index.html"
ASSETS = "gallery"
BROWSER_VIDEO = {".mp4", ".m4v", ".webm", ".mov", ".ogv"}
"""Containers a browser plays in a `<video>` (other given videos are linked, not embedded)."""
BROWSER_AUDIO = {".wav", ".mp3", ".ogg", ".oga", ".flac", ".m4a", ".aac", ".opus", ".webm"}
SETTINGS = ("sampler", "steps", "cfg_video", "cfg_audio", "seconds", "span", "modality", "overlap", "windows",
            "segment", "model_format", "size", "fps", "sample_rate", "device", "dtype", "checkpoint")
"""Results fields shown under "settings", in this order (those that are None are left out)."""
MAGMA = np.array([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]],
                 dtype=np.float64)
"""Anchor colours of a magma-like colour map, from quiet to loud."""
MEL_HEIGHT = 128
MAX_MEL_WIDTH = 1024


class GalleryError(ValueError):
    """A folder the gallery cannot be made for; the message says what to pass instead."""


@dataclass
class GalleryReport:
    """What `build_gallery` wrote: the page, the clips on it, and the clips whose parts could not be made."""

    index: Path
    clips: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Output name -> why part of its card is missing (an unreadable wav, a missing mp4)."""


# ------------------------------------------------------------------------------------------------- images


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + 3) on the `MAGMA` colour map."""
    x = np.clip(values, 0.0, 1.0) * (len(MAGMA) - 1)
    low = np.minimum(x.astype(int), len(MAGMA) - 2)
    frac = (x - low)[..., None]
    return np.rint(MAGMA[low] * (1 - frac) + MAGMA[low + 1] * frac).astype(np.uint8)


def _fresh(target: Path, source: Path) -> bool:
    return target.is_file() and target.stat().st_mtime >= source.stat().st_mtime


def write_mel_png(sound: Path, png: Path) -> None:
    """The mel image of a sound file (any format PyAV reads, resampled to 16 kHz) as a PNG, atomically."""
    from PIL import Image

    from uniform_cli.atomic import atomic_path
    from uniform_cli.media.io import read_audio
    from uniform_cli.media.mel import SAMPLE_RATE, mel_picture

    if _fresh(png, sound):
        return
    wave, _ = read_audio(sound, SAMPLE_RATE)
    image = Image.fromarray(colorize(mel_picture(wave)))
    image = image.resize((min(image.width, MAX_MEL_WIDTH), MEL_HEIGHT), Image.Resampling.BILINEAR)
    with atomic_path(png) as tmp:
        image.save(tmp, format="PNG")


def write_image_png(source: Path, png: Path, side: int = 256) -> None:
    """A given image as a PNG of at most `side` pixels a side (any format pillow reads), atomically."""
    from PIL import Image

    from uniform_cli.atomic import atomic_path
    from uniform_cli.media.io import local_file

    if _fresh(png, source):
        return
    with Image.open(local_file(source)) as image:
        image = image.convert("RGB")
        image.thumbnail((side, side))
        with atomic_path(png) as tmp:
            image.save(tmp, format="PNG")


# ------------------------------------------------------------------------------------------------- page


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(path: Path, base: Path) -> str:
    """`path` as a relative, percent-encoded link from a page in `base` (escaped for an attribute)."""
    relative = Path(os.path.relpath(path.absolute(), base.absolute())).as_posix()
    return _text(quote(relative))


def _settings(record: dict) -> str:
    rows = "".join(f"<tr><th>{_text(key)}</th><td>{_text(record[key])}</td></tr>"
                   for key in SETTINGS if record.get(key) is not None)
    return f'<table class="settings">{rows}</table>'


def _given(record: dict, out_dir: Path, assets: Path, name: str, failed: dict[str, str]) -> str:
    """The card's "given" section: the video, sound or image the output was made from (empty for t2av)."""
    parts = []
    for kind in ("video", "audio", "image"):
        if not record.get(kind):
            continue
        path = Path(record[kind])
        label = f"given {kind}: <code>{_text(path.name)}</code>"
        if not path.is_file():
            parts.append(f'<p class="missing">{label} (not found at {_text(path)})</p>')
            continue
        link = _href(path, out_dir)
        suffix = path.suffix.lower()
        if kind == "video" and suffix in BROWSER_VIDEO:
            parts.append(f'<p>{label}</p><video controls preload="metadata" src="{link}"></video>')
        elif kind == "audio" and suffix in BROWSER_AUDIO:
            parts.append(f'<p>{label}</p><audio controls preload="metadata" src="{link}"></audio>')
        elif kind == "image":
            png = assets / f"{name}.input.png"
            try:
                write_image_png(path, png)
                parts.append(f'<p>{label}</p><img class="still" alt="given image" src="{_href(png, out_dir)}">')
            except OSError as e:
                failed[name] = f"given image {path}: {e}"
                parts.append(f'<p class="missing">{label} (cannot be read)</p>')
            continue
        else:
            parts.append(f'<p>{label} (<a href="{link}">open</a>; this browser may not play {_text(suffix)})</p>')
        if kind == "audio":
            parts.append(_mel(path, assets / f"{name}.input.mel.png", out_dir, name, failed, "given sound"))
    return "".join(parts)


def _mel(sound: Path, png: Path, out_dir: Path, name: str, failed: dict[str, str], what: str) -> str:
    from uniform_cli.media.io import MediaError

    try:
        write_mel_png(sound, png)
    except (MediaError, OSError) as e:
        failed[name] = f"mel image of {sound}: {e}"
        return f'<p class="missing">no mel image: {_text(sound.name)} cannot be read</p>'
    return (f'<figure><img class="mel" alt="mel spectrogram of the {what}" src="{_href(png, out_dir)}">'
            f"<figcaption>mel spectrogram of the {what} (64 bands, 0-8 kHz, low at the bottom)</figcaption></figure>")


def _card(record: dict, out_dir: Path, assets: Path, failed: dict[str, str]) -> str:
    name = record["id"]
    mp4, wav = out_dir / f"{name}.mp4", out_dir / f"{name}.wav"
    if mp4.is_file():
        video = f'<video controls preload="metadata" src="{_href(mp4, out_dir)}"></video>'
    else:
        failed[name] = f"{mp4.name} is missing"
        video = f'<p class="missing">{_text(mp4.name)} is missing</p>'
    if wav.is_file():
        mel = _mel(wav, assets / f"{name}.mel.png", out_dir, name, failed, "generated sound")
    else:
        failed.setdefault(name, f"{wav.name} is missing")
        mel = f'<p class="missing">{_text(wav.name)} is missing</p>'
    caption = record.get("text") or ""
    caption_html = f'<p class="caption">{_text(caption)}</p>' if caption.strip() else '<p class="caption none">(no caption)</p>'
    given = _given(record, out_dir, assets, name, failed)
    return (f'<article id="{_text(name)}"><h2>{_text(name)}</h2>{video}{caption_html}'
            f'<p class="facts">task <b>{_text(record.get("task"))}</b> &middot; seed <b>{_text(record.get("seed"))}</b></p>'
            f"{mel}<details><summary>settings</summary>{_settings(record)}</details>"
            f'{f"<section class=given>{given}</section>" if given else ""}</article>')


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #f6f6f4; color: #222; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(22rem, 1fr)); gap: 1rem; }
article { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 0.8rem; }
h2 { font-size: 1rem; margin: 0 0 0.5rem; word-break: break-all; }
video, img.mel { width: 100%; display: block; background: #000; }
img.mel { height: 6rem; image-rendering: pixelated; }
img.still { max-width: 100%; }
audio { width: 100%; }
.caption { font-size: 1.05rem; } .none, .missing { color: #a33; }
.facts, figcaption, .settings { font-size: 0.85rem; color: #555; }
.settings th { text-align: left; padding-right: 1rem; font-weight: normal; }
.given { border-top: 1px solid #eee; margin-top: 0.5rem; }
figure { margin: 0.5rem 0; }
"""
CSP = "default-src 'none'; img-src 'self' file:; media-src 'self' file:; style-src 'unsafe-inline'"


def build_gallery(out_dir: str | Path) -> GalleryReport:
    """Write `out_dir/index.html` (and its images under `out_dir/gallery/`) for every output in the folder's
    results files, in their order. Raises GalleryError when `out_dir` holds no results."""
    from uniform_cli.atomic import write_text_atomic

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise GalleryError(f"{out_dir} is not a folder; pass the --out folder of `uniform generate`")
    records = read_results(out_dir)
    if not records:
        raise GalleryError(f"{out_dir} has no results.jsonl lines; pass the --out folder of a `uniform generate` run")
    assets = out_dir / ASSETS
    assets.mkdir(exist_ok=True)
    report = GalleryReport(out_dir / INDEX)
    cards = []
    for name, record in records.items():
        if Path(name).name != name or name.startswith("."):  # an id is a file name: never a path elsewhere
            report.failed[str(name)] = "not a file name; left out"
            continue
        cards.append(_card(record, out_dir, assets, report.failed))
        report.clips.append(name)
    title = f"uniform gallery: {out_dir.absolute().name}"
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_text(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><h1>{_text(title)}</h1><p>{len(cards)} clip(s) from results.jsonl</p>\n"
            f"<main>\n" + "\n".join(cards) + "\n</main></body></html>\n")
    write_text_atomic(report.index, page)
    return report
