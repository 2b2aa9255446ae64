"""`uniform generate` end to end: a CSV mixing all three tasks, resuming, and bad CSVs."""

from __future__ import annotations

import dataclasses
import json
import wave
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from tests.fixtures.checkpoint import TINY_SIZE
from uniform_cli.cli.main import app
from uniform_cli.config import ClipSpec
from uniform_cli.media.io import read_audio, read_video
from uniform_cli.media.prepare import prepare_media

SPEC = ClipSpec(fps=17, size=TINY_SIZE, seconds=4.0, sample_rate=16000)
RESULT_KEYS = {"id", "task", "seed", "sampler", "steps", "cfg_video", "cfg_audio", "checkpoint", "text",
               "timings", "peak_memory_gb", "fps", "num_frames", "sample_rate", "num_samples"}


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, ["generate", *map(str, args)])


def test_mixed_tasks_end_to_end_then_resume(tmp_path, checkpoint, media):
    csv_dir = media["video"].parent.parent  # media paths are relative to the CSV's folder
    prompts = write_csv(csv_dir / "prompts.csv", [
        "id,text,task,video,audio,seed",
        "dog,a dog barks,t2av,,,11",
        "scene,,v2a,media/scene.mp4,,",
        'drums,"a man plays guitar, and sings",a2v,,media/drums.wav,',
    ])
    out = tmp_path / "out"
    latest = checkpoint.parent / "latest"
    latest.symlink_to(checkpoint.name)
    result = invoke(prompts, "--checkpoint", latest, "--out", out, "--batch-size", "3", "--steps", "2",
                    "--cfg-video", "2.5", "--cfg-audio", "1.5", "--device", "cpu")
    assert result.exit_code == 0, result.output

    # Each output is as long as its given media (T2AV: the recipe's 4 s), to the frame and the sample: the 5 s
    # video gives 85 frames (5 s), the 4.5 s sound 76 frames and 72,000 samples.
    for name, seconds, samples in (("dog", 4.0, 64000), ("scene", 5.0, 80000), ("drums", 4.5, 72000)):
        with wave.open(str(out / f"{name}.wav")) as w:
            assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, samples)
        sound, rate = read_audio(out / f"{name}.mp4")
        assert rate == 16000 and abs(len(sound) / rate - seconds) < 0.1  # AAC pads to whole 1024-sample frames
    for name, frames_wanted in (("dog", 68), ("drums", 76)):
        frames, fps = read_video(out / f"{name}.mp4")
        assert frames.shape == (frames_wanted, TINY_SIZE, TINY_SIZE, 3) and fps == 17

    # V2A keeps the user's own video: the same 25 fps 160x120 frames, copied, under the new sound ...
    source_frames, source_fps = read_video(media["video"])
    v2a_frames, v2a_fps = read_video(out / "scene.mp4")
    assert v2a_fps == source_fps == 25 and np.array_equal(v2a_frames, source_frames)
    t2av_frames, _ = read_video(out / "dog.mp4")
    given_frames = prepare_media(media["video"], SPEC, audio=False).video
    assert np.abs(t2av_frames.astype(int) - given_frames).mean() > 20  # generated frames are something else
    # ... and A2V keeps the prepared input audio, all 4.5 s of it (the wav is 16-bit PCM).
    given_wave = prepare_media(media["audio"], dataclasses.replace(SPEC, seconds=4.5), video=False).audio
    a2v_wave, _ = read_audio(out / "drums.wav")
    np.testing.assert_allclose(a2v_wave, given_wave, atol=1.0 / 16000)
    v2a_wave, _ = read_audio(out / "scene.wav")
    assert np.abs(v2a_wave[:64000] - given_wave[:64000]).max() > 0.05

    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_id = {line["id"]: line for line in lines}
    assert sorted(by_id) == ["dog", "drums", "scene"] and len(lines) == 3
    for line in lines:
        assert RESULT_KEYS <= set(line)
        assert line["checkpoint"] == str(checkpoint.resolve())
        assert (line["sampler"], line["steps"], line["cfg_video"], line["cfg_audio"]) == ("ddim", 2, 2.5, 1.5)
        assert set(line["timings"]) >= {"text", "encode", "denoise", "decode", "write", "total"}
        assert line["timings"]["total"] > 0
    assert {k: by_id[k]["task"] for k in by_id} == {"dog": "t2av", "scene": "v2a", "drums": "a2v"}
    assert by_id["dog"]["seed"] == 11 and by_id["drums"]["text"] == "a man plays guitar, and sings"

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    same = ["--checkpoint", latest, "--out", out, "--skip-existing", "--device", "cpu", "--batch-size", "3",
            "--steps", "2", "--cfg-video", "2.5", "--cfg-audio", "1.5"]
    again = invoke(prompts, *same)
    assert again.exit_code == 0, again.output
    assert "nothing to generate" in again.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # Other settings: --skip-existing says so and generates again; each output keeps one results line.
    changed = invoke(prompts, *same[:-6], "--steps", "3", "--cfg-video", "2.5", "--cfg-audio", "1.5")
    assert changed.exit_code == 0, changed.output
    assert "dog exists with other settings (steps 2 -> 3)" in " ".join(changed.output.split())
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == ["dog", "drums", "scene"] and {line["steps"] for line in lines} == {3}


