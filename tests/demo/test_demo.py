"""`uniform demo --quick`: every real stage runs on a small world, and the promised outputs exist."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from uniform_cli.config import load_recipe
from uniform_cli.demo.run import MARKER, QUICK, DemoError, prepare_out
from uniform_cli.model.checkpoint import checkpoint_folder


def test_quick_demo_end_to_end(tmp_path: Path):
    from typer.testing import CliRunner

    from uniform_cli.cli.main import app
    from uniform_cli.media.io import read_audio, read_video

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick"])
    assert result.exit_code == 0, result.output

    summary = json.loads((out / "summary.json").read_text())
    size = load_recipe(out / "recipe.toml").data.size
    keys = [c["key"] for c in map(json.loads, (out / "world" / "world.jsonl").read_text().splitlines())]
    test_keys = [k for k in keys if "_test_" in k]
    assert len(keys) == 4 * (QUICK.train_per_kind + QUICK.test_per_kind) and len(test_keys) == 4
    # T2AV makes QUICK.t2av_samples clips per held-out caption, A2V and V2A one per held-out clip
    t2av_names = [f"{key}_{k}" for key in test_keys for k in range(QUICK.t2av_samples)]
    for task, names in [("t2av", t2av_names), ("a2v", test_keys), ("v2a", test_keys)]:
        folder = out / "generated" / task
        for name in names:
            frames, fps = read_video(folder / f"{name}.mp4")
            wave, rate = read_audio(folder / f"{name}.wav")
            assert frames.shape == (68, size, size, 3) and fps == 17 and wave.shape == (64000,) and rate == 16000
        metrics = json.loads((folder / "metrics.json").read_text())
        assert set(metrics["details"]["per_clip"]["AV-Align"]) == set(names)
        assert metrics["details"]["baselines"]["AV-Align"]["all"]["clips"] == len(names)
        assert metrics["details"]["per_task"][task]["clips"] == {"AV-Align": len(names)}  # from results.jsonl
        assert len((folder / "results.jsonl").read_text().splitlines()) == len(names)
    seeds = [json.loads(line)["seed"] for line in (out / "generated" / "t2av" / "results.jsonl").read_text().splitlines()]
    assert len(set(seeds)) == len(t2av_names)  # every T2AV clip starts from its own noise
    # A2V carries the given sound and V2A the given picture unchanged (up to the codecs' quantisation)
    given_wave, _ = read_audio(out / "data" / "clips" / f"{test_keys[0]}.wav")
    a2v_wave, _ = read_audio(out / "generated" / "a2v" / f"{test_keys[0]}.wav")
    assert np.abs(given_wave - a2v_wave).max() < 1e-3

    _check_span_outputs(out, summary, result.output)

    from PIL import Image

    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 800 and sheet.height > 4 * 4 * 64
    for name in ("reference", "reference, shuffled pairs", "reference through the codecs",
                 "reference through the codecs, shuffled pairs", "T2AV generated", "T2AV generated, shuffled pairs",
                 "A2V generated (sound given)", "A2V generated, shuffled pairs", "V2A generated (picture given)",
                 "V2A generated, shuffled pairs"):
        value = summary["av_align"][name]
        assert isinstance(value, float) and math.isfinite(value) and value >= 0
        assert f"{value:.3f}" in result.output  # the printed table shows it
    for name, value in summary["accuracy"].items():
        assert 0.0 <= value <= 1.0, name
    assert set(summary["p_values"]) == {name for name in summary["av_align"] if "shuffled" not in name}
    assert all(0.0 <= p <= 1.0 for p in summary["p_values"].values())
    assert summary["counts"]["reference, shuffled pairs"] == 4 * 3
    assert set(summary["peaks"]) == set(summary["p_values"])
    motion, onsets = summary["peaks"]["reference"]
    assert motion > 0 and onsets > 0  # every event kind of the world moves and sounds
    assert f"{motion:.1f}/{onsets:.1f}" in result.output
    assert set(summary["correlation"]) == set(summary["correlation_p_values"]) == set(summary["p_values"])
    true, shuffled = summary["correlation"]["reference"]
    assert true > shuffled + 0.1  # the reference clips' sounds follow their own pictures' motion
    assert all(0.0 <= p <= 1.0 for p in summary["correlation_p_values"].values())
    assert "motion-onset correlation" in result.output
    n = len(t2av_names)
    assert summary["counts"]["T2AV generated"] == n and summary["counts"]["T2AV generated, shuffled pairs"] == n * (n - 1)
    assert set(summary["seconds"]) >= {"world", "clip", "caption", "encode", "train", "generate", "spans", "eval",
                                       "total"}
    assert "total" in result.output

    # recipes/debug.toml trains on the shards the quick demo writes, as its header says
    debug = Path(__file__).parents[2] / "recipes" / "debug.toml"
    result = CliRunner().invoke(app, ["train", str(debug), "--set", f"data.shards=['{out / 'data' / 'shards'}']",
                                      "--set", f"train.output_dir='{tmp_path / 'runs'}'", "--set", "train.steps=2"])
    assert result.exit_code == 0, result.output
    assert (checkpoint_folder(tmp_path / "runs" / "debug" / "checkpoints" / "latest") / "model.safetensors").is_file()


def _check_span_outputs(out: Path, summary: dict, printed: str) -> None:
    """The span outputs (#17): a V2A of a held-out 12 s source keeps its video stream and gets 12 s of sound; a
    4 s clip extended to 8 s and a 1 s retake carry the given clip's sound bit for bit where it is given."""
    from dataclasses import replace

    from uniform_cli.demo.spans import EXTEND_SECONDS, RETAKE_SPAN, SPAN_KINDS
    from uniform_cli.media.io import read_audio, read_video, write_wav
    from uniform_cli.media.prepare import prepare_media

    spec = load_recipe(out / "recipe.toml").data.clip
    folder = out / "generated" / "spans"
    results = {r["id"]: r for r in map(json.loads, (folder / "results.jsonl").read_text().splitlines())}
    long_key, extend_key, retake_key = (f"{SPAN_KINDS['v2a']}_long_000", f"{SPAN_KINDS['extend']}_test_000",
                                        f"{SPAN_KINDS['retake']}_test_000")
    v2a, extend, retake = f"v2a_{long_key}", f"extend_{extend_key}", f"retake_{retake_key}"
    assert set(results) == set(summary["spans"]) == {v2a, extend, retake}

    # V2A: the source's own 96 x 72, 34 fps picture, 12 s of it (QUICK keeps the full length), and 12 s of sound
    source = out / "world" / "sources" / f"{long_key}.mp4"
    source_frames, source_fps = read_video(source)
    frames, fps = read_video(folder / f"{v2a}.mp4")
    wave, rate = read_audio(folder / f"{v2a}.wav")
    assert source_frames.shape == (408, 72, 96, 3) and fps == source_fps == 34
    assert np.array_equal(frames, source_frames)
    assert wave.shape == (12 * 16000,) and rate == 16000
    assert results[v2a]["windows"] == [0, 3, 6, 8] and results[v2a]["num_frames"] == 12 * 17
    assert summary["spans"][v2a]["video_copied"] is True
    assert len(summary["spans"][v2a]["av_align"]) == len(summary["spans"][v2a]["av_align_own"]) == 1 + 4

    def given(key: str) -> tuple[np.ndarray, np.ndarray]:
        """The audible clip a job was given, prepared as generate does, its sound as a written wav reads back."""
        clip = prepare_media(out / "prompts" / "spans" / f"{key}.mp4", replace(spec, seconds=4.0))
        write_wav(out.parent / "given.wav", clip.audio, 16000)
        return clip.video, read_audio(out.parent / "given.wav")[0]

    # extend: 8 s, of which the first 4 s are the given clip's (its sound bit-exact, its frames through H.264)
    given_frames, given_wave = given(extend_key)
    frames, fps = read_video(folder / f"{extend}.mp4")
    wave, _ = read_audio(folder / f"{extend}.wav")
    assert frames.shape == (int(EXTEND_SECONDS * 17), 32, 32, 3) and fps == 17
    assert wave.shape == (int(EXTEND_SECONDS * 16000),)
    assert np.array_equal(wave[:64000], given_wave)
    assert np.abs(frames[:68].astype(int) - given_frames).mean() < 3
    assert results[extend]["windows"] == [3, 4]
    for job in (extend, retake):
        check = summary["spans"][job]
        # the given frames came through H.264 alone: closer than the codecs' round trip would have left them
        assert check["sound_exact"] is True and check["frames_error"] < check["frames_error_codecs"], check

    # retake: 4 s; outside 1.5-2.5 s the given clip's sound bit-exact; inside, new sound
    given_frames, given_wave = given(retake_key)
    frames, _ = read_video(folder / f"{retake}.mp4")
    wave, _ = read_audio(folder / f"{retake}.wav")
    assert frames.shape == (68, 32, 32, 3) and wave.shape == (64000,)
    inside = np.zeros(64000, bool)
    inside[round(RETAKE_SPAN[0] * 16000) : round(RETAKE_SPAN[1] * 16000)] = True
    assert np.array_equal(wave[~inside], given_wave[~inside]) and not np.array_equal(wave[inside], given_wave[inside])
    outside = np.ones(68, bool)
    outside[round(RETAKE_SPAN[0] * 17) : round(RETAKE_SPAN[1] * 17)] = False
    assert np.abs(frames[outside].astype(int) - given_frames[outside]).mean() < 3
    assert "bit-exact" in printed and "stream copied" in printed and "V2A of a 12 s source: AV-Align" in printed


def test_demo_counts_must_be_positive(tmp_path: Path):
    from typer.testing import CliRunner

    from uniform_cli.cli.main import app

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--t2av-samples", "0"])
    assert result.exit_code == 2 and "--t2av-samples" in result.output
    assert not (tmp_path / "demo").exists()


def test_out_folder_must_be_new_empty_or_a_demo(tmp_path: Path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    with pytest.raises(DemoError, match="not empty"):
        prepare_out(busy)
    assert (busy / "thesis.tex").exists()

    earlier = tmp_path / "earlier"
    (earlier / "generated").mkdir(parents=True)
    (earlier / MARKER).write_text("")
    (earlier / "notes.txt").write_text("mine")
    prepare_out(earlier)
    assert not (earlier / "generated").exists() and (earlier / "notes.txt").exists()


def test_nearest_kind_tells_the_world_s_kinds_apart_and_shuffling_breaks_alignment():
    """The demo's measures on rendered scenes: held-out scenes get their kind, by picture and by sound alone,
    and a ball's, lamp's or block's own sounds align with its motion better than another one's sounds do."""
    from uniform_cli.demo.measure import NearestKind, audio_features, video_features
    from uniform_cli.demo.world import KINDS, WorldSpec, render_scene
    from uniform_cli.eval.av_align import av_align_scores, clip_peaks
    from uniform_cli.eval.pairing import pairing_p_value, shuffled_pairs, true_pairs

    spec = WorldSpec(width=32, height=32, fps=17.0, sample_rate=16000, seconds=4.0, start=0.0, clip_seconds=4.0)
    scenes = {(k, s): render_scene(k, s, spec) for k in KINDS for s in range(6)}
    train = [(k, sc) for (k, s), sc in scenes.items() if s < 3]
    test = [(k, sc) for (k, s), sc in scenes.items() if s >= 3]
    video = NearestKind.fit(np.stack([video_features(sc.frames) for _, sc in train]), [k for k, _ in train])
    audio = NearestKind.fit(np.stack([audio_features(sc.wave) for _, sc in train]), [k for k, _ in train])
    assert video.accuracy(np.stack([video_features(sc.frames) for _, sc in test]), [k for k, _ in test]) == 1.0
    assert audio.accuracy(np.stack([audio_features(sc.wave) for _, sc in test]), [k for k, _ in test]) == 1.0

    for kind in ("ball", "light", "block"):  # the kinds whose sounds are events
        peaks = [clip_peaks(sc.frames, 17.0, sc.wave, 16000) for (k, s), sc in scenes.items() if k == kind]
        pairs = av_align_scores(peaks)
        assert true_pairs(pairs).mean() > 2 * shuffled_pairs(pairs).mean(), kind
        assert pairing_p_value(pairs) < 0.05, kind  # fewer than 1 in 20 re-pairings of their sounds do as well


def test_audio_features_are_measured_from_the_clip_s_own_background_level():
    """A clip is peak-normalised before its log-mel, so one loud instant lowers every other level of the clip;
    the features are taken relative to the clip's median level, so that alone does not move them."""
    from uniform_cli.demo.measure import audio_features
    from uniform_cli.demo.world import WorldSpec, render_scene

    spec = WorldSpec(width=32, height=32, fps=17.0, sample_rate=16000, seconds=4.0, start=0.0, clip_seconds=4.0)
    wave = render_scene("whistle", 0, spec).wave
    louder = wave.copy()
    louder[32000:32080] += 0.99 - np.abs(wave[32000:32080]).max()  # a 5 ms bump, louder than the whistle
    assert np.abs(louder).max() > 2 * np.abs(wave).max()
    mean_levels = slice(0, 64)  # the first 64 features: the mean log-mel per bin
    shift = audio_features(louder)[mean_levels] - audio_features(wave)[mean_levels]
    assert np.abs(shift).max() < 0.5, shift


def test_motion_onset_correlation_keeps_sync_that_grain_hides_from_av_align():
    """A few grey levels of shimmer give every frame a motion peak's chance, so AV-Align's motion peaks pile up
    and its true pairs sink toward the shuffled ones; the correlation of the motion and onset curves keeps
    the scenes' own sounds far ahead of other scenes' sounds."""
    from uniform_cli.demo.measure import correlation_scores, motion_energy, onset_strength_at_frames
    from uniform_cli.demo.world import WorldSpec, render_scene
    from uniform_cli.eval.av_align import av_align_scores, clip_peaks
    from uniform_cli.eval.pairing import pairing_p_value, shuffled_pairs, true_pairs

    spec = WorldSpec(width=32, height=32, fps=17.0, sample_rate=16000, seconds=4.0, start=0.0, clip_seconds=4.0)
    scenes = [render_scene(k, s, spec) for k in ("ball", "light", "block") for s in range(6)]
    rng = np.random.default_rng(0)
    grainy = [np.clip(sc.frames + rng.integers(-3, 4, sc.frames.shape), 0, 255).astype(np.uint8) for sc in scenes]

    def correlation(frames: list[np.ndarray]) -> np.ndarray:
        onsets = [onset_strength_at_frames(sc.wave, 16000, len(f), 17.0) for f, sc in zip(frames, scenes)]
        return correlation_scores([motion_energy(f) for f in frames], onsets)

    def peaks(frames: list[np.ndarray]) -> list:
        return [clip_peaks(f, 17.0, sc.wave, 16000) for f, sc in zip(frames, scenes)]

    clean_peaks, grainy_peaks = peaks([sc.frames for sc in scenes]), peaks(grainy)
    assert sum(len(p.video) for p in grainy_peaks) > 1.5 * sum(len(p.video) for p in clean_peaks)
    clean, noisy = av_align_scores(clean_peaks), av_align_scores(grainy_peaks)
    gap = lambda s: true_pairs(s).mean() - shuffled_pairs(s).mean()  # noqa: E731
    assert gap(noisy) < 0.75 * gap(clean)  # grain eats AV-Align's margin

    for scores in (correlation([sc.frames for sc in scenes]), correlation(grainy)):
        assert true_pairs(scores).mean() > shuffled_pairs(scores).mean() + 0.2
        assert pairing_p_value(scores) == 0.0
    assert gap(correlation(grainy)) > 0.75 * gap(correlation([sc.frames for sc in scenes]))


def test_correlation_scores_compare_every_picture_with_every_sound():
    from uniform_cli.demo.measure import correlation_scores, motion_energy

    rise, fall, flat = np.arange(6.0), -np.arange(6.0), np.ones(6)
    scores = correlation_scores([rise, fall, flat], [rise, rise, rise])
    assert scores.shape == (3, 3)
    assert scores[0, 0] == pytest.approx(1.0) and scores[1, 0] == pytest.approx(-1.0)
    assert np.all(scores[2] == 0.0)  # a still picture correlates with nothing
    frames = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    frames[2] = 30
    assert motion_energy(frames).tolist() == [0.0, 0.0, 30.0]  # value 0 repeats value 1
    with pytest.raises(ValueError, match="F >= 2"):
        motion_energy(frames[:1])
