"""Hub-ready folders: an exported pipeline loads back and generates what the original does, alone (moved away
from its parts) and by hub id from a hub-cache layout of what a push would upload, with HF_HUB_OFFLINE set."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.checkpoint import make_hub_cache
from uniform_cli.generate.hub import (
    CardInfo,
    PipelineError,
    check_repo_id,
    export_checkpoint,
    read_checkpoint_recipe,
    upload_operations,
)
from uniform_cli.generate.pipeline import UniFormPipeline
from uniform_cli.media.prepare import prepare_media

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return UniFormPipeline.from_pretrained(checkpoint, device="cpu")


def outputs(pipe: UniFormPipeline, frames: np.ndarray):
    """A T2AV and a V2A clip (text encoder, both codecs' encode and decode, guidance) at fixed seeds."""
    return pipe(["a dog barks", "rain on a roof"], ["t2av", "v2a"], video=[None, frames], sampler="ddpm",
                steps=2, seed=[3, 4])


def assert_same(a, b) -> None:
    for x, y in zip(a.frames + a.wave, b.frames + b.wave):
        np.testing.assert_array_equal(x, y)


def test_saved_with_weights_loads_alone_and_generates_the_same(pipe, media, tmp_path):
    frames = prepare_media(media["video"], pipe.spec, audio=False).video
    folder = pipe.save_pretrained(tmp_path / "export", with_weights=True)
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "recipe.toml", "README.md", "video_vae/config.json",
            "video_vae/model.safetensors", "audio_vae/vae/config.json", "audio_vae/vocoder/config.json",
            "text_encoder/config.json", "text_encoder/model.safetensors"} <= names
    recipe = tomllib.loads((folder / "recipe.toml").read_text())
    assert {k: recipe["codec"][k] for k in ("video_vae", "audio_vae", "text_encoder")} == {
        "video_vae": "./video_vae", "audio_vae": "./audio_vae", "text_encoder": "./text_encoder"}
    assert not (tmp_path / "export.partial").exists()

    moved = shutil.move(folder, tmp_path / "elsewhere" / "uniform")  # nothing in it points back
    again = UniFormPipeline.from_pretrained(moved, device="cpu")
    assert again.recipe.codec.video_vae == str(Path(moved) / "video_vae")
    assert_same(outputs(pipe, frames), outputs(again, frames))

    with pytest.raises(PipelineError, match="not an empty folder"):
        pipe.save_pretrained(moved)


def test_export_without_weights_keeps_configs_and_writes_a_model_card(checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    run = shutil.copytree(checkpoint, tmp_path / "step_000010")
    (run / "trainer_state.json").write_text(json.dumps({"step": 10, "samples": 20}))
    card = CardInfo(license="apache-2.0", datasets=("Loie/VGGSound",), repo_id="me/uniform-tiny")
    folder = export_checkpoint(run, tmp_path / "export", card=card)

    assert (folder / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    assert (folder / "audio_vae" / "vae" / "config.json").is_file()
    assert (folder / "text_encoder" / "tokenizer_config.json").is_file()
    assert not [p for p in folder.rglob("*.safetensors") if p.parent != folder]  # configs only
    original = read_checkpoint_recipe(checkpoint).codec
    assert read_checkpoint_recipe(folder).codec == original  # the parts still come from where they were

    model_card = ModelCard.load(folder / "README.md")
    data = model_card.data.to_dict()
    assert data["pipeline_tag"] == "text-to-video" and data["license"] == "apache-2.0"
    assert data["library_name"] == "uniform-cli" and data["datasets"] == ["Loie/VGGSound"]
    assert data["training_steps"] == 10 and data["recipe"] == "debug" and "arxiv.org/abs/" in data["paper"]
    assert {"video-to-audio", "audio-to-video", "text-to-audio"} <= set(data["tags"])
    assert "uniform generate prompts.csv --checkpoint me/uniform-tiny" in model_card.text
    assert 'UniFormPipeline.from_pretrained("me/uniform-tiny")' in model_card.text
    assert f"`{original.video_vae}`" in model_card.text  # where to get the weights left out


def test_what_a_push_uploads_loads_by_hub_id_offline(light_pipe, light_checkpoint, tmp_path, monkeypatch):
    import huggingface_hub.constants

    folder = export_checkpoint(light_checkpoint, tmp_path / "export")
    operations = upload_operations(folder)
    assert sorted(op.path_in_repo for op in operations) == ["README.md", "config.json", "model.safetensors",
                                                            "recipe.toml"]  # weight-free codecs: no part folders
    for op in operations:
        assert Path(op.path_or_fileobj).read_bytes() == (folder / op.path_in_repo).read_bytes()
    cache = tmp_path / "hub"
    make_hub_cache(cache, "me/uniform-light", operations)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    loaded = UniFormPipeline.from_pretrained("me/uniform-light", device="cpu", cache_dir=cache, download=True)
    assert loaded.checkpoint.parent.parent.name == "models--me--uniform-light"
    kwargs = dict(sampler="ddim", steps=2, seed=[1, 2])
    assert_same(light_pipe(["a ball bounces", "a lamp beeps"], "t2av", **kwargs),
                loaded(["a ball bounces", "a lamp beeps"], "t2av", **kwargs))

    with pytest.raises(PipelineError, match="HF_HUB_OFFLINE"):  # allowed to ask the hub, but offline
        UniFormPipeline.from_pretrained("me/not-cached", cache_dir=cache, download=True)
    with pytest.raises(PipelineError, match="hf download me/not-cached"):  # not allowed to ask: says how
        UniFormPipeline.from_pretrained("me/not-cached", cache_dir=cache)


def test_bad_repo_ids_and_pipelines_without_a_recipe_are_refused(light_pipe, tmp_path):
    with pytest.raises(PipelineError, match="not a hub repository id"):
        check_repo_id("me/two words")
    bare = UniFormPipeline(light_pipe.model, light_pipe.schedule, light_pipe.video_codec, light_pipe.audio_codec,
                           light_pipe.text_encoder, light_pipe.spec)
    with pytest.raises(PipelineError, match="without a recipe"):
        bare.save_pretrained(tmp_path / "x")
