"""The demo world: sound and picture are causally tied, clips are reproducible, and the real stages read it."""

from pathlib import Path

import numpy as np
import pytest

from uniform_cli.demo.world import KINDS, WorldSpec, read_world, render_scene, write_world

SPEC = WorldSpec()


def _object_rows(frames: np.ndarray) -> np.ndarray:
    """Lowest image row covered by the bright object in each frame (the floor and walls are grey)."""
    rgb = frames.astype(int)
    bright = (rgb.max(-1) - rgb.min(-1) > 60) | (rgb.sum(-1) > 450)  # saturated or very bright pixels
    return np.array([np.nonzero(b.any(1))[0].max() for b in bright])


def _onsets(wave: np.ndarray, rate: int, threshold: float = 0.05) -> np.ndarray:
    """Seconds at which the sound first rises above `threshold` after at least 0.2 s below it."""
    loud = np.abs(wave) > threshold
    idx = np.flatnonzero(loud)
    starts = idx[np.concatenate([[True], np.diff(idx) > 0.2 * rate])]
    return starts / rate


def test_ball_touches_the_floor_in_the_frame_nearest_each_click():
    scene = render_scene("ball", seed=3, spec=SPEC)
    rows = _object_rows(scene.frames)
    clicks = _onsets(scene.wave, scene.sample_rate)
    assert len(scene.events) >= 3
    np.testing.assert_allclose(clicks, scene.events, atol=1e-3)  # the sound starts at the impact
    for event in scene.events:
        nearest = int(round(event * scene.fps))
        if 1 <= nearest < len(rows) - 1:
            # the ball is at its lowest (touching the floor) in the frame nearest the click
            lowest = max(range(nearest - 3, min(nearest + 4, len(rows))), key=lambda i: rows[i])
            assert abs(lowest - event * scene.fps) <= 1.0
            assert rows[nearest] >= rows.max() - 4  # on (or a few pixels above) the floor


def test_light_is_lit_exactly_while_it_beeps():
    scene = render_scene("light", seed=5, spec=SPEC)
    brightness = scene.frames.astype(float).mean(axis=(1, 2, 3))
    lit = brightness > (brightness.max() + brightness.min()) / 2
    rate = scene.sample_rate
    # beep intervals from the sound alone: where a 5 ms envelope is loud
    envelope = np.convolve(np.abs(scene.wave) > 0.1, np.ones(int(0.005 * rate)), mode="same") > 0
    edges = np.flatnonzero(np.diff(envelope.astype(int))) / rate
    assert len(edges) >= 6  # at least three beeps
    checked = 0
    for i, on in enumerate(lit):
        t = i / scene.fps
        if np.min(np.abs(edges - t)) < 0.01:  # a frame right at a beep's edge: either answer is fair
            continue
        beeping = bool(envelope[int(t * rate)])
        assert beeping == on, f"at {t:.2f} s the lamp is {'on' if on else 'off'}, the beep {'on' if beeping else 'off'}"
        checked += 1
    assert checked > 0.8 * len(lit) and lit.sum() >= 3


def test_whistle_pitch_follows_height():
    scene = render_scene("whistle", seed=2, spec=SPEC)
    height = -_object_rows(scene.frames).astype(float)  # higher on screen = smaller row
    starts = (np.arange(len(scene.frames)) / scene.fps * scene.sample_rate).astype(int)  # sample of each frame
    frames = np.flatnonzero(starts + 1024 <= len(scene.wave))  # frames with a whole 1024-sample window
    pitch = [np.argmax(np.abs(np.fft.rfft(scene.wave[a : a + 1024] * np.hanning(1024)))) for a in starts[frames]]
    assert np.corrcoef(height[frames], pitch)[0, 1] > 0.95


def test_block_moves_only_right_after_each_knock():
    scene = render_scene("block", seed=4, spec=SPEC)
    knocks = _onsets(scene.wave, scene.sample_rate)
    assert len(scene.events) >= 3
    np.testing.assert_allclose(knocks, scene.events, atol=1e-3)  # the sound starts at the knock
    change = np.abs(np.diff(scene.frames.astype(int), axis=0)).max(axis=(1, 2, 3))  # frame i -> i + 1
    times = (np.arange(len(change)) + 1) / scene.fps  # when the later frame of each pair is shown
    since = np.array([min([t - e for e in scene.events if e <= t], default=np.inf) for t in times])
    assert (change[since > 0.25] <= 2).all()  # at rest (up to rounding) from 0.25 s after a knock
    moving = since <= 1.0 / scene.fps + 1e-9  # the first frame after each knock
    assert (change[moving] > 40).all()


