"""Training on CPU with DeepSpeed (gloo): exact resume, checkpoint round trips, learning, early errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.fixtures.shards import write_latent_shards
from uniform_cli.cli.main import app
from uniform_cli.config import PRESETS, recipe_from_dict, recipe_to_toml
from uniform_cli.model.checkpoint import checkpoint_folder
from uniform_cli.train.loop import TrainingError, train

DEBUG = PRESETS["debug"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "shards"
    return write_latent_shards(folder, 8, DEBUG.video_latent, DEBUG.audio_latent, DEBUG.text_dim, per_shard=4)


def make_recipe(out: Path, shards: Path, name: str, **train_overrides):
    settings = {
        "name": name, "output_dir": str(out), "steps": 6, "batch_size": 4, "micro_batch": 2, "lr": 1e-3,
        "warmup_steps": 2, "checkpoint_every": 100, "keep_last": 2, "deterministic": True,
    }
    settings.update(train_overrides)
    return recipe_from_dict({
        "model": {"preset": "debug"},
        "data": {"shards": [str(shards)], "num_workers": 0, "task_sampling": "sample", "shuffle_buffer": 4},
        "train": settings,
    })


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resumed_run_repeats_the_uninterrupted_one_exactly(tmp_path, shards):
    whole = train(make_recipe(tmp_path, shards, "whole"))
    halves = make_recipe(tmp_path, shards, "halves")
    train(halves, stop_after=3)
    ckpt = tmp_path / "halves" / "checkpoints"
    assert (ckpt / "latest").read_text() == "step_000003"  # DeepSpeed's tag file
    with open(tmp_path / "halves" / "metrics.jsonl", "a") as f:  # logged by a run killed before its checkpoint
        f.write(json.dumps({"step": 4, "loss": -1.0}) + "\n" + '{"step": 5, "lo')
    train(halves, resume="latest")
    assert len(losses(whole)) == 6
    assert losses(tmp_path / "halves") == losses(whole)
    assert (ckpt / "latest").read_text() == "step_000006"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_000003", "step_000006"]
    record = json.loads((whole / "metrics.jsonl").read_text().splitlines()[-1])
    for field in ("grad_norm", "lr", "samples_per_s", "tokens_per_s", "memory_gb"):
        assert np.isfinite(record[field]), field
    assert record["grad_norm"] > 0
    assert any(k.startswith("loss_") for k in record)
    assert (whole / "recipe.toml").read_text() == recipe_to_toml(make_recipe(tmp_path, shards, "whole"))


def test_train_step_is_one_optimizer_step_over_its_micro_batches_and_the_one_train_logs(tmp_path, shards):
    from rich.console import Console

    from uniform_cli.train.loop import setup
    from uniform_cli.train.step import train_step

    logged = train(make_recipe(tmp_path, shards, "logged"), stop_after=1)
    run = setup(make_recipe(tmp_path, shards, "by_hand"), None, Console(quiet=True))
    engine, read = run.parts.engine, []

    def counted(batches):
        for batch in batches:
            read.append(batch)
            yield batch

    before = [p.detach().clone() for p in engine.module.parameters()]
    result = train_step(run.parts, counted(run.batches), 0)
    assert len(read) == 2 and engine.global_steps == 1  # batch 4 = 2 micro-batches of 2, one optimizer step
    assert result.loss.shape == result.job.shape == (4,)
    assert result.loss.mean().item() == losses(logged)[0]
    assert result.lr == pytest.approx(1e-3)  # 2 warmup steps: half the rate in step 0, the full rate after it
    assert any(not torch.equal(a, b) for a, b in zip(before, engine.module.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(run.parts.ema.parameters(), before))  # the EMA moved too


def test_checkpoint_round_trip_and_export(tmp_path, shards):
    from uniform_cli.model.checkpoint import load_pretrained
    from uniform_cli.model.uniform import build_model
    from uniform_cli.train.checkpoint import load_checkpoint, save_checkpoint
    from uniform_cli.train.ema import make_ema
    from uniform_cli.train.engine import build_engine, init_distributed

    recipe = make_recipe(tmp_path, shards, "rt", steps=3)
    run = train(recipe)
    folder = run / "checkpoints" / "step_000003"

    def restored(path):
        torch.manual_seed(123)  # different init: everything must come from the checkpoint
        model = build_model(recipe.model)
        engine = build_engine(model, recipe.train, 1)
        ema = make_ema(model)
        state = load_checkpoint(engine, ema, path, rank=0)
        return engine, ema, state

    init_distributed()
    engine, ema, state = restored(folder)
    assert state["step"] == 3 and state["samples_seen"] == 12 and state["batches_seen"] == 6
    save_checkpoint(engine, ema, tmp_path / "again", 3, {k: v for k, v in state.items() if k != "step"},
                    recipe_to_toml(recipe), rank=0, keep_last=1)
    engine2, ema2, state2 = restored(tmp_path / "again" / "step_000003")
    assert state2 == state
    for (name, a), b in zip(engine.module.state_dict().items(), engine2.module.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()):
        assert torch.equal(a, b)
    opt1, opt2 = engine.optimizer.state_dict(), engine2.optimizer.state_dict()
    assert opt1["state"].keys() == opt2["state"].keys() and len(opt1["state"]) > 0
    for k in opt1["state"]:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt1["state"][k][name], opt2["state"][k][name])
    # EMA differs from the raw weights (it averages), and the export is the EMA.
    exported = load_pretrained(folder)
    for (name, a), b in zip(exported.state_dict().items(), ema.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), engine.module.parameters()))


def test_each_task_learns_on_a_small_fixed_dataset(tmp_path, shards):
    run = train(make_recipe(tmp_path, shards, "learn", steps=60, batch_size=8, micro_batch=8, lr=3e-3,
                            warmup_steps=5, deterministic=False))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for task in ("t2av", "a2v", "v2a"):
        series = [r[f"loss_{task}"] for r in records if f"loss_{task}" in r]
        first, last = np.mean(series[:10]), np.mean(series[-10:])
        print(f"{task}: first 10 steps {first:.3f}, last 10 steps {last:.3f}")
        assert last < 0.8 * first, task


def test_span_jobs_train_and_each_drawn_job_is_logged(tmp_path, shards):
    from uniform_cli.diffusion.tasks import JOBS
    from uniform_cli.train.step import sample_jobs, step_generator

    recipe = make_recipe(tmp_path, shards, "spans", steps=3)
    recipe.data = dataclasses.replace(recipe.data, task_weights={"t2av": 1.0, "extend": 1.0, "retake": 1.0, "i2av": 1.0})
    run = train(recipe)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # steps done; train_step's index is one less
    logged = set()
    for step, record in enumerate(records):
        # batch 4 = 2 micro-batches of 2, each drawing its own jobs
        drawn = {JOBS[j] for micro in range(2)
                 for j in sample_jobs(recipe.data, 2, step_generator(recipe.train.seed, step, micro, 0)).tolist()}
        keys = {k for k in record if k.startswith("loss_")}
        assert keys == {f"loss_{name}" for name in drawn}, step
        assert all(np.isfinite(record[k]) for k in keys) and np.isfinite(record["loss"])
        logged |= drawn
    assert {"extend", "retake", "i2av"} <= logged


def test_bad_recipe_and_missing_shards_fail_before_any_work(tmp_path, shards):
    runner = CliRunner()
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\npreset = "debug"\n[train]\nstepz = 3\n')
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2 and "train.stepz" in result.output and "bad.toml" in result.output
    missing = tmp_path / "missing.toml"
    missing.write_text(f'[train]\noutput_dir = "{tmp_path / "runs"}"\n[data]\nshards = ["{tmp_path / "nope"}"]\n')
    result = runner.invoke(app, ["train", str(missing)])
    assert result.exit_code == 1 and "nope" in result.output
    assert not (tmp_path / "runs").exists()
    result = runner.invoke(app, ["train", str(missing), "--set", "model.preset=XL/2", "--dry-run"])
    assert result.exit_code == 0 and "tokens per sample: 6,400" in result.output
    assert "objective: iddpm, eps prediction, 1000 steps" in result.output
    result = runner.invoke(app, ["train", str(missing), "--set", "model.preset=XL/2", "--set", 'diffusion.objective="rflow"',
                                 "--set", 'generate.sampler="euler"', "--dry-run"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "objective: rflow, velocity target, logit-normal times, shift 2.24" in text


def test_nonfinite_loss_stops_with_a_diagnosis(tmp_path):
    folder = write_latent_shards(tmp_path / "shards", 4, DEBUG.video_latent, DEBUG.audio_latent, DEBUG.text_dim)
    # Spoil every sample's video after writing: the writer itself refuses nothing numeric.
    recipe = make_recipe(tmp_path, folder, "nan", lr=1e30, steps=20)
    with pytest.raises(TrainingError, match="nonfinite_step"):
        train(recipe)
    diag = sorted((tmp_path / "nan").glob("nonfinite_step_*"))
    assert diag and (diag[0] / "batch_rank0.safetensors").is_file() and (diag[0] / "model.safetensors").is_file()


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path, shards):
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(recipe_to_toml(make_recipe(tmp_path, shards, "sig", steps=100000, checkpoint_every=100000)))
    cmd = [sys.executable, "-m", "uniform_cli.cli.main", "train", str(recipe_path)]
    # A fresh process group: none of this process's rendezvous settings.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    metrics = tmp_path / "sig" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out  # saved, but not finished: a job script must see it
    assert "stopped by signal 15" in out
    latest = checkpoint_folder(tmp_path / "sig" / "checkpoints" / "latest")
    step = json.loads((latest / "trainer_state.json").read_text())["step"]
    assert step >= 3 and len(metrics.read_text().splitlines()) == step


def test_a_recipe_whose_codecs_differ_from_the_shards_is_refused_before_step_0(tmp_path, shards):
    from uniform_cli.latents.shard_info import ShardDataError

    recipe = make_recipe(tmp_path, shards, "othercodec")
    recipe.codec.video = "pixel"
    recipe.codec.text_encoder = "google/t5-v1_1-base"
    with pytest.raises(ShardDataError) as err:
        train(recipe)
    text = str(err.value)
    assert "video: the shards hold opensora (hpcai-tech/OpenSora-VAE-v1.2), the recipe says pixel" in text
    assert "text: the shards hold embeddings of DeepFloyd/t5-v1_1-xxl, the recipe says google/t5-v1_1-base" in text
    assert not (tmp_path / "othercodec").exists()
    fps = make_recipe(tmp_path, shards, "otherfps")
    fps.data = dataclasses.replace(fps.data, fps=24)
    with pytest.raises(ShardDataError, match=r"clips: the shards hold \{'fps': 17, .*the recipe's \[data\] says \{'fps': 24"):
        train(fps)


def test_a_read_only_output_folder_is_a_clear_stop(tmp_path, shards):
    from tests.fixtures.filesystems import tmpfs

    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        recipe = tmp_path / "r.toml"
        recipe.write_text(recipe_to_toml(make_recipe(ro, shards, "ro")))
        result = CliRunner().invoke(app, ["train", str(recipe)])
    assert result.exit_code == 1 and "Read-only file system" in result.output
    assert isinstance(result.exception, SystemExit)


def test_rflow_recipe_trains_and_opensora_weights_with_iddpm_warn(tmp_path, shards):
    from safetensors.torch import save_file

    from tests.model.test_checkpoint import opensora_shapes
    from uniform_cli.model.uniform import build_model
    from uniform_cli.train.loop import OPENSORA_OBJECTIVE, initial_weights

    recipe = make_recipe(tmp_path, shards, "flow")
    recipe = dataclasses.replace(recipe, diffusion=dataclasses.replace(recipe.diffusion, objective="rflow"),
                                 generate=dataclasses.replace(recipe.generate, sampler="euler"))
    run = train(recipe, stop_after=2)
    assert len(losses(run)) == 2 and all(np.isfinite(losses(run)))
    g = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(*s, generator=g) * 0.1 for k, s in opensora_shapes().items()},
              str(tmp_path / "model.safetensors"))
    spec = f"opensora:{tmp_path / 'model.safetensors'}"
    assert OPENSORA_OBJECTIVE in initial_weights(build_model(DEBUG), spec, "iddpm")
    assert "WARNING" not in initial_weights(build_model(DEBUG), spec, "rflow")
