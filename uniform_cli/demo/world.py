"""A procedural audible-video world: four kinds of scene in which the sound is caused by what is seen.

    bouncing ball             a ball falls and bounces on a floor; every impact clicks
    flashing light            a lamp flashes at random instants; every flash beeps while it is lit
    knocking block            a block rests until it is knocked and slides; every knock sounds (a low damped tone)
    rising and falling whistle a ball floats up and down; a whistle's pitch follows its height

Each clip draws its own parameters (positions, periods, phases, pitches, flash times, shades) from a seeded
generator, so a seed gives the same clip on every machine; each kind has its own object colour. Scenes are
rendered as real sources, the way a camera would deliver them: 4:3 frames (96 x 72 by default) at 34 fps and
32 kHz audio, 5 s long, of which the manifest asks for the 4 s starting at 0.5 s; everything that matters
stays inside the central square, so `uniform clip` (17 fps, 32 x 32 centre crop, 16 kHz, as recipes/demo.toml
asks) keeps it. The picture is deliberately simple and large-scale, so that a tiny model trained for minutes on
a CPU can learn it. 34 fps is twice the clip rate: a source rate that 17 fps does not divide (25 fps) makes the
clip stage repeat or skip source frames unevenly, and that judder alone puts a motion peak every other frame,
which would drown AV-Align's motion peaks.

`write_world` writes `sources/{key}.mp4` (H.264 + AAC), a toolkit manifest `world.csv`
(id,url,start,end,label,split) that the real stages consume, and `world.jsonl` with every clip's parameters and
the times of its sound-making events on the clip's timeline (seconds from the manifest start).
`write_long_sources` films the same world for longer: held-out sources of any length (`long_spec`: all of the
source is the clip), beside the world's as `sources/{kind}_long_000.mp4`, `long.csv` and `long.jsonl`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from uniform_cli.atomic import atomic_path


@dataclass(frozen=True)
class WorldSpec:
    """How sources are rendered (the camera), and which part of them the manifest asks for."""

    width: int = 96
    height: int = 72
    """Frame size; the scene lives in the central height x height square."""
    fps: float = 34.0
    sample_rate: int = 32000
    seconds: float = 5.0
    """Length of each source."""
    start: float = 0.5
    """Manifest start of the clip inside each source (the clip stage cuts from here)."""
    clip_seconds: float = 4.0
    """Manifest length of the clip (end = start + clip_seconds)."""
    noise_floor: float = 0.003
    """Amplitude of the background hiss (about -50 dBFS), so that no clip is digital silence."""

    def __post_init__(self) -> None:
        if self.width < self.height:
            raise ValueError(f"world frames must be landscape or square, got {self.width}x{self.height}")
        if self.start + self.clip_seconds > self.seconds:
            raise ValueError(f"the clip ({self.start} + {self.clip_seconds} s) does not fit a {self.seconds} s source")


@dataclass
class Scene:
    """One rendered source: frames, sound, and the instants at which the picture makes the sound."""

    kind: str
    label: str
    frames: np.ndarray
    """uint8 `F H W 3`; frame i shows the instant i / fps."""
    wave: np.ndarray
    """float32 `S` mono in [-1, 1]."""
    fps: float
    sample_rate: int
    events: list[float]
    """Source times (seconds) of impacts, hits and flash onsets; empty for a continuous kind."""
    params: dict[str, float | list[float]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ drawing


class Canvas:
    """Frames `F H W 3` as floats in [0, 1], drawn with soft (anti-aliased) edges over the central square."""

    def __init__(self, spec: WorldSpec, background: np.ndarray) -> None:
        self.spec = spec
        self.times = np.arange(round(spec.seconds * spec.fps)) / spec.fps  # F
        frames = len(self.times)
        self.image = np.empty((frames, spec.height, spec.width, 3), dtype=np.float32)
        self.image[:] = background
        self.left = (spec.width - spec.height) / 2  # x of the central square's left edge
        self.side = float(spec.height)
        ys, xs = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float32) + 0.5
        # pixel centres in scene units: the central square spans [0, 1] x [0, 1], y down
        self.x = (xs - self.left) / self.side
        self.y = ys / self.side
        self.pixel = 1.0 / self.side

    def _paint(self, coverage: np.ndarray, colour: np.ndarray) -> None:
        """Blend `colour` (`3` or `F 3`) where `coverage` (`F H W` in [0, 1]) says."""
        colour = np.asarray(colour, dtype=np.float32)
        if colour.ndim == 1:
            colour = colour[None]
        a = coverage[..., None]
        self.image[:] = self.image * (1 - a) + colour[:, None, None, :] * a

    def disc(self, cx: np.ndarray, cy: np.ndarray, radius: float, colour: np.ndarray) -> None:
        """A disc per frame at centres `cx`, `cy` (`F`, scene units)."""
        d = np.hypot(self.x[None] - cx[:, None, None], self.y[None] - cy[:, None, None])
        self._paint(np.clip((radius - d) / self.pixel + 0.5, 0, 1), colour)

    def box(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, colour: np.ndarray) -> None:
        """An axis-aligned rectangle per frame (corners `F` each, scene units)."""

        def inside(lo: np.ndarray, hi: np.ndarray, v: np.ndarray) -> np.ndarray:
            lo, hi = lo[:, None, None], hi[:, None, None]
            return np.clip(np.minimum(v[None] - lo, hi - v[None]) / self.pixel + 0.5, 0, 1)

        self._paint(inside(x0, x1, self.x) * inside(y0, y1, self.y), colour)

    def frames(self) -> np.ndarray:
        return (np.clip(self.image, 0, 1) * 255).round().astype(np.uint8)


def _constant(n: int, value: float) -> np.ndarray:
    return np.full(n, value, dtype=np.float32)


COLOURS = {
    "ball": (1.0, 0.65, 0.55),
    "light": (1.0, 0.9, 0.1),
    "block": (0.35, 0.85, 1.0),
    "whistle": (0.3, 1.0, 0.4),
}
"""Each kind's object colour: the world varies what happens (positions, timing, pitch), not how things look.
All are much lighter than the background in grey (AV-Align's optical flow sees grey only): a pure red or blue
object has about the background's grey level, and its motion hardly shows in the flow."""


def _colour(kind: str, rng: np.random.Generator) -> np.ndarray:
    """The kind's colour, a little brighter or darker per clip."""
    return np.clip(np.array(COLOURS[kind]) * rng.uniform(0.85, 1.0), 0, 1).astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A mid grey, a little lighter or darker per clip (mid tones keep the pixel latents centred)."""
    return np.full(3, rng.uniform(0.35, 0.45), dtype=np.float32)


# ------------------------------------------------------------------------------------------------ sounds


def _place(wave: np.ndarray, sound: np.ndarray, at: float, sample_rate: int) -> None:
    """Add `sound` to `wave` starting at `at` seconds (cut at the end of the wave)."""
    i = int(round(at * sample_rate))
    if i >= len(wave) or i + len(sound) <= 0:
        return
    lo = max(0, -i)
    wave[i + lo : i + len(sound)] += sound[lo : len(wave) - i]


def _periodic_events(phase: float, period: float, seconds: float) -> list[float]:
    """The instants phase + k * period (any integer k) that fall in [0, seconds)."""
    first = phase - period * np.ceil(phase / period)
    return [float(e) for e in np.arange(first, seconds, period) if e >= 0]


def _random_events(rng: np.random.Generator, seconds: float, gap_min: float, gap_max: float) -> list[float]:
    """Instants from [0, 0.6) on, each gap_min .. gap_max after the last, up to `seconds` - 0.2."""
    events: list[float] = []
    e = rng.uniform(0.0, 0.6)
    while e < seconds - 0.2:
        events.append(float(e))
        e += rng.uniform(gap_min, gap_max)
    return events


def _sound_track(spec: WorldSpec, events: list[float], sound: Callable[[], np.ndarray]) -> np.ndarray:
    """A silent track of the source's length with `sound()` placed at each event (one call per event)."""
    wave = np.zeros(round(spec.seconds * spec.sample_rate), dtype=np.float32)
    for e in events:
        _place(wave, sound(), e, spec.sample_rate)
    return wave


def click(rng: np.random.Generator, sample_rate: int, decay: float = 0.012) -> np.ndarray:
    """A broadband click: white noise with a fast exponential decay."""
    t = np.arange(int(8 * decay * sample_rate)) / sample_rate
    return (rng.standard_normal(len(t)) * np.exp(-t / decay) * 0.25).astype(np.float32)


def knock(freq: float, sample_rate: int, decay: float = 0.06) -> np.ndarray:
    """A wooden knock: a damped low sine with a sharp attack."""
    t = np.arange(int(6 * decay * sample_rate)) / sample_rate
    return (np.sin(2 * np.pi * freq * t) * np.exp(-t / decay) * 0.8).astype(np.float32)


def beep(freq: float, seconds: float, sample_rate: int, ramp: float = 0.004) -> np.ndarray:
    """A tone burst with short linear ramps (no click at its edges beyond the onset itself)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    envelope = np.minimum(1.0, np.minimum(t, seconds - t) / ramp)
    return (np.sin(2 * np.pi * freq * t) * envelope * 0.5).astype(np.float32)


# ------------------------------------------------------------------------------------------------ scenes


def bouncing_ball(rng: np.random.Generator, spec: WorldSpec) -> Scene:
    """A ball bounces on a floor (a parabola per bounce); a click at every impact.

    The bounces are low and quick: at 17 fps the flow of a fast ball is largest two frames before and after
    the impact (across the impact it moves down and back up, so between two frames it hardly moves), which
    put every click outside AV-Align's one-frame window. Slower, its motion peaks at the impact."""
    canvas = Canvas(spec, _background(rng))
    t = canvas.times
    n = len(t)
    floor, radius = 0.88, 0.15
    period = rng.uniform(0.5, 0.8)
    height = rng.uniform(0.15, 0.25)
    phase = rng.uniform(0, period)
    x = rng.uniform(0.3, 0.7)
    canvas.box(_constant(n, 0.0), _constant(n, floor), _constant(n, 1.0), _constant(n, 1.0), np.full(3, 0.1))
    u = ((t - phase) / period) % 1.0
    y = floor - radius - height * 4 * u * (1 - u)
    canvas.disc(_constant(n, x), y, radius, _colour("ball", rng))
    events = _periodic_events(phase, period, spec.seconds)
    wave = _sound_track(spec, events, lambda: click(rng, spec.sample_rate))
    return Scene("ball", "bouncing ball", canvas.frames(), wave, spec.fps, spec.sample_rate, events,
                 {"period": period, "height": height, "phase": phase, "x": x})


def flashing_light(rng: np.random.Generator, spec: WorldSpec) -> Scene:
    """A lamp flashes at random instants (at least 0.45 s apart); a beep sounds while it is lit."""
    canvas = Canvas(spec, _background(rng))
    t = canvas.times
    n = len(t)
    colour = _colour("light", rng)
    lit_for = rng.uniform(0.12, 0.2)
    freq = rng.uniform(900, 1800)
    events = _random_events(rng, spec.seconds, 0.45, 1.1)
    lit = np.zeros(n, dtype=bool)
    for e in events:
        lit |= (t >= e) & (t < e + lit_for)
    half = rng.uniform(0.2, 0.27)
    cx, cy = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    canvas.box(_constant(n, cx - 0.04), _constant(n, cy + half), _constant(n, cx + 0.04), _constant(n, 1.0),
               np.full(3, 0.1))  # the lamp's stand
    colours = np.where(lit[:, None], colour[None], 0.15 * colour[None])
    canvas.box(_constant(n, cx - half), _constant(n, cy - half), _constant(n, cx + half), _constant(n, cy + half),
               colours)
    wave = _sound_track(spec, events, lambda: beep(freq, lit_for, spec.sample_rate))
    return Scene("light", "flashing light", canvas.frames(), wave, spec.fps, spec.sample_rate, events,
                 {"lit_for": lit_for, "freq": freq, "half": half})


def knocking_block(rng: np.random.Generator, spec: WorldSpec) -> Scene:
    """A block rests until it is knocked (at random instants at least 0.5 s apart); each knock sends it
    sliding sideways, left and right in turn, fastest at the knock, and friction stops it after 0.15 s."""
    canvas = Canvas(spec, _background(rng))
    t = canvas.times
    n = len(t)
    half = rng.uniform(0.11, 0.14)
    cy = rng.uniform(0.4, 0.6)
    slide = rng.uniform(0.25, 0.35)  # distance of each slide, scene units
    glide = 0.15  # seconds from the knock to rest
    freq = rng.uniform(180, 320)
    events = _random_events(rng, spec.seconds, 0.5, 1.0)
    cx = np.full(n, 0.5 - slide / 2)
    for k, e in enumerate(events):
        step = slide * (1 - (1 - np.clip((t - e) / glide, 0, 1)) ** 3)  # speed falls from its peak to 0
        cx += step if k % 2 == 0 else -step
    canvas.box(_constant(n, 0.0), _constant(n, cy + half), _constant(n, 1.0), _constant(n, 1.0), np.full(3, 0.1))
    canvas.box(cx - half, _constant(n, cy - half), cx + half, _constant(n, cy + half), _colour("block", rng))
    wave = _sound_track(spec, events, lambda: knock(freq, spec.sample_rate))
    return Scene("block", "knocking block", canvas.frames(), wave, spec.fps, spec.sample_rate, events,
                 {"slide": slide, "freq": freq, "half": half})


def pitch_ball(rng: np.random.Generator, spec: WorldSpec) -> Scene:
    """A ball floats up and down; a whistle's pitch follows its height (higher ball, higher pitch)."""
    canvas = Canvas(spec, _background(rng))
    t = canvas.times
    n = len(t)
    period = rng.uniform(1.6, 3.0)
    phase = rng.uniform(0, 1)
    x = rng.uniform(0.3, 0.7)
    low, high = rng.uniform(250, 400), rng.uniform(1000, 1500)

    def height(time: np.ndarray) -> np.ndarray:  # 0 (bottom) .. 1 (top)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (time / period + phase))

    canvas.disc(_constant(n, x), 0.86 - 0.72 * height(t), 0.12, _colour("whistle", rng))
    ts = np.arange(round(spec.seconds * spec.sample_rate)) / spec.sample_rate
    freq = low * (high / low) ** height(ts)  # pitch is exponential in height: equal heights, equal intervals
    wave = (0.35 * np.sin(2 * np.pi * np.cumsum(freq) / spec.sample_rate)).astype(np.float32)
    return Scene("whistle", "rising and falling whistle", canvas.frames(), wave, spec.fps, spec.sample_rate, [],
                 {"period": period, "phase": phase, "low": low, "high": high})


KINDS: dict[str, Callable[[np.random.Generator, WorldSpec], Scene]] = {
    "ball": bouncing_ball,
    "light": flashing_light,
    "block": knocking_block,
    "whistle": pitch_ball,
}
"""Scene kind -> its renderer; the one place a kind name maps to a scene."""


def render_scene(kind: str, seed: int, spec: WorldSpec = WorldSpec()) -> Scene:
    """Render one source of `kind` with parameters drawn from `seed` (same seed, same scene)."""
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {', '.join(KINDS)}")
    rng = np.random.default_rng([seed, list(KINDS).index(kind)])
    scene = KINDS[kind](rng, spec)
    hiss = rng.standard_normal(len(scene.wave)).astype(np.float32) * spec.noise_floor
    scene.wave = np.clip(scene.wave + hiss, -1.0, 1.0)
    return scene


# ------------------------------------------------------------------------------------------------ writing


@dataclass(frozen=True)
class WorldClip:
    """One written source and what the manifest says about it."""

    key: str
    kind: str
    label: str
    split: str
    path: str
    seed: int
    events: list[float]
    """Event times on the clip's timeline (source time minus the manifest start), inside the clip only."""
    params: dict


def write_world(
    out: str | Path,
    clips_per_kind: dict[str, int],
    seed: int = 0,
    spec: WorldSpec = WorldSpec(),
    kinds: list[str] | None = None,
) -> tuple[Path, list[WorldClip]]:
    """Render `clips_per_kind[split]` clips of every kind per split into `out/sources/`; returns the manifest.

    Writes `out/world.csv` (the toolkit's manifest: id,url,start,end,label,split, urls relative to it) and
    `out/world.jsonl` (one WorldClip per line). Keys look like `ball_train_003`.
    """
    out = Path(out)
    (out / "sources").mkdir(parents=True, exist_ok=True)
    kinds = list(KINDS) if kinds is None else kinds
    clips: list[WorldClip] = []
    for s, (split, count) in enumerate(clips_per_kind.items()):
        for kind in kinds:
            for i in range(count):
                clip_seed = seed * 1_000_003 + s * 10_007 + i
                clips.append(_write_source(out, f"{kind}_{split}_{i:03d}", kind, split, clip_seed, spec))
    return _write_manifest(out, "world", clips, spec), clips


LONG_SEEDS = 900_000
"""Offset of the long sources' seeds within a world seed's block (a split's clips use split * 10_007 + i), so
that no long source replays the parameters of a world clip: it is held out."""


def long_spec(spec: WorldSpec, seconds: float) -> WorldSpec:
    """The camera of `spec` filming for `seconds`, all of it the clip (manifest start 0)."""
    return replace(spec, seconds=seconds, start=0.0, clip_seconds=seconds)


def write_long_sources(
    out: str | Path, kinds: list[str], seconds: float, seed: int = 0, spec: WorldSpec = WorldSpec()
) -> tuple[Path, list[WorldClip]]:
    """One held-out source of each of `kinds`, `seconds` long, of the same world as `write_world(out, ...,
    seed, spec)`: `out/sources/{kind}_long_000.mp4`, manifest `out/long.csv` and `out/long.jsonl` (split "long";
    events on the source's own timeline)."""
    out = Path(out)
    (out / "sources").mkdir(parents=True, exist_ok=True)
    long = long_spec(spec, seconds)
    clips = [_write_source(out, f"{kind}_long_000", kind, "long", seed * 1_000_003 + LONG_SEEDS, long)
             for kind in kinds]
    return _write_manifest(out, "long", clips, long), clips


def _write_source(out: Path, key: str, kind: str, split: str, clip_seed: int, spec: WorldSpec) -> WorldClip:
    """Render `key` into `out/sources/{key}.mp4` and say what the manifest says about it."""
    from uniform_cli.media.io import write_mp4

    path = out / "sources" / f"{key}.mp4"
    scene = render_scene(kind, clip_seed, spec)
    if not path.exists():  # sources are a pure function of (kind, seed, spec): a rerun keeps them
        write_mp4(path, scene.frames, spec.fps, scene.wave, spec.sample_rate)
    end = spec.start + spec.clip_seconds
    inside = [round(e - spec.start, 6) for e in scene.events if spec.start <= e < end]
    return WorldClip(key, kind, scene.label, split, f"sources/{key}.mp4", clip_seed, inside,
                     {k: v for k, v in scene.params.items()})


def _write_manifest(out: Path, name: str, clips: list[WorldClip], spec: WorldSpec) -> Path:
    """`out/{name}.csv` (id,url,start,end,label,split) and `out/{name}.jsonl` (one WorldClip per line)."""
    manifest = out / f"{name}.csv"
    with atomic_path(manifest) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "url", "start", "end", "label", "split"])
            for c in clips:
                w.writerow([c.key, c.path, spec.start, spec.start + spec.clip_seconds, c.label, c.split])
    with atomic_path(out / f"{name}.jsonl") as tmp:
        Path(tmp).write_text("".join(json.dumps(asdict(c)) + "\n" for c in clips))
    return manifest


def read_world(out: str | Path, name: str = "world") -> list[WorldClip]:
    """The clips `write_world` (or, with name "long", `write_long_sources`) wrote into `out` (from
    `{name}.jsonl`)."""
    lines = (Path(out) / f"{name}.jsonl").read_text().splitlines()
    return [WorldClip(**json.loads(line)) for line in lines if line.strip()]
