"""Speed and memory of a UniForm training step and of a guided denoising step; prints one JSON object.

    python benchmarks/model_step.py --preset debug                      # CPU, seconds
    python benchmarks/model_step.py --preset XL/2 --batch 8 --checkpointing --compile   # one H100

A training step is forward + backward of a batch at random timesteps and tasks, text dropped for half the
samples (the loss is a stand-in: the mean square of the outputs). MFU counts 3 x forward FLOPs per sample
(also with activation checkpointing, whose recomputation is not useful work) against 989 TFLOP/s, the dense
bf16 peak of an H100 SXM. A guided step is one no-grad forward of batch 2 x 2 (conditional and unconditional).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from uniform_cli.config import PRESETS
from uniform_cli.diffusion.tasks import task_masks
from uniform_cli.memory import peak_memory_bytes, reset_peak_memory
from uniform_cli.model.uniform import build_model, compile_blocks, flops_per_sample, num_parameters, num_tokens
from uniform_cli.types import AV

H100_BF16_FLOPS = 989e12


def make_batch(cfg, batch: int, text_len: int, device, generator) -> dict:
    def randn(*shape):
        return torch.randn(*shape, generator=generator, device="cpu").to(device)

    x = AV(randn(batch, *cfg.video_latent), randn(batch, *cfg.audio_latent))
    lengths = torch.randint(1, text_len + 1, (batch,), generator=generator)
    mask = (torch.arange(text_len)[None] < lengths[:, None]).to(device)
    return dict(
        x=x,
        t=torch.randint(0, 1000, (batch,), generator=generator).to(device),
        generated=task_masks(torch.randint(0, 3, (batch,), generator=generator), cfg.video_latent[1]).to(device),
        text=randn(batch, text_len, cfg.text_dim),
        text_mask=mask,
        drop_text=(torch.arange(batch) % 2 == 1).to(device),
    )


def timed(fn, steps: int, warmup: int, sync) -> float:
    """Median seconds of `fn` over `steps` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="debug", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--checkpointing", action="store_true", help="recompute every block in the backward")
    parser.add_argument("--checkpoint-depth", type=int, default=None,
                        help="recompute only the first N (spatial, temporal) block pairs")
    parser.add_argument("--compile", action="store_true", help="torch.compile every block")
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--text-len", type=int, default=None, help="text tokens (default: the preset's text_len)")
    parser.add_argument("--guided-batch", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--profile", default=None, metavar="FILE", help="write the top kernels of one training step")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    cfg = dataclasses.replace(PRESETS[args.preset], grad_checkpointing=args.checkpointing)
    text_len = args.text_len or cfg.text_len
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(cfg).to(dtype)
    if args.checkpoint_depth is not None:
        model.checkpoint_depth = args.checkpoint_depth
    if args.compile:
        compile_blocks(model)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "params": num_parameters(model),
        "tokens": num_tokens(cfg),
        "text_len": text_len,
        "batch": args.batch,
        "dtype": dtype_name,
        "checkpoint_depth": model.checkpoint_depth,
        "compile": args.compile,
        "forward_tflop_per_sample": flops_per_sample(cfg, text_len) / 1e12,
    }

    batch = make_batch(cfg, args.batch, text_len, device, generator)
    model.train()

    def train_step() -> None:
        out = model(**batch)
        loss = out.video.square().mean() + out.audio.square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    try:
        reset_peak_memory(device)
        seconds = timed(train_step, args.steps, args.warmup, sync)
        result["train_step_s"] = seconds
        result["samples_per_s"] = args.batch / seconds
        if cuda:
            result["train_peak_memory_gib"] = peak_memory_bytes(device)[0] / 2**30
            achieved = 3 * flops_per_sample(cfg, text_len) * args.batch / seconds
            result["model_tflops"] = achieved / 1e12
            result["mfu"] = achieved / H100_BF16_FLOPS
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities) as prof:
                train_step()
                sync()
            sort = "cuda_time_total" if cuda else "cpu_time_total"
            with open(args.profile, "w") as f:
                f.write(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90))
    except torch.OutOfMemoryError:
        result["train_error"] = "out of memory"
    batch = None  # free the training batch (train_step closes over it) before the guided one
    model.zero_grad(set_to_none=True)

    guided = make_batch(cfg, 2 * args.guided_batch, text_len, device, generator)
    half = args.guided_batch
    guided["drop_text"] = torch.arange(2 * half, device=device) >= half  # conditional, then unconditional
    model.eval()

    def guided_step() -> None:
        with torch.inference_mode():
            model(**guided)

    if cuda:
        torch.cuda.empty_cache()
    reset_peak_memory(device)
    result["guided_batch"] = half
    result["guided_step_s"] = timed(guided_step, args.steps, args.warmup, sync)
    if cuda:
        result["guided_peak_memory_gib"] = peak_memory_bytes(device)[0] / 2**30
    print(json.dumps(result))


if __name__ == "__main__":
    main()
