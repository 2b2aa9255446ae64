"""Seconds per 4 s clip of `UniFormPipeline` for each sampler and step count, split into text encoding, denoising
and decoding, plus peak memory; or, with `--lengths`, seconds per output second and peak memory of outputs of
any length (`UniFormPipeline.generate`, window by window). Prints one JSON object.

    python benchmarks/generate.py --tiny                          # CPU smoke run (tiny model and codecs)
    python benchmarks/generate.py                                 # XL/2, real-size codecs, bf16 on CUDA
    python benchmarks/generate.py --with-t5 --batch-size 4        # plus a real-size T5-v1.1-XXL encoder
    python benchmarks/generate.py --lengths                       # 4, 12 and 60 s outputs, V2A and T2AV
    python benchmarks/generate.py --lengths --seconds 4 30 --steps 10

Every part has random weights and is built through its own class at its real size (nothing is downloaded):
UniForm XL/2, the Open-Sora VAE v1.2 (SDXL VAE + temporal VAE), AudioLDM's VAE and HiFi-GAN, and with
`--with-t5` a T5EncoderModel with T5-v1.1-XXL's configuration (without it, a one-layer 4096-wide T5 stands in,
so that the guided 2B-sample forward is still measured, but the `text` time is not T5-XXL's). Clips are T2AV
(video and audio both generated and decoded, the most work) with guidance on. Goal on one H100: at most 3 s
per clip end to end at 25 steps, peak memory at most 24 GB with T5-XXL loaded.

`--lengths` runs a V2A job (a random video given, its sound generated) and a T2AV job for each of `--seconds`,
one (job, length) at a time, with one sampler and step count (default ddim, 25). On the CPU that is the demo
preset over the weight-free codecs ("pixel" video, "mel" audio, "hash" text) at 32 px, each length in a fresh
process, since a process's peak resident set cannot be reset; on CUDA it is XL/2 over the real-size codecs
above, in one process, the CUDA peak reset before each call. The peak of a longer output should exceed a
shorter one's by no more than its media buffers (60 s at 256 px: 0.2 GB of frames), not by a window's working
set per window. `baseline_memory_gb` is, on the CPU, the peak after building the parts and one warm-up clip;
on CUDA, what is allocated before the call (the weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import string
import subprocess
import sys

import numpy as np
import torch

from uniform_cli.config import PRESETS, ClipSpec, CodecConfig, DiffusionConfig, GenerateConfig
from uniform_cli.diffusion.schedule import make_schedule
from uniform_cli.generate.jobs import Job
from uniform_cli.generate.pipeline import UniFormPipeline
from uniform_cli.memory import peak_memory_bytes, reset_peak_memory
from uniform_cli.model.uniform import build_model, compile_blocks, num_parameters
from uniform_cli.types import Task

T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")
"""google/t5-v1_1-xxl's encoder settings (DeepFloyd/t5-v1_1-xxl is the same model)."""

CAPTION = "a man plays an acoustic guitar and sings on a busy street while cars pass by"


