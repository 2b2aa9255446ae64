"""The `hf` captioner: any transformers image-text-to-text model with a chat template, end to end."""

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.fixtures.pllava import make_llava_folder, make_llava_next_video_folder
from tests.prep.test_caption_pllava import make_clips, write_manifest
from uniform_cli.cli.main import app
from uniform_cli.prep.captioners.contract import CaptionError, CaptionInput
from uniform_cli.prep.captioners.hf import HFCaptioner


def torchvision_works() -> bool:
    """transformers' video processors need torchvision (a CPU-only torch cannot load the CUDA wheel)."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def run_hf(model_dir, tmp_path, extra=()):
    root = tmp_path / "data"
    keys = ["k1", "k2", "k3"]
    make_clips(root, keys)
    manifest = write_manifest(tmp_path / "m.csv", keys)
    args = ["caption", str(manifest), "--root", str(root), "--captioner", "hf", "--model", str(model_dir)]
    args += ["--max-new-tokens", "6", "--batch-size", "2", "--device", "cpu", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(root / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["key"] for r in rows) == keys
    for row in rows:
        # Random weights give gibberish: the record (a status word and the text) is what is checked.
        assert row["captioner"] == "hf" and row["model"] == str(model_dir)
        assert row["status"] in {"ok", "empty", "repeated", "echoed"}, row
        assert row["status"] == "empty" or row["text"].strip()
    return rows


def test_hf_image_model_captions_frames_end_to_end(tmp_path):
    model_dir = make_llava_folder(tmp_path / "llava")
    run_hf(model_dir, tmp_path, ["--hf-input", "frames"])


def test_hf_image_model_refuses_video_input(tmp_path):
    model_dir = make_llava_folder(tmp_path / "llava")
    with pytest.raises(CaptionError, match="takes no video"):
        HFCaptioner(str(model_dir), video_input="video", device="cpu")


@pytest.mark.skipif(not torchvision_works(), reason="transformers video processors need a working torchvision")
def test_hf_video_model_end_to_end(tmp_path):
    model_dir = make_llava_next_video_folder(tmp_path / "llava-next-video")
    captioner = HFCaptioner(str(model_dir), max_new_tokens=4, device="cpu")
    assert captioner.video_input == "video"
    frames = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    assert len(captioner.caption([CaptionInput("a", frames), CaptionInput("b", frames[::-1].copy())])) == 2
    run_hf(model_dir, tmp_path)


def test_hf_needs_a_model(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", ["k1"])
    result = CliRunner().invoke(app, ["caption", str(manifest), "--root", str(tmp_path), "--captioner", "hf"])
    assert result.exit_code == 2
    assert "needs --model" in result.output
