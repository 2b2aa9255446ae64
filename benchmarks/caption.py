"""Caption throughput (clips/s) of PLLaVA at a batch size; prints one JSON object.

    python benchmarks/caption.py --random-size tiny                        # CPU smoke run
    python benchmarks/caption.py --random-size 7b --batch-size 16          # real-size random weights, bf16 GPU
    python benchmarks/caption.py --model models/pllava-7b --batch-size 16  # a published checkpoint

Random weights never emit end-of-sequence here (eos is disabled), so every clip costs the full
`--max-new-tokens`: the worst case of a real run. Frames are random 4-frame clips at 256 x 256; with
`--model` the whole captioner runs (pixel preparation, tokenizer, generation, decoding).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from uniform_cli.memory import peak_memory_bytes, reset_peak_memory

SIZES = {
    # CLIP ViT-L/14 at 336 px and Vicuna-7B (LLaVA-1.6 7B), as in ermu2001/pllava-7b.
    "7b": (
        dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
            patch_size=14,
        ),
        dict(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
        ),
    ),
    "tiny": (
        dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=56, patch_size=14
        ),
        dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=1000, max_position_embeddings=2048,
        ),
    ),
}
PROMPT_TOKENS = 340  # the Open-Sora prompt is about this long with Llama's tokenizer


def random_pllava(size: str, pooling: tuple[int, int, int], device: str, dtype: torch.dtype):
    from uniform_cli.prep.captioners.pllava import build_pllava

    vision, text = SIZES[size]
    image_token = text["vocab_size"] - 64  # like 32000 in a 32064-row table
    config = {"vision_config": vision, "text_config": text, "image_token_index": image_token, "pad_token_id": 0}
    torch.manual_seed(0)
    return build_pllava(config, pooling, device, dtype), image_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="PLLaVA folder or cached hub id")
    which.add_argument("--random-size", choices=sorted(SIZES), help="random weights of this size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3, help="timed batches (after one warm-up batch)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--num-frames", type=int, default=4)
    parser.add_argument("--pooling", default="4,12,12")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    pooling = tuple(int(x) for x in args.pooling.split(","))
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    rng = np.random.default_rng(0)
    b = args.batch_size

    if args.model:
        from uniform_cli.prep.captioners.contract import CaptionInput
        from uniform_cli.prep.captioners.pllava import PllavaCaptioner

        captioner = PllavaCaptioner(
            args.model, num_frames=args.num_frames, pooling_shape=pooling, max_new_tokens=args.max_new_tokens,
            device=args.device,
        )
        captioner.eos_token_id = -1  # worst case: every clip generates max_new_tokens
        shape = (args.num_frames, 256, 256, 3)
        clips = [CaptionInput(str(i), rng.integers(0, 255, shape, dtype=np.uint8)) for i in range(b)]

        def one_batch() -> None:
            captioner.caption(clips)

        net = captioner.net
    else:
        from uniform_cli.prep.captioners.frames import clip_pixels

        net, image_token = random_pllava(args.random_size, pooling, args.device, dtype)
        size = net.vision_tower.config.image_size
        frames = rng.integers(0, 255, (b, args.num_frames, 256, 256, 3), dtype=np.uint8)
        ids = torch.randint(1, image_token, (b, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
        ids[:, PROMPT_TOKENS - 8] = image_token
        mask = torch.ones_like(ids)

        def one_batch() -> None:
            pixels = torch.stack([clip_pixels(f, size) for f in frames]).to(args.device)
            net.generate(ids.to(args.device), mask.to(args.device), pixels, args.max_new_tokens, eos_token_id=-1)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    one_batch()  # warm-up: kernels, allocator
    sync()
    reset_peak_memory(args.device)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        one_batch()
    sync()
    seconds = time.perf_counter() - t0
    clips = args.batches * b
    print(
        json.dumps(
            {
                "model": args.model or f"random-{args.random_size}",
                "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                "dtype": str(dtype).removeprefix("torch."),
                "batch_size": b,
                "num_frames": args.num_frames,
                "pooling": list(pooling),
                "max_new_tokens": args.max_new_tokens,
                "params_b": round(sum(p.numel() for p in net.parameters()) / 1e9, 3),
                "clips": clips,
                "seconds": round(seconds, 3),
                "clips_per_s": round(clips / seconds, 3),
                "new_tokens_per_s": round(clips * args.max_new_tokens / seconds, 1),
                "peak_gib": round(peak_memory_bytes(args.device)[0] / 2**30, 2) if cuda else None,
            }
        )
    )


if __name__ == "__main__":
    main()
