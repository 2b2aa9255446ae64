"""`UniFormPipeline`: a trained checkpoint plus its codecs and text encoder, from captions (and given media) to clips.

    pipe = UniFormPipeline.from_pretrained("runs/multitask/checkpoints/latest")
    out = pipe(["a dog barks", "rain on a roof"], task=["t2av", "v2a"], video=[None, frames])
    out.frames[0]  # uint8 `F H W 3` (68 x 256 x 256 x 3 for 4 s at the paper's settings)
    out.wave[0]    # float32 `S` (64,000 samples)
    out = pipe.generate([Job("waves on rocks", "v2a", video=frames_of_60_s)])   # any length, any task of jobs.py
    out = pipe(prompt="a dog barks", num_inference_steps=25, guidance_scale={"video": 4, "audio": 3},
               negative_prompt="blurry, noisy", num_videos_per_prompt=2, generator=torch.Generator().manual_seed(0))
    frames = out[0]   # diffusers' names and indexing; `video`/`audio` may be file paths

`save_pretrained`, `from_pretrained` (a folder, a run, or a hub id in the local cache) and `push_to_hub` go
through `generate.hub`. `enable_model_cpu_offload()` keeps each part on the GPU only while it runs.

Given media are at the pipeline's clip format, of any length (`prepare_media(path, spec)` with the seconds
wanted). They are encoded (posterior mean) and held fixed while the model fills in the rest, and the output
carries them unchanged (not a decoded copy). Outputs longer than the model's clip are made in windows
(`generate.jobs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from uniform_cli.config import ClipSpec, CodecConfig, GenerateConfig, Recipe
from uniform_cli.generate.hub import CardInfo, PipelineError, read_checkpoint_recipe, resolve_checkpoint
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

NO_TEXT = "none"
"""`codec.text_encoder` value for a model used without text: every row gets the learned null embedding."""
OUTPUT_TYPES = ("np", "pt", "pil")
StepCallback = Callable[["UniFormPipeline", int, torch.Tensor, dict[str, Any]], "dict[str, Any] | None"]
"""diffusers' `callback_on_step_end(pipe, step, timestep, callback_kwargs)`; callback_kwargs = {"latents": AV}."""


