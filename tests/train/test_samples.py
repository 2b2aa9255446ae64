"""Training you can watch: DeepSpeed's monitors (TensorBoard, CSV) get the metrics, the EMA model samples fixed jobs
into samples/step_N/ and TensorBoard, and sampling leaves the training (and exact resume) as it was."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from uniform_cli.cli.main import app
from uniform_cli.config import CodecConfig, DataConfig, recipe_from_dict, recipe_to_toml
from uniform_cli.train.loop import train

CODEC = CodecConfig(video="pixel", audio="mel", video_vae="pixel", audio_vae="mel", text_encoder="hash")
CLIP = DataConfig(fps=17, size=32, seconds=4.0, sample_rate=16000)
CAPTIONS = ["a dog barks", "rain falls on a roof", "a man plays guitar", "birds chirp in a forest"]
PROMPTS = ["a dog barks loudly", "a car engine starts"]
TASKS = ("t2av", "a2v", "v2a")


def _clip(i: int) -> tuple[np.ndarray, np.ndarray]:
    """A 4 s, 32 px clip: a colour ramp drifting at its own speed, and a tone of its own pitch."""
    t = np.arange(CLIP.clip.frames)[:, None, None]
    x = np.arange(CLIP.size)[None, None, :] + 0 * np.arange(CLIP.size)[None, :, None]
    frames = np.stack([(x * 6 + (i + 1) * t) % 256, (x * 3 + 40 * i) % 256 + 0 * t, 128 + 0 * x + 0 * t], -1)
    s = np.arange(CLIP.clip.samples) / CLIP.sample_rate
    return frames.astype(np.uint8), (0.4 * np.sin(2 * np.pi * (300 + 150 * i) * s)).astype(np.float32)


def write_av_shards(folder: Path, splits: dict[str, int]) -> Path:
    """Clips encoded by the weight-free codecs and hash text (what `uniform encode --recipe recipes/debug.toml`
    stores), written by the encode stage's shard writer into `folder` with its index."""
    from uniform_cli.latents.codecs import build_audio_codec, build_video_codec
    from uniform_cli.latents.encode import codec_info
    from uniform_cli.latents.shard_writer import LatentSample, SplitShardWriter
    from uniform_cli.latents.shards import clip_settings, write_index
    from uniform_cli.latents.text import TextEncoder
    from uniform_cli.stage import Part

    video, audio = build_video_codec(CODEC), build_audio_codec(CODEC)
    text = TextEncoder.from_pretrained(CODEC.text_encoder, max_length=8)
    codecs = {**codec_info(CODEC, video, audio, text, torch.float32), "clip": clip_settings(CLIP)}
    shapes = {"video": [24, 20, 4, 4], "audio": [16, 100, 4], "text_dim": text.dim}
    n = 0
    for split, count in splits.items():
        writer = SplitShardWriter(folder, split, Part(), 4, lambda: (codecs, shapes), lambda stats: None)
        for _ in range(count):
            frames, wave = _clip(n)
            caption = CAPTIONS[n % len(CAPTIONS)]
            emb, mask = text([caption])
            latents = (video.encode(torch.from_numpy(frames)[None])[0], audio.encode(torch.from_numpy(wave)[None])[0],
                       emb[0][mask[0]])
            key = f"{split}{n:03d}"
            writer.write(LatentSample(key, *(x.numpy().astype(np.float16) for x in latents[:2]), caption,
                                      {"key": key, "split": split}, latents[2].numpy().astype(np.float16)))
            n += 1
        writer.close()
    write_index(folder)
    return folder


@pytest.fixture(scope="module")
def av_shards(tmp_path_factory):
    return write_av_shards(tmp_path_factory.mktemp("av") / "shards", {"train": 8, "val": 2})


def av_recipe(out: Path, shards: Path, name: str, deepspeed: dict | None = None, **train_overrides):
    settings = {
        "name": name, "output_dir": str(out), "steps": 4, "batch_size": 4, "micro_batch": 2, "lr": 1e-3,
        "warmup_steps": 1, "checkpoint_every": 100, "keep_last": 2, "deterministic": True,
        "sample_every": 2, "sample_prompts": PROMPTS, "sample_clips": 1,
    }
    settings.update(train_overrides)
    return recipe_from_dict({
        "model": {"preset": "debug", "video_latent": [24, 20, 4, 4], "audio_latent": [16, 100, 4], "text_dim": 32,
                  "text_len": 8},
        "diffusion": {"prediction": "v"},
        "codec": {"video": "pixel", "audio": "mel", "video_vae": "pixel", "audio_vae": "mel", "text_encoder": "hash"},
        "data": {"fps": 17, "size": 32, "seconds": 4.0, "sample_rate": 16000, "shards": [str(shards)],
                 "num_workers": 0, "task_sampling": "sample", "shuffle_buffer": 4},
        "train": settings,
        "generate": {"sampler": "ddim", "steps": 2, "cfg_video": 2.0, "cfg_audio": 2.0, "batch_size": 4},
        "deepspeed": deepspeed or {},
    })


MONITORS = {"tensorboard": {"enabled": True}, "csv_monitor": {"enabled": True}}


