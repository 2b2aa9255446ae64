"""One optimizer step of multitask training (T2AV, A2V, V2A and the span jobs in one model): the step that
`uniform train`, `benchmarks/train_step.py` and the overfit test all run.

Every random choice of a step (jobs and their spans, timesteps, noise, text dropping) comes from a generator seeded by
(seed, step, micro-batch, rank), so a step depends only on the weights, the batches it reads and where it is in
the run: what lets a resumed run repeat an uninterrupted one exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from uniform_cli.config import DataConfig, TrainConfig
from uniform_cli.diffusion.flow import FlowSchedule
from uniform_cli.diffusion.losses import draw_timesteps, noised_input, training_loss
from uniform_cli.diffusion.schedule import Schedule
from uniform_cli.diffusion.tasks import JOBS, SPAN_JOBS, job_masks, task_masks
from uniform_cli.train.ema import update_ema
from uniform_cli.types import AV, Task

if TYPE_CHECKING:
    from uniform_cli.latents.loader import LatentBatch
    from uniform_cli.latents.text import TextEncoder

class TrainingError(RuntimeError):
    """Training cannot start or cannot go on; the message says why and what was saved."""


def uses_span_jobs(cfg: DataConfig) -> bool:
    return any(cfg.task_weights.get(name, 0.0) > 0 for name in SPAN_JOBS)


def sample_jobs(cfg: DataConfig, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Job ids `B` (indices into `diffusion.tasks.JOBS`): one job for the whole batch ("iteration", as the
    paper) or one per sample. The draw is over the paper's three tasks alone unless a span job has weight, so
    a recipe without span jobs draws exactly what it drew before they existed."""
    names = JOBS if uses_span_jobs(cfg) else JOBS[: len(Task)]
    weights = torch.tensor([cfg.task_weights.get(name, 0.0) for name in names], dtype=torch.float64)
    if weights.sum() <= 0:
        raise TrainingError("data.task_weights gives every job weight 0")
    draws = 1 if cfg.task_sampling == "iteration" else batch
    jobs = torch.multinomial(weights, draws, replacement=True, generator=generator)
    return jobs.expand(batch).clone() if draws == 1 else jobs


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The generator of one micro-batch: a pure function of where it is in the run."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + micro) * 8191 + rank)


@dataclass
class StepInputs:
    """What one micro-batch feeds the model and the loss."""

    x0: AV
    t: torch.Tensor
    job: torch.Tensor
    """`B` job ids (indices into `diffusion.tasks.JOBS`)."""
    generated: AV
    """The jobs' masks, `[B, F]` per modality."""
    noise: AV
    drop_text: torch.Tensor


def draw_step_inputs(x0: AV, data: DataConfig, schedule: Schedule | FlowSchedule, g: torch.Generator) -> StepInputs:
    """Jobs, timesteps, noise, text dropping and the jobs' spans for a batch of clean latents (drawn on the CPU,
    in that order, then moved)."""
    b, frames = x0.batch_size, x0.video.shape[2]
    job = sample_jobs(data, b, g)
    t = draw_timesteps(schedule, b, g)
    noise = x0.map(lambda x: torch.randn(x.shape, generator=g))
    drop = torch.rand(b, generator=g) < data.text_drop
    generated = job_masks(job, frames, g) if uses_span_jobs(data) else task_masks(job, frames)
    dev = x0.video.device
    return StepInputs(x0, t.to(dev), job.to(dev), generated.to(dev), noise.to(dev), drop.to(dev))


@dataclass
class StepParts:
    """What a training step needs, built once before the first step (by `loop.setup` from a recipe, or from the
    same pieces by a benchmark or a test)."""

    engine: Any
    """The DeepSpeed engine: the model, AdamW, the lr schedule, gradient accumulation and clipping."""
    ema: nn.Module
    """The averaged weights (what `generate` uses), updated after every step."""
    schedule: Schedule | FlowSchedule
    """The training schedule (its type is the objective: IDDPM or rectified flow)."""
    train: TrainConfig
    """Seed, precision and EMA decay."""
    data: DataConfig
    """Job weights, job sampling and text dropping."""
    rank: int
    """This process's rank (it seeds the step's generators)."""
    device: torch.device
    """Where the model runs."""
    text_encoder: TextEncoder | None = None
    """Encodes the captions, for shards that hold no text embeddings."""
    text_free: bool = False
    """No text at all (shards without embeddings and codec.text_encoder "none"): every sample gets the null text."""

    @property
    def dtype(self) -> torch.dtype:
        """The model's input dtype (bf16 or fp32, per train.precision)."""
        return torch.bfloat16 if self.train.precision == "bf16" else torch.float32


