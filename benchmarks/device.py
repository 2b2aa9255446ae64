"""Every measurement of issue #21 in one run: `uniform train`, `uniform generate`, `uniform encode` through the
real entry points, the plain reference stack beside them, and each lever with and without. Prints one JSON
object (and rewrites it to `--out-json` after every part, so a run stopped at its limit keeps what it measured).

    python benchmarks/device.py --preset debug                          # CPU: tiny parts, end to end, minutes
    python benchmarks/device.py --preset XL/2 --out-json $OUT/device.json   # one GPU

What it does, in order (`--parts` picks some; `--budget-s` skips the parts left once that many seconds passed):
  reference  ../shared/tools/reference_stack.py (a plain PyTorch stack of the same shape) in its own process.
  train      synthetic latent shards (the encode stage's writer, text of text_len tokens), then `uniform train
             recipes/multitask.toml --set ...` for each setting in TRAIN_SETTINGS: eager or compiled under the
             DeepSpeed engine, every block pair or the first half recomputed. samples/s is the median of the steps
             after the warm-up in metrics.jsonl; MFU = 3 x forward FLOPs (`flops_per_sample`) x samples/s over
             the card's dense bf16 peak (PEAK_BF16, by device name).
  loader     the same engine step on one fixed batch (`benchmarks/train_step.py`): the gap to `train` is the
             loader's share.
  generate   a random checkpoint (XL/2; real-size Open-Sora VAE, AudioLDM VAE + HiFi-GAN and T5-v1.1-XXL shapes,
             saved in their published layouts), then `uniform generate` of 4 s T2AV clips, 25 DPM-Solver++ steps,
             one clip a batch: eager, `--compile`, and `--compile --cache T` for each `--cache-thresholds`.
             Seconds per clip are the median of results.jsonl rows after the first (which pays for compiling);
             a cached run also reports how far its outputs moved from the uncached run (random weights: this
             is a deviation, not a quality figure).
  encode     N copies of one 4 s clip, then `uniform encode` with T5 embeddings, one batch a shard: clips/s
             between the first and the last shard's sealing (start-up, loading T5-XXL, comes before the first).
  attention  `benchmarks/attention.py`: every SDPA backend at the spatial and temporal shapes, head width 72 as
             is and zero-padded to 80/96/128 (checked exact first).
  backends   a model training step (eager, no checkpointing) under each SDPA backend.
On the CPU the reference is skipped (it needs CUDA) and so is `--compile` in generate.

On the lent GPU machine (`run` tool). Here, once, from the repository root:
    bash ../shared/tools/gpu-wheels.sh                  # wheels the GPU image lacks, into .whl/ (ignored)
    mkdir -p .ref && cp ../shared/tools/reference_stack.py .ref/ && echo /.ref/ >> .git/info/exclude
then one run, carry [".whl", ".ref"], timeout_s 540 (the budget stops new parts at 420 s and the JSON so far
is in $OUT; 15 minutes of device time leave room for one rerun of the parts that did not finish, with --parts):
    export TORCH_CUDA_ARCH_LIST=9.0; python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site
    .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && python3 benchmarks/device.py --preset
    XL/2 --reference .ref/reference_stack.py --budget-s 420 --work /tmp/dev --out-json $OUT/device.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the sibling benchmarks and the test fixtures, run as a script or not

from benchmarks import attention, model_step, train_step  # noqa: E402
from benchmarks.encode import build_checkpoints  # noqa: E402
from benchmarks.generate import CAPTION, build_text_encoder  # noqa: E402
from uniform_cli.config import PRESETS, DataConfig, GenerateConfig, ModelConfig  # noqa: E402
from uniform_cli.model.uniform import build_model, flops_per_sample  # noqa: E402

PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "GH200": 989e12,
             "B200": 2250e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
"""Dense bf16 tensor-core peak (FLOP/s, no sparsity) by a part of the CUDA device name; first match wins."""

TRAIN_SETTINGS = {
    "eager_recompute_all": ["train.compile=false", "model.grad_checkpointing=true"],
    "compiled_recompute_all": ["train.compile=true", "model.grad_checkpointing=true"],
    "compiled_recompute_half": ["train.compile=true", "model.grad_checkpointing=false", "model.checkpoint_blocks=HALF"],
}
"""`uniform train` overrides per setting; HALF is depth // 2."""


