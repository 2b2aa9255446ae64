"""Samples made while training, to watch a run learn: every `train.sample_every` steps rank 0 runs the EMA model on
a fixed set of jobs with the run's codecs, through the `UniFormPipeline.generate` that `uniform generate` uses.

    runs/NAME/samples/step_000200/
        t2av_0.mp4, t2av_0.png     the clip with its sound, and the mel image of that sound
        a2v_0.mp4,  a2v_0.png      made for the sound of held-out clip 0
        v2a_0.mp4,  v2a_0.png      made for the picture of held-out clip 0
        samples.json               per id: task, caption and the held-out clip's key

The jobs stay the same for the whole run: T2AV for each of `train.sample_prompts`, and A2V and V2A for each of the
first `train.sample_clips` clips of a held-out split of the run's own shards ("val", else "test", else "train"),
each with its own caption. The shards hold latents only, so those clips' media are their latents decoded once at
setup. Captions are embedded once at setup too: a large text encoder (T5-XXL) is not kept in memory while
training. Every row has a fixed seed, so samples of different steps differ by the weights alone, and sampling
puts back every RNG state it found: a run that samples trains exactly as one that does not.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from uniform_cli.atomic import atomic_path, write_text_atomic
from uniform_cli.generate.jobs import Job
from uniform_cli.train.checkpoint import rng_state, set_rng_state, step_tag

if TYPE_CHECKING:
    from uniform_cli.config import Recipe
    from uniform_cli.generate.pipeline import GenerationResult, UniFormPipeline
    from uniform_cli.latents.loader import LatentBatch

HELD_OUT_SPLITS = ("val", "test")
"""Splits the sample clips are taken from, in this order of preference (else "train")."""
STRIP_FRAMES = 8
"""Frames side by side in a clip's TensorBoard image."""


@dataclass(frozen=True)
class SampleJob:
    """One fixed sample of a run."""

    id: str
    """File stem under samples/step_N/: "{task}_{i}"."""
    job: Job
    source: str | None = None
    """Key of the held-out clip whose media it is given (None for T2AV)."""


# ------------------------------------------------------------------------------------------------ pictures


def frame_strip(frames: np.ndarray, count: int = STRIP_FRAMES) -> np.ndarray:
    """uint8 `H (n W) 3`: `count` frames of a clip `F H W 3`, evenly spaced from the first to the last, side by side
    (TensorBoard's own video summary needs moviepy 1.x, which current moviepy is not)."""
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return np.concatenate(list(frames[picks]), axis=1)


# ------------------------------------------------------------------------------------------------ the jobs


@contextlib.contextmanager
def kept_rng_state() -> Iterator[None]:
    """Run a block and put back the torch, CUDA, numpy and python RNG states it found."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def held_out_batch(shards: Sequence[str], clips: int, seed: int) -> LatentBatch:
    """The first `clips` samples of the shards' held-out split, in a fixed order (a pure function of `seed`)."""
    from uniform_cli.latents.loader import make_loader
    from uniform_cli.latents.shard_info import shard_info

    counts = shard_info(shards).num_samples
    split = next((s for s in HELD_OUT_SPLITS if counts.get(s)), "train")
    loader = make_loader(shards, clips, split=split, shuffle_buffer=0, num_workers=0, seed=seed, resampled=False)
    return next(iter(loader))


def fixed_jobs(prompts: Sequence[str], captions: Sequence[str], keys: Sequence[str], frames: np.ndarray,
               waves: np.ndarray) -> list[SampleJob]:
    """T2AV per prompt, then A2V (sound given) and V2A (picture given) per held-out clip `frames[i]`, `waves[i]`."""
    jobs = [SampleJob(f"t2av_{i}", Job(text, "t2av")) for i, text in enumerate(prompts)]
    jobs += [SampleJob(f"a2v_{i}", Job(captions[i], "a2v", audio=waves[i]), keys[i]) for i in range(len(keys))]
    jobs += [SampleJob(f"v2a_{i}", Job(captions[i], "v2a", video=frames[i]), keys[i]) for i in range(len(keys))]
    return jobs


class CaptionEmbeddings:
    """A text encoder of a fixed set of captions (what the sampling pipeline calls): their embeddings, computed
    once, so that the encoder that made them need not stay loaded."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table
        """caption -> `L D` float32 at its valid tokens."""

    @property
    def dim(self) -> int:
        return next(iter(self.table.values())).shape[1]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (embeddings `B L D` float32 zero-padded to the longest, mask `B L` bool), as TextEncoder."""
        missing = [t for t in texts if t not in self.table]
        if missing:
            raise KeyError(f"captions not embedded at setup: {missing}")
        rows = [self.table[t] for t in texts]
        longest = max(r.shape[0] for r in rows)
        text = torch.zeros(len(rows), longest, self.dim)
        mask = torch.zeros(len(rows), longest, dtype=torch.bool)
        for i, r in enumerate(rows):
            text[i, : len(r)], mask[i, : len(r)] = r, True
        return text, mask