@dataclass
class StepResult:
    """What one optimizer step did on this rank."""

    loss: torch.Tensor
    """`B` the training loss of each sample the step read (all its micro-batches)."""
    job: torch.Tensor
    """`B` the job of each of those samples (indices into `diffusion.tasks.JOBS`)."""
    grad_norm: float
    """Norm of the gradient the optimizer stepped with, before clipping (nan where DeepSpeed keeps none)."""
    lr: float
    """Learning rate after the step (the schedule has advanced once)."""


class NonFiniteLoss(TrainingError):
    """A micro-batch's loss is not finite on some rank; holds that rank's inputs, for a diagnosis."""

    def __init__(self, step: int, loss: float, inputs: StepInputs, text: torch.Tensor, text_mask: torch.Tensor):
        super().__init__(f"loss is {loss} at step {step}")
        self.step = step
        self.loss = loss
        self.inputs = inputs
        self.text = text
        self.text_mask = text_mask


def forward_backward(parts: StepParts, batch: LatentBatch, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, masked training loss and backward of micro-batch `micro` of `step`; returns its per-sample loss `B`
    (detached) and job ids `B`. Raises NonFiniteLoss on every rank when the loss of any rank is not finite."""
    device, dtype, engine = parts.device, parts.dtype, parts.engine
    x0 = batch.latents.to(device=device, dtype=torch.float32)
    g = step_generator(parts.train.seed, step, micro, parts.rank)
    inputs = draw_step_inputs(x0, parts.data, parts.schedule, g)
    if parts.text_free:
        text = torch.zeros(x0.batch_size, 1, engine.module.cfg.text_dim)
        text_mask = torch.zeros(x0.batch_size, 1, dtype=torch.bool)
        inputs.drop_text = torch.ones_like(inputs.drop_text)
    elif parts.text_encoder is not None:
        text, text_mask = parts.text_encoder(batch.captions)
    else:
        text, text_mask = batch.text, batch.text_mask
    x_t = noised_input(parts.schedule, inputs.x0, inputs.t, inputs.noise, inputs.generated)
    out = engine(x_t.to(dtype=dtype), inputs.t, inputs.generated, text.to(device, dtype), text_mask.to(device),
                 inputs.drop_text)
    terms = training_loss(parts.schedule, inputs.x0, inputs.t, inputs.noise, out, inputs.generated)
    loss = terms.loss.mean()
    if any_rank(not torch.isfinite(loss).item(), device):  # every rank stops at the same micro-batch
        raise NonFiniteLoss(step, loss.item(), inputs, text, text_mask)
    engine.backward(loss)
    return terms.loss.detach(), inputs.job


def train_step(parts: StepParts, batches: Iterator[LatentBatch], step: int) -> StepResult:
    """Optimizer step `step` (counted from 0): one forward_backward per micro-batch, reading
    `engine.gradient_accumulation_steps()` batches from `batches`, the optimizer step, then the EMA update."""
    engine = parts.engine
    accum = engine.gradient_accumulation_steps()
    losses, jobs = [], []
    local_norm = None
    for micro in range(accum):
        loss, job = forward_backward(parts, next(batches), step, micro)
        if micro == accum - 1:
            local_norm = _local_grad_norm(engine.module)  # before step() clears the gradients
        engine.step()  # DeepSpeed counts micro-batches and steps the optimizer after the last one
        losses.append(loss)
        jobs.append(job)
    update_ema(parts.ema, engine.module, parts.train.ema_decay)
    norm = engine.get_global_grad_norm()
    if norm is None:  # plain (non-ZeRO) fp32 path: DeepSpeed does not keep the norm
        norm = local_norm
    return StepResult(
        loss=torch.cat(losses),
        job=torch.cat(jobs),
        grad_norm=float("nan") if norm is None else float(norm),
        lr=engine.get_lr()[0],
    )


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is set on any rank (a collective: every rank calls it at the same point)."""
    import torch.distributed as dist

    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _local_grad_norm(model: nn.Module) -> float | None:
    """The gradient norm from the parameters' own .grad (None under ZeRO, which keeps gradients elsewhere)."""
    grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(grads).norm().item() if grads else None
