"""Speed and memory of full training steps through the DeepSpeed engine that `uniform train` builds.

    python benchmarks/train_step.py --preset debug --micro-batch 2          # CPU (gloo), seconds
    python benchmarks/train_step.py --preset XL/2 --micro-batch 8 16 32 --checkpointing both --compile

Each step is `uniform_cli.train.step.train_step`, the step the training loop runs: noised inputs for random
tasks, one forward, the masked hybrid loss, backward, the optimizer step (AdamW; FusedAdam on CUDA) and the EMA
update, with ZeRO-2 and bf16 on CUDA; one fixed batch stands in for the loader. Prints one JSON
line per setting: samples/s, MFU (3 x forward FLOPs against 989 TFLOP/s, the H100's dense bf16 peak) and
peak memory. A setting that runs out of memory is reported as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time

import torch

from uniform_cli.config import PRESETS, DataConfig, DiffusionConfig, TrainConfig
from uniform_cli.diffusion.schedule import make_schedule
from uniform_cli.latents.loader import LatentBatch
from uniform_cli.memory import peak_memory_bytes, reset_peak_memory
from uniform_cli.model.uniform import (
    build_model,
    compile_blocks,
    flops_per_sample,
    num_tokens,
)
from uniform_cli.train.ema import make_ema
from uniform_cli.train.engine import build_engine, init_distributed
from uniform_cli.train.step import StepParts, train_step
from uniform_cli.types import AV

PEAK_BF16 = 989e12


def run(preset: str, micro_batch: int, checkpointing: bool, compile_: bool, steps: int, warmup: int) -> dict:
    cuda = torch.cuda.is_available()
    cfg = dataclasses.replace(PRESETS[preset], grad_checkpointing=checkpointing)
    train = TrainConfig(batch_size=micro_batch, micro_batch=micro_batch, precision="bf16" if cuda else "fp32",
                        zero_stage=2 if cuda else 0, lr=1e-4)
    device = torch.device("cuda") if cuda else torch.device("cpu")
    engine = build_engine(build_model(cfg), train, world_size=1)
    ema = make_ema(engine.module)
    if compile_:
        compile_blocks(engine.module)
    parts = StepParts(engine, ema, make_schedule(DiffusionConfig()), train, DataConfig(), rank=0, device=device)
    g = torch.Generator().manual_seed(0)
    x0 = AV(torch.randn(micro_batch, *cfg.video_latent, generator=g),
                 torch.randn(micro_batch, *cfg.audio_latent, generator=g))
    text = torch.randn(micro_batch, cfg.text_len, cfg.text_dim, generator=g)
    mask = torch.ones(micro_batch, cfg.text_len, dtype=torch.bool)
    # One batch on the device, read again at every step: the benchmark times the step, not the loader.
    batch = LatentBatch(x0, [""] * micro_batch, [str(i) for i in range(micro_batch)], text, mask).to(device)
    batches = itertools.repeat(batch)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for i in range(warmup):
        train_step(parts, batches, i)
    sync()
    reset_peak_memory(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        train_step(parts, batches, i)
    sync()
    seconds = (time.perf_counter() - start) / steps
    flops = 3 * flops_per_sample(cfg) * micro_batch
    return {
        "preset": preset, "micro_batch": micro_batch, "checkpointing": checkpointing, "compile": compile_,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "tokens": num_tokens(cfg),
        "seconds_per_step": round(seconds, 4), "samples_per_s": round(micro_batch / seconds, 3),
        "mfu": round(flops / seconds / PEAK_BF16, 4) if cuda else None,
        "peak_memory_gb": round(peak_memory_bytes(device)[0] / 2**30, 2) if cuda else None,
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
