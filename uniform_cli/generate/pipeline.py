"""`UniFormPipeline`: a trained checkpoint plus its codecs and text encoder, from captions (and given media) to clips.

    pipe = UniFormPipeline.from_pretrained("runs/multitask/checkpoints/latest")
    out = pipe(["a dog barks", "rain on a roof"], task=["t2av", "v2a"], video=[None, frames])
    out.frames[0]  # uint8 `F H W 3` (68 x 256 x 256 x 3 for 4 s at the paper's settings)
    out.wave[0]    # float32 `S` (64,000 samples)
    out = pipe.generate([Job("waves on rocks", "v2a", video=frames_of_60_s)])   # any length, any task of jobs.py

Given media are at the pipeline's clip format, of any length (`prepare_media(path, spec)` with the seconds
wanted). They are encoded (posterior mean) and held fixed while the model fills in the rest, and the output
carries them unchanged (not a decoded copy). Outputs longer than the model's clip are made in windows
(`generate.jobs`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from uniform_cli.config import ClipSpec, CodecConfig, ConfigError, GenerateConfig, Recipe, recipe_from_dict
from uniform_cli.generate.jobs import (
    CROSSFADE,
    Job,
    JobError,
    Timeline,
    latent_bounds,
    level_match,
    next_window,
    plan_timeline,
    write_back,
)
from uniform_cli.latents.codecs import AudioCodec, VideoCodec, build_audio_codec, build_video_codec
from uniform_cli.memory import peak_memory_bytes, reset_peak_memory
from uniform_cli.types import AV, Task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_NAME = "recipe.toml"
NO_TEXT = "none"
"""`codec.text_encoder` value for a model used without text: every row gets the learned null embedding."""


class PipelineError(ValueError):
    """A checkpoint, codec or input the pipeline cannot use; the message says what to change."""


@dataclass
class GenerationResult:
    """Clips of one call; entry i of each list belongs to the i-th job."""

    frames: list[np.ndarray]
    """uint8 `F H W 3` per job; given frames are the given ones."""
    wave: list[np.ndarray]
    """float32 `S` in [-1, 1] per job; given samples are the given ones."""
    fps: int
    sample_rate: int
    tasks: list[str]
    seeds: list[int | None]
    """Each row's seed (None where the caller passed its own generators)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds for the whole batch: text, encode (given media), denoise, decode, total."""
    peak_memory: int | None = None
    """Peak bytes the call allocated on a CUDA device (None on the CPU)."""
    windows: list[list[int]] = field(default_factory=list)
    """Start seconds of the model windows each job took."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (config.json + model.safetensors); `runs/NAME/checkpoints/latest` (DeepSpeed's tag
    file) means the newest checkpoint, and a run folder (`runs/NAME`) its newest checkpoint."""
    from uniform_cli.model.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, checkpoint_folder

    try:
        folder = checkpoint_folder(path).resolve()
    except CheckpointError as e:
        raise PipelineError(str(e)) from None
    if not folder.is_dir():
        raise PipelineError(f"checkpoint {path} does not exist; pass a folder written by `uniform train` "
                            f"(runs/NAME/checkpoints/latest)")
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise PipelineError(f"checkpoint {folder} lacks {', '.join(missing)}; a UniForm checkpoint holds "
                            f"{CONFIG_NAME}, {WEIGHTS_NAME} and {RECIPE_NAME}")
    return folder