def test_same_seed_same_scene_and_kinds_differ():
    a, b = render_scene("block", 7, SPEC), render_scene("block", 7, SPEC)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.wave, b.wave)
    assert not np.array_equal(render_scene("block", 8, SPEC).frames, a.frames)
    assert {render_scene(k, 0, SPEC).label for k in KINDS} == {"bouncing ball", "flashing light", "knocking block",
                                                                "rising and falling whistle"}
    with pytest.raises(ValueError, match="unknown scene kind"):
        render_scene("dragon", 0, SPEC)


def test_written_world_survives_the_clip_stage_in_sync(tmp_path: Path):
    """A bounce in a source is still a bounce at the click after `clip` cuts, resamples and crops it."""
    from uniform_cli.config import ClipSpec
    from uniform_cli.media.io import read_audio, read_video
    from uniform_cli.prep.clip import ClipOptions, run_clip
    from uniform_cli.prep.manifest import read_manifest

    manifest, clips = write_world(tmp_path / "world", {"train": 1}, seed=1, kinds=["ball"])
    items = read_manifest(manifest)
    assert [i.key for i in items] == ["ball_train_000"] and items[0].label == "bouncing ball"
    assert items[0].start == SPEC.start and items[0].end == SPEC.start + SPEC.clip_seconds
    assert read_world(tmp_path / "world") == clips

    root = tmp_path / "data"
    spec = ClipSpec(fps=17, size=64, seconds=4.0, sample_rate=16000)
    assert run_clip(items, root, ClipOptions(root=str(root), spec=spec), workers=1).counts == {"ok": 1}
    frames, fps = read_video(root / "clips" / "ball_train_000.mp4")
    wave, rate = read_audio(root / "clips" / "ball_train_000.wav")
    assert frames.shape == (68, 64, 64, 3) and fps == 17 and wave.shape == (64000,) and rate == 16000

    rows = _object_rows(frames)
    clicks = _onsets(wave, rate)
    events = np.array(clips[0].events)
    assert len(events) >= 3
    np.testing.assert_allclose(clicks, events, atol=0.01)  # AAC and resampling keep the click on time
    for event in events:
        frame = event * fps
        near = [i for i in range(len(rows)) if abs(i - frame) <= 3]
        if near[0] > 0 and near[-1] < len(rows) - 1:
            # the ball's lowest frame around a click is within one clip frame of it (the source's 34 fps
            # frames are shown from their timestamp on, so the picture may trail by up to 1/34 s)
            lowest = max(near, key=lambda i: rows[i])
            assert abs(lowest - frame) <= 1.0, f"click at {event:.2f} s, ball lowest at {lowest / fps:.2f} s"


def test_a_long_source_is_the_same_world_filmed_longer_and_held_out(tmp_path: Path):
    """`write_long_sources`: a 12 s source from its first instant, events over all of it, tied to its sound, and
    parameters no world clip of the same seed has; the world's own files are left as they were."""
    from uniform_cli.demo.world import long_spec, write_long_sources
    from uniform_cli.media.io import read_audio, read_video
    from uniform_cli.prep.manifest import read_manifest

    _, world = write_world(tmp_path / "world", {"train": 2, "test": 1}, seed=3, kinds=["light"])
    before = (tmp_path / "world" / "world.csv").read_text()
    manifest, (long,) = write_long_sources(tmp_path / "world", ["light"], 12.0, seed=3)
    assert (tmp_path / "world" / "world.csv").read_text() == before and read_world(tmp_path / "world") == world
    assert read_world(tmp_path / "world", "long") == [long]
    (item,) = read_manifest(manifest)
    assert (item.key, item.start, item.end, item.label) == ("light_long_000", 0.0, 12.0, "flashing light")

    frames, fps = read_video(tmp_path / "world" / long.path)
    wave, rate = read_audio(tmp_path / "world" / long.path)
    assert frames.shape == (408, SPEC.height, SPEC.width, 3) and fps == SPEC.fps
    assert abs(len(wave) / rate - 12.0) < 0.05
    assert max(long.events) > 10.0 and len(long.events) >= 8  # flashes all the way through
    scene = render_scene("light", long.seed, long_spec(SPEC, 12.0))
    assert long.events == [round(e, 6) for e in scene.events]  # on the source's own timeline (start 0)
    assert long.seed not in {c.seed for c in world}  # a world clip's seed would replay its flashes