@dataclasses.dataclass
class Plan:
    """Sizes of one run: the paper's on a GPU, tiny ones on the CPU."""

    model: ModelConfig
    size: int
    """Clip side in pixels (the codecs make latents of `model`'s shapes from it)."""
    tiny_codecs: bool
    full_t5: bool
    micro_batch: int
    train_steps: int
    train_warmup: int
    encode_batch: int
    encode_clips: int
    cuda: bool


def make_plan(preset: str, cuda: bool) -> Plan:
    if preset == "XL/2":
        return Plan(PRESETS["XL/2"], size=256, tiny_codecs=False, full_t5=True, micro_batch=8, train_steps=9,
                    train_warmup=3, encode_batch=8, encode_clips=160, cuda=cuda)
    from tests.fixtures.checkpoint import TINY_SIZE, tiny_model_config

    # the tiny codecs' x8 spatial, x4 temporal factors at 128 px: video [4, 20, 16, 16], audio [8, 100, 16]
    return Plan(tiny_model_config(depth=2), size=TINY_SIZE, tiny_codecs=True, full_t5=False, micro_batch=2,
                train_steps=4, train_warmup=2, encode_batch=2, encode_clips=8, cuda=cuda)


def peak_flops(device_name: str) -> float | None:
    return next((peak for part, peak in PEAK_BF16.items() if part in device_name), None)


def mfu(cfg: ModelConfig, samples_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: 3 x forward FLOPs per sample (text of text_len tokens) x samples/s over the peak."""
    return None if peak is None else round(3 * flops_per_sample(cfg) * samples_per_s / peak, 4)


def uniform(*args: str, cwd: Path | None = None, timeout: float | None = None) -> float:
    """Run the `uniform` CLI in its own process; seconds it took. Raises with the end of its output on failure."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "uniform_cli.cli.main", *args], capture_output=True, text=True,
                         cwd=cwd or REPO, timeout=timeout)
    if run.returncode:
        raise RuntimeError(f"uniform {args[0]} exited {run.returncode}: {(run.stderr or run.stdout)[-1500:]}")
    return time.perf_counter() - start


# -- parts --------------------------------------------------------------------------------------------------


def part_reference(plan: Plan, work: Path, reference: Path) -> dict:
    if not plan.cuda:
        return {"skipped": "the reference stack needs CUDA"}
    if not reference.is_file():
        return {"skipped": f"{reference} not found (copy ../shared/tools/reference_stack.py there, see the docstring)"}
    run = subprocess.run([sys.executable, str(reference)], capture_output=True, text=True, timeout=400)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"exit {run.returncode}: {run.stderr[-1500:]}"}
    return json.loads(lines[-1])  # it prints its whole result again after each measurement


def write_shards(folder: Path, cfg: ModelConfig, samples: int) -> Path:
    """Random latent shards of `cfg`'s shapes through the encode stage's writer, each text `text_len` tokens
    long (so the FLOPs counted at text_len are the FLOPs done)."""
    from uniform_cli.config import CodecConfig
    from uniform_cli.latents.shard_writer import LatentSample, SplitShardWriter
    from uniform_cli.latents.shards import clip_settings, write_index
    from uniform_cli.stage import Part

    rng = np.random.default_rng(0)
    shapes = {"video": list(cfg.video_latent), "audio": list(cfg.audio_latent), "text_dim": cfg.text_dim}
    codec = CodecConfig()
    codecs = {"video": {"codec": codec.video, "id": codec.video_vae}, "audio": {"codec": codec.audio,
              "id": codec.audio_vae}, "text": {"id": codec.text_encoder}, "clip": clip_settings(DataConfig())}
    writer = SplitShardWriter(folder, "train", Part(), 16, lambda: (codecs, shapes), lambda stats: None)
    for i in range(samples):
        key = f"clip{i:04d}"
        writer.write(LatentSample(key, rng.normal(size=cfg.video_latent).astype(np.float16),
                                  rng.normal(size=cfg.audio_latent).astype(np.float16), CAPTION,
                                  {"key": key, "split": "train"},
                                  rng.normal(size=(cfg.text_len, cfg.text_dim)).astype(np.float16)))
    writer.close()
    write_index(folder)
    return folder


