import re
from pathlib import Path

import pytest
import tomllib

from uniform_cli.config import (
    CodecConfig,
    ConfigError,
    GenerateConfig,
    TrainConfig,
    load_recipe,
    recipe_from_dict,
    recipe_to_toml,
    with_codec_overrides,
)

RECIPES = sorted(Path(__file__).parents[1].joinpath("recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_round_trips(path):
    recipe = load_recipe(path)
    assert recipe_from_dict(tomllib.loads(recipe_to_toml(recipe))) == recipe
    assert path.read_text().startswith("#"), "every recipe starts with a comment header"


def test_multitask_recipe_is_the_paper():
    r = load_recipe(Path(__file__).parents[1] / "recipes/multitask.toml")
    assert (r.model.hidden_size, r.model.depth, r.model.num_heads) == (1152, 28, 16)
    assert (r.train.batch_size, r.train.lr, r.train.warmup_steps) == (32, 1e-4, 1000)
    assert r.data.text_drop == 0.5
    assert (r.data.fps, r.data.size, r.data.frames, r.data.samples) == (17, 256, 68, 64000)
    assert r.diffusion.num_timesteps == 1000


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\npreset = "debug"\ndeepth = 3\n')
    with pytest.raises(ConfigError, match=r"bad\.toml.*model\.deepth"):
        load_recipe(path)
    path.write_text("[trian]\nsteps = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*\[trian\]"):
        load_recipe(path)


def test_wrong_types_and_cross_field_checks(tmp_path):
    with pytest.raises(ConfigError, match="train.steps must be int"):
        recipe_from_dict({"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="not a multiple of micro_batch"):
        recipe_from_dict({"train": {"batch_size": 5, "micro_batch": 2}})
    with pytest.raises(ConfigError, match="unknown preset"):
        recipe_from_dict({"model": {"preset": "XXL/9"}})
    with pytest.raises(ConfigError, match="unknown jobs"):
        recipe_from_dict({"data": {"task_weights": {"t2v": 1.0}}})


def test_preset_then_overrides(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[model]\npreset = "XL/2"\ndepth = 4\n')
    r = load_recipe(path, ["model.num_heads=8", "train.lr=3e-4", 'data.shards=["a", "b"]', "train.name=run-7"])
    assert (r.model.hidden_size, r.model.depth, r.model.num_heads) == (1152, 4, 8)
    assert r.train.lr == 3e-4 and r.data.shards == ["a", "b"] and r.train.name == "run-7"
    with pytest.raises(ConfigError, match="model.nope"):
        load_recipe(path, ["model.nope=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_recipe(path, ["model.depth"])


def test_float_fields_accept_ints_and_tuples_accept_lists():
    r = recipe_from_dict({"train": {"lr": 1, "adam_betas": [0.9, 0.95]}, "model": {"patch_size": [1, 2, 2]}})
    assert isinstance(r.train.lr, float) and r.train.adam_betas == (0.9, 0.95) and r.model.patch_size == (1, 2, 2)


def test_recipe_errors_keep_table_names_and_name_bad_encodings(tmp_path):
    from typer.testing import CliRunner

    from uniform_cli.cli.main import app

    bom = tmp_path / "bom.toml"
    bom.write_bytes("\ufeff[model]\npreset = \"debug\"\n".encode())
    assert load_recipe(bom).model.preset == "debug"
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# caf\xe9\n[model]\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 5\)"):
        load_recipe(latin)
    markup = tmp_path / "markup.toml"  # a table named like console markup is printed, not applied
    markup.write_text("[bold]\nx = 1\n")
    result = CliRunner().invoke(app, ["train", str(markup), "--dry-run"])
    assert result.exit_code == 2 and "unknown table [bold] (known:" in result.output


@pytest.mark.parametrize("key,value,choices", [
    ("generate.sampler", "heun", "'ddpm', 'ddim', 'dpm++', 'euler'"),
    ("diffusion.objective", "edm", "'iddpm', 'rflow'"),
    ("diffusion.prediction", "noise", "'eps', 'v', 'x0'"),
    ("data.task_sampling", "batch", "'iteration', 'sample'"),
    ("train.precision", "fp16", "'bf16', 'fp32'"),
    ("train.zero_stage", 4, "0, 1, 2, 3"),
    ("codec.video", "pixels", "'opensora', 'pixel'"),
    ("codec.audio", "wav", "'audioldm', 'mel'"),
])
def test_fixed_choices_are_checked_by_the_loader_naming_key_and_choices(tmp_path, key, value, choices):
    section, name = key.split(".")
    path = tmp_path / "r.toml"
    path.write_text(f"[{section}]\n{name} = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=rf"r\.toml: {re.escape(key)} must be one of {re.escape(choices)}, not"):
        load_recipe(path)


def test_a_choice_must_also_have_the_choices_type():
    with pytest.raises(ConfigError, match="train.zero_stage must be one of 0, 1, 2, 3, not '2'"):
        recipe_from_dict({"train": {"zero_stage": "2"}})
    with pytest.raises(ConfigError, match="train.zero_stage must be one of"):
        recipe_from_dict({"train": {"zero_stage": True}})  # bool is an int to Python, not to a recipe
    assert recipe_from_dict({"train": {"zero_stage": 2, "precision": "bf16"}}).train.zero_stage == 2


def test_configs_built_in_code_check_their_choices_too():
    with pytest.raises(ConfigError, match=re.escape("generate.sampler must be one of 'ddpm', 'ddim', 'dpm++', 'euler', not 'heun'")):
        GenerateConfig(sampler="heun")
    with pytest.raises(ConfigError, match="train.precision"):
        TrainConfig(precision="fp16")


def test_codec_flags_name_either_a_weight_free_codec_or_weights():
    free = with_codec_overrides(CodecConfig(), video_vae="pixel", audio_vae="mel")
    assert (free.video, free.video_vae, free.audio, free.audio_vae) == ("pixel", "pixel", "mel", "mel")
    weights = with_codec_overrides(free, video_vae="models/vae", audio_vae="./mel", text_encoder="none")
    assert (weights.video, weights.video_vae) == ("opensora", "models/vae")
    assert (weights.audio, weights.audio_vae) == ("audioldm", "./mel")  # a folder named like a codec
    assert weights.text_encoder == "none"
    assert with_codec_overrides(free) == free
