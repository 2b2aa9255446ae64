"""`uniform train`: multitask training with DeepSpeed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uniform_cli.cli import USAGE, fail


def main(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="Recipe TOML, e.g. recipes/multitask.toml."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a recipe value: --set model.depth=2 (repeatable)."),
    resume: Optional[str] = typer.Option(None, help="Continue from 'latest' or a checkpoint folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the recipe, print what would train, and exit."),
    local_rank: int = typer.Option(0, "--local_rank", hidden=True, help="Set by the deepspeed launcher."),
) -> None:
    """Train UniForm on latent shards (T2AV, A2V and V2A together).

    \b
    Example: uniform train recipes/multitask.toml --set train.micro_batch=4

    \b
    Several GPUs: deepspeed --num_gpus 8 $(which uniform) train recipes/multitask.toml
    """
    from rich.console import Console

    from uniform_cli.config import ConfigError, load_recipe, recipe_to_toml

    console = Console(soft_wrap=True)
    try:
        recipe = load_recipe(recipe_path, set_)
    except ConfigError as e:
        fail(e, USAGE)
    if dry_run:
        import torch

        from uniform_cli.diffusion.flow import describe_objective
        from uniform_cli.model.uniform import build_model, flops_per_sample, num_tokens
        from uniform_cli.train.finetune import FinetuneError, apply_finetuning

        try:
            with torch.device("meta"):
                report = apply_finetuning(build_model(recipe.model), recipe.train)
        except FinetuneError as e:
            fail(e, USAGE)
        params = report.total
        console.print(recipe_to_toml(recipe), markup=False, highlight=False)
        console.print(
            f"parameters: {params:,} ({params / 1e9:.3f} B); trained: {report.summary()}\n"
            f"objective: {describe_objective(recipe.diffusion, recipe.data.clip)}\n"
            f"tokens per sample: {num_tokens(recipe.model):,}\n"
            f"forward TFLOPs per sample: {flops_per_sample(recipe.model) / 1e12:.2f}\n"
            f"global batch: {recipe.train.batch_size} (micro-batch {recipe.train.micro_batch} per GPU)"
        )
        return

    import pickle

    from uniform_cli.latents.shard_info import ShardDataError
    from uniform_cli.latents.shards import ShardFormatError
    from uniform_cli.pretrained import PretrainedError
    from uniform_cli.train.finetune import FinetuneError
    from uniform_cli.train.loop import Stopped, TrainingError, train

    try:
        train(recipe, resume=resume)
    except Stopped as e:
        console.print(str(e), markup=False)
        raise typer.Exit(128 + e.signal) from None
    except (ConfigError, FinetuneError) as e:  # a [deepspeed] monitor whose package is missing; LoRA targets
        fail(e, USAGE)
    except (ShardDataError, ShardFormatError, TrainingError, PretrainedError, FileNotFoundError,
            pickle.UnpicklingError, OSError) as e:
        fail(e)
