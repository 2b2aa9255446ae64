"""`UniFormPipeline`: a trained checkpoint plus its codecs and text encoder, from captions (and given media) to clips.

    pipe = UniFormPipeline.from_pretrained("runs/multitask/checkpoints/latest")
    out = pipe(["a dog barks", "rain on a roof"], task=[Task.T2AV, Task.V2A], video=[None, frames])
    out.frames  # uint8 `B F H W 3` (68 x 256 x 256 x 3 at the paper's settings)
    out.wave    # float32 `B S` (64,000 samples at 16 kHz)

Given media must already be prepared (`uniform_cli.media.prepare.prepare_media(path, pipe.spec)`): exactly
`spec.frames` frames of `spec.size` squared, or `spec.samples` samples. They are encoded (posterior mean) and
held fixed while the model fills in the rest, and the output carries them unchanged (not a decoded copy).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from uniform_cli.config import ClipSpec, CodecConfig, ConfigError, GenerateConfig, Recipe, recipe_from_dict
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
    """Clips of one call; row i of each array belongs to the i-th caption."""

    frames: np.ndarray
    """uint8 `B F H W 3`; the given frames themselves for V2A rows."""
    wave: np.ndarray
    """float32 `B S` in [-1, 1]; the given audio itself for A2V rows."""
    fps: int
    sample_rate: int
    tasks: list[Task]
    seeds: list[int | None]
    """Each row's seed (None where the caller passed its own generators)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds for the whole batch: text, encode (given media), denoise, decode, total."""
    peak_memory: int | None = None
    """Peak bytes the call allocated on a CUDA device (None on the CPU)."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (config.json + model.safetensors), following a `latest` symlink; a run folder
    (`runs/NAME`) means its `checkpoints/latest`."""
    from uniform_cli.model.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    folder = Path(path).expanduser()
    if not (folder / CONFIG_NAME).is_file() and (folder / "checkpoints" / "latest").exists():
        folder = folder / "checkpoints" / "latest"
    folder = folder.resolve()
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

    def _rows(self, given, name: str, tasks: list[Task], needs: Task, shape: tuple[int, ...],
              dtype: torch.dtype) -> torch.Tensor | None:
        """The given media of the rows whose task needs them, stacked on the CPU; None when no row does."""
        rows = [i for i, t in enumerate(tasks) if t == needs]
        if not rows:
            return None
        if given is None:
            raise PipelineError(f"{needs.name} rows need {name}; pass {name}= with one entry per row")
        if len(given) != len(tasks):
            raise PipelineError(f"{name} has {len(given)} rows for {len(tasks)} captions")
        out = []
        for i in rows:
            x = given[i]
            if x is None:
                raise PipelineError(f"row {i} is {needs.name} but has no {name}")
            x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).cpu()
            if tuple(x.shape) != shape or (dtype == torch.uint8 and x.dtype != torch.uint8):
                raise PipelineError(
                    f"row {i}: {name} must be {'uint8' if dtype == torch.uint8 else 'float'} {list(shape)} (prepared "
                    f"with uniform_cli.media.prepare.prepare_media(path, pipeline.spec)), got {x.dtype} {list(x.shape)}"
                )
            out.append(x.to(dtype))
        return torch.stack(out)

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
        """Each row's starting noise from its own generator (video first, then audio), so it does not depend on
        the other rows of the batch."""
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
        task: Task | str | Sequence[Task | str] = Task.T2AV,
        video: Sequence | np.ndarray | torch.Tensor | None = None,
        audio: Sequence | np.ndarray | torch.Tensor | None = None,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        cfg_video: float | None = None,
        cfg_audio: float | None = None,
        seed: int | Sequence[int] | None = None,
        generator: Sequence[torch.Generator] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> GenerationResult:
        """Generate one clip per caption.

        task: one task for all rows or one per row (rows of different tasks share the batch).
        video: prepared uint8 `B F H W 3` (or a list with an `F H W 3` array or None per row), used by V2A rows.
        audio: prepared float `B S` (or a list with an `S` array or None per row), used by A2V rows.
        sampler/steps/cfg_*: default to the checkpoint's `[generate]` settings.
        seed: an int gives row i the seed `seed + i`; a list gives each row its own. `generator` (one per
        row, on the pipeline's device) replaces seeds. A row's noise comes from its own generator only.
        """
        from uniform_cli.diffusion.guidance import conditional_model_fn, guided_model_fn
        from uniform_cli.diffusion.samplers import SAMPLERS

        t_start = time.perf_counter()
        texts = [texts] if isinstance(texts, str) else list(texts)
        b = len(texts)
        if not b:
            raise PipelineError("no captions given (pass [''] to generate without text)")
        tasks = [Task.parse(t) if isinstance(t, str) else Task(t) for t in
                 (task if isinstance(task, (list, tuple)) else [task] * b)]
        if len(tasks) != b:
            raise PipelineError(f"got {len(tasks)} tasks for {b} captions")
        sampler = sampler or self.defaults.sampler
        if sampler not in SAMPLERS:
            raise PipelineError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        steps = steps or self.defaults.steps
        cfg_video = self.defaults.cfg_video if cfg_video is None else cfg_video
        cfg_audio = self.defaults.cfg_audio if cfg_audio is None else cfg_audio
        spec, cfg = self.spec, self.model.cfg
        given_frames = self._rows(video, "video", tasks, Task.V2A, (spec.frames, spec.size, spec.size, 3), torch.uint8)
        given_wave = self._rows(audio, "audio", tasks, Task.A2V, (spec.samples,), torch.float32)
        generators, seeds = self._generators(b, seed, generator)
        reset_peak_memory(self.device)
        timings: dict[str, float] = {}

        clock = time.perf_counter()
        text, text_mask = self.encode_text(texts)
        self._sync()
        timings["text"] = time.perf_counter() - clock

        clock = time.perf_counter()
        given = AV(torch.zeros(b, *cfg.video_latent, device=self.device),
                        torch.zeros(b, *cfg.audio_latent, device=self.device))
        v2a = [i for i, t in enumerate(tasks) if t == Task.V2A]
        a2v = [i for i, t in enumerate(tasks) if t == Task.A2V]
        if given_frames is not None:
            given.video[v2a] = self._encode_video(given_frames)
        if given_wave is not None:
            given.audio[a2v] = self._encode_audio(given_wave)
        self._sync()
        timings["encode"] = time.perf_counter() - clock

        clock = time.perf_counter()
        task_ids = torch.tensor([int(t) for t in tasks], device=self.device)
        text, text_mask = text.to(self.device), text_mask.to(self.device)
        has_text = self.text_encoder is not None and any(t.strip() for t in texts)
        if has_text and (cfg_video != 1.0 or cfg_audio != 1.0):
            model_fn = guided_model_fn(self.model, task_ids, text, text_mask, cfg_video, cfg_audio)
        else:  # no caption in the batch, or scale 1: guidance would return the conditional prediction
            model_fn = conditional_model_fn(self.model, task_ids, text, text_mask)
        noise = self._noise(generators)
        latents = SAMPLERS[sampler](model_fn, self.schedule, noise, given, task_ids, steps, generator=generators,
                                    progress=progress)
        self._sync()
        timings["denoise"] = time.perf_counter() - clock

        clock = time.perf_counter()
        frames = np.empty((b, spec.frames, spec.size, spec.size, 3), np.uint8)
        wave = np.empty((b, spec.samples), np.float32)
        make_video = [i for i, t in enumerate(tasks) if t != Task.V2A]
        make_audio = [i for i, t in enumerate(tasks) if t != Task.A2V]
        if make_video:
            frames[make_video] = self.video_codec.decode(latents.video[make_video], spec.frames).cpu().numpy()
        if make_audio:
            decoded = self.audio_codec.decode(latents.audio[make_audio]).float().clamp(-1, 1).cpu().numpy()
            if decoded.shape[1] != spec.samples:
                raise PipelineError(f"the audio codec decoded {decoded.shape[1]} samples, not {spec.samples}")
            wave[make_audio] = decoded
        if given_frames is not None:
            frames[v2a] = given_frames.numpy()
        if given_wave is not None:
            wave[a2v] = given_wave.numpy()
        self._sync()
        timings["decode"] = time.perf_counter() - clock
        timings["total"] = time.perf_counter() - t_start
        peak = peak_memory_bytes(self.device)[0] if self.device.type == "cuda" else None
        return GenerationResult(frames, wave, spec.fps, spec.sample_rate, tasks, seeds, timings, peak)
