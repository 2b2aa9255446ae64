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
from uniform_cli.eval.run import EvalError, evaluate, find_clips
from uniform_cli.eval.vggish import VGGish
from uniform_cli.eval.weights import WEIGHT_FILES
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
    assert "av-align" in result.output
    written = json.loads((generated / "metrics.json").read_text())
    per_clip = written["details"]["av_align_per_clip"]
    assert set(per_clip) == {"synced", "shifted", "mp4only"}
    # Through H.264 + AAC the aligned clips still score far above the one with sound half a second late.
    assert per_clip["synced"] > 0.7 and per_clip["mp4only"] > 0.7 and per_clip["shifted"] < 0.3
    assert written["av_align"] == pytest.approx(np.mean(list(per_clip.values())))
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
    assert set(values) == {"fad", "fd", "kl", "kl_sigmoid", "is", "is_std"}
    assert all(np.isfinite(v) for v in values.values())
    assert values["fad"] >= 0 and values["fd"] >= 0 and values["is"] >= 1.0
    assert result.details["kl_pairs"] == 2  # "a" and "b" exist on both sides


def test_default_metrics_are_the_runnable_ones(folders):
    # No reference and no weights: only AV-Align can run; the others are listed with what they need.
    result = evaluate(folders[0])
    assert result.details["metrics"] == ["av-align"]
    skipped = " ".join(result.details["skipped"])
    assert "fad (needs --reference)" in skipped and "is (needs --weights-dir with Cnn14_16k_mAP=0.438.pth)" in skipped


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
    assert set(result.values) == {"fvd", "kvd", "kvd_std"}
    assert all(np.isfinite(v) for v in result.values.values()) and result.values["fvd"] > 0


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(EvalError, match="no .mp4 or .wav"):
        evaluate(tmp_path, metrics=["av-align"])


def test_a_clip_too_short_for_an_extractor_is_named(tmp_path, weights_dir):
    write_wav(tmp_path / "gen" / "tiny.wav", click_wave(seconds=0.5), SAMPLE_RATE)
    write_wav(tmp_path / "ref" / "tiny.wav", click_wave(seconds=1.2), SAMPLE_RATE)
    with pytest.raises(EvalError, match=r"generated clip tiny .*tiny\.wav.*0\.975 s"):
        evaluate(tmp_path / "gen", tmp_path / "ref", ["fad"], weights_dir, device="cpu")
