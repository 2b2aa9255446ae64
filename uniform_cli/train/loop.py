"""Multitask training runs: setup from a recipe, the loop over `train_step`, checkpoints, logging (metrics.jsonl and
DeepSpeed's monitors), samples to watch (`train.samples`) and stopping.

The loader restarts at a recorded position and each step's randomness is a function of where it is in the run
(see `uniform_cli.train.step`), so a resumed run repeats exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uniform_cli.atomic import open_append, read_complete, sweep_temp, write_text_atomic
from uniform_cli.config import Recipe, recipe_to_toml
from uniform_cli.diffusion.tasks import JOBS
from uniform_cli.memory import peak_memory_bytes
from uniform_cli.train.finetune import apply_finetuning, finetunes_part
from uniform_cli.train.step import (
    NonFiniteLoss,
    StepParts,
    StepResult,
    TrainingError,
    any_rank,
    train_step,
)

if TYPE_CHECKING:
    from rich.console import Console

    from uniform_cli.latents.loader import LatentBatch
    from uniform_cli.train.samples import TrainingSampler


class Stopped(Exception):
    """Training was stopped by SIGTERM or SIGINT after saving a checkpoint at `step` (`uniform train` exits
    with 128 + the signal number, so that a job script sees the run did not finish)."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by signal {signum} at step {step}; saved {checkpoint}; resume with --resume latest")
        self.signal = signum
        self.step = step


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


OPENSORA_OBJECTIVE = (
    "WARNING: Open-Sora 1.2's STDiT-v3 weights were trained with rectified flow (their first output half is a "
    'velocity), and this recipe trains them with IDDPM; set [diffusion] objective = "rflow" and [generate] '
    'sampler = "euler" to keep their objective'
)


def initial_weights(model: torch.nn.Module, spec: str, objective: str = "iddpm") -> str:
    """Load `train.init_from` ("pixart:PATH", "opensora:PATH", "uniform:PATH") into `model`; returns a note (with
    a warning when Open-Sora weights are trained with another objective than their own)."""
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
    note = f"{kind} weights from {path}: {report}"
    return f"{note}. {OPENSORA_OBJECTIVE}" if kind == "opensora" and objective != "rflow" else note


@dataclass
class Run:
    """A run ready for its next step: what `train_step` needs, where the run stands and where it writes."""

    parts: StepParts
    batches: Iterator[LatentBatch]
    """The loader's stream from the first batch the run has not used yet."""
    step: int
    """Optimizer steps done."""
    samples_seen: int
    """Samples those steps used, over all ranks."""
    batches_seen: int
    """Micro-batches this rank read."""
    run_dir: Path
    """{output_dir}/{name}: recipe.toml, metrics.jsonl, checkpoints/."""
    recipe_toml: str
    """The resolved recipe, saved with every checkpoint."""
    sampler: TrainingSampler | None = None
    """Rank 0's fixed samples when `train.sample_every` is set."""


def setup(recipe: Recipe, resume: str | None, console: Console) -> Run:
    """Check the shards against the recipe, then build the model, the engine, the EMA and the data stream, load
    the `resume` checkpoint ("latest" or a checkpoint folder) if given, and write recipe.toml to the run folder."""
    from uniform_cli.diffusion.schedule import make_schedule
    from uniform_cli.latents.loader import make_loader
    from uniform_cli.latents.shard_info import shard_info
    from uniform_cli.model.uniform import build_model
    from uniform_cli.train.checkpoint import load_checkpoint, resume_folder
    from uniform_cli.train.ema import make_ema
    from uniform_cli.train.engine import build_engine, check_monitors, init_distributed
    from uniform_cli.train.samples import TrainingSampler

    cfg, data = recipe.train, recipe.data
    # Everything that can be checked without work is checked first.
    check_monitors(recipe.deepspeed)
    info = shard_info(data.shards)
    info.check_shapes(recipe.model.video_latent, recipe.model.audio_latent)
    info.check_codecs(recipe.codec, recipe.data)
    if info.text_dim is not None and info.text_dim != recipe.model.text_dim:
        raise TrainingError(
            f"the shards hold text embeddings of width {info.text_dim} but model.text_dim is {recipe.model.text_dim}"
        )
    run_dir = Path(cfg.output_dir) / cfg.name
    resume_dir = resume_folder(resume, run_dir / "checkpoints") if resume else None

    rank, world = init_distributed()
    torch.manual_seed(cfg.seed + rank)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    model = build_model(recipe.model)
    note = initial_weights(model, cfg.init_from, recipe.diffusion.objective)
    if finetunes_part(cfg):
        note += f"; {apply_finetuning(model, cfg).summary()}"
    if rank == 0 and not _built_ops():
        console.print("building the DeepSpeed engine: on its first run on a machine DeepSpeed compiles a small C++ "
                      "op (about a minute; later runs reuse it)", markup=False)
    engine = build_engine(model, cfg, world, recipe.deepspeed)
    ema = make_ema(engine.module)
    if cfg.compile:
        from uniform_cli.model.uniform import compile_blocks

        compile_blocks(engine.module)
    text_encoder = None
    text_free = info.text_dim is None and recipe.codec.text_encoder == "none"  # always the null text
    if info.text_dim is None and not text_free:
        from uniform_cli.latents.text import TextEncoder

        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        text_encoder = TextEncoder.from_pretrained(
            recipe.codec.text_encoder, max_length=recipe.model.text_len, device=device, dtype=dtype
        )
    parts = StepParts(engine, ema, make_schedule(recipe.diffusion, recipe.data.clip), cfg, data, rank, device,
                      text_encoder, text_free)

    sampler = None
    if rank == 0 and cfg.sample_every:
        sampler = TrainingSampler.build(recipe, ema, parts.schedule, device, text_encoder, text_free,
                                        run_dir / "samples")

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
    loader = make_loader(
        data.shards, cfg.micro_batch, seed=cfg.seed, rank=rank, world_size=world,
        num_workers=data.num_workers, shuffle_buffer=data.shuffle_buffer,
    )
    batches = loader.from_step(batches_seen)  # the stream an uninterrupted run would be at
    return Run(parts, batches, step, samples_seen, batches_seen, run_dir, recipe_toml, sampler)