def _caption_embeddings(recipe: Recipe, prompts: Sequence[str], batch: LatentBatch | None,
                        device: torch.device) -> CaptionEmbeddings:
    """The held-out clips' embeddings from the shards, and the prompts' from the recipe's text encoder (loaded for
    this, then dropped)."""
    from uniform_cli.latents.text import TextEncoder

    table = {} if batch is None else {c: batch.text[i][batch.text_mask[i]].cpu()
                                      for i, c in enumerate(batch.captions) if c.strip()}
    new = [p for p in dict.fromkeys(prompts) if p.strip() and p not in table]
    if new:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        encoder = TextEncoder.from_pretrained(recipe.codec.text_encoder, max_length=recipe.model.text_len,
                                              device=device, dtype=dtype)
        emb, mask = encoder(new)
        table.update({p: emb[i][mask[i]].cpu() for i, p in enumerate(new)})
        del encoder
    if not table:  # no caption at all: the pipeline then gives every row the null text
        table[""] = torch.zeros(0, recipe.model.text_dim)
    return CaptionEmbeddings(table)


# ------------------------------------------------------------------------------------------------ the sampler


class TrainingSampler:
    """The fixed jobs of a run and the pipeline that samples them (rank 0 only); `sample(step)` writes one set."""

    def __init__(self, pipeline: UniFormPipeline, jobs: list[SampleJob], folder: Path, seed: int,
                 batch_size: int) -> None:
        self.pipeline = pipeline
        self.jobs = jobs
        self.folder = folder
        """runs/NAME/samples."""
        self.seed = seed
        self.batch_size = batch_size

    @classmethod
    def build(cls, recipe: Recipe, ema: torch.nn.Module, schedule, device: torch.device, text_encoder,
              text_free: bool, folder: Path) -> "TrainingSampler":
        """The pipeline over the in-memory `ema` model (which training keeps updating in place) and the recipe's
        codecs, and the run's fixed jobs. `text_encoder`: the run's own when it embeds captions while training."""
        from uniform_cli.generate.pipeline import UniFormPipeline, default_dtype
        from uniform_cli.latents.codecs import build_audio_codec, build_video_codec

        cfg, spec = recipe.train, recipe.data.clip
        with kept_rng_state(), torch.inference_mode():
            # as UniFormPipeline.from_pretrained: the video codec in bf16 on GPUs, the audio codec in fp32
            video_codec = build_video_codec(recipe.codec, device=device, dtype=default_dtype(device))
            audio_codec = build_audio_codec(recipe.codec, device=device)
            keys, captions = [], []
            frames = np.zeros((0, spec.frames, spec.size, spec.size, 3), np.uint8)
            waves = np.zeros((0, spec.samples), np.float32)
            batch = None
            if cfg.sample_clips:
                batch = held_out_batch(recipe.data.shards, cfg.sample_clips, cfg.seed).to(device)
                keys, captions = batch.keys, batch.captions
                frames = video_codec.decode(batch.latents.video, spec.frames).cpu().numpy()
                waves = audio_codec.decode(batch.latents.audio).float().clamp(-1, 1).cpu().numpy()
            if not text_free and text_encoder is None:  # the shards hold the embeddings
                text_encoder = _caption_embeddings(recipe, cfg.sample_prompts, batch, device)
            pipeline = UniFormPipeline(ema, schedule, video_codec, audio_codec, None if text_free else text_encoder,
                                       spec, recipe.generate, device, torch.float32)
        jobs = fixed_jobs(cfg.sample_prompts, captions, keys, frames, waves)
        return cls(pipeline, jobs, folder, recipe.generate.seed, recipe.generate.batch_size)

    def sample(self, step: int, writer=None) -> Path:
        """Generate every job with the weights of `step`; write samples/step_N/ and, given a TensorBoard
        SummaryWriter, an image of frames, the sound and the mel image of each sample. Returns the folder."""
        from uniform_cli.memory import reset_peak_memory

        folder = self.folder / step_tag(step)
        with kept_rng_state():
            for start in range(0, len(self.jobs), self.batch_size):
                chunk = self.jobs[start : start + self.batch_size]
                seeds = [self.seed + start + i for i in range(len(chunk))]
                out = self.pipeline.generate([s.job for s in chunk], seed=seeds)
                for i, s in enumerate(chunk):
                    self._write(folder, s, out, i, step, writer)
        reset_peak_memory(self.pipeline.device)  # the next metrics report training's peak, not sampling's
        index = {s.id: {"task": s.job.task, "caption": s.job.text, "source": s.source} for s in self.jobs}
        write_text_atomic(folder / "samples.json", json.dumps(index, indent=1))
        if writer is not None:
            writer.flush()
        return folder

    def _write(self, folder: Path, s: SampleJob, out: GenerationResult, i: int, step: int, writer) -> None:
        from PIL import Image

        from uniform_cli.media.io import write_mp4
        from uniform_cli.media.mel import mel_picture

        frames, wave = out.frames[i], out.wave[i]
        write_mp4(folder / f"{s.id}.mp4", frames, out.fps, audio=wave, sample_rate=out.sample_rate)
        mel = (mel_picture(wave, out.sample_rate) * 255).round().astype(np.uint8)  # grey: loudest white
        with atomic_path(folder / f"{s.id}.png") as tmp:
            Image.fromarray(mel).save(tmp, format="PNG")
        if writer is not None:
            writer.add_image(f"samples/{s.id}/frames", frame_strip(frames), step, dataformats="HWC")
            writer.add_image(f"samples/{s.id}/mel", mel, step, dataformats="HW")
            writer.add_audio(f"samples/{s.id}/sound", torch.from_numpy(wave)[None], step, sample_rate=out.sample_rate)