def read_checkpoint_recipe(path: str | Path) -> Recipe:
    """The resolved recipe saved with a checkpoint (codecs, clip settings, diffusion, sampling defaults).

    A checkpoint without recipe.toml (weights from elsewhere) gets the paper's defaults.
    """
    folder = resolve_checkpoint(path)
    recipe_path = folder / RECIPE_NAME
    if not recipe_path.is_file():
        return Recipe()
    try:
        return recipe_from_dict(tomllib.loads(recipe_path.read_text()), source=str(recipe_path))
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{recipe_path}: not valid TOML: {e}") from None
    except ConfigError as e:
        raise PipelineError(str(e)) from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (what the model trains in), fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class UniFormPipeline:
    """The model, its diffusion schedule, video and audio codecs and (optionally) a text encoder.

    Build with `from_pretrained`; the constructor takes already built parts (tests, benchmarks).
    """

    def __init__(self, model: torch.nn.Module, schedule, video_codec: VideoCodec, audio_codec: AudioCodec,
                 text_encoder, spec: ClipSpec,
                 defaults: GenerateConfig | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, checkpoint: Path | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.schedule = schedule
        self.video_codec = video_codec
        self.audio_codec = audio_codec
        self.text_encoder = text_encoder
        self.spec = spec
        self.defaults = defaults or GenerateConfig()
        self.device = torch.device(device)
        self.dtype = dtype
        self.checkpoint = checkpoint
        self._check_parts()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, codec: CodecConfig | None = None,
                        compile: bool = False) -> "UniFormPipeline":
        """Load a checkpoint folder (config.json + model.safetensors + recipe.toml) and the parts its recipe
        names. `codec` replaces the recipe's `[codec]` (other local folders for the same codecs);
        `text_encoder = "none"` runs without text. Defaults: CUDA when present, bf16 there and fp32 on the CPU
        (the audio codec always runs in fp32). `compile` compiles the transformer blocks."""
        from uniform_cli.diffusion.schedule import make_schedule
        from uniform_cli.model.checkpoint import load_pretrained
        from uniform_cli.model.uniform import compile_blocks

        folder = resolve_checkpoint(path)
        recipe = read_checkpoint_recipe(folder)
        codec = codec or recipe.codec
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        model = load_pretrained(folder, device=device, dtype=dtype)
        if compile:
            compile_blocks(model)
        video_codec = build_video_codec(codec, device=device, dtype=dtype)
        # HiFi-GAN in half precision adds audible hiss, and the audio codec is a small share of the time.
        audio_codec = build_audio_codec(codec, device=device, dtype=torch.float32)
        text_encoder = None
        if codec.text_encoder.strip().lower() != NO_TEXT:
            from uniform_cli.latents.text import TextEncoder

            text_encoder = TextEncoder.from_pretrained(codec.text_encoder, max_length=model.cfg.text_len,
                                                       device=device, dtype=dtype)
        return cls(model, make_schedule(recipe.diffusion), video_codec, audio_codec, text_encoder,
                   recipe.data.clip, recipe.generate, device, dtype, checkpoint=folder)

    # -- checks ---------------------------------------------------------------------------------------------

    def _check_parts(self) -> None:
        """The codecs must make latents of the shapes the model was built for, at the recipe's clip format."""
        cfg, spec = self.model.cfg, self.spec
        problems = []
        if self.text_encoder is not None and self.text_encoder.dim != cfg.text_dim:
            problems.append(f"the text encoder makes {self.text_encoder.dim}-wide embeddings; the model takes "
                            f"text_dim={cfg.text_dim}")
        try:
            shape = tuple(self.video_codec.latent_shape(spec.frames, spec.size, spec.size))
            if shape != tuple(cfg.video_latent):
                problems.append(f"the video codec turns {spec.frames} frames of {spec.size}x{spec.size} into "
                                f"{list(shape)}; the model takes video_latent={list(cfg.video_latent)}")
        except ValueError as e:  # a clip format the codec cannot encode
            problems.append(str(e))
        try:
            shape = tuple(self.audio_codec.latent_shape(spec.samples))
            if shape != tuple(cfg.audio_latent):
                problems.append(f"the audio codec turns {spec.samples} samples into {list(shape)}; the model "
                                f"takes audio_latent={list(cfg.audio_latent)}")
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise PipelineError("the checkpoint's parts do not fit together: " + "; ".join(problems)
                                + " (check [codec] and [data] in recipe.toml, or the codec flags)")

    # -- stages ---------------------------------------------------------------------------------------------

    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> text `B text_len D` float32 and mask `B text_len`. Empty captions (and every caption when
        there is no text encoder) become the learned null embedding, exactly what guidance's unconditional half
        sees, so such rows are generated without text."""
        cfg = self.model.cfg
        null = self.model.y_embedder.y_embedding.detach().float()  # text_len D
        b = len(texts)
        text = null[None].expand(b, -1, -1).clone()
        mask = torch.ones(b, cfg.text_len, dtype=torch.bool, device=null.device)
        rows = [i for i, t in enumerate(texts) if t.strip()] if self.text_encoder is not None else []
        if rows:
            emb, emb_mask = self.text_encoder([texts[i] for i in rows])  # b' L D
            if emb.shape[1] > cfg.text_len:
                raise PipelineError(f"the text encoder made {emb.shape[1]} tokens; the model takes at most "
                                    f"{cfg.text_len} (build the TextEncoder with max_length={cfg.text_len})")
            # Always text_len long: the model pads to it anyway, and a row then never depends on its batch.
            pad = cfg.text_len - emb.shape[1]
            text[rows] = torch.nn.functional.pad(emb.to(null.device), (0, 0, 0, pad))
            mask[rows] = torch.nn.functional.pad(emb_mask.to(null.device), (0, pad), value=False)
        return text, mask

    def _generators(self, b: int, seed, generator) -> tuple[list[torch.Generator], list[int | None]]:
        if generator is not None:
            if len(generator) != b:
                raise PipelineError(f"got {len(generator)} generators for {b} rows")
            return list(generator), [None] * b
        if seed is None:
            seed = self.defaults.seed
        seeds = [seed + i for i in range(b)] if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != b:
            raise PipelineError(f"got {len(seeds)} seeds for {b} rows")
        return [torch.Generator(self.device).manual_seed(s) for s in seeds], seeds

    def _noise(self, generators: list[torch.Generator]) -> AV:
        """Each row's noise for one window from its own generator (video first, then audio), so it does not
        depend on the other rows of the batch."""
        cfg = self.model.cfg
        rows = [
            AV(torch.randn((1, *cfg.video_latent), generator=g, device=self.device),
               torch.randn((1, *cfg.audio_latent), generator=g, device=self.device))
            for g in generators
        ]
        return AV(torch.cat([r.video for r in rows]), torch.cat([r.audio for r in rows]))

    # Given media are held fixed: encode them deterministically (the posterior mean), so that a rerun
    # encodes them the same way.
    def _encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        return self.video_codec.encode(frames.to(self.device), sample=False).float().to(self.device)

    def _encode_audio(self, wave: torch.Tensor) -> torch.Tensor:
        return self.audio_codec.encode(wave.to(self.device), sample=False).float().to(self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def __call__(
        self,
        texts: Sequence[str],
        task: Task | str | Sequence[Task | str] = "t2av",
        video: Sequence | np.ndarray | torch.Tensor | None = None,
        audio: Sequence | np.ndarray | torch.Tensor | None = None,
        **options,
    ) -> GenerationResult:
        """Generate one output per caption: `task` for all rows or one per row, `video`/`audio` one entry (or
        None) per row; the other options are `generate`'s."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        b = len(texts)
        tasks = list(task) if isinstance(task, (list, tuple)) else [task] * b
        if len(tasks) != b:
            raise PipelineError(f"got {len(tasks)} tasks for {b} captions")

        def rows(given, name: str) -> list:
            if given is None:
                return [None] * b
            if len(given) != b:
                raise PipelineError(f"{name} has {len(given)} rows for {b} captions")
            return [None if x is None else (x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
                    for x in given]

        jobs = [Job(text, t.name.lower() if isinstance(t, Task) else str(t).strip().lower(), v, a)
                for text, t, v, a in zip(texts, tasks, rows(video, "video"), rows(audio, "audio"))]
        return self.generate(jobs, **options)

    def _check_media(self, i: int, job: Job) -> None:
        """A job's media must be at the clip format: uint8 frames of the clip size, float mono sound."""
        size = self.spec.size
        for name, x, dims in (("video", job.video, "F "), ("image", job.image, "")):
            if x is not None and (x.dtype != np.uint8 or x.shape[-3:] != (size, size, 3) or x.ndim != 3 + len(dims) // 2):
                raise PipelineError(f"row {i}: {name} must be uint8 {dims}{size} {size} 3 (prepared with "
                                    f"uniform_cli.media.prepare.prepare_media(path, spec)), got {x.dtype} {list(x.shape)}")
        if job.audio is not None and (job.audio.ndim != 1 or not np.issubdtype(job.audio.dtype, np.floating)):
            raise PipelineError(f"row {i}: audio must be float `S` at {self.spec.sample_rate} Hz, got "
                                f"{job.audio.dtype} {list(job.audio.shape)}")

    @torch.inference_mode()
    def generate(
        self,
        jobs: Sequence[Job],
        *,
        sampler: str | None = None,
        steps: int | None = None,
        cfg_video: float | None = None,
        cfg_audio: float | None = None,
        seed: int | Sequence[int] | None = None,
        generator: Sequence[torch.Generator] | None = None,
        overlap: int = 1,
        progress: Callable[[int, int], None] | None = None,
    ) -> GenerationResult:
        """Generate one output per job (`generate.jobs.Job`: any task, any length), in one batch.

        sampler/steps/cfg_*: default to the checkpoint's `[generate]` settings. seed: an int gives row i the
        seed `seed + i`; a list gives each row its own. `generator` (one per row, on the pipeline's device)
        replaces seeds; a row's noise comes from its own generator only. `overlap`: whole seconds each window
        shares with what is already made (below the clip length).
        """
        from uniform_cli.diffusion.samplers import SAMPLERS

        t_start = time.perf_counter()
        jobs = list(jobs)
        b = len(jobs)
        if not b:
            raise PipelineError("no jobs given (pass [''] to generate without text)")
        sampler = sampler or self.defaults.sampler
        if sampler not in SAMPLERS:
            raise PipelineError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        window = self.spec.seconds
        if not (isinstance(overlap, int) and 0 < overlap < window):
            raise PipelineError(f"overlap must be a whole number of seconds in 1..{math.ceil(window) - 1}, "
                                f"not {overlap!r}")
        timelines = []
        for i, job in enumerate(jobs):
            self._check_media(i, job)
            try:
                timelines.append(plan_timeline(job, self.spec, self.model.cfg.video_latent[1]))
            except JobError as e:
                raise PipelineError(f"row {i} ({job.task}): {e}") from None
        settings = dict(sampler=SAMPLERS[sampler], steps=steps or self.defaults.steps,
                        cfg_video=self.defaults.cfg_video if cfg_video is None else cfg_video,
                        cfg_audio=self.defaults.cfg_audio if cfg_audio is None else cfg_audio)
        generators, seeds = self._generators(b, seed, generator)
        reset_peak_memory(self.device)
        timings = {"text": 0.0, "encode": 0.0, "denoise": 0.0, "decode": 0.0}

        clock = time.perf_counter()
        texts = [job.text for job in jobs]
        text, text_mask = (x.to(self.device) for x in self.encode_text(texts))
        has_text = self.text_encoder is not None and any(t.strip() for t in texts)
        self._sync()
        timings["text"] = time.perf_counter() - clock
        per_second = round(self.model.cfg.video_latent[1] / window)
        while True:
            starts = [next_window(tl, round(window), overlap, per_second) for tl in timelines]
            rows = [i for i, start in enumerate(starts) if start is not None]
            if not rows:
                break
            self._window([timelines[i] for i in rows], [starts[i] for i in rows], overlap, text[rows],
                         text_mask[rows], has_text, [generators[i] for i in rows], settings, timings, progress)
        fps, rate = self.spec.fps, self.spec.sample_rate
        frames = [tl.frames[: round(tl.seconds * fps)] for tl in timelines]
        wave = [tl.wave[: round(tl.seconds * rate)] for tl in timelines]
        timings["total"] = time.perf_counter() - t_start
        peak = peak_memory_bytes(self.device)[0] if self.device.type == "cuda" else None
        return GenerationResult(frames, wave, fps, rate, [job.task for job in jobs], seeds, timings, peak,
                                [tl.windows for tl in timelines])

    def _window(self, timelines: list[Timeline], starts: list[int], overlap: int, text: torch.Tensor,
                text_mask: torch.Tensor,
                has_text: bool, generators: list[torch.Generator], settings: dict, timings: dict,
                progress: Callable[[int, int], None] | None) -> None:
        """One model window per timeline (starting at `starts` seconds): encode what is known there, sample
        what is still to generate, decode it and write it back."""
        from uniform_cli.diffusion.guidance import conditional_model_fn, guided_model_fn

        spec, cfg = self.spec, self.model.cfg
        fps, rate, latent = round(spec.fps), round(spec.sample_rate), cfg.video_latent[1]
        per_second = round(latent / spec.seconds)
        n_frames, n_samples = spec.frames, spec.samples
        frame_slices = [slice(s * fps, s * fps + n_frames) for s in starts]
        sample_slices = [slice(s * rate, s * rate + n_samples) for s in starts]
        latent_slices = [slice(s * per_second, s * per_second + latent) for s in starts]
        # What this window generates, per latent frame: kept on the host for the bookkeeping, sent once.
        gen_video = np.stack([(tl.generate_video & ~tl.done_video)[sl] for tl, sl in zip(timelines, latent_slices)])
        gen_audio = np.stack([(tl.generate_audio & ~tl.done_audio)[sl] for tl, sl in zip(timelines, latent_slices)])
        b = len(timelines)

        clock = time.perf_counter()
        given = AV(torch.zeros(b, *cfg.video_latent, device=self.device),
                   torch.zeros(b, *cfg.audio_latent, device=self.device))
        rows = [i for i in range(b) if not gen_video[i].all()]
        if rows:
            frames = torch.from_numpy(np.stack([timelines[i].frames[frame_slices[i]] for i in rows]))
            given.video[rows] = self._encode_video(frames)
        rows = [i for i in range(b) if not gen_audio[i].all()]
        if rows:
            wave = torch.from_numpy(np.stack([timelines[i].wave[sample_slices[i]] for i in rows]))
            given.audio[rows] = self._encode_audio(wave)
        self._sync()
        timings["encode"] += time.perf_counter() - clock

        clock = time.perf_counter()
        masks = AV(torch.from_numpy(gen_video), torch.from_numpy(gen_audio)).to(self.device)
        if has_text and (settings["cfg_video"] != 1.0 or settings["cfg_audio"] != 1.0):
            model_fn = guided_model_fn(self.model, masks, text, text_mask, settings["cfg_video"], settings["cfg_audio"])
        else:  # no caption in the batch, or scale 1: guidance would return the conditional prediction
            model_fn = conditional_model_fn(self.model, masks, text, text_mask)
        latents = settings["sampler"](model_fn, self.schedule, self._noise(generators), given, masks,
                                      settings["steps"], generator=generators, progress=progress)
        self._sync()
        timings["denoise"] += time.perf_counter() - clock

        clock = time.perf_counter()
        video_bounds, audio_bounds = latent_bounds(latent, per_second, fps), latent_bounds(latent, per_second, rate)
        fade_frames, fade_samples = round(CROSSFADE * fps), round(CROSSFADE * rate)
        rows = [i for i in range(b)
                if gen_video[i].any() or not timelines[i].filled_frames[frame_slices[i]].all()]
        if rows:
            decoded = self.video_codec.decode(latents.video[rows], n_frames).cpu().numpy()
            for k, i in enumerate(rows):
                tl, sl = timelines[i], frame_slices[i]
                write = np.repeat(gen_video[i], np.diff(video_bounds)) | ~tl.filled_frames[sl]
                write &= ~tl.given_frames[sl]
                write_back(tl.frames, decoded[k], sl.start, write, tl.given_frames, tl.filled_frames,
                           tl.source_frames, fade_frames, reach=overlap * fps // 2)
                tl.filled_frames[sl] |= write
        rows = [i for i in range(b) if gen_audio[i].any()]
        if rows:
            decoded = self.audio_codec.decode(latents.audio[rows]).float().clamp(-1, 1).cpu().numpy()
            if decoded.shape[1] != n_samples:
                raise PipelineError(f"the audio codec decoded {decoded.shape[1]} samples, not {n_samples}")
            for k, i in enumerate(rows):
                tl, sl = timelines[i], sample_slices[i]
                write = np.repeat(gen_audio[i], np.diff(audio_bounds)) & ~tl.given_samples[sl]
                decoded[k] *= level_match(tl.wave[sl], decoded[k], tl.filled_samples[sl] & ~write)
                write_back(tl.wave, decoded[k], sl.start, write, tl.given_samples, tl.filled_samples,
                           tl.source_wave, fade_samples, reach=overlap * rate // 2)
                tl.filled_samples[sl] |= write
        for i, tl in enumerate(timelines):
            tl.done_video[latent_slices[i]] |= gen_video[i]
            tl.done_audio[latent_slices[i]] |= gen_audio[i]
            tl.windows.append(starts[i])
        self._sync()
        timings["decode"] += time.perf_counter() - clock
