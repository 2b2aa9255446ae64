"""`uniform app`: a request runs as a `uniform generate` row does, bad requests say why, a missing gradio names
the extra, and one V2A job driven through the real app in headless chromium gives a video that plays."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.fixtures.browser import chromium_driver, media_report
from tests.fixtures.checkpoint import make_checkpoint, tiny_model_config
from uniform_cli.app import AppError, Request, run_request
from uniform_cli.cli.main import app as cli
from uniform_cli.media.io import read_audio, read_video, write_mp4


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """A random tiny model over the weight-free codecs at 32 px (as tests/generate's light_checkpoint), loaded
    from its checkpoint folder the way `uniform app` loads one."""
    from uniform_cli.config import CodecConfig, DataConfig, DiffusionConfig, GenerateConfig
    from uniform_cli.generate.pipeline import UniFormPipeline

    codec = CodecConfig(video="pixel", audio="mel", video_vae="pixel", audio_vae="mel", text_encoder="hash:16")
    folder = make_checkpoint(tmp_path_factory.mktemp("app") / "ckpt", codec,
                             model=tiny_model_config(video_latent=(24, 20, 4, 4), audio_latent=(16, 100, 4)),
                             data=DataConfig(fps=17, size=32, seconds=4.0, sample_rate=16000),
                             generate=GenerateConfig(sampler="ddim", steps=2, cfg_video=2.0, cfg_audio=2.0),
                             diffusion=DiffusionConfig(prediction="v"))
    return UniFormPipeline.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="module")
def upload(tmp_path_factory) -> Path:
    """A 2 s, 25 fps, 96x128 mp4 with a quiet tone: what a user would upload for V2A."""
    frames = np.zeros((50, 96, 128, 3), np.uint8)
    frames[..., 0] = (np.arange(50) * 5)[:, None, None]
    frames[:, 30:60, 40:80, 1] = 200
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    path = tmp_path_factory.mktemp("upload") / "my clip.mp4"
    write_mp4(path, frames, 25, audio=tone, sample_rate=16000)
    return path


def test_a_request_runs_as_a_generate_row_and_keeps_the_users_video(pipe, upload, tmp_path):
    out = run_request(pipe, tmp_path, Request("v2a", text="rain on a roof", video=str(upload), seed=5, steps=2))
    frames, fps = read_video(out.mp4)
    source, source_fps = read_video(upload)
    assert fps == source_fps == 25 and np.array_equal(frames, source)  # the upload's own stream, copied
    sound, rate = read_audio(out.wav)
    assert rate == 16000 and len(sound) == 32000  # as long as the video
    record = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert (record["id"], record["task"], record["seed"], record["text"]) == (out.mp4.stem, "v2a", 5, "rain on a roof")
    assert Path(record["video"]).parent == tmp_path / "inputs"  # the upload was copied: the folder stands alone
    assert "rain on a roof" in out.csv.read_text()
    result = CliRunner().invoke(cli, ["gallery", str(tmp_path)])  # an app folder is a generate folder
    assert result.exit_code == 0, result.output


def test_a_request_that_cannot_run_says_what_is_missing(pipe, upload, tmp_path):
    with pytest.raises(AppError, match="extend needs the output length"):
        run_request(pipe, tmp_path, Request("extend", video=str(upload)))
    with pytest.raises(AppError, match="a2v needs an audio"):
        run_request(pipe, tmp_path, Request("a2v", text="drums"))
    with pytest.raises(AppError, match="span 3-9 is not inside the output"):
        run_request(pipe, tmp_path, Request("retake", video=str(upload), span_start=3, span_end=9, modality="audio"))
    assert not list(tmp_path.glob("*.mp4"))


def test_without_gradio_the_command_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` meets when it is not installed
    result = CliRunner().invoke(cli, ["app", "--checkpoint", str(tmp_path)])
    assert result.exit_code == 2
    assert "pip install 'uniform[app]'" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_v2a_job_through_the_app_in_chromium_plays(pipe, upload, tmp_path):
    if os.environ.get("CI") is None:
        pytest.importorskip("gradio", reason="the app needs gradio: pip install 'uniform[app]'")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from uniform_cli.app import launch

    with chromium_driver() as driver:
        server = launch(pipe, tmp_path, port=_free_port(), block=False)
        try:
            assert server.local_url.startswith("http://127.0.0.1:")  # not on the network unless asked
            driver.get(server.local_url)
            wait = WebDriverWait(driver, 90)
            wait.until(lambda d: d.find_elements(By.ID, "tab-v2a-button"))[0].click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#v2a-video input[type=file]"))[0].send_keys(
                str(upload))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#v2a-video video"))
            driver.find_element(By.ID, "v2a-run").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#v2a-out-video video[src]"))
            played = {item["src"]: item for item in media_report(driver) if item["tag"] == "video"}
        finally:
            server.close()
    made = [item for src, item in played.items() if src.endswith(".mp4") and "v2a-" in src.rsplit("/", 1)[-1]]
    assert len(made) == 1, played
    video = made[0]
    assert video["error"] is None and 1.9 < video["duration"] < 2.2 and video["time"] > 0, video
    assert video["video_bytes"] > 0 and video["audio_bytes"] > 0, video  # picture and the new sound decode
    assert len(list(tmp_path.glob("v2a-*.mp4"))) == 1 and (tmp_path / "results.jsonl").is_file()
