"""The DeepSpeed engine as `uniform train` builds it: its checkpoints never unpickle code."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from tests.train.test_loop import losses, make_recipe, shards  # noqa: F401 (shards is a fixture)
from uniform_cli.model.checkpoint import checkpoint_folder
from uniform_cli.train.loop import train


class _Planted:
    """Unpickling this writes a file: what an attacker's code would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_a_planted_pickle_and_runs_nothing(tmp_path, shards):  # noqa: F811
    recipe = make_recipe(tmp_path, shards, "planted", steps=4)
    train(recipe, stop_after=2)
    states = checkpoint_folder(tmp_path / "planted" / "checkpoints" / "latest") / "mp_rank_00_model_states.pt"
    real = torch.load(states, weights_only=True)
    marker = tmp_path / "code_ran"
    torch.save({**real, "client": _Planted(str(marker))}, states)
    with pytest.raises(pickle.UnpicklingError, match="mp_rank_00_model_states.pt"):
        train(recipe, resume="latest")
    assert not marker.exists()
    from uniform_cli.train.engine import load_deepspeed_state

    with pytest.raises(pickle.UnpicklingError):
        load_deepspeed_state(str(states))
    assert not marker.exists()


def test_zero1_resume_loads_deepspeed_state_classes_and_repeats_the_run(tmp_path, shards):  # noqa: F811
    whole = train(make_recipe(tmp_path, shards, "z1whole", steps=2, zero_stage=1))
    halves = make_recipe(tmp_path, shards, "z1halves", steps=2, zero_stage=1)
    train(halves, stop_after=1)
    optim = next(checkpoint_folder(tmp_path / "z1halves" / "checkpoints" / "latest").glob("*optim_states.pt"))
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(optim))  # classes beyond tensors
    train(halves, resume="latest")
    assert losses(tmp_path / "z1halves") == losses(whole)
    state = json.loads((checkpoint_folder(tmp_path / "z1halves" / "checkpoints" / "latest")
                        / "trainer_state.json").read_text())
    assert state["step"] == 2
    # DeepSpeed's own tools read the run's checkpoints folder through its `latest` tag file.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / "z1halves" / "checkpoints"))
    assert consolidated and all(torch.isfinite(v).all() for v in consolidated.values())


def test_a_scheduler_in_the_deepspeed_table_replaces_ours():
    from uniform_cli.config import PRESETS, TrainConfig
    from uniform_cli.model.uniform import build_model
    from uniform_cli.train.engine import build_engine, init_distributed

    init_distributed()
    train_cfg = TrainConfig(batch_size=2, micro_batch=2, lr=1e-3, warmup_steps=4)
    ours = build_engine(build_model(PRESETS["debug"]), train_cfg, world_size=1)
    assert isinstance(ours.lr_scheduler, torch.optim.lr_scheduler.LambdaLR)
    decay = {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-3,
                                                 "warmup_num_steps": 1, "total_num_steps": 10}}
    theirs = build_engine(build_model(PRESETS["debug"]), train_cfg, world_size=1, raw={"scheduler": decay})
    assert type(theirs.lr_scheduler).__name__ == "WarmupDecayLR"


def test_monitors_enabled_without_a_place_write_into_the_run_folder_and_the_recipe_wins():
    from uniform_cli.config import TrainConfig
    from uniform_cli.train.engine import deepspeed_config

    cfg = TrainConfig(name="watch", output_dir="somewhere", batch_size=2, micro_batch=2)
    config = deepspeed_config(cfg, 1, {"tensorboard": {"enabled": True}, "csv_monitor": {"enabled": True,
                                       "output_path": "/tmp/csv", "job_name": "mine"}, "wandb": {"enabled": False}})
    assert config["tensorboard"] == {"enabled": True, "output_path": "somewhere/watch", "job_name": "tensorboard"}
    assert config["csv_monitor"] == {"enabled": True, "output_path": "/tmp/csv", "job_name": "mine"}
    assert config["wandb"] == {"enabled": False}
    assert "tensorboard" not in deepspeed_config(cfg, 1)  # no monitor unless the recipe asks for one