def test_bad_csv_lists_every_problem_and_writes_nothing(tmp_path, checkpoint, media):
    (tmp_path / "short.wav").write_bytes(media["audio"].read_bytes())
    prompts = write_csv(tmp_path / "bad.csv", [
        "id,text,task,video,audio,seed",
        "ok,a dog barks,t2av,,,",
        "ok,again,t2av,,,",                       # duplicate id
        "x1,a cat,t2x,,,",                        # unknown task
        "x2,rain,v2a,,,",                         # v2a without video
        "x3,rain,a2v,,missing.wav,",              # a2v with a missing file
        "x4,rain,t2av,,,seven",                   # bad seed
        "../evil,rain,t2av,,,",                   # unsafe id
        f"x5,rain,v2a,{media['audio']},,",        # a video file without a video stream
        "x6,rain,a2v,,data:audio/wav,",  # a scheme, not a file
    ])
    with open(prompts, "a") as f:  # the columns of jobs of any span and length
        f.write(f"x7,,extend,{media['video']},,\n"          # extend without seconds
                f"x8,,retake,{media['video']},,\n"          # retake without a span
                f"x9,,i2av,,,\n")                           # i2av without an image
    spans = write_csv(tmp_path / "spans.csv", [
        "id,text,task,video,audio,image,seconds,span,modality,color",
        f"s1,,retake,{media['video']},,,,4-9,audio,",     # a span past the media's end
        f"s2,,extend,{media['video']},,,3,,,",            # seconds below the given part
        f"s3,,v2a,{media['video']},,,7,,,",               # seconds beyond the video
        f"s4,,retake,{media['video']},,,,1-2,loud,",      # an unknown modality
        f"s5,,extend,{media['audio']},,,9,,,",            # extend of a file with no picture
    ])
    out = tmp_path / "out"
    result = invoke(prompts, "--checkpoint", checkpoint, "--out", out, "--device", "cpu")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "11 problem(s)" in text
    for needle in ("line 3 (id 'ok'): duplicate id 'ok'", "line 4 (id 'x1'): unknown task 't2x'",
                   "line 5 (id 'x2'): v2a needs a video", "line 6 (id 'x3'): audio file",
                   "missing.wav does not exist", "line 7 (id 'x4'): seed 'seven'",
                   "line 8 (id '../evil'): id '../evil' is not safe", "line 9 (id 'x5'):", "has no video stream",
                   "line 10 (id 'x6'): audio 'data:audio/wav' is a URL", "line 11 (id 'x7'): extend needs the output length",
                   "line 12 (id 'x8'): retake needs a span", "line 13 (id 'x9'): i2av needs an image"):
        assert needle in text, needle
    assert not out.exists()
    result = invoke(spans, "--checkpoint", checkpoint, "--out", out, "--device", "cpu")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    for needle in ("unknown column 'color'", "line 2 (id 's1'): span 4-9 is not inside the output (0-5.00 s)",
                   "line 3 (id 's2'): seconds 3 is not longer than the video (5.00 s)",
                   "line 4 (id 's3'): seconds 7 is longer than the given media (5.00 s)",
                   "line 5 (id 's4'): modality must be one of audio, video, both, not 'loud'",
                   "line 6 (id 's5'):", "has no video stream"):
        assert needle in text, needle
    assert not out.exists()


