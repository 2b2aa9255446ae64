"""`--video-vae pixel` / `--audio-vae mel` select the weight-free codecs in `uniform generate` and `uniform encode`
(both commands apply their codec flags with `config.with_codec_overrides`)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tests.fixtures.checkpoint import make_checkpoint, tiny_model_config
from uniform_cli.cli.main import app
from uniform_cli.config import CodecConfig, DataConfig, GenerateConfig

# 4 s clips of 32 x 32 pixels: the pixel codec makes [24, 20, 4, 4] of them, the mel codec [16, 100, 4].
DATA = DataConfig(fps=17, size=32, seconds=4.0, sample_rate=16000)


def test_generate_takes_the_weight_free_codecs_in_place_of_missing_vaes(tmp_path: Path) -> None:
    missing = CodecConfig(video_vae=str(tmp_path / "no-vae"), audio_vae=str(tmp_path / "no-audioldm"),
                          text_encoder="hash:16")
    model = tiny_model_config(video_latent=(24, 20, 4, 4), audio_latent=(16, 100, 4))
    checkpoint = make_checkpoint(tmp_path / "ckpt", missing, model=model, data=DATA,
                                 generate=GenerateConfig(sampler="ddim", steps=2, batch_size=1))
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,text\nball,a ball bounces\n")
    args = ["generate", str(prompts), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
            "--device", "cpu"]

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "does not exist" in result.output  # the recipe's VAEs are not there

    result = CliRunner().invoke(app, [*args, "--video-vae", "pixel", "--audio-vae", "mel"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "ball.mp4").is_file() and (tmp_path / "out" / "ball.wav").is_file()


def test_encode_takes_the_weight_free_codecs_in_place_of_the_recipes(tmp_path: Path) -> None:
    from tests.latents.test_encode import make_dataset
    from uniform_cli.latents.shard_info import shard_info

    data = DataConfig(fps=17, size=32, seconds=1.0, sample_rate=16000)
    root = tmp_path / "data"
    manifest = make_dataset(root, ["a", "b"], data)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'[data]\nsize = 32\nseconds = 1.0\n\n[codec]\nvideo_vae = "{tmp_path / "no-vae"}"\n'
                      f'audio_vae = "{tmp_path / "no-audioldm"}"\ntext_encoder = "hash:16"\n')
    result = CliRunner().invoke(app, ["encode", str(manifest), "--root", str(root), "--recipe", str(recipe),
                                      "--video-vae", "pixel", "--audio-vae", "mel", "--device", "cpu",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    info = shard_info([root / "shards"])
    assert info.video_shape == (24, 5, 4, 4) and info.audio_shape == (16, 25, 4)
    assert (info.codecs["video"]["codec"], info.codecs["audio"]["codec"]) == ("pixel", "mel")