def part_train(plan: Plan, work: Path, peak: float | None) -> dict:
    cfg = plan.model
    shards = write_shards(work / "shards", cfg, 4 * plan.micro_batch)
    base = [f"model.preset={cfg.preset}", f"data.shards=[\"{shards}\"]", f"train.steps={plan.train_steps}",
            f"train.batch_size={plan.micro_batch}", f"train.micro_batch={plan.micro_batch}",
            "train.checkpoint_every=100000", "train.keep_last=1", "train.warmup_steps=0",
            "train.sample_every=0"]  # the recipe samples with the real codecs every 2,000 steps: not a step's cost
    if plan.model.preset != "XL/2":  # the tiny model's shapes and the CPU's precision
        base += [f"model.{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in
                 dataclasses.asdict(cfg).items() if k in ("video_latent", "audio_latent", "hidden_size", "depth",
                                                          "num_heads", "text_dim", "text_len")]
    if not plan.cuda:
        base += ["train.precision=\"fp32\"", "train.zero_stage=0", "data.num_workers=0"]
    out = {"micro_batch": plan.micro_batch, "timed_steps": plan.train_steps - plan.train_warmup}
    done = []
    for name, overrides in TRAIN_SETTINGS.items():
        overrides = [o.replace("HALF", str(cfg.depth // 2)) for o in overrides]
        if not plan.cuda:  # compiling on the CPU takes minutes and says nothing about the GPU: the paths only
            overrides = [o.replace("train.compile=true", "train.compile=false") for o in overrides]
        if overrides in done:
            out[name] = {"skipped": "the same settings as another on this device (no compiling on the CPU)"}
            continue
        done.append(overrides)
        run_dir = work / "runs"
        sets = [*base, *overrides, f"train.name=\"{name}\"", f"train.output_dir=\"{run_dir}\""]
        try:
            seconds = uniform("train", str(REPO / "recipes" / "multitask.toml"),
                              *[a for s in sets for a in ("--set", s)])
        except RuntimeError as e:
            out[name] = {"error": str(e)}
            continue
        records = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
        speeds = sorted(r["samples_per_s"] for r in records if r["step"] > plan.train_warmup)
        median = speeds[len(speeds) // 2]
        out[name] = {"overrides": overrides, "samples_per_s": round(median, 3), "mfu": mfu(cfg, median, peak),
                     "memory_gb": round(max(r["memory_gb"] for r in records), 2), "process_s": round(seconds, 1)}
        shutil.rmtree(run_dir / name)  # an XL/2 DeepSpeed checkpoint is about 20 GB
    return out


def part_loader(plan: Plan, work: Path, peak: float | None) -> dict:
    """The engine step of `uniform train` on one fixed batch: samples/s without any loader."""
    from uniform_cli.train.engine import init_distributed

    if plan.model.preset != "XL/2":
        return {"skipped": "benchmarks/train_step.py takes presets only; the tiny shapes are not one"}
    init_distributed()
    result = train_step.run("XL/2", plan.micro_batch, True, False, plan.train_steps - plan.train_warmup,
                            plan.train_warmup)
    result["mfu"] = mfu(plan.model, result["samples_per_s"], peak)
    return result


def save_text_encoder(folder: Path, cfg: ModelConfig, full: bool, device: torch.device) -> Path:
    """A random T5 encoder (T5-v1.1-XXL's shapes when `full`) with its tokenizer, as `save_pretrained` writes."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    encoder = build_text_encoder(cfg.text_dim, full, cfg.text_len, device, dtype)
    encoder.tokenizer.save_pretrained(folder)
    encoder.model.save_pretrained(folder)
    return folder


def make_parts(plan: Plan, work: Path, device: torch.device):
    """Codec folders and a generate-ready checkpoint, built once for `generate` and `encode`."""
    from tests.fixtures.checkpoint import make_checkpoint
    from uniform_cli.config import CodecConfig

    if (work / "checkpoint" / "recipe.toml").is_file():
        return json.loads((work / "codec.json").read_text()), work / "checkpoint"
    video, audio = build_checkpoints(work, plan.tiny_codecs)
    text = save_text_encoder(work / "t5", plan.model, plan.full_t5, device)
    codec = CodecConfig(video_vae=video, audio_vae=audio, text_encoder=str(text))
    checkpoint = make_checkpoint(work / "checkpoint", codec, model=plan.model, data=DataConfig(size=plan.size),
                                 generate=GenerateConfig(sampler="dpm++", steps=25, cfg_video=4.0, cfg_audio=4.0,
                                                         batch_size=1))
    (work / "codec.json").write_text(json.dumps(dataclasses.asdict(codec)))
    return dataclasses.asdict(codec), checkpoint


def part_generate(plan: Plan, work: Path, thresholds: list[float], clips: int) -> dict:
    from uniform_cli.media.io import read_audio, read_video

    _, checkpoint = make_parts(plan, work, torch.device("cuda" if plan.cuda else "cpu"))
    prompts = work / "prompts.csv"
    prompts.write_text("id,text\n" + "".join(f"clip{i},{CAPTION}\n" for i in range(clips)))
    compiled = ["--compile"] if plan.cuda else []
    runs = {"eager": []}
    if plan.cuda:
        runs["compiled"] = compiled
    runs.update({f"{'compiled' if plan.cuda else 'eager'}_cache_{t:g}": [*compiled, "--cache", str(t)]
                 for t in thresholds})
    out = {"clips": clips, "steps": 25, "sampler": "dpm++", "clip_seconds": 4.0}
    for name, flags in runs.items():
        folder = work / "generated" / name
        try:
            seconds = uniform("generate", str(prompts), "--checkpoint", str(checkpoint), "--out", str(folder),
                              "--batch-size", "1", "--seed", "0", *flags)
        except RuntimeError as e:
            out[name] = {"error": str(e)}
            continue
        rows = sorted((json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()),
                      key=lambda r: r["id"])
        timed = rows[1:] or rows  # the first clip pays for compiling and the first kernels
        timings = {k: round(float(np.median([r["timings"][k] for r in timed])), 4) for k in timed[0]["timings"]}
        out[name] = {"flags": flags, "seconds_per_clip": timings, "process_s": round(seconds, 1)}
        skips = [r["cache_skips"] for r in rows if r.get("cache_skips")]
        if skips:  # share of the model forwards the step cache skipped past the first block pair
            out[name]["cache_skipped_share"] = round(sum(k["skipped"] for k in skips) / sum(k["forwards"] for k in skips), 3)
        base = work / "generated" / ("compiled" if plan.cuda else "eager")
        if "--cache" in flags and (base / "clip0.wav").is_file():
            wave, _ = read_audio(folder / "clip0.wav")
            wave_base, _ = read_audio(base / "clip0.wav")
            frames, _ = read_video(folder / "clip0.mp4")
            frames_base, _ = read_video(base / "clip0.mp4")
            out[name]["deviation_from_uncached"] = {
                "wave_mean_abs": round(float(np.abs(wave - wave_base).mean()), 5),
                "frames_mean_abs_levels": round(float(np.abs(frames.astype(float) - frames_base).mean()), 3),
            }
    return out


def write_clips(root: Path, clips: int, size: int) -> Path:
    """What `clip` and `caption` leave: `clips` copies of one 4 s clip, clips.csv, captions.csv; the manifest."""
    from uniform_cli.media.io import write_mp4, write_wav
    from uniform_cli.stage import ItemResult, StatusTable

    data = DataConfig(size=size)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, size // 8, size // 8, 3)).astype(np.uint8).repeat(8, 1).repeat(8, 2)
    frames = (base + np.arange(data.frames, dtype=np.uint8)[:, None, None, None] * 3).astype(np.uint8)
    write_mp4(root / "clips" / "source.mp4", frames, data.fps)
    write_wav(root / "clips" / "source.wav", 0.3 * np.sin(np.arange(data.samples) * 0.05), data.sample_rate)
    table = StatusTable(root / "clips.csv", ["video", "audio", "label", "split"])
    captions = StatusTable(root / "captions.csv", ["text", "captioner", "model"])
    with open(root / "manifest.csv", "w", newline="") as f:
        manifest = csv.writer(f)
        manifest.writerow(["id", "url", "start", "end", "label", "split"])
        for i in range(clips):
            key = f"clip{i:04d}"
            for ext in ("mp4", "wav"):
                shutil.copyfile(root / "clips" / f"source.{ext}", root / "clips" / f"{key}.{ext}")
            table.record(ItemResult(key, "ok", fields={"video": f"clips/{key}.mp4", "audio": f"clips/{key}.wav",
                                                       "label": "street", "split": "train"}))
            captions.record(ItemResult(key, "ok", fields={"text": CAPTION, "captioner": "labels", "model": "-"}))
            manifest.writerow([key, f"/nowhere/{key}.mp4", 0, "", "street", "train"])
    table.close()
    captions.close()
    return root / "manifest.csv"


def part_encode(plan: Plan, work: Path) -> dict:
    """One `uniform encode` run with one batch a shard: the steady rate is read off the times the shards were
    sealed (the first shard's time holds the start-up, loading T5-XXL, and the first batch's warm-up)."""
    codec, _ = make_parts(plan, work, torch.device("cuda" if plan.cuda else "cpu"))
    root = work / "encode"
    shutil.rmtree(root, ignore_errors=True)
    manifest = write_clips(root, plan.encode_clips, plan.size)
    recipe = root / "recipe.toml"
    recipe.write_text(f"[data]\nsize = {plan.size}\n")
    b = plan.encode_batch
    seconds = uniform("encode", str(manifest), "--root", str(root), "--recipe", str(recipe),
                      "--video-vae", codec["video_vae"], "--audio-vae", codec["audio_vae"],
                      "--text-encoder", codec["text_encoder"], "--batch-size", str(b), "--samples-per-shard", str(b),
                      "--text-max-length", str(plan.model.text_len))
    sealed = sorted(p.stat().st_mtime for p in (root / "shards").glob("train-*.tar"))
    steady = b * (len(sealed) - 1) / (sealed[-1] - sealed[0]) if len(sealed) > 2 else None
    return {"clips": plan.encode_clips, "batch_size": b, "shards": len(sealed), "process_s": round(seconds, 2),
            "clips_per_s": round(steady, 2) if steady else None,
            "end_to_end_clips_per_s": round(plan.encode_clips / seconds, 2)}


def part_backends(plan: Plan, device: torch.device) -> dict:
    """One training step (forward + backward, eager) of the model under each SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cuda = device.type == "cuda"
    batch_size = 2
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(plan.model).to(torch.bfloat16 if cuda else torch.float32).train()
    batch = model_step.make_batch(plan.model, batch_size, plan.model.text_len, device, torch.Generator().manual_seed(0))
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step() -> None:
        out = model(**batch)
        (out.video.square().mean() + out.audio.square().mean()).backward()
        model.zero_grad(set_to_none=True)

    kinds = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    out = {"batch": batch_size}
    for name, kind in kinds.items():
        if not cuda and name not in ("default", "math"):
            continue
        try:
            if kind is None:
                seconds = model_step.timed(step, 3, 1, sync)
            else:
                with sdpa_kernel(kind):
                    seconds = model_step.timed(step, 3, 1, sync)
            out[name] = {"train_step_s": round(seconds, 4)}
        except RuntimeError as e:
            out[name] = {"error": str(e).splitlines()[0][:200]}
    return out


PARTS = ("reference", "train", "loader", "generate", "encode", "attention", "backends")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="debug", choices=["debug", "XL/2"],
                        help="XL/2: the paper's sizes (GPU); debug: tiny parts (CPU)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--budget-s", type=float, default=None, help="start no part after this many seconds")
    parser.add_argument("--work", type=Path, default=None, help="folder for shards, checkpoints, outputs (a temp one)")
    parser.add_argument("--out-json", type=Path, default=None, help="also write the JSON here after every part")
    parser.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "tools" / "reference_stack.py")
    parser.add_argument("--cache-thresholds", default="0.08", help="comma-separated `generate --cache` values")
    parser.add_argument("--generate-clips", type=int, default=3, help="clips per generate run (the first is warm-up)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",")]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_flops(name)
    plan = make_plan(args.preset, cuda)
    work = args.work or Path(__import__("tempfile").mkdtemp(prefix="uniform-device-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"device": name, "torch": torch.__version__, "preset": args.preset, "peak_bf16_flops": peak,
              "forward_tflop_per_sample": round(flops_per_sample(plan.model) / 1e12, 4), "parts": {}}
    start = time.perf_counter()
    jobs = {
        "reference": lambda: part_reference(plan, work, args.reference),
        "train": lambda: part_train(plan, work, peak),
        "loader": lambda: part_loader(plan, work, peak),
        "generate": lambda: part_generate(plan, work, [float(t) for t in args.cache_thresholds.split(",")],
                                          args.generate_clips),
        "encode": lambda: part_encode(plan, work),
        "attention": lambda: attention.measure(args.preset, plan.micro_batch, device),
        "backends": lambda: part_backends(plan, device),
    }
    for part in parts:
        clock = time.perf_counter()
        if args.budget_s is not None and clock - start > args.budget_s:
            result["parts"][part] = {"skipped": f"budget of {args.budget_s:g} s spent"}
        else:
            try:
                result["parts"][part] = jobs[part]()
            except Exception as e:  # one part failing must not lose the others' figures
                result["parts"][part] = {"error": f"{type(e).__name__}: {str(e)[-1500:]}"}
            result["parts"][part]["part_s"] = round(time.perf_counter() - clock, 1)
        if cuda:
            torch.cuda.empty_cache()
        if args.out_json:
            args.out_json.write_text(json.dumps(result, indent=1))
    result["total_s"] = round(time.perf_counter() - start, 1)
    if args.out_json:
        args.out_json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