def test_missing_column_and_conflicting_flags(tmp_path, checkpoint):
    prompts = write_csv(tmp_path / "p.csv", ["name,text", "a,b"])
    result = invoke(prompts, "--checkpoint", checkpoint, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "missing column 'id'" in result.output
    ok = write_csv(tmp_path / "ok.csv", ["id,text", "a,b"])
    result = invoke(ok, "--checkpoint", checkpoint, "--cfg", "2", "--cfg-audio", "3")
    assert result.exit_code == 2 and "either --cfg" in result.output
    assert not (tmp_path / "out").exists()


def test_results_hold_one_line_per_output_and_part_files_merge(tmp_path):
    from uniform_cli.generate.results import ResultsFile, merge_results, read_results

    first = ResultsFile(tmp_path / "results.jsonl")
    first.write({"id": "a", "steps": 2, "time": 1.0})
    first.write({"id": "b", "steps": 2, "time": 2.0})
    ResultsFile(tmp_path / "results.jsonl").write({"id": "a", "steps": 3, "time": 3.0})  # a rerun replaces
    lines = [json.loads(t) for t in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["id"], r["steps"]) for r in lines] == [("a", 3), ("b", 2)]
    # Another process (part 1 of 2) wrote a newer b and a new c in its own file.
    part = ResultsFile(tmp_path / "results.part-1-of-2.jsonl")
    part.write({"id": "b", "steps": 5, "time": 4.0})
    part.write({"id": "c", "steps": 5, "time": 5.0})
    assert {k: r["steps"] for k, r in read_results(tmp_path).items()} == {"a": 3, "b": 5, "c": 5}
    merge_results(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]
    lines = [json.loads(t) for t in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["steps"]) for r in lines) == [("a", 3), ("b", 5), ("c", 5)]


def test_a_full_disk_is_a_clear_stop_with_nothing_half_written(tmp_path, checkpoint):
    from tests.fixtures.filesystems import tmpfs

    with tmpfs(tmp_path / "full", size="24k") as full:
        prompts = write_csv(tmp_path / "p.csv", ["id,text", "dog,a dog barks"])
        result = invoke(prompts, "--checkpoint", checkpoint, "--out", full / "out", "--steps", "2", "--device", "cpu")
        assert result.exit_code == 1 and "No space left on device" in result.output
        assert "Traceback" not in result.output
        assert [p.name for p in (full / "out").iterdir()] == []  # no output under a final name, no temp file


