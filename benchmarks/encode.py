"""Encode throughput: clips/s and peak memory of the Open-Sora VAE + AudioLDM VAE with random weights.

    python benchmarks/encode.py --tiny                        # CPU smoke run (tiny widths, real factors)
    python benchmarks/encode.py --batch-size 8                # real-size VAEs, bf16 on CUDA
    python benchmarks/encode.py --batch-size 16 --video-frames-per-call 64

The codecs are built with their own constructors, saved with `save_pretrained` in the published layout and
loaded back through `build_video_codec` / `build_audio_codec` (the path `uniform encode` takes), then the
driver's BatchEncoder encodes random 4 s clips (68 x 256 x 256 frames, 64,000 samples). `read_clips_per_s`
is the CPU side: decoding one real mp4 + wav with `--workers` threads, as the driver does ahead of the GPU.
Text embeddings are not included. Goal on one H100: at least 25 clips/s. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from uniform_cli.memory import peak_memory_bytes, reset_peak_memory

TINY_SPATIAL = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4}
TINY_TEMPORAL = {"filters": 4, "num_res_blocks": 1, "num_groups": 2}
TINY_AUDIO_VAE = {"block_out_channels": (8, 16, 16), "layers_per_block": 1, "norm_num_groups": 4}
REAL_AUDIO_VAE = {"block_out_channels": (128, 256, 512), "layers_per_block": 2, "norm_num_groups": 32}


def build_checkpoints(folder: Path, tiny: bool) -> tuple[str, str]:
    """Random Open-Sora VAE and AudioLDM (vae/ + vocoder/) checkpoints in their published layouts."""
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    from uniform_cli.latents.temporal_vae import TemporalVAEConfig
    from uniform_cli.latents.video_vae import SDXL_VAE_CONFIG, OpenSoraVAE

    torch.manual_seed(0)
    if tiny:
        video = OpenSoraVAE({**SDXL_VAE_CONFIG, **TINY_SPATIAL}, TemporalVAEConfig(**TINY_TEMPORAL))
    else:
        video = OpenSoraVAE()
    video.save_pretrained(folder / "opensora")
    widths = TINY_AUDIO_VAE if tiny else REAL_AUDIO_VAE
    AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=8,
        sample_size=256,
        scaling_factor=0.93929,
        **widths,
    ).save_pretrained(folder / "audioldm" / "vae")
    SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=64,
            sampling_rate=16000,
            upsample_initial_channel=32 if tiny else 1024,
            upsample_rates=[5, 4, 2, 2, 2],
            upsample_kernel_sizes=[16, 16, 8, 4, 4],
            resblock_kernel_sizes=[3, 7, 11],
            resblock_dilation_sizes=[[1, 3, 5]] * 3,
            normalize_before=False,
        )
    ).save_pretrained(folder / "audioldm" / "vocoder")
    return str(folder / "opensora"), str(folder / "audioldm")


def read_throughput(folder: Path, clips: int, workers: int) -> float:
    """Clips/s of decoding one real 4 s clip (mp4 + wav) repeatedly with the driver's read-ahead threads."""
    from uniform_cli.config import DataConfig
    from uniform_cli.latents.clip_reader import Job, read_ahead, read_clip
    from uniform_cli.media.io import write_mp4, write_wav

    data = DataConfig()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8).repeat(8, 1).repeat(8, 2)
    frames = (base + np.arange(data.frames, dtype=np.uint8)[:, None, None, None] * 3).astype(np.uint8)
    write_mp4(folder / "clip.mp4", frames, data.fps)
    write_wav(folder / "clip.wav", 0.3 * np.sin(np.arange(data.samples) * 0.05), data.sample_rate)
    job = Job("clip", "train", "", folder / "clip.mp4", folder / "clip.wav", "", {})
    t0 = time.perf_counter()
    for _, clip in read_ahead([job] * clips, lambda j: read_clip(j, data.clip), workers, 2 * workers):
        if not hasattr(clip, "frames"):
            raise RuntimeError(f"reading the benchmark clip failed: {clip}")
    return clips / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny widths (CPU smoke run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per codec call")
    parser.add_argument("--batches", type=int, default=4, help="timed batches (after one warm-up batch)")
    parser.add_argument("--video-frames-per-call", type=int, default=None, help="frames per spatial VAE call")
    parser.add_argument("--workers", type=int, default=8, help="clip-reading threads for read_clips_per_s")
    args = parser.parse_args()

    from uniform_cli.config import CodecConfig, DataConfig
    from uniform_cli.latents.clip_reader import Clip, Job
    from uniform_cli.latents.codecs import build_audio_codec, build_video_codec
    from uniform_cli.latents.encode import BatchEncoder, resolve_device

    device, dtype = resolve_device(args.device, args.dtype)
    data = DataConfig()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video_id, audio_id = build_checkpoints(folder, args.tiny)
        codec = CodecConfig(video_vae=video_id, audio_vae=audio_id)
        video = build_video_codec(codec, device, dtype)
        audio = build_audio_codec(codec, device, dtype)
        if args.video_frames_per_call is not None:
            video.frames_per_call = args.video_frames_per_call
        encoder = BatchEncoder(video, audio, None, device)
        rng = np.random.default_rng(0)
        job = Job("clip", "train", "", folder / "x.mp4", folder / "x.wav", "", {})
        batch = [
            Clip(
                job,
                rng.integers(0, 256, (data.frames, data.size, data.size, 3), dtype=np.uint8),
                (rng.random(data.samples, dtype=np.float32) * 2 - 1) * 0.5,
                float(data.fps),
            )
            for _ in range(args.batch_size)
        ]

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        out = encoder.encode(batch)  # warm-up (cuDNN autotuning, allocator)
        shapes = [list(out[0][0].shape), list(out[0][1].shape)]
        reset_peak_memory(device)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.batches):
            encoder.encode(batch)
        sync()
        seconds = time.perf_counter() - t0

        # the two codecs alone, to see which one bounds the throughput
        frames = torch.from_numpy(np.stack([c.frames for c in batch])).to(device)
        wave = torch.from_numpy(np.stack([c.wave for c in batch])).to(device)
        sync()
        t1 = time.perf_counter()
        video.encode(frames)
        sync()
        t2 = time.perf_counter()
        audio.encode(wave)
        sync()
        t3 = time.perf_counter()
        read_rate = read_throughput(folder, clips=max(8, 2 * args.workers), workers=args.workers)

    clips = args.batches * args.batch_size
    result = {
        "benchmark": "encode",
        "size": "tiny" if args.tiny else "real",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": args.batch_size,
        "video_frames_per_call": video.frames_per_call,
        "clips": clips,
        "seconds": round(seconds, 3),
        "clips_per_s": round(clips / seconds, 3),
        "video_clips_per_s": round(args.batch_size / (t2 - t1), 3),
        "audio_clips_per_s": round(args.batch_size / (t3 - t2), 3),
        "read_clips_per_s": round(read_rate, 2),
        "read_workers": args.workers,
        "latent_shapes": shapes,
        "peak_gpu_memory_gb": round(peak_memory_bytes(device)[0] / 2**30, 3) if device.type == "cuda" else None,
        "peak_rss_gb": round(peak_memory_bytes("cpu")[0] / 2**30, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
