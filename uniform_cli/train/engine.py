"""The DeepSpeed engine, built from the typed train settings in one place."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uniform_cli.config import ConfigError, TrainConfig


def init_distributed() -> tuple[int, int]:
    """Join (or, for a single process, create) the process group; returns (rank, world size).

    Works under `deepspeed`, `torchrun` and a plain `uniform train` (world size 1). NCCL on CUDA, gloo on CPU.
    """
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _free_port() -> int:
    """A TCP port nobody listens on now (for a single-process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


MONITORS = {"tensorboard": "tensorboard", "wandb": "wandb", "csv_monitor": None, "comet": "comet_ml"}
"""DeepSpeed's monitors (keys of the `[deepspeed]` table) and the package each needs."""
MONITOR_FOLDERS = {"tensorboard": "tensorboard", "csv_monitor": "csv"}
"""Where in the run folder a monitor that writes files writes them when the recipe does not say."""


def check_monitors(raw: dict[str, Any]) -> None:
    """Raise ConfigError when the `[deepspeed]` table's monitor settings are not DeepSpeed's, or an enabled monitor's
    package is missing (DeepSpeed would print a hint and fail with an ImportError while building the engine)."""
    import importlib.util

    from deepspeed.monitor.config import get_monitor_config

    try:
        monitors = get_monitor_config(raw)
    except ValueError as err:  # pydantic's ValidationError, with one entry per bad key
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"[deepspeed] monitor settings: {problems}") from None
    for key, package in MONITORS.items():
        if package and getattr(monitors, key).enabled and importlib.util.find_spec(package) is None:
            raise ConfigError(f"[deepspeed] {key}.enabled = true needs the {package} package: pip install {package} "
                              f"(or set {key}.enabled = false)")


def _monitor_defaults(cfg: TrainConfig, raw: dict[str, Any]) -> dict[str, Any]:
    """An enabled file-writing monitor writes into the run folder ({output_dir}/{name}/tensorboard, .../csv) unless
    the recipe names a place: DeepSpeed's own default is a folder "DeepSpeedJobName" in the working directory."""
    out: dict[str, Any] = {}
    for key, folder in MONITOR_FOLDERS.items():
        table = raw.get(key)
        if isinstance(table, dict) and table.get("enabled") and not table.get("output_path"):
            out[key] = {"output_path": str(Path(cfg.output_dir) / cfg.name), "job_name": table.get("job_name", folder)}
    return out


def deepspeed_config(cfg: TrainConfig, world_size: int, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """DeepSpeed's JSON config from the train settings; the recipe's raw `[deepspeed]` table wins (monitors
    enabled there without an output_path write into the run folder)."""
    per_step = cfg.micro_batch * world_size
    if cfg.batch_size % per_step:
        raise ValueError(
            f"train.batch_size {cfg.batch_size} is not a multiple of micro_batch x GPUs = "
            f"{cfg.micro_batch} x {world_size}"
        )
    config: dict[str, Any] = {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.batch_size // per_step,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    raw = raw or {}
    return _merge(_merge(config, raw), _monitor_defaults(cfg, raw))


def build_engine(model: nn.Module, cfg: TrainConfig, world_size: int, raw: dict[str, Any] | None = None):
    """Wrap `model` in a DeepSpeed engine with AdamW (FusedAdam on CUDA) and linear warmup to a constant lr.

    An `optimizer` or `scheduler` in the raw `[deepspeed]` table replaces ours (DeepSpeed would otherwise let
    the scheduler passed here win over the one in its config)."""
    import deepspeed

    config = deepspeed_config(cfg, world_size, raw)
    params = [p for p in model.parameters() if p.requires_grad]
    adam = {"lr": cfg.lr, "betas": list(cfg.adam_betas), "eps": cfg.adam_eps, "weight_decay": cfg.weight_decay}
    if torch.cuda.is_available() and "optimizer" not in config:
        from deepspeed.ops.adam import FusedAdam

        optimizer = FusedAdam(params, adam_w_mode=True, **adam)
    elif "optimizer" in config:
        optimizer = None  # the raw [deepspeed] table chose one
    else:
        optimizer = torch.optim.AdamW(params, **adam)
    warmup = max(cfg.warmup_steps, 0)

    def schedule(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=params if optimizer is None else None,
        optimizer=optimizer,
        lr_scheduler=None if "scheduler" in config else schedule,
        config=config,
    )
    engine.checkpoint_engine = WeightsOnlyLoading(engine.checkpoint_engine)
    return engine


def deepspeed_state_types() -> list[type]:
    """The classes DeepSpeed's own checkpoint files hold beyond tensors and plain containers (the ZeRO
    optimizer state's stage, fragment addresses and loss scaler): the allow-list of `load_deepspeed_state`."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


def load_deepspeed_state(path: str, map_location=None) -> Any:
    """A DeepSpeed checkpoint file read with `torch.load(weights_only=True)` and only DeepSpeed's own state
    classes allowed, so that a pickle planted in a run folder cannot run code; one that tries is an error
    naming the file."""
    import pickle

    with torch.serialization.safe_globals(deepspeed_state_types()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(
                f"{path} holds more than tensors and DeepSpeed's training state, so it is not loaded "
                f"(it could run code): {str(err).splitlines()[0]}"
            ) from None


class WeightsOnlyLoading:
    """DeepSpeed's checkpoint engine (DeepSpeed's own `torch.load` uses weights_only=False) with every load
    going through `load_deepspeed_state`; saving and the rest are DeepSpeed's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def load(self, path: str, map_location=None) -> Any:
        return load_deepspeed_state(path, map_location)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
