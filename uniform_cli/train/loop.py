"""Multitask training: one model learns T2AV, A2V and V2A from latent shards.

Every random choice of a step (tasks, timesteps, noise, text dropping) comes from a generator seeded by
(seed, step, micro-batch, rank), and the loader restarts at a recorded position, so a resumed run repeats
exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uniform_cli.atomic import open_append, sweep_temp, write_text_atomic
from uniform_cli.config import DataConfig, Recipe, recipe_to_toml
from uniform_cli.types import Latents, Task

TASK_NAMES = {Task.T2AV: "t2av", Task.A2V: "a2v", Task.V2A: "v2a"}


class TrainingError(RuntimeError):
    """Training cannot start or cannot go on; the message says why and what was saved."""


class Stopped(Exception):
    """Training was stopped by SIGTERM or SIGINT after saving a checkpoint at `step` (`uniform train` exits
    with 128 + the signal number, so that a job script sees the run did not finish)."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by signal {signum} at step {step}; saved {checkpoint}; resume with --resume latest")
        self.signal = signum
        self.step = step


def sample_tasks(cfg: DataConfig, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Task ids `B`: one task for the whole batch ("iteration", as the paper) or one per sample."""
    weights = torch.tensor([cfg.task_weights.get(TASK_NAMES[t], 0.0) for t in Task], dtype=torch.float64)
    if weights.sum() <= 0:
        raise TrainingError("data.task_weights gives every task weight 0")
    draws = 1 if cfg.task_sampling == "iteration" else batch
    tasks = torch.multinomial(weights, draws, replacement=True, generator=generator)
    return tasks.expand(batch).clone() if draws == 1 else tasks


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The generator of one micro-batch: a pure function of where it is in the run."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + micro) * 8191 + rank)


@dataclass
class StepInputs:
    """What one micro-batch feeds the model and the loss."""

    x0: Latents
    t: torch.Tensor
    task: torch.Tensor
    noise: Latents
    drop_text: torch.Tensor


def draw_step_inputs(x0: Latents, data: DataConfig, num_timesteps: int, g: torch.Generator) -> StepInputs:
    """Tasks, timesteps, noise and text dropping for a batch of clean latents (drawn on the CPU, then moved)."""
    b = x0.batch_size
    task = sample_tasks(data, b, g)
    t = torch.randint(0, num_timesteps, (b,), generator=g)
    noise = x0.map(lambda x: torch.randn(x.shape, generator=g))
    drop = torch.rand(b, generator=g) < data.text_drop
    dev = x0.video.device
    return StepInputs(x0, t.to(dev), task.to(dev), noise.to(dev), drop.to(dev))


def _memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _any_rank(flag: bool, device: torch.device) -> bool:
    import torch.distributed as dist

    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def initial_weights(model: torch.nn.Module, spec: str) -> str:
    """Load `train.init_from` ("pixart:PATH", "opensora:PATH", "uniform:PATH") into `model`; returns a note."""
    from uniform_cli.model import checkpoint as ckpt

    if not spec:
        return "random initialisation"
    kind, _, path = spec.partition(":")
    if kind == "pixart":
        report = ckpt.load_pixart_weights(model, path)
    elif kind == "opensora":
        report = ckpt.load_opensora_weights(model, path)
    elif kind == "uniform":
        source = ckpt.load_pretrained(path)
        if source.cfg != model.cfg:
            raise TrainingError(f"train.init_from {spec!r}: its model settings differ from the recipe's [model]")
        model.load_state_dict(source.state_dict())
        report = "all weights"
    else:
        raise TrainingError(f"train.init_from {spec!r}: use pixart:PATH, opensora:PATH or uniform:PATH")
    return f"{kind} weights from {path}: {report}"


def train(recipe: Recipe, resume: str | None = None, stop_after: int | None = None) -> Path:
    """Train per `recipe`; returns the run folder. `stop_after` ends this process early (tests, time limits).
    Raises Stopped after saving when SIGTERM or SIGINT arrives."""
    from rich.console import Console

    from uniform_cli.diffusion.losses import hybrid_loss, noised_input
    from uniform_cli.diffusion.schedule import make_schedule
    from uniform_cli.latents.loader import make_loader, shard_info
    from uniform_cli.model.uniform import build_model, num_tokens
    from uniform_cli.progress import LogProgress
    from uniform_cli.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint, step_tag
    from uniform_cli.train.ema import make_ema, update_ema
    from uniform_cli.train.engine import build_engine, init_distributed

    cfg, data = recipe.train, recipe.data
    console = Console(soft_wrap=True)  # a log keeps long paths and URLs on one line
    # Everything that can be checked without work is checked first.
    info = shard_info(data.shards)
    info.check_shapes(recipe.model.video_latent, recipe.model.audio_latent)
    info.check_codecs(recipe.codec, recipe.data)
    if info.text_dim is not None and info.text_dim != recipe.model.text_dim:
        raise TrainingError(
            f"the shards hold text embeddings of width {info.text_dim} but model.text_dim is {recipe.model.text_dim}"
        )
    run_dir = Path(cfg.output_dir) / cfg.name
    ckpt_dir = run_dir / "checkpoints"
    resume_dir = resolve_checkpoint(resume, ckpt_dir) if resume else None

    rank, world = init_distributed()
    torch.manual_seed(cfg.seed + rank)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32

    model = build_model(recipe.model)
    note = initial_weights(model, cfg.init_from)
    if rank == 0 and not _built_ops():
        console.print("building the DeepSpeed engine: on its first run on a machine DeepSpeed compiles a small C++ "
                      "op (about a minute; later runs reuse it)", markup=False)
    engine = build_engine(model, cfg, world, recipe.deepspeed)
    ema = make_ema(engine.module)
    if cfg.compile:
        from uniform_cli.model.uniform import compile_blocks

        compile_blocks(engine.module)
    schedule = make_schedule(recipe.diffusion)
    text_encoder = None
    text_free = info.text_dim is None and recipe.codec.text_encoder == "none"  # always the null text
    if info.text_dim is None and not text_free:
        from uniform_cli.latents.text import TextEncoder

        text_encoder = TextEncoder.from_pretrained(
            recipe.codec.text_encoder, max_length=recipe.model.text_len, device=device, dtype=dtype
        )

    step, samples_seen, batches_seen = 0, 0, 0
    if resume_dir is not None:
        state = load_checkpoint(engine, ema, resume_dir, rank)
        step, samples_seen, batches_seen = state["step"], state["samples_seen"], state["batches_seen"]
    recipe_toml = recipe_to_toml(recipe)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        sweep_temp(run_dir)
        write_text_atomic(run_dir / "recipe.toml", recipe_toml)
        console.print(f"[bold]uniform train[/bold] {cfg.name}: {note}; {world} process(es) on {device}; "
                      f"shards hold {info.num_samples} samples; from step {step}")

    accum = engine.gradient_accumulation_steps()
    loader = make_loader(
        data.shards, cfg.micro_batch, seed=cfg.seed, rank=rank, world_size=world,
        num_workers=data.num_workers, shuffle_buffer=data.shuffle_buffer,
    )
    batches = loader.from_step(batches_seen)  # the stream an uninterrupted run would be at
    tokens = num_tokens(recipe.model)
    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:
        keep_metrics_until(metrics_path, step)  # steps after the checkpoint are done again: logged once
    writer = _tensorboard(run_dir) if rank == 0 else None
    stop = _StopFlag()
    last = step
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    progress = LogProgress(console, "train", end, step, unit=" steps") if rank == 0 else None
    try:
        while step < end:
            t0 = time.perf_counter()
            losses, tasks_seen = [], []
            for micro in range(accum):
                batch = next(batches)
                batches_seen += 1
                x0 = batch.latents.to(device=device, dtype=torch.float32)
                inputs = draw_step_inputs(x0, data, schedule.num_timesteps, step_generator(cfg.seed, step, micro, rank))
                if text_free:
                    text = torch.zeros(x0.batch_size, 1, recipe.model.text_dim)
                    text_mask = torch.zeros(x0.batch_size, 1, dtype=torch.bool)
                    inputs.drop_text = torch.ones_like(inputs.drop_text)
                elif text_encoder is not None:
                    text, text_mask = text_encoder(batch.captions)
                else:
                    text, text_mask = batch.text, batch.text_mask
                x_t = noised_input(schedule, inputs.x0, inputs.t, inputs.noise, inputs.task)
                out = engine(x_t.to(dtype=dtype), inputs.t, inputs.task, text.to(device, dtype),
                             text_mask.to(device), inputs.drop_text)
                terms = hybrid_loss(schedule, inputs.x0, inputs.t, inputs.noise, out, inputs.task)
                loss = terms.loss.mean()
                if _any_rank(not torch.isfinite(loss).item(), device):
                    _save_diagnosis(run_dir / f"nonfinite_step_{step:06d}", inputs, text, text_mask, engine.module, rank)
                    raise TrainingError(
                        f"loss is {loss.item()} at step {step}; the batch and weights are saved in "
                        f"{run_dir}/nonfinite_step_{step:06d}/ (try a lower lr, fp32, or check the shards)"
                    )
                engine.backward(loss)
                if micro == accum - 1:
                    grad_norm = _local_grad_norm(engine.module)  # before step() clears the gradients
                engine.step()
                losses.append(terms.loss.detach())
                tasks_seen.append(inputs.task)
            step += 1
            samples_seen += cfg.batch_size
            update_ema(ema, engine.module, cfg.ema_decay)
            seconds = time.perf_counter() - t0
            if rank == 0 and (step % cfg.log_every == 0 or step == end):
                record = _metrics(step, torch.cat(losses), torch.cat(tasks_seen), engine, grad_norm,
                                  cfg.batch_size, seconds, tokens)
                with open_append(metrics_path) as f:
                    f.write(json.dumps(record) + "\n")
                if writer is not None:
                    for k, v in record.items():
                        writer.add_scalar(f"train/{k}", v, step)
                progress.update(step, loss=record["loss"], samples_per_s=record["samples_per_s"])
            state = {"samples_seen": samples_seen, "batches_seen": batches_seen}
            stopping = _any_rank(stop.signal is not None, device)
            if step % cfg.checkpoint_every == 0 or step == end or stopping:
                save_checkpoint(engine, ema, ckpt_dir, step, state, recipe_toml, rank, cfg.keep_last)
                last = step
            if stopping:
                raise Stopped(stop.signal or signal.SIGTERM, step, ckpt_dir / step_tag(step))
    finally:
        stop.restore()
        if progress is not None:
            progress.stop()
        if writer is not None:
            writer.close()
    if rank == 0:
        console.print(f"done: step {step}, last checkpoint {ckpt_dir / 'latest'} (step {last}); metrics in {metrics_path}")
    return run_dir


def _built_ops() -> bool:
    """Whether torch's extension cache holds ops DeepSpeed built before (then building the engine is quick)."""
    cache = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    return cache.is_dir() and any(cache.rglob("*.so"))


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the records of steps after `step` (those a killed run logged after its last checkpoint, which the
    resumed run does again), so that metrics.jsonl holds each step once."""
    if path.is_symlink() or not path.is_file():  # a planted link is refused by the next append, never read
        return
    keep = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(text)["step"] <= step:
                keep.append(text + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a partial last line
    write_text_atomic(path, "".join(keep))


def _local_grad_norm(model: torch.nn.Module) -> float | None:
    """The gradient norm from the parameters' own .grad (None under ZeRO, which keeps gradients elsewhere)."""
    grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(grads).norm().item() if grads else None


def _metrics(step: int, loss: torch.Tensor, task: torch.Tensor, engine, local_norm: float | None, batch: int,
             seconds: float, tokens: int) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step, "loss": loss.mean().item()}
    for t, name in TASK_NAMES.items():
        sel = task == t
        if sel.any():
            record[f"loss_{name}"] = loss[sel].mean().item()
    norm = engine.get_global_grad_norm()
    if norm is None:  # plain (non-ZeRO) fp32 path: DeepSpeed does not keep the norm
        norm = local_norm
    record["grad_norm"] = float("nan") if norm is None else float(norm)
    record["lr"] = engine.get_lr()[0]
    record["samples_per_s"] = batch / seconds
    record["tokens_per_s"] = batch * tokens / seconds
    record["memory_gb"] = _memory_gb()
    record["seconds"] = seconds
    return record


def _save_diagnosis(folder: Path, inputs: StepInputs, text, text_mask, model, rank: int) -> None:
    from safetensors.torch import save_file

    from uniform_cli.model.checkpoint import save_pretrained

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "x0_video": inputs.x0.video, "x0_audio": inputs.x0.audio, "t": inputs.t, "task": inputs.task,
        "noise_video": inputs.noise.video, "noise_audio": inputs.noise.audio, "drop_text": inputs.drop_text,
        "text": text, "text_mask": text_mask,
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, folder / f"batch_rank{rank}.safetensors")
    if rank == 0:
        save_pretrained(model, folder)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