@dataclass
class GenerationResult:
    """Clips of one call; entry i of each list belongs to the i-th job."""

    frames: list
    """uint8 `F H W 3` per job (an array; a tensor for output_type "pt", a list of PIL images for "pil"); given
    frames are the given ones."""
    wave: list
    """float32 `S` in [-1, 1] per job (a tensor for output_type "pt"); given samples are the given ones."""
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
    cache_skips: tuple[int, int] = (0, 0)
    """With the step cache on: the model forwards of the batch that skipped the blocks after the first pair, and
    all its forwards."""

    def __getitem__(self, index: int):
        """`out[0]` is the frames and `out[1]` the waves, as diffusers' outputs index their fields in order."""
        return (self.frames, self.wave)[index]


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
                 dtype: torch.dtype = torch.float32, checkpoint: Path | None = None,
                 recipe: Recipe | None = None) -> None:
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
        self.recipe = recipe
        """The resolved recipe the parts were built from, with the `[codec]` in use (what save_pretrained writes)."""
        self.offload = False
        """Whether the parts stay on the CPU and go to `device` only while they run (enable_model_cpu_offload)."""
        self._check_parts()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, codec: CodecConfig | None = None,
                        compile: bool = False, *, download: bool = False,
                        cache_dir: str | Path | None = None) -> "UniFormPipeline":
        """Load a checkpoint (config.json + model.safetensors + recipe.toml) and the parts its recipe names: a
        folder, a run's `checkpoints/latest`, or a hub id in the local Hugging Face cache (`cache_dir`, default
        $HF_HUB_CACHE); `download` lets a hub id missing there be fetched (unless HF_HUB_OFFLINE is set).
        `codec` replaces the recipe's `[codec]` (other local folders for the same codecs); `text_encoder = "none"`
        runs without text. Defaults: CUDA when present, bf16 there and fp32 on the CPU
        (the audio codec always runs in fp32). `compile` compiles the transformer blocks."""
        from uniform_cli.diffusion.schedule import make_schedule
        from uniform_cli.model.checkpoint import load_pretrained
        from uniform_cli.model.uniform import compile_blocks

        folder = resolve_checkpoint(path, download=download, cache_dir=cache_dir)
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
        return cls(model, make_schedule(recipe.diffusion, recipe.data.clip), video_codec, audio_codec, text_encoder,
                   recipe.data.clip, recipe.generate, device, dtype, checkpoint=folder,
                   recipe=dataclasses.replace(recipe, codec=codec))

    def save_pretrained(self, folder: str | Path, *, with_weights: bool = False, card: CardInfo = CardInfo()) -> Path:
        """Write a self-contained folder that `from_pretrained` and `uniform generate --checkpoint` load
        (`generate.hub`): the model as this pipeline holds it, the recipe, each part's configs (and weights with
        `with_weights`) and a model card. `folder` must not exist or be empty."""
        from uniform_cli.generate.hub import export_folder, trained_steps
        from uniform_cli.model.checkpoint import save_pretrained

        if self.recipe is None:
            raise PipelineError("this pipeline was built from parts, without a recipe; build it with "
                                "UniFormPipeline.from_pretrained, or pass recipe= to the constructor")
        steps = trained_steps(self.checkpoint) if self.checkpoint is not None else None
        return export_folder(folder, self.recipe, lambda out: save_pretrained(self.model, out),
                             with_weights=with_weights, steps=steps, card=card)

    def push_to_hub(self, repo_id: str, *, with_weights: bool = False, private: bool | None = None,
                    token: str | None = None, license: str = CardInfo.license, datasets: Sequence[str] = ()):
        """`save_pretrained` into a temporary folder, then commit it to the hub model repository `repo_id`
        (created if needed); returns huggingface_hub's CommitInfo."""
        import tempfile

        from uniform_cli.generate.hub import check_repo_id, push_folder

        card = CardInfo(license=license, datasets=tuple(datasets), repo_id=check_repo_id(repo_id))
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "export", with_weights=with_weights, card=card)
            return push_folder(folder, repo_id, private=private, token=token)

    # -- devices --------------------------------------------------------------------------------------------

    def _parts(self) -> list:
        return [self.model, self.text_encoder, self.video_codec, self.audio_codec]

    def to(self, device: torch.device | str) -> "UniFormPipeline":
        """Move every part to `device` (dtypes unchanged) and compute there; this ends CPU offload."""
        self.device, self.offload = torch.device(device), False
        for part in self._parts():
            for module in part_modules(part):
                module.to(self.device)
        return self

    def enable_model_cpu_offload(self, device: torch.device | str = "cuda") -> "UniFormPipeline":
        """Keep every part on the CPU and move each to `device` only while it runs (the text encoder for the
        captions, a codec for its encode or decode, the transformer for a window's denoising), so the GPU holds
        one part (and its activations) at a time, for cards too small for XL/2 beside T5-XXL."""
        self.to("cpu")
        self.device, self.offload = torch.device(device), True
        return self

    @contextlib.contextmanager
    def _running(self, part):
        """`part` on the compute device for the duration (only moved when offloading)."""
        modules = part_modules(part) if self.offload else []
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")

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
            with self._running(self.text_encoder):
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
        if isinstance(generator, torch.Generator):  # one for the batch, as in diffusers: rows draw from it in turn
            generator = [generator] * b
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
        with self._running(self.video_codec):
            return self.video_codec.encode(frames.to(self.device), sample=False).float().to(self.device)

    def _encode_audio(self, wave: torch.Tensor) -> torch.Tensor:
        with self._running(self.audio_codec):
            return self.audio_codec.encode(wave.to(self.device), sample=False).float().to(self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        task: Task | str | Sequence[Task | str] = "t2av",
        video: Sequence | str | Path | None = None,
        audio: Sequence | str | Path | None = None,
        *,
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | Mapping[str, float] | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        texts: Sequence[str] | None = None,
        **options,
    ) -> GenerationResult | tuple[list, list]:
        """Generate `num_videos_per_prompt` outputs per prompt, with diffusers' names; today's names (`texts`,
        and `steps`, `cfg_video`, `cfg_audio`, `seed`, `sampler`, `overlap`, `progress` of `generate`) still work.

        task: one for all prompts, or one per prompt. video/audio: one entry (or None) per prompt, or one file
        for all: prepared media (uint8 `F H W 3`, float `S` at the clip format) or a file path, prepared whole at
        the pipeline's clip format (a video file's sound too for extend and retake). guidance_scale: one scale,
        or {"video": s, "audio": s}. negative_prompt (one, or one per prompt): the unconditional branch's text
        in place of the learned null caption ("" is that caption). generator: one for the batch (its rows draw
        from it in turn) or one per output. output_type: "np" (arrays), "pt" (tensors) or "pil" (frames as
        PIL images). callback_on_step_end(pipe, step, timestep, {"latents": AV}) after every denoising step of
        every window; it may read the latents, not replace them. return_dict=False gives (frames, wave).
        """
        if texts is not None:
            if prompt is not None:
                raise PipelineError("pass prompt or texts (its older name), not both")
            prompt = texts
        if prompt is None:
            raise PipelineError("pass prompt: a caption or a list of them ('' for none)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        b, k = len(prompts), num_videos_per_prompt
        if not (isinstance(k, int) and k >= 1):
            raise PipelineError(f"num_videos_per_prompt must be a positive whole number, not {k!r}")
        if output_type not in OUTPUT_TYPES:
            raise PipelineError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, not {output_type!r}")
        tasks = [_task_name(t) for t in (task if isinstance(task, (list, tuple)) else [task] * b)]
        negatives = per_row(negative_prompt, b, "negative_prompt")
        videos, audios = per_row(video, b, "video"), per_row(audio, b, "audio")
        if len(tasks) != b:
            raise PipelineError(f"got {len(tasks)} tasks for {b} captions")
        options.update(named_settings(options, num_inference_steps, guidance_scale))
        jobs = []
        for text, t, v, a in zip(prompts, tasks, videos or [None] * b, audios or [None] * b):
            frames, sound = self._given(v, "video", with_sound=t in ("extend", "retake"))
            sound = self._given(a, "audio")[1] if a is not None else sound
            jobs += [Job(text, t, frames, sound) for _ in range(k)]
        negatives = None if negatives is None else [n for n in negatives for _ in range(k)]
        out = self.generate(jobs, negative_prompt=negatives, generator=generator,
                            callback_on_step_end=callback_on_step_end, **options)
        if output_type == "pt":
            out.frames, out.wave = [torch.from_numpy(f) for f in out.frames], [torch.from_numpy(w) for w in out.wave]
        elif output_type == "pil":
            from PIL import Image

            out.frames = [[Image.fromarray(frame) for frame in clip] for clip in out.frames]
        return out if return_dict else (out.frames, out.wave)

    def _given(self, x, kind: str, with_sound: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(frames, sound) of one given entry: an array or tensor of `kind`, or a file prepared whole at the clip
        format (with its sound too when `with_sound`)."""
        if x is None:
            return None, None
        if not isinstance(x, (str, Path)):
            x = x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            return (x, None) if kind == "video" else (None, x)
        from uniform_cli.media.prepare import PrepareError, prepare_media, probe

        try:
            seconds = probe(x).duration
            if not seconds:
                raise PipelineError(f"{x}: its length is unknown (remux it, e.g. with ffmpeg -c copy)")
            clip = prepare_media(x, dataclasses.replace(self.spec, seconds=seconds), video=kind == "video",
                                 audio=kind == "audio" or with_sound, allow_short=True)
        except PrepareError as e:
            raise PipelineError(f"{kind} file {x}: {e}") from None
        return clip.video, clip.audio

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
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        overlap: int = 1,
        progress: Callable[[int, int], None] | None = None,
        negative_prompt: Sequence[str] | None = None,
        callback_on_step_end: StepCallback | None = None,
        cache: float | None = None,
    ) -> GenerationResult:
        """Generate one output per job (`generate.jobs.Job`: any task, any length), in one batch.

        sampler/steps/cfg_*: default to the checkpoint's `[generate]` settings. seed: an int gives row i the
        seed `seed + i`; a list gives each row its own. `generator` (one per row, on the pipeline's device)
        replaces seeds; a row's noise comes from its own generator only (one generator for all rows: they draw
        from it in turn). `overlap`: whole seconds each window shares with what is already made (below the clip
        length). `negative_prompt`, `callback_on_step_end`: as `__call__` takes them, one negative per row.
        `cache`: the first-block step cache's threshold (`model.cache`; 0 off, default `[generate] cache`).
        """
        from uniform_cli.diffusion.samplers import SAMPLERS, check_sampler

        t_start = time.perf_counter()
        jobs = list(jobs)
        b = len(jobs)
        if not b:
            raise PipelineError("no jobs given (pass [''] to generate without text)")
        sampler = sampler or self.defaults.sampler
        try:
            check_sampler(sampler, self.schedule)
        except ValueError as e:
            raise PipelineError(str(e)) from None
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
                        cfg_audio=self.defaults.cfg_audio if cfg_audio is None else cfg_audio,
                        callback=callback_on_step_end, cache=self.defaults.cache if cache is None else cache)
        if not settings["cache"] >= 0:
            raise PipelineError(f"cache must be 0 (off) or a positive threshold, not {settings['cache']!r}")
        if negative_prompt is not None and len(negative_prompt) != b:
            raise PipelineError(f"got {len(negative_prompt)} negative prompts for {b} rows")
        if negative_prompt is not None and self.text_encoder is None:
            raise PipelineError("negative_prompt needs a text encoder; this pipeline runs without text")
        generators, seeds = self._generators(b, seed, generator)
        reset_peak_memory(self.device)
        timings = {"text": 0.0, "encode": 0.0, "denoise": 0.0, "decode": 0.0}

        clock = time.perf_counter()
        texts = [job.text for job in jobs]
        text, text_mask = (x.to(self.device) for x in self.encode_text(texts))
        has_text = self.text_encoder is not None and any(t.strip() for t in texts)
        negative = None
        if negative_prompt is not None:  # the unconditional branch's text; "" is the learned null caption
            negative = tuple(x.to(self.device) for x in self.encode_text(list(negative_prompt)))
            has_text = has_text or any(t.strip() for t in negative_prompt)
        self._sync()
        timings["text"] = time.perf_counter() - clock
        per_second = round(self.model.cfg.video_latent[1] / window)
        skipped = forwards = 0
        while True:
            starts = [next_window(tl, round(window), overlap, per_second) for tl in timelines]
            rows = [i for i, start in enumerate(starts) if start is not None]
            if not rows:
                break
            skips = self._window([timelines[i] for i in rows], [starts[i] for i in rows], overlap, text[rows],
                                 text_mask[rows], has_text, [generators[i] for i in rows], settings, timings,
                                 progress, None if negative is None else (negative[0][rows], negative[1][rows]))
            skipped, forwards = skipped + skips[0], forwards + skips[1]
        fps, rate = self.spec.fps, self.spec.sample_rate
        frames = [tl.frames[: round(tl.seconds * fps)] for tl in timelines]
        wave = [tl.wave[: round(tl.seconds * rate)] for tl in timelines]
        timings["total"] = time.perf_counter() - t_start
        peak = peak_memory_bytes(self.device)[0] if self.device.type == "cuda" else None
        return GenerationResult(frames, wave, fps, rate, [job.task for job in jobs], seeds, timings, peak,
                                [tl.windows for tl in timelines], (skipped, forwards))

    def _window(self, timelines: list[Timeline], starts: list[int], overlap: int, text: torch.Tensor,
                text_mask: torch.Tensor,
                has_text: bool, generators: list[torch.Generator], settings: dict, timings: dict,
                progress: Callable[[int, int], None] | None,
                negative: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[int, int]:
        """One model window per timeline (starting at `starts` seconds): encode what is known there, sample
        what is still to generate, decode it and write it back. `negative`: the unconditional branch's text and
        mask (None: the learned null text). Returns the step cache's (skipped, all) model forwards ((0, 0) off)."""
        from uniform_cli.diffusion.guidance import conditional_model_fn, guided_model_fn
        from uniform_cli.model.cache import FirstBlockCache  # one step cache per sampling loop (its trajectory)

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
        base = FirstBlockCache(self.model, settings["cache"]) if settings["cache"] else self.model
        if has_text and (settings["cfg_video"] != 1.0 or settings["cfg_audio"] != 1.0):
            model = base if negative is None else with_negative_text(base, *negative)
            model_fn = guided_model_fn(model, masks, text, text_mask, settings["cfg_video"], settings["cfg_audio"])
        else:  # no caption in the batch, or scale 1: guidance would return the conditional prediction
            model_fn = conditional_model_fn(base, masks, text, text_mask)
        callbacks = None if settings["callback"] is None else StepCallbacks(self, settings["callback"], model_fn)
        with self._running(self.model):
            latents = settings["sampler"](model_fn if callbacks is None else callbacks.model_fn, self.schedule,
                                          self._noise(generators), given, masks, settings["steps"],
                                          generator=generators, progress=progress)
            if callbacks is not None:
                callbacks.finish(latents)
        self._sync()
        timings["denoise"] += time.perf_counter() - clock

        clock = time.perf_counter()
        video_bounds, audio_bounds = latent_bounds(latent, per_second, fps), latent_bounds(latent, per_second, rate)
        fade_frames, fade_samples = round(CROSSFADE * fps), round(CROSSFADE * rate)
        rows = [i for i in range(b)
                if gen_video[i].any() or not timelines[i].filled_frames[frame_slices[i]].all()]
        if rows:
            with self._running(self.video_codec):
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
            with self._running(self.audio_codec):
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
        return (base.skipped, base.calls) if isinstance(base, FirstBlockCache) else (0, 0)


# -- helpers of the diffusers-shaped call ------------------------------------------------------------------------


def part_modules(part) -> list[torch.nn.Module]:
    """The torch modules a part computes with: the part itself (the transformer, the Open-Sora VAE), or the
    `model`, `vae` and `vocoder` it holds (text encoders, AudioLDM); weight-free parts have none."""
    if isinstance(part, torch.nn.Module):
        return [part]
    return [m for m in (getattr(part, name, None) for name in ("model", "vae", "vocoder"))
            if isinstance(m, torch.nn.Module)]


def with_negative_text(model: torch.nn.Module, negative: torch.Tensor, negative_mask: torch.Tensor):
    """`model` as `guided_model_fn` calls it, with its unconditional half (the rows `drop_text` marks) conditioned
    on `negative` text `B text_len D` instead of the learned null text: a negative prompt. An empty negative is
    the null text itself (`encode_text`), so it gives what no negative prompt gives."""

    def call(x: AV, t: torch.Tensor, generated: AV, text: torch.Tensor, text_mask: torch.Tensor,
             drop_text: torch.Tensor) -> AV:
        drop = drop_text[:, None]
        text = torch.where(drop[..., None], negative.repeat(2, 1, 1).to(text.dtype), text)
        return model(x, t, generated, text, torch.where(drop, negative_mask.repeat(2, 1), text_mask))

    return call


class StepCallbacks:
    """diffusers' `callback_on_step_end` called from the model function: a sampler gives step i's result to the
    model at step i + 1, and the last step's result after it returns (`finish`). The samplers cannot take back
    changed latents, so a callback that returns other "latents" is refused rather than ignored."""

    def __init__(self, pipe: UniFormPipeline, callback: StepCallback, model_fn: Callable[[AV, torch.Tensor], AV]):
        self.pipe, self.callback, self.inner = pipe, callback, model_fn
        self.step, self.timestep = -1, None

    def model_fn(self, x: AV, t: torch.Tensor) -> AV:
        if self.step >= 0:
            self.finish(x)
        self.step, self.timestep = self.step + 1, t[0]
        return self.inner(x, t)

    def finish(self, x: AV) -> None:
        out = self.callback(self.pipe, self.step, self.timestep, {"latents": x})
        if out is not None and out.get("latents", x) is not x:
            raise PipelineError("callback_on_step_end returned new latents, which UniForm's samplers do not take "
                                "back; return callback_kwargs unchanged (or None)")


def per_row(given, b: int, name: str) -> list | None:
    """`given` for each of `b` rows: None stays None, a caption or file path is every row's, else one per row."""
    if given is None:
        return None
    if isinstance(given, (str, Path)):
        return [given] * b
    given = list(given)
    if len(given) != b:
        raise PipelineError(f"{name} has {len(given)} rows for {b} captions")
    return given


def named_settings(options: dict, num_inference_steps: int | None,
                   guidance_scale: float | Mapping[str, float] | None) -> dict:
    """`generate`'s settings for diffusers' names; each setting may be given by one name only."""
    out: dict[str, float] = {}
    if num_inference_steps is not None:
        if "steps" in options:
            raise PipelineError("pass num_inference_steps or steps, not both")
        out["steps"] = num_inference_steps
    if guidance_scale is not None:
        if "cfg_video" in options or "cfg_audio" in options:
            raise PipelineError("pass guidance_scale or cfg_video/cfg_audio, not both")
        if isinstance(guidance_scale, Mapping):
            if set(guidance_scale) != {"video", "audio"}:
                raise PipelineError(f"guidance_scale per modality is {{'video': s, 'audio': s}}, not keys "
                                    f"{sorted(guidance_scale)}")
            out["cfg_video"], out["cfg_audio"] = guidance_scale["video"], guidance_scale["audio"]
        else:
            out["cfg_video"] = out["cfg_audio"] = guidance_scale
    return out


def _task_name(task: Task | str) -> str:
    return task.name.lower() if isinstance(task, Task) else str(task).strip().lower()