def tokenizer():
    """A T5 tokenizer built offline: whole words for the caption, single characters for anything else."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0) for w in sorted(set(CAPTION.split()))]
    vocab += [("\u2581", -5.0)] + [(c, -6.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_text_encoder(d_model: int, full: bool, max_length: int, device, dtype):
    from transformers import T5Config, T5EncoderModel

    from uniform_cli.latents.text import TextEncoder

    tok = tokenizer()
    settings = dict(T5_XXL) if full else dict(d_model=d_model, d_kv=64, d_ff=2 * d_model, num_layers=1,
                                               num_heads=max(1, d_model // 64), relative_attention_num_buckets=8,
                                               feed_forward_proj="gated-gelu")
    settings["vocab_size"] = max(settings.get("vocab_size", 0), len(tok))
    config = T5Config(**settings, is_encoder_decoder=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the run dtype: T5-XXL in fp32 would need 19 GB first
    try:
        with torch.device(device):
            model = T5EncoderModel(config)
    finally:
        torch.set_default_dtype(previous)
    return TextEncoder(tok, model, max_length=max_length)


def build_codecs(tiny: bool, device, dtype):
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    from uniform_cli.latents.audio_vae import AudioLDMCodec
    from uniform_cli.latents.temporal_vae import TemporalVAEConfig
    from uniform_cli.latents.video_vae import SDXL_VAE_CONFIG, OpenSoraVAE

    with torch.device(device):
        if tiny:
            video = OpenSoraVAE({**SDXL_VAE_CONFIG, "block_out_channels": [4, 8, 8, 16], "layers_per_block": 1,
                                 "norm_num_groups": 4},
                                TemporalVAEConfig(filters=4, num_res_blocks=1, num_groups=2), frames_per_call=32)
        else:
            video = OpenSoraVAE()
        vae = AutoencoderKL(
            in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=8, sample_size=256, scaling_factor=0.93929,
            block_out_channels=(8, 16, 16) if tiny else (128, 256, 512), layers_per_block=1 if tiny else 2,
            norm_num_groups=4 if tiny else 32,
        )
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
            model_in_dim=64, sampling_rate=16000, upsample_initial_channel=32 if tiny else 1024,
            upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
            resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3, normalize_before=False,
        ))
    return video.to(dtype).eval(), AudioLDMCodec(vae, vocoder)


def build_pipeline(shapes: str, device: torch.device, dtype: torch.dtype, with_t5: bool = False,
                   compile: bool = False, video_frames_per_call: int | None = None) -> UniFormPipeline:
    """A pipeline of random parts: "tiny" (tiny model and codecs at 128 px), "demo" (the demo preset over the
    weight-free codecs at 32 px) or "XL/2" (real-size model and codecs)."""
    if shapes == "tiny":
        cfg = dataclasses.replace(PRESETS["debug"], video_latent=(4, 20, 16, 16), audio_latent=(8, 100, 16),
                                  hidden_size=32, depth=1, num_heads=2, text_dim=16, text_len=16)
        spec = ClipSpec(size=128)
    elif shapes == "demo":
        cfg = PRESETS["demo"]
        spec = ClipSpec(fps=17, size=32, seconds=4.0, sample_rate=16000)  # recipes/demo.toml's [data]
    else:
        cfg = PRESETS["XL/2"]
        spec = ClipSpec()
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(cfg)
    model = model.to(dtype)
    if compile:
        compile_blocks(model)
    if shapes == "demo":
        from uniform_cli.latents.codecs import build_audio_codec, build_video_codec
        from uniform_cli.latents.text import TextEncoder

        codec = CodecConfig(video="pixel", audio="mel", video_vae="pixel", audio_vae="mel", text_encoder="hash")
        video_codec = build_video_codec(codec, device=device, dtype=dtype)
        audio_codec = build_audio_codec(codec, device=device)
        text_encoder = TextEncoder.from_pretrained(codec.text_encoder, max_length=cfg.text_len, device=device)
    else:
        video_codec, audio_codec = build_codecs(shapes == "tiny", device, dtype)
        text_encoder = build_text_encoder(cfg.text_dim, with_t5 and shapes == "XL/2", cfg.text_len, device, dtype)
    if video_frames_per_call:
        video_codec.frames_per_call = video_frames_per_call
    return UniFormPipeline(model, make_schedule(DiffusionConfig()), video_codec, audio_codec, text_encoder, spec,
                           GenerateConfig(cfg_video=4.0, cfg_audio=4.0), device, dtype)


def text_encoder_name(shapes: str, with_t5: bool) -> str:
    if shapes == "demo":
        return "hash (weight-free)"
    return "T5-v1.1-XXL (random)" if with_t5 and shapes == "XL/2" else "1-layer T5 stand-in"


def describe(pipe: UniFormPipeline, shapes: str, args: argparse.Namespace, dtype_name: str) -> dict:
    """The settings both modes print first."""
    device = pipe.device
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": dtype_name,
        "model": shapes,
        "parameters": num_parameters(pipe.model),
        "text_encoder": text_encoder_name(shapes, args.with_t5),
        "text_encoder_parameters": num_parameters(pipe.text_encoder.model),
        "clip": pipe.spec.tag,
        "batch_size": args.batch_size,
        "compile": args.compile,
        "video_frames_per_call": getattr(pipe.video_codec, "frames_per_call", None),
    }


def length_job(task: str, seconds: float, spec: ClipSpec) -> Job:
    """A V2A job (a random video of `seconds` given) or a T2AV job of `seconds`."""
    if task == "v2a":
        rng = np.random.default_rng(0)
        video = rng.integers(0, 256, (round(seconds * spec.fps), spec.size, spec.size, 3), dtype=np.uint8)
        return Job(CAPTION, "v2a", video=video)
    return Job(CAPTION, "t2av", seconds=seconds)


def warm_up(pipe: UniFormPipeline, task: str) -> None:
    """One clip of `task` (kernels, compile, the encoder's first call), so the timed calls do not pay for it."""
    pipe.generate([length_job(task, pipe.spec.seconds, pipe.spec)], sampler="ddim", steps=2, seed=0)


def measure_length(pipe: UniFormPipeline, task: str, seconds: float, sampler: str, steps: int,
                   batch_size: int) -> dict:
    """One timed `generate` call of `batch_size` jobs of `task` and `seconds`, per output second."""
    device = pipe.device
    baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else peak_memory_bytes(device)[0]
    jobs = [length_job(task, seconds, pipe.spec)] * batch_size
    reset_peak_memory(device)
    out = pipe.generate(jobs, sampler=sampler, steps=steps, seed=0)
    peak = peak_memory_bytes(device)[0]
    return {
        "task": task,
        "seconds": seconds,
        "sampler": sampler,
        "steps": steps,
        "windows": len(out.windows[0]),
        "seconds_per_output_second": {k: round(v / (batch_size * seconds), 4) for k, v in out.timings.items()},
        "peak_memory_gb": round(peak / 1e9, 3),
        "baseline_memory_gb": round(baseline / 1e9, 3),
    }


def run_lengths(args: argparse.Namespace, shapes: str, device: torch.device, dtype: torch.dtype,
                dtype_name: str) -> dict:
    """`--lengths`: every (sampler, steps, task, length), each length in a fresh process on the CPU."""
    samplers = (args.samplers or "ddim").split(",")
    steps_list = [int(s) for s in (args.steps or ("2" if args.tiny else "25")).split(",")]
    settings = [(sampler, steps, task, seconds) for sampler in samplers for steps in steps_list
                for task in ("v2a", "t2av") for seconds in args.seconds]
    results, info = [], None
    if device.type == "cuda":
        pipe = build_pipeline(shapes, device, dtype, args.with_t5, args.compile, args.video_frames_per_call)
        info = describe(pipe, shapes, args, dtype_name)
        for task in ("v2a", "t2av"):
            warm_up(pipe, task)
        results = [measure_length(pipe, task, seconds, sampler, steps, args.batch_size)
                   for sampler, steps, task, seconds in settings]
    else:
        for sampler, steps, task, seconds in settings:
            child = [sys.executable, __file__, *sys.argv[1:], "--child", task, str(seconds), sampler, str(steps)]
            run = subprocess.run(child, capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(f"{task} {seconds:g} s failed:\n{run.stderr}")
            line = json.loads(run.stdout.strip().splitlines()[-1])
            info = line["info"]
            results.append(line["result"])
    return {**info, "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "cpu peak rss",
            "fresh_process_per_length": device.type != "cuda", "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model and codecs at 128 px (CPU smoke run)")
    parser.add_argument("--with-t5", action="store_true", help="a real-size random T5-v1.1-XXL text encoder")
    parser.add_argument("--samplers", default=None, help="comma-separated (default ddpm,ddim,dpm++; --lengths: ddim)")
    parser.add_argument("--steps", default=None,
                        help="comma-separated step counts (default 25,50; tiny: 2,4; --lengths: 25, tiny: 2)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per setting (the median is reported)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    parser.add_argument("--video-frames-per-call", type=int, default=None,
                        help="frames per spatial VAE decoder call (the checkpoint default is 4)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--lengths", action="store_true",
                        help="seconds per output second and peak memory of V2A and T2AV outputs of --seconds")
    parser.add_argument("--seconds", type=float, nargs="+", default=[4.0, 12.0, 60.0],
                        help="output lengths for --lengths (default 4 12 60)")
    parser.add_argument("--child", nargs=4, metavar=("TASK", "SECONDS", "SAMPLER", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]

    if args.lengths or args.child:
        shapes = "tiny" if args.tiny else ("XL/2" if device.type == "cuda" else "demo")
        if args.child:  # one length in this fresh process; the parent collects the line
            task, seconds, sampler, steps = args.child
            pipe = build_pipeline(shapes, device, dtype, args.with_t5, args.compile, args.video_frames_per_call)
            warm_up(pipe, task)
            result = measure_length(pipe, task, float(seconds), sampler, int(steps), args.batch_size)
            print(json.dumps({"info": describe(pipe, shapes, args, dtype_name), "result": result}))
        else:
            print(json.dumps(run_lengths(args, shapes, device, dtype, dtype_name), indent=1))
        return

    steps_list = [int(s) for s in (args.steps or ("2,4" if args.tiny else "25,50")).split(",")]
    samplers = (args.samplers or "ddpm,ddim,dpm++").split(",")
    shapes = "tiny" if args.tiny else "XL/2"
    pipe = build_pipeline(shapes, device, dtype, args.with_t5, args.compile, args.video_frames_per_call)
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else None

    texts = [CAPTION] * args.batch_size
    pipe(texts, Task.T2AV, sampler="ddim", steps=2, seed=0)  # warm-up (kernels, compile)
    results = []
    for sampler in samplers:
        for steps in steps_list:
            runs = []
            for repeat in range(args.repeats):
                out = pipe(texts, Task.T2AV, sampler=sampler, steps=steps, seed=repeat)
                runs.append(out.timings)
            median = sorted(runs, key=lambda t: t["total"])[len(runs) // 2]
            peak, kind = peak_memory_bytes(device)
            results.append({
                "sampler": sampler,
                "steps": steps,
                "seconds_per_clip": {k: round(v / args.batch_size, 4) for k, v in median.items()},
                "peak_memory_gb": round((out.peak_memory if out.peak_memory is not None else peak) / 1e9, 3),
            })
    print(json.dumps({
        **describe(pipe, shapes, args, dtype_name),
        "weights_memory_gb": round(weights / 1e9, 3) if weights is not None else None,
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "cpu peak rss",
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
