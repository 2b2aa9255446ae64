"""Part fine-tuning: LoRA adapters and chosen modules train, nothing else moves; merged weights compute what the
adapters do; the adapter files load in peft; a LoRA run resumes exactly and its checkpoint generates as a plain one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.fixtures.shards import write_latent_shards
from tests.model.util import inputs
from uniform_cli.config import PRESETS, TrainConfig, recipe_from_dict
from uniform_cli.model.uniform import build_model
from uniform_cli.train.finetune import (
    ADAPTER_PREFIX,
    EMA_NAME,
    FinetuneError,
    apply_finetuning,
    has_adapters,
    merged,
    save_weights,
)
from uniform_cli.types import AV, Task

DEBUG = PRESETS["debug"]
LORA = TrainConfig(lora_rank=4, trainable=["task_embedder", "temporal_blocks.1"])
TASKS = torch.tensor([int(Task.T2AV), int(Task.V2A)])


def _masks():
    from uniform_cli.diffusion.tasks import task_masks

    return task_masks(TASKS, DEBUG.video_latent[1])


def _forward(model, seed: int = 0) -> AV:
    torch.manual_seed(seed)
    x, t, text, mask = inputs(DEBUG)
    with torch.no_grad():
        return model.eval()(x, t, _masks(), text, mask)


def _adapted_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(DEBUG)
    report = apply_finetuning(model, LORA)
    with torch.no_grad():  # B starts at zero; make the adapters do something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, report


def test_only_adapters_and_the_named_modules_train():
    torch.manual_seed(0)
    model = build_model(DEBUG)
    before = _forward(model)
    report = apply_finetuning(model, LORA)
    after = _forward(model)
    assert torch.equal(before.video, after.video)  # B = 0: the adapted model computes what it did
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith(("task_embedder.", "temporal_blocks.1.")) for n in trainable)
    assert "task_embedder.weight" in trainable and "temporal_blocks.1.attn.qkv.weight" in trainable
    assert not any(name.startswith("temporal_blocks.1.") for name in report.adapted)  # trained in full instead
    assert "spatial_blocks.0.attn.qkv" in report.adapted and "y_embedder.y_proj.fc1" not in report.adapted
    assert report.trainable == sum(model.get_parameter(n).numel() for n in trainable) < report.total
    assert "trainable" in report.summary()


def test_a_full_finetune_changes_nothing_and_bad_names_are_errors():
    model = build_model(DEBUG)
    report = apply_finetuning(model, TrainConfig())
    assert report.trainable == report.total and not report.adapted and not has_adapters(model)
    with pytest.raises(FinetuneError, match="temporal_block .*top-level modules: .*temporal_blocks"):
        apply_finetuning(build_model(DEBUG), TrainConfig(trainable=["temporal_block"]))
    with pytest.raises(FinetuneError, match="match no linear layer"):
        apply_finetuning(build_model(DEBUG), TrainConfig(lora_rank=2, lora_targets=["attn.qkvx"]))


def test_merged_weights_equal_the_adapters_forward_and_peft_reads_the_adapter_files(tmp_path):
    from peft import set_peft_model_state_dict

    from uniform_cli.model.checkpoint import load_pretrained

    model, _ = _adapted_model()
    out = _forward(model)
    plain = merged(model)
    assert not has_adapters(plain) and has_adapters(model)
    torch.testing.assert_close(_forward(plain).video, out.video, rtol=1e-5, atol=1e-5)
    save_weights(model, tmp_path)
    assert set(load_file(tmp_path / EMA_NAME)) == set(model.state_dict())
    loaded = load_pretrained(tmp_path)  # what generate loads: a plain UniForm
    torch.testing.assert_close(_forward(loaded).audio, out.audio, rtol=1e-5, atol=1e-5)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    fresh, _ = _adapted_model(seed=1)  # other adapters, the same base
    adapters = {k.removeprefix(ADAPTER_PREFIX): v for k, v in load_file(tmp_path / "adapter_model.safetensors").items()}
    assert all(k.startswith(ADAPTER_PREFIX) for k in load_file(tmp_path / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(fresh, adapters)
    assert not result.unexpected_keys
    base = {n: p for n, p in model.state_dict().items() if "lora_" not in n}
    fresh.load_state_dict({**fresh.state_dict(), **base})  # the base and the full-trained modules are the run's
    torch.testing.assert_close(_forward(fresh).video, out.video)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "shards"
    return write_latent_shards(folder, 8, DEBUG.video_latent, DEBUG.audio_latent, DEBUG.text_dim, per_shard=4)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A "trained" UniForm to fine-tune: every parameter random (a fresh model's zero final layer would pass no
    gradient to the adapters)."""
    from uniform_cli.model.checkpoint import save_pretrained

    torch.manual_seed(0)
    model = build_model(DEBUG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_pretrained(model, tmp_path_factory.mktemp("pretrained"))


def _recipe(out, shards, name: str, init, **train):
    return recipe_from_dict({
        "model": {"preset": "debug"},
        "data": {"shards": [str(shards)], "num_workers": 0, "task_sampling": "sample", "shuffle_buffer": 4},
        "train": {"name": name, "output_dir": str(out), "steps": 4, "batch_size": 2, "micro_batch": 2, "lr": 1e-2,
                  "checkpoint_every": 2, "keep_last": 3, "deterministic": True, "lora_rank": 4,
                  "trainable": ["task_embedder"], "init_from": f"uniform:{init}", **train},
    })


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_lora_run_moves_only_adapters_resumes_exactly_and_its_checkpoint_generates(tmp_path, shards, pretrained):
    from rich.console import Console

    from uniform_cli.model.checkpoint import load_pretrained
    from uniform_cli.train.loop import setup, train
    from uniform_cli.train.step import train_step

    run = setup(_recipe(tmp_path, shards, "by_hand", pretrained), None, Console(quiet=True))
    module = run.parts.engine.module
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    for step in range(2):
        train_step(run.parts, run.batches, step)
    moved = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n or n.startswith("task_embedder.") for n in moved)
    assert any("lora_B" in n for n in moved)

    whole = train(_recipe(tmp_path, shards, "whole", pretrained))
    halves = _recipe(tmp_path, shards, "halves", pretrained)
    train(halves, stop_after=2)
    train(halves, resume="latest")
    assert _losses(tmp_path / "halves") == _losses(whole)
    ckpt = whole / "checkpoints" / "step_000004"
    other = tmp_path / "halves" / "checkpoints" / "step_000004"
    assert load_file(ckpt / EMA_NAME).keys() == load_file(other / EMA_NAME).keys()
    assert all(torch.equal(v, load_file(other / EMA_NAME)[k]) for k, v in load_file(ckpt / EMA_NAME).items())
    model = load_pretrained(ckpt)  # the merged EMA: what `uniform generate --checkpoint` loads
    assert not has_adapters(model) and not any("lora" in k for k in model.state_dict())
    assert torch.isfinite(_forward(model).video).all()


def test_dry_run_prints_trainable_and_total_parameters(tmp_path, shards, pretrained):
    from uniform_cli.cli.main import app
    from uniform_cli.config import recipe_to_toml

    path = tmp_path / "lora.toml"
    path.write_text(recipe_to_toml(_recipe(tmp_path, shards, "dry", pretrained)))
    result = CliRunner().invoke(app, ["train", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "parameters trainable" in result.output and "LoRA on" in result.output
    bad = CliRunner().invoke(app, ["train", str(path), "--dry-run", "--set", 'train.trainable=["nothing"]'])
    assert bad.exit_code == 2 and "names no module" in bad.output