def train(recipe: Recipe, resume: str | None = None, stop_after: int | None = None) -> Path:
    """Train per `recipe`; returns the run folder. `stop_after` ends this process early (tests, time limits).
    Raises Stopped after saving when SIGTERM or SIGINT arrives."""
    from rich.console import Console

    from uniform_cli.model.uniform import num_tokens
    from uniform_cli.progress import LogProgress
    from uniform_cli.train.checkpoint import save_checkpoint, step_tag

    cfg = recipe.train
    console = Console(soft_wrap=True)  # a log keeps long paths and URLs on one line
    run = setup(recipe, resume, console)
    parts, rank, ckpt_dir = run.parts, run.parts.rank, run.run_dir / "checkpoints"
    step, samples_seen, batches_seen = run.step, run.samples_seen, run.batches_seen
    accum = parts.engine.gradient_accumulation_steps()
    tokens = num_tokens(recipe.model)
    metrics_path = run.run_dir / "metrics.jsonl"
    if rank == 0:
        keep_metrics_until(metrics_path, step)  # steps after the checkpoint are done again: logged once
    monitor = parts.engine.monitor  # DeepSpeed's: TensorBoard, W&B, CSV as the [deepspeed] table sets them
    writer = monitor.tb_monitor.summary_writer if monitor.tb_monitor is not None else None
    stop = _StopFlag()
    last = step
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    progress = LogProgress(console, "train", end, step, unit=" steps") if rank == 0 else None
    try:
        while step < end:
            t0 = time.perf_counter()
            try:
                result = train_step(parts, run.batches, step)
            except NonFiniteLoss as err:
                folder = run.run_dir / f"nonfinite_step_{step:06d}"
                _save_diagnosis(folder, err, parts.engine.module, rank)
                raise TrainingError(
                    f"{err}; the batch and weights are saved in {folder}/ (try a lower lr, fp32, or check the shards)"
                ) from None
            seconds = time.perf_counter() - t0
            step += 1
            samples_seen += cfg.batch_size
            batches_seen += accum
            if rank == 0 and (step % cfg.log_every == 0 or step == end):
                record = _metrics(step, result, cfg.batch_size, seconds, tokens)
                with open_append(metrics_path) as f:
                    f.write(json.dumps(record) + "\n")
                monitor.write_events([(f"train/{k}", v, step) for k, v in record.items() if k != "step"])
                progress.update(step, loss=record["loss"], samples_per_s=record["samples_per_s"])
            state = {"samples_seen": samples_seen, "batches_seen": batches_seen}
            stopping = any_rank(stop.signal is not None, parts.device)
            if step % cfg.checkpoint_every == 0 or step == end or stopping:
                save_checkpoint(parts.engine, parts.ema, ckpt_dir, step, state, run.recipe_toml, rank, cfg.keep_last)
                last = step
            if stopping:
                raise Stopped(stop.signal or signal.SIGTERM, step, ckpt_dir / step_tag(step))
            if run.sampler is not None and step % cfg.sample_every == 0:
                run.sampler.sample(step, writer)
    finally:
        stop.restore()
        if progress is not None:
            progress.stop()
    if rank == 0:
        console.print(f"done: step {step}, last checkpoint {ckpt_dir / 'latest'} (step {last}); metrics in {metrics_path}")
    return run.run_dir


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
    for text in read_complete(path).splitlines():
        try:
            if json.loads(text)["step"] <= step:
                keep.append(text + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # not a record (written by hand, or by something else)
    write_text_atomic(path, "".join(keep))


def _metrics(step: int, result: StepResult, batch: int, seconds: float, tokens: int) -> dict[str, Any]:
    """The metrics.jsonl record of a step: losses overall and per job, gradient norm, lr, speed, memory."""
    record: dict[str, Any] = {"step": step, "loss": result.loss.mean().item()}
    for i, name in enumerate(JOBS):
        sel = result.job == i
        if sel.any():
            record[f"loss_{name}"] = result.loss[sel].mean().item()
    record["grad_norm"] = result.grad_norm
    record["lr"] = result.lr
    record["samples_per_s"] = batch / seconds
    record["tokens_per_s"] = batch * tokens / seconds
    record["memory_gb"] = peak_memory_bytes(result.loss.device)[0] / 2**30
    record["seconds"] = seconds
    return record


def _save_diagnosis(folder: Path, err: NonFiniteLoss, model: torch.nn.Module, rank: int) -> None:
    """The micro-batch whose loss was not finite (each rank's) and the weights it met (rank 0), in `folder`."""
    from safetensors.torch import save_file

    from uniform_cli.train.finetune import save_weights

    folder.mkdir(parents=True, exist_ok=True)
    inputs = err.inputs
    tensors = {
        "x0_video": inputs.x0.video, "x0_audio": inputs.x0.audio, "t": inputs.t, "job": inputs.job,
        "generated_video": inputs.generated.video, "generated_audio": inputs.generated.audio,
        "noise_video": inputs.noise.video, "noise_audio": inputs.noise.audio, "drop_text": inputs.drop_text,
        "text": err.text, "text_mask": err.text_mask,
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, folder / f"batch_rank{rank}.safetensors")
    if rank == 0:
        save_weights(model, folder)