def test_span_jobs_through_the_cli_and_cut_inputs_are_said(tmp_path, checkpoint, media):
    from PIL import Image

    Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(tmp_path / "still.png")
    prompts = write_csv(tmp_path / "spans.csv", [
        "id,text,task,video,audio,image,seconds,span,modality",
        f"more,,extend,{media['video']},,,6,,",
        f"redo,,retake,{media['video']},,,,1-2,audio",
        "kite,a kite,i2av,,,still.png,,,",
        f"cut,,v2a,{media['video']},,,3,,",
    ])
    out = tmp_path / "out"
    result = invoke(prompts, "--checkpoint", checkpoint, "--out", out, "--steps", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "cut: used 0-3.00 s of scene.mp4 (5.00 s)" in text  # trimming is never silent
    by_id = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert by_id["cut"]["segment"] == [0.0, 3.0] and by_id["cut"]["source_seconds"] == 5.0
    assert (by_id["more"]["num_frames"], by_id["more"]["num_samples"]) == (102, 96000)
    assert by_id["more"]["windows"] == [2]  # one window, 2-6 s: the given 2-5 s, then the new second
    given = prepare_media(media["video"], dataclasses.replace(SPEC, seconds=5.0))
    more, _ = read_audio(out / "more.wav")
    np.testing.assert_allclose(more[:80000], given.audio, atol=1.0 / 16000)  # the given 5 s, then more
    redo, _ = read_audio(out / "redo.wav")
    np.testing.assert_allclose(redo[:16000], given.audio[:16000], atol=1.0 / 16000)
    np.testing.assert_allclose(redo[32000:], given.audio[32000:], atol=1.0 / 16000)
    assert np.abs(redo[17600:30400] - given.audio[17600:30400]).max() > 0.05  # the span is new sound
    redo_frames, fps = read_video(out / "redo.mp4")
    source_frames, _ = read_video(media["video"])
    assert fps == 25 and np.array_equal(redo_frames, source_frames)  # an audio retake keeps the video itself
    kite, _ = read_video(out / "kite.mp4")
    assert kite.shape == (68, TINY_SIZE, TINY_SIZE, 3) and np.abs(kite[0].astype(int) - 200).mean() < 4
    cut, _ = read_video(out / "cut.mp4")
    assert 75 <= len(cut) <= 78 and np.array_equal(cut[:75], source_frames[:75])  # 3 s of the 25 fps video


def test_keep_best_makes_candidates_and_keeps_the_best_by_av_align(tmp_path, light_checkpoint):
    prompts = write_csv(tmp_path / "prompts.csv", ["id,text,seed", "dog,a dog barks,5", "rain,rain on a roof,40"])
    out = tmp_path / "out"
    result = invoke(prompts, "--checkpoint", light_checkpoint, "--out", out, "--device", "cpu", "--num-samples", "3",
                    "--keep-best", "av-align", "--batch-size", "6")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.mp4")) == ["dog.mp4", "rain.mp4"]  # no candidate files are left
    by_id = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert [c["seed"] for c in by_id["dog"]["candidates"]] == [5, 6, 7]
    assert [c["seed"] for c in by_id["rain"]["candidates"]] == [40, 41, 42]
    for record in by_id.values():
        scores = [c["score"] for c in record["candidates"]]
        best = record["candidates"][int(np.argmax(scores))]
        assert record["best_seed"] == best["seed"] and record["score_key"] == "AV-Align"
        assert record["keep_best"] == {"metric": "av-align", "candidates": 3} and "score" in record["timings"]

    assert any(len({c["score"] for c in r["candidates"]}) > 1 for r in by_id.values())  # there was a choice

    # The kept clip is the best candidate itself: generating its seed alone gives the same sound.
    name = max(by_id, key=lambda k: by_id[k]["best_seed"] - by_id[k]["candidates"][0]["seed"])
    again = write_csv(tmp_path / "again.csv", ["id,text,seed", f"{name},{by_id[name]['text']},{by_id[name]['best_seed']}"])
    single = tmp_path / "single"
    assert invoke(again, "--checkpoint", light_checkpoint, "--out", single, "--device", "cpu").exit_code == 0
    kept, _ = read_audio(out / f"{name}.wav")
    alone, _ = read_audio(single / f"{name}.wav")
    np.testing.assert_allclose(kept, alone, atol=3 / 32768)


def test_keep_best_checks_the_request_before_any_work(tmp_path, light_checkpoint):
    prompts = write_csv(tmp_path / "prompts.csv", ["id,text,task,audio", "dog,a dog barks,t2av,", "x,,t2av,"])
    out = tmp_path / "out"
    base = [prompts, "--checkpoint", light_checkpoint, "--out", out, "--device", "cpu"]
    result = invoke(*base, "--num-samples", "2", "--keep-best", "fad")
    assert result.exit_code == 2 and "--keep-best takes one of av-align, clap" in result.output
    result = invoke(*base, "--keep-best", "av-align")
    assert result.exit_code == 2 and "--num-samples 2 or more" in result.output
    # CLAP without its model (and with a row that has no caption): one usage error naming both
    result = invoke(*base, "--num-samples", "2", "--keep-best", "clap", "--clap", tmp_path / "no-clap")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "laion/larger_clap_music_and_speech" in text and "have none: x" in text
    # DeSync without its weights, on 4 s rows: it needs 4.8 s windows
    result = invoke(*base, "--num-samples", "2", "--keep-best", "desync", "--weights-dir", tmp_path)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "synchformer_state_dict.pth" in text and "shorter" in text and "dog, x" in text
    assert not out.exists()


def test_keep_best_by_desync_keeps_the_candidate_with_the_smallest_offset(tmp_path, light_checkpoint, light_pipe):
    """DeSync is a per-clip value, not a paired metric: the kept clip is the candidate whose Synchformer windows
    (a tiny random instance of the real model) say its sound is least out of step."""
    import torch

    from uniform_cli.eval.run import EXTRACTORS, METRICS, clip_features
    from uniform_cli.eval.synchformer import Synchformer, SynchformerConfig
    from uniform_cli.generate.prompts import plan, read_prompts
    from uniform_cli.generate.runner import ClipScorer, RunOptions, generate_items

    torch.manual_seed(1)
    model = Synchformer(SynchformerConfig(width=16, video_depth=1, video_heads=2, audio_depth=1, audio_heads=2,
                                          sync_depth=1, sync_heads=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    scorer = ClipScorer("desync", METRICS["desync"], EXTRACTORS["synchformer"], model)
    prompts = write_csv(tmp_path / "prompts.csv", ["id,text,seconds,seed", "dog,a dog barks,6,3"])
    items = plan(read_prompts(prompts, "t2av", light_pipe.spec), 1, 0, source=prompts)
    out = tmp_path / "out"
    report = generate_items(light_pipe, items, out, RunOptions(keep_best="desync", candidates=4, batch_size=4),
                            scorer=scorer)
    assert report.generated == ["dog"] and not report.failed
    (record,) = map(json.loads, (out / "results.jsonl").read_text().splitlines())
    scores = [c["score"] for c in record["candidates"]]
    assert [c["seed"] for c in record["candidates"]] == [3, 4, 5, 6] and record["score_key"] == "DeSync"
    assert record["best_seed"] == record["candidates"][int(np.argmin(scores))]["seed"]  # lower is better
    frames, fps = read_video(out / "dog.mp4")
    sound, rate = read_audio(out / "dog.wav")
    assert len(frames) == 6 * 17
    kept = METRICS["desync"].per_clip(clip_features(EXTRACTORS["synchformer"], model, frames, fps, sound, rate, None))
    # the first and the last 4.8 s that Synchformer's 0.32 s segment grid holds
    assert [w[:2] for w in kept["windows"]] == [[0.0, 4.8], [0.96, 5.76]]
    assert len(set(scores)) > 1, scores  # there was a choice


def test_step_cache_is_a_setting_recorded_with_its_skipped_forwards(tmp_path, light_checkpoint):
    from tests.fixtures.checkpoint import make_checkpoint
    from uniform_cli.config import load_recipe

    recipe = load_recipe(light_checkpoint / "recipe.toml")
    # two block pairs: the cache runs the first on every step and may skip the second
    checkpoint = make_checkpoint(tmp_path / "ckpt", recipe.codec, model=dataclasses.replace(recipe.model, depth=2),
                                 data=recipe.data, generate=recipe.generate, diffusion=recipe.diffusion)
    prompts = write_csv(tmp_path / "prompts.csv", ["id,text,seed", "dog,a dog barks,5"])
    out = tmp_path / "out"
    base = [prompts, "--checkpoint", checkpoint, "--out", out, "--device", "cpu", "--steps", "12"]
    assert invoke(*base).exit_code == 0
    plain = json.loads((out / "results.jsonl").read_text())
    assert plain["cache"] is None and "cache_skips" not in plain
    uncached, _ = read_audio(out / "dog.wav")

    result = invoke(*base, "--cache", "0.5", "--skip-existing")  # other settings: made again
    assert result.exit_code == 0 and "cache None -> 0.5" in " ".join(result.output.split()), result.output
    record = json.loads((out / "results.jsonl").read_text())
    assert record["cache"] == 0.5
    skips = record["cache_skips"]
    assert skips["forwards"] == 12 and 0 < skips["skipped"] < 12  # the first step always runs in full
    cached, _ = read_audio(out / "dog.wav")
    assert not np.array_equal(cached, uncached)
