"""Eval throughput: clips per second of AV-Align (CPU), and of CLAP with random weights of the real size.

Synthetic clips made here (UniForm's format: 68 frames of 256x256 at 17 fps, 4 s of 16 kHz sound; a bright
square that flashes with a click four times per clip). Three numbers:
    av_align_clips_per_s       the metric alone on decoded clips (onsets + Farnebäck flow), one process
    eval_clips_per_s           `uniform eval --metrics av-align` end to end on mp4 files (decode, metric,
                               shuffled-pair baseline and p-value)
    clap_clips_per_s           LAION CLAP (HTSAT-base + RoBERTa sizes, random weights) on one 4 s sound and
                               caption per clip, on --device (default cuda when there is one, else skipped
                               unless --clap-on-cpu)
Prints one JSON object.

    python benchmarks/eval.py                 # 32 clips
    python benchmarks/eval.py --clips 8       # a quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FPS, RATE, FRAMES, SIZE = 17, 16000, 68, 256


def synthetic_clip(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 `F H W 3` grey-noise frames with a square flashed at 4 random frames, and clicks at those instants."""
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 40, (1, SIZE, SIZE, 3), dtype=np.uint8), FRAMES, axis=0)
    wave = (0.003 * rng.standard_normal(FRAMES * RATE // FPS)).astype(np.float32)
    for k in sorted(rng.choice(np.arange(4, FRAMES - 4), 4, replace=False)):
        frames[k, SIZE // 4: 3 * SIZE // 4, SIZE // 4: 3 * SIZE // 4] = 255
        start = int(k / FPS * RATE)
        wave[start: start + 160] += 0.8 * rng.standard_normal(160).astype(np.float32) * np.exp(-np.arange(160) / 40)
    return frames, wave


def random_clap(device: str):
    """A `Clap` of laion/larger_clap_music_and_speech's sizes with random weights, and a small BPE vocabulary."""
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    from uniform_cli.eval.clap import Clap

    folder = Path(tempfile.mkdtemp())
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for ch in "abcdefghijklmnopqrstuvwxyz\u0120":
        vocab[ch] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = ClapConfig(audio_config=dict(enable_fusion=False, patch_embeds_hidden_size=128, hidden_size=1024,
                                          depths=[2, 2, 12, 2]),
                        text_config=dict(vocab_size=50265))
    torch.manual_seed(0)
    model = ClapModel(config).to(device).eval()
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"),
                              tokenizer=RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")))
    return Clap(model, processor, device, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--device", default=None, help="device of CLAP (default: cuda when available)")
    parser.add_argument("--clap-on-cpu", action="store_true", help="time CLAP on the CPU too (slow)")
    args = parser.parse_args()

    import torch

    from uniform_cli.eval.clap import clap_features
    from uniform_cli.eval.run import EXTRACTORS, METRICS, clip_features, evaluate
    from uniform_cli.media.io import write_mp4

    clips = [synthetic_clip(i) for i in range(args.clips)]
    result: dict[str, object] = {"clips": args.clips, "clip": f"{FRAMES} frames {SIZE}x{SIZE} at {FPS} fps, 4 s",
                                 "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}

    start = time.perf_counter()
    scores = [METRICS["av-align"].pair(f.values[0], f.values[0]) for f in
              (clip_features(EXTRACTORS["av-align"], None, frames, FPS, wave, RATE, None) for frames, wave in clips)]
    result["av_align_clips_per_s"] = round(args.clips / (time.perf_counter() - start), 2)
    result["av_align_mean"] = round(float(np.mean(scores)), 3)

    with tempfile.TemporaryDirectory() as tmp:
        for i, (frames, wave) in enumerate(clips):
            write_mp4(Path(tmp) / f"c{i}.mp4", frames, FPS, wave, RATE)
        start = time.perf_counter()
        evaluated = evaluate(tmp, metrics=["av-align"])
        result["eval_clips_per_s"] = round(args.clips / (time.perf_counter() - start), 2)
        base = evaluated.details["baselines"]["AV-Align"]["all"]
        result["eval_av_align"] = {k: round(v, 3) for k, v in base.items()}

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" or args.clap_on_cpu:
        clap = random_clap(device)
        clap_features(clap, clips[0][1], RATE, "warm up")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i, (_, wave) in enumerate(clips):
            clap_features(clap, wave, RATE, f"a flash and a click number {i}")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        result["clap_clips_per_s"] = round(args.clips / (time.perf_counter() - start), 2)
        result["clap_device"] = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
