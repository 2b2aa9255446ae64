"""Training checkpoints: resumable state plus an exported model that `generate` loads.

    runs/NAME/checkpoints/
        step_000200/
            mp_rank_00_model_states.pt ...   DeepSpeed: weights, optimizer, lr schedule
            config.json, model.safetensors   the EMA weights (UniForm.from_pretrained / generate load these),
                                             LoRA adapters merged in (`finetune`: then also ema.safetensors and
                                             adapter_model.safetensors + adapter_config.json)
            recipe.toml                      the resolved recipe (codecs, diffusion and sampling settings)
            trainer_state.json               step, samples seen, loader position
            rng_rank0.pt ...                 each rank's RNG states
        latest                               "step_000200": DeepSpeed's tag file, rewritten (atomically) when a
                                             checkpoint is complete, so DeepSpeed's own tools find it too

A checkpoint is written as `step_N.partial/` and renamed when every rank has finished, so a run killed while
saving leaves nothing that `--resume latest` would trust.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uniform_cli.atomic import write_text_atomic
from uniform_cli.model.checkpoint import LATEST, checkpoint_folder

STATE_FILE = "trainer_state.json"


def step_tag(step: int) -> str:
    return f"step_{step:06d}"


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch, CUDA, numpy, python) in a form torch.load(weights_only=True) reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, ema, ckpt_dir: Path, step: int, state: dict[str, Any], recipe_toml: str,
                    rank: int, keep_last: int) -> Path:
    """Save everything needed to resume at `step`, export the EMA model, point `latest` at it, prune old ones."""
    import torch.distributed as dist

    from uniform_cli.train.finetune import save_weights

    tag = step_tag(step)
    partial = f"{tag}.partial"
    final = ckpt_dir / tag
    if rank == 0:
        shutil.rmtree(ckpt_dir / partial, ignore_errors=True)
        (ckpt_dir / partial).mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=partial, save_latest=False)
    torch.save(rng_state(), ckpt_dir / partial / f"rng_rank{rank}.pt")
    if rank == 0:
        save_weights(ema, ckpt_dir / partial)
        (ckpt_dir / partial / "recipe.toml").write_text(recipe_toml)
        (ckpt_dir / partial / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))
    dist.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(ckpt_dir / partial, final)
        write_text_atomic(ckpt_dir / LATEST, tag)  # replaces the symlink of runs made before, not its target
        for old in sorted(ckpt_dir.glob("step_[0-9]*[0-9]"))[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def resume_folder(path: str, ckpt_dir: Path) -> Path:
    """The resumable checkpoint `--resume` names: `latest` (in `ckpt_dir`) or a checkpoint folder; a clear
    error when there is none."""
    folder = checkpoint_folder(ckpt_dir / LATEST if path == LATEST else path)
    if not (folder / STATE_FILE).is_file():
        where = f"{ckpt_dir}/latest ({folder.name})" if path == LATEST else str(folder)
        raise FileNotFoundError(f"no resumable checkpoint at {where} (expected {STATE_FILE} inside)")
    return folder.resolve()


def load_checkpoint(engine, ema, folder: Path, rank: int) -> dict[str, Any]:
    """Restore DeepSpeed state, EMA weights and this rank's RNG states; returns the trainer state."""
    from safetensors.torch import load_file

    from uniform_cli.train.finetune import ema_weights_file

    _, client = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_module_strict=True)
    if client is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")
    ema.load_state_dict(load_file(ema_weights_file(folder)), strict=True)
    rng_file = folder / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((folder / STATE_FILE).read_text())
