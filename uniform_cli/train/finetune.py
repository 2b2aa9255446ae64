"""Training part of a model: LoRA adapters (peft) on chosen linear layers, chosen modules trained in full, the rest
frozen (`[train] lora_rank`, `lora_targets`, `trainable`).

The adapters are peft's own layers put into the plain `UniForm` (`inject_adapter_in_model`), so the model stays one
`nn.Module` and DeepSpeed, the EMA and the checkpoints see ordinary parameters. A module named in `trainable` is
trained in full and gets no adapters (peft's `modules_to_save` idea). What `generate` loads is the EMA model with
its adapters merged into the weights: a plain UniForm checkpoint. A checkpoint of a run with adapters also holds the
unmerged EMA (`ema.safetensors`, what resuming reads) and the EMA's adapters in peft's layout
(`adapter_model.safetensors` + `adapter_config.json`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from uniform_cli.config import TrainConfig

EMA_NAME = "ema.safetensors"
"""The unmerged EMA weights of a run with adapters (model.safetensors holds them merged)."""
ADAPTER_PREFIX = "base_model.model."
"""What peft's `PeftModel.save_pretrained` puts before every adapter key."""


class FinetuneError(ValueError):
    """`trainable` or `lora_targets` that name nothing in the model; the message lists what exists."""


@dataclass(frozen=True)
class FinetuneReport:
    trainable: int
    total: int
    adapted: list[str]
    """Linear layers that got adapters."""

    def summary(self) -> str:
        share = f"{self.trainable:,} of {self.total:,} parameters trainable ({100 * self.trainable / self.total:.2f} %)"
        return share + (f", LoRA on {len(self.adapted)} linear layers" if self.adapted else "")


def finetunes_part(cfg: TrainConfig) -> bool:
    """Whether the recipe trains only part of the model."""
    return cfg.lora_rank > 0 or bool(cfg.trainable)


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def lora_layers(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """Full names of the linear layers that get adapters: those ending in one of `lora_targets` (peft's suffix
    match), except inside a `trainable` module."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
             and any(name == t or name.endswith("." + t) for t in cfg.lora_targets)
             and not _under(name, cfg.trainable)]
    if not names:
        raise FinetuneError(f"train.lora_targets {cfg.lora_targets} match no linear layer outside train.trainable; "
                            "e.g. attn.qkv, cross_attn.kv_linear, mlp.fc1")
    return names


def apply_finetuning(model: nn.Module, cfg: TrainConfig) -> FinetuneReport:
    """Freeze `model` but for its `trainable` modules and, with `lora_rank` > 0, LoRA adapters on its `lora_targets`
    (A random, B zero: the model computes what it did). A full fine-tune (neither set) changes nothing."""
    params = dict(model.named_parameters())
    unknown = [p for p in cfg.trainable if not any(_under(n, [p]) for n in params)]
    if unknown:
        tops = sorted({n.split(".")[0] for n in params})
        raise FinetuneError(f"train.trainable names no module: {', '.join(unknown)} (top-level modules: "
                            f"{', '.join(tops)}; deeper ones as spatial_blocks.0.mlp)")
    adapted: list[str] = []
    if finetunes_part(cfg):
        model.requires_grad_(False)
        if cfg.lora_rank > 0:
            from peft import LoraConfig, inject_adapter_in_model

            adapted = lora_layers(model, cfg)
            config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank, target_modules=adapted,
                                lora_dropout=0.0, bias="none")
            inject_adapter_in_model(config, model)  # adapters trainable, everything else frozen
            model.peft_config = {"default": config}  # kept for the adapter files; peft reads it there too
        for name, p in model.named_parameters():
            if _under(name, cfg.trainable):
                p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FinetuneReport(trainable, sum(p.numel() for p in model.parameters()), adapted)


def has_adapters(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def merged(model: nn.Module) -> nn.Module:
    """A copy of `model` with every adapter merged into its layer's weight and the layer put back as it was: a
    plain model, with the same outputs (to float rounding)."""
    from peft.tuners.lora import LoraLayer

    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, module.get_base_layer())
    if hasattr(out, "peft_config"):
        del out.peft_config
    return out


def save_weights(model: nn.Module, folder: str | Path) -> None:
    """What a checkpoint holds of `model` (the EMA): config.json + model.safetensors as `generate` loads them, and for
    a model with adapters also its unmerged weights (EMA_NAME) and its adapters in peft's layout."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from uniform_cli.model.checkpoint import save_pretrained

    folder = Path(folder)
    if not has_adapters(model):
        save_pretrained(model, folder)
        return
    save_pretrained(merged(model), folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, folder / EMA_NAME)
    adapters = get_peft_model_state_dict(model)
    save_file({ADAPTER_PREFIX + k: v.detach().cpu().contiguous() for k, v in adapters.items()},
              folder / "adapter_model.safetensors")
    model.peft_config["default"].save_pretrained(str(folder))


def ema_weights_file(folder: Path) -> Path:
    """The file a resumed run reads its EMA from: the unmerged weights when the run has adapters."""
    return folder / EMA_NAME if (folder / EMA_NAME).is_file() else folder / "model.safetensors"

