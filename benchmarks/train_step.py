"""Speed and memory of full training steps through the DeepSpeed engine that `uniform train` builds.

    python benchmarks/train_step.py --preset debug --micro-batch 2          # CPU (gloo), seconds
    python benchmarks/train_step.py --preset XL/2 --micro-batch 8 16 32 --checkpointing both --compile

Each step is what the training loop does: noised inputs for random tasks, one forward, the masked hybrid
loss, backward, and the optimizer step (AdamW; FusedAdam on CUDA), ZeRO-2 and bf16 on CUDA. Prints one JSON
line per setting: samples/s, MFU (3 x forward FLOPs against 989 TFLOP/s, the H100's dense bf16 peak) and
peak memory. A setting that runs out of memory is reported as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from uniform_cli.config import TrainConfig
from uniform_cli.diffusion.losses import hybrid_loss, noised_input
from uniform_cli.diffusion.schedule import make_schedule
from uniform_cli.config import DiffusionConfig
from uniform_cli.model.presets import PRESETS
from uniform_cli.model.uniform import build_model, compile_blocks, flops_per_sample, num_tokens
from uniform_cli.train.engine import build_engine, init_distributed
from uniform_cli.types import Latents

PEAK_BF16 = 989e12


def run(preset: str, micro_batch: int, checkpointing: bool, compile_: bool, steps: int, warmup: int) -> dict:
    cuda = torch.cuda.is_available()
    cfg = dataclasses.replace(PRESETS[preset], grad_checkpointing=checkpointing)
    train = TrainConfig(batch_size=micro_batch, micro_batch=micro_batch, precision="bf16" if cuda else "fp32",
                        zero_stage=2 if cuda else 0, lr=1e-4)
    device = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    engine = build_engine(build_model(cfg), train, world_size=1)
    if compile_:
        compile_blocks(engine.module)
    schedule = make_schedule(DiffusionConfig())
    g = torch.Generator().manual_seed(0)
    x0 = Latents(torch.randn(micro_batch, *cfg.video_latent, generator=g),
                 torch.randn(micro_batch, *cfg.audio_latent, generator=g)).to(device)
    text = torch.randn(micro_batch, cfg.text_len, cfg.text_dim, generator=g).to(device, dtype)
    mask = torch.ones(micro_batch, cfg.text_len, dtype=torch.bool, device=device)

    def step() -> None:
        t = torch.randint(0, 1000, (micro_batch,), device=device)
        task = torch.randint(0, 3, (micro_batch,), device=device)
        noise = x0.map(torch.randn_like)
        drop = torch.rand(micro_batch, device=device) < 0.5
        out = engine(noised_input(schedule, x0, t, noise, task).to(dtype=dtype), t, task, text, mask, drop)
        loss = hybrid_loss(schedule, x0, t, noise, out, task).loss.mean()
        engine.backward(loss)
        engine.step()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    flops = 3 * flops_per_sample(cfg) * micro_batch
    return {
        "preset": preset, "micro_batch": micro_batch, "checkpointing": checkpointing, "compile": compile_,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "tokens": num_tokens(cfg),
        "seconds_per_step": round(seconds, 4), "samples_per_s": round(micro_batch / seconds, 3),
        "mfu": round(flops / seconds / PEAK_BF16, 4) if cuda else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="debug", choices=sorted(PRESETS))
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[2])
    parser.add_argument("--checkpointing", choices=["on", "off", "both"], default="off")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    init_distributed()
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.checkpointing]
    for checkpointing in modes:
        for mb in args.micro_batch:
            try:
                result = run(args.preset, mb, checkpointing, args.compile, args.steps, args.warmup)
            except torch.OutOfMemoryError:
                result = {"preset": args.preset, "micro_batch": mb, "checkpointing": checkpointing, "oom": True}
            print(json.dumps(result), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
