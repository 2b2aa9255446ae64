"""`uniform eval` end to end on folders of generated mp4/wav fixtures."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.eval.synthetic import FPS, SAMPLE_RATE, click_wave, flash_frames
from uniform_cli.cli.main import app
from uniform_cli.eval.i3d import InceptionI3d
from uniform_cli.eval.panns import Cnn14
from uniform_cli.eval.run import EvalError, evaluate, find_clips, window_bounds
from uniform_cli.eval.vggish import VGGish
from uniform_cli.eval.weights import WEIGHT_FILES
from uniform_cli.generate.results import ResultsFile
from uniform_cli.media.io import write_mp4, write_wav

runner = CliRunner()


def _write_clip(folder, stem, shift_s=0.0, seed=0, wav=True):
    frames, wave = flash_frames(), click_wave(shift_s=shift_s, seed=seed)
    write_mp4(folder / f"{stem}.mp4", frames, FPS, wave, SAMPLE_RATE)
    if wav:
        write_wav(folder / f"{stem}.wav", wave, SAMPLE_RATE)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    generated, reference = root / "generated", root / "reference"
    generated.mkdir()
    reference.mkdir()
    _write_clip(generated, "synced")
    _write_clip(generated, "shifted", shift_s=0.5, seed=1)
    _write_clip(generated, "mp4only", seed=2, wav=False)  # sound from the mp4's AAC track
    for i, stem in enumerate(("synced", "shifted", "other")):
        _write_clip(reference, stem, seed=10 + i, wav=False)
    return generated, reference


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(VGGish().state_dict(), folder / WEIGHT_FILES["vggish"].filename)
    torch.save({"model": Cnn14().state_dict(), "iteration": 0}, folder / WEIGHT_FILES["panns"].filename)
    return folder


def test_clips_pair_mp4_and_wav_by_stem(folders):
    clips = find_clips(folders[0])
    assert list(clips) == ["mp4only", "shifted", "synced"]
    assert clips["synced"].audio.suffix == ".wav" and clips["mp4only"].audio.suffix == ".mp4"


def test_av_align_end_to_end_writes_metrics_json(folders):
    generated, _ = folders
    result = runner.invoke(app, ["eval", str(generated), "--metrics", "av-align"])
    assert result.exit_code == 0, result.output
    assert "AV-Align" in result.output and "shuffled pairs" in result.output
    written = json.loads((generated / "metrics.json").read_text())
    per_clip = {stem: v["score"] for stem, v in written["details"]["per_clip"]["AV-Align"].items()}
    assert set(per_clip) == {"synced", "shifted", "mp4only"}
    # Through H.264 + AAC the aligned clips still score far above the one with sound half a second late.
    assert per_clip["synced"] > 0.7 and per_clip["mp4only"] > 0.7 and per_clip["shifted"] < 0.3
    assert written["AV-Align"] == pytest.approx(np.mean(list(per_clip.values())))
    assert written["details"]["clips"] == {"AV-Align": 3}
    # The three clips flash at the same instants, so their shuffled pairs align as well as the true ones.
    base = written["details"]["baselines"]["AV-Align"]["all"]
    assert base["clips"] == 3 and base["true"] == pytest.approx(written["AV-Align"]) and base["shuffled"] > 0.5
    assert not list(generated.glob(".*tmp*"))


def test_fad_without_weights_is_a_clear_error(folders, tmp_path):
    generated, reference = folders
    before = (generated / "metrics.json").read_text() if (generated / "metrics.json").exists() else None
    result = runner.invoke(app, ["eval", str(generated), "--reference", str(reference), "--metrics", "fad"])
    assert result.exit_code == 1
    assert "vggish-10086976.pth" in result.output and "--weights-dir" in result.output
    result = runner.invoke(
        app, ["eval", str(generated), "--metrics", "fad,kl", "--weights-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "--reference" in result.output and "Cnn14_16k_mAP=0.438.pth" in result.output
    after = (generated / "metrics.json").read_text() if (generated / "metrics.json").exists() else None
    assert before == after  # a refused run writes nothing


def test_unknown_metric_is_an_error(folders):
    result = runner.invoke(app, ["eval", str(folders[0]), "--metrics", "fid"])
    assert result.exit_code == 2 and "choose from" in result.output


def test_audio_metrics_from_local_weights(tmp_path, weights_dir):
    # Short wav-only clips keep the CPU forward passes cheap; VGGish needs at least 0.975 s.
    generated, reference = tmp_path / "generated", tmp_path / "reference"
    for i, stem in enumerate(("a", "b", "c")):
        write_wav(generated / f"{stem}.wav", click_wave(seconds=1.2, seed=i), SAMPLE_RATE)
    for i, stem in enumerate(("a", "b", "z")):
        write_wav(reference / f"{stem}.wav", click_wave(seconds=1.2, shift_s=0.1, seed=10 + i), SAMPLE_RATE)
    result = evaluate(generated, reference, ["fad", "fd", "kl", "is"], weights_dir, device="cpu")
    values = result.values
    # av-benchmark's keys (its output_metrics.json), and the sigmoid KL of the AudioLDM toolbox beside them
    assert set(values) == {"FD-VGG", "FD-PANN", "KL-PANNS-softmax", "KL-PANNS-sigmoid", "ISC-PANNS-mean",
                           "ISC-PANNS-std"}
    assert all(np.isfinite(v) for v in values.values())
    assert values["FD-VGG"] >= 0 and values["FD-PANN"] >= 0 and values["ISC-PANNS-mean"] >= 1.0
    assert result.details["clips"]["KL-PANNS-softmax"] == 2  # "a" and "b" exist on both sides
    assert result.details["clips"]["FD-PANN"] == 3


def test_default_metrics_are_the_runnable_ones(folders):
    # No reference and no weights: only AV-Align can run; the others are listed with what they need.
    result = evaluate(folders[0], clap=str(folders[0] / "no-clap-here"))
    assert result.details["metrics"] == ["av-align"]
    skipped = " ".join(result.details["skipped"])
    assert "fad (needs --reference)" in skipped and "is (needs --weights-dir with Cnn14_16k_mAP=0.438.pth)" in skipped
    assert "clap (needs laion/larger_clap_music_and_speech in the local Hugging Face cache" in skipped


@pytest.mark.slow
def test_video_metrics_from_local_weights(tmp_path):
    # I3D needs 224 px and at least 9 frames; two short clips a side keep the CPU cost to a few passes.
    torch.manual_seed(0)
    (tmp_path / "weights").mkdir()
    torch.save(InceptionI3d().state_dict(), tmp_path / "weights" / WEIGHT_FILES["i3d"].filename)
    rng = np.random.default_rng(0)
    for folder, seed in (("generated", 0), ("reference", 5)):
        for i in range(2):
            frames = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8) // (1 + 3 * seed)  # darker reference
            write_mp4(tmp_path / folder / f"clip{i}.mp4", frames, FPS, click_wave(seconds=9 / FPS, seed=seed + i), SAMPLE_RATE)
    result = evaluate(tmp_path / "generated", tmp_path / "reference", ["fvd", "kvd"], tmp_path / "weights", device="cpu")
    assert set(result.values) == {"FVD", "KVD", "KVD-std"}
    assert all(np.isfinite(v) for v in result.values.values()) and result.values["FVD"] > 0


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(EvalError, match="no .mp4 or .wav"):
        evaluate(tmp_path, metrics=["av-align"])


def test_a_clip_too_short_for_an_extractor_is_named_and_the_others_are_scored(tmp_path, weights_dir):
    write_wav(tmp_path / "gen" / "tiny.wav", click_wave(seconds=0.5), SAMPLE_RATE)
    for folder in ("gen", "ref"):
        for i in range(2):
            write_wav(tmp_path / folder / f"long{i}.wav", click_wave(seconds=1.2 + i), SAMPLE_RATE)
    result = evaluate(tmp_path / "gen", tmp_path / "ref", ["fad"], weights_dir, device="cpu")
    assert np.isfinite(result.values["FD-VGG"]) and result.details["clips"]["FD-VGG"] == 2
    assert any("generated clip tiny not scored" in n and "0.975 s" in n for n in result.details["notes"])


def _events(seed: int) -> list[int]:
    """Four flash/click frames of a 4 s clip, different for each seed (so shuffled pairs miss each other)."""
    return sorted(np.random.default_rng(seed).choice(np.arange(4, 64, 4), 4, replace=False).tolist())


def test_per_task_values_with_shuffled_pair_baselines(tmp_path):
    # Four T2AV clips in sync, each with its own event times; three V2A clips whose sound is 0.3 s late.
    results = ResultsFile(tmp_path / "results.jsonl")
    for i in range(7):
        task, shift = ("t2av", 0.0) if i < 4 else ("v2a", 0.3)
        events = _events(i)
        write_mp4(tmp_path / f"c{i}.mp4", flash_frames(events), FPS, click_wave(events, shift_s=shift), SAMPLE_RATE)
        results.write({"id": f"c{i}", "task": task, "text": f"clip {i}", "time": 1.0})
    result = evaluate(tmp_path, metrics=["av-align"])
    d = result.details
    assert d["clips"] == {"AV-Align": 7}
    assert {t: v["clips"] for t, v in d["per_task"].items()} == {"t2av": {"AV-Align": 4}, "v2a": {"AV-Align": 3}}
    scores = {s: v["score"] for s, v in d["per_clip"]["AV-Align"].items()}
    for task, stems in (("t2av", ["c0", "c1", "c2", "c3"]), ("v2a", ["c4", "c5", "c6"])):
        assert d["per_task"][task]["values"]["AV-Align"] == pytest.approx(np.mean([scores[s] for s in stems]))
    t2av, v2a = d["baselines"]["AV-Align"]["t2av"], d["baselines"]["AV-Align"]["v2a"]
    assert t2av["true"] > 0.7 and t2av["shuffled"] < 0.3 and t2av["p_value"] == 0.0  # no re-pairing does as well
    assert v2a["true"] < 0.3 and v2a["p_value"] > 0.1
    assert d["baselines"]["AV-Align"]["all"]["clips"] == 7


def test_window_bounds_cover_a_clip_with_windows_of_the_metric_s_length():
    assert window_bounds(4.0, 4.0) == [(0.0, 4.0)]
    assert window_bounds(4.1, 4.0) == [(0.0, 4.1)]  # within the slack: one window, not two nearly equal ones
    assert window_bounds(2.5, 4.0) == [(0.0, 2.5)]
    assert window_bounds(8.0, 4.8) == [(0.0, 4.8), (3.2, 8.0)]  # av-benchmark's DeSync: first and last 4.8 s
    assert window_bounds(12.0, 4.0) == [(0.0, 4.0), (4.0, 8.0), (8.0, 12.0)]
    bounds = window_bounds(10.0, 4.0)
    assert bounds == [(0.0, 4.0), (3.0, 7.0), (6.0, 10.0)]


def test_long_clips_are_scored_in_windows_kept_in_details(tmp_path):
    # 12 s: in sync for the first 8 s, then the sound goes 0.5 s late.
    events = [10, 27, 44, 61]
    frames = np.concatenate([flash_frames(events)] * 3)
    wave = np.concatenate([click_wave(events), click_wave(events), click_wave(events, shift_s=0.5)])
    write_mp4(tmp_path / "long.mp4", frames, FPS, wave, SAMPLE_RATE)
    write_mp4(tmp_path / "short.mp4", flash_frames(events), FPS, click_wave(events), SAMPLE_RATE)
    result = evaluate(tmp_path, metrics=["av-align"])
    long = result.details["per_clip"]["AV-Align"]["long"]
    assert [w[:2] for w in long["windows"]] == [[0.0, 4.0], [4.0, 8.0], [8.0, 12.0]]
    first, second, third = (w[2] for w in long["windows"])
    assert first > 0.7 and second > 0.7 and third < 0.3
    assert long["score"] == pytest.approx((first + second + third) / 3)
    assert result.details["window_seconds"] == {"av-align": 4.0}
    assert len(result.details["per_clip"]["AV-Align"]["short"]["windows"]) == 1