@pytest.fixture(scope="module")
def watched(tmp_path_factory, av_shards) -> Path:
    """A 4-step run that samples every 2 steps, with DeepSpeed's TensorBoard and CSV monitors on."""
    return train(av_recipe(tmp_path_factory.mktemp("runs"), av_shards, "watched", MONITORS))


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def mel_pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_samples_of_each_task_are_written_every_n_steps_as_mp4_with_sound_and_mel_image(watched):
    folders = sorted(p.name for p in (watched / "samples").iterdir())
    assert folders == ["step_000002", "step_000004"]
    ids = ["t2av_0", "t2av_1", "a2v_0", "v2a_0"]
    for folder in folders:
        step = watched / "samples" / folder
        index = json.loads((step / "samples.json").read_text())
        assert sorted(index) == sorted(ids)
        assert [index[f"t2av_{i}"]["caption"] for i in range(2)] == PROMPTS
        assert index["v2a_0"]["source"] == "val008"  # the first clip of the held-out split
        assert index["a2v_0"] == {"task": "a2v", "caption": CAPTIONS[8 % 4], "source": "val008"}
        for name in ids:
            with av.open(str(step / f"{name}.mp4")) as clip:
                frames = sum(1 for _ in clip.decode(video=0))
                clip.seek(0)
                samples = sum(f.samples for f in clip.decode(audio=0))
            assert frames == 68 and abs(samples - 64000) <= 2048, name  # AAC pads to whole frames
            mel = mel_pixels(step / f"{name}.png")
            assert mel.shape == (64, 400) and mel.dtype == np.uint8 and mel.max() == 255, name
    first, last = (mel_pixels(watched / "samples" / f / "t2av_0.png") for f in folders)
    assert not np.array_equal(first, last)  # sampled with the EMA weights of each step


def test_metrics_and_samples_reach_tensorboard_through_deepspeeds_monitor(watched):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(watched / "tensorboard"), size_guidance={"images": 0, "audio": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    records = [json.loads(line) for line in (watched / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "grad_norm", "lr", "samples_per_s"):
        logged = events.Scalars(f"train/{key}")
        assert [e.step for e in logged] == [1, 2, 3, 4], key
        assert [e.value for e in logged] == pytest.approx([r[key] for r in records], rel=1e-6), key
    assert any(t.startswith("train/loss_") and t[len("train/loss_"):] in TASKS for t in tags["scalars"])
    assert "Train/Samples/lr" in tags["scalars"]  # DeepSpeed's own events land in the same place
    for name in ("t2av_0", "a2v_0", "v2a_0"):
        assert [e.step for e in events.Images(f"samples/{name}/frames")] == [2, 4]
        mel = events.Images(f"samples/{name}/mel")[-1]
        assert (mel.width, mel.height) == (400, 64)
        assert [e.step for e in events.Audio(f"samples/{name}/sound")] == [2, 4]
    strip = events.Images("samples/t2av_0/frames")[0]
    assert (strip.width, strip.height) == (8 * 32, 32)
    csv = (watched / "csv" / "train_loss.csv").read_text().splitlines()
    assert csv[0] == "step,loss" and len(csv) == 5  # DeepSpeed names the column by the last part


def test_sampling_changes_no_training_step_and_a_resumed_run_samples_the_same(tmp_path, av_shards, watched):
    plain = train(av_recipe(tmp_path, av_shards, "plain", sample_every=0))
    assert not (plain / "samples").exists()
    assert losses(watched) == losses(plain)
    halves = av_recipe(tmp_path, av_shards, "halves", sample_every=4)
    train(halves, stop_after=3)
    train(halves, resume="latest")
    assert losses(tmp_path / "halves") == losses(watched)
    assert sorted(p.name for p in (tmp_path / "halves" / "samples").iterdir()) == ["step_000004"]
    for name in ("t2av_1", "a2v_0", "v2a_0"):  # sampled after the resume, from the restored EMA
        assert np.array_equal(mel_pixels(tmp_path / "halves" / "samples" / "step_000004" / f"{name}.png"),
                              mel_pixels(watched / "samples" / "step_000004" / f"{name}.png")), name


def test_a_monitor_whose_package_is_missing_is_a_usage_error_before_any_work(tmp_path, av_shards):
    missing = next((key for key, package in (("wandb", "wandb"), ("comet", "comet_ml"))
                    if importlib.util.find_spec(package) is None), None)
    if missing is None:
        pytest.skip("wandb and comet_ml are both installed")
    runner = CliRunner()
    for name, table, words in (
        ("nopkg", {missing: {"enabled": True}}, f"[deepspeed] {missing}.enabled = true needs"),
        ("typo", {"tensorboard": {"enabld": True}}, "tensorboard.enabld"),
    ):
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(recipe_to_toml(av_recipe(tmp_path, av_shards, name, table)))
        result = runner.invoke(app, ["train", str(recipe)])
        assert result.exit_code == 2 and words in result.output, result.output
        assert not (tmp_path / name).exists()


def test_sample_settings_are_checked():
    from uniform_cli.config import ConfigError, TrainConfig

    assert TrainConfig().sample_every == 0  # off unless asked for
    with pytest.raises(ConfigError, match="nothing to sample"):
        TrainConfig(sample_every=10, sample_prompts=[], sample_clips=0)
    with pytest.raises(ConfigError, match="sample_every"):
        TrainConfig(sample_every=-1)


def test_frame_strip_takes_evenly_spaced_frames_side_by_side():
    from uniform_cli.train.samples import frame_strip

    frames = np.arange(10)[:, None, None, None].repeat(2, 1).repeat(3, 2).repeat(3, 3).astype(np.uint8)
    strip = frame_strip(frames, count=4)
    assert strip.shape == (2, 12, 3) and list(strip[0, ::3, 0]) == [0, 3, 6, 9]
