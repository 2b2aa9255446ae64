"""Typed recipes: dataclasses loaded from TOML, unknown keys rejected, resolved TOML written back.

A recipe is one TOML file with the tables `[model]`, `[diffusion]`, `[codec]`, `[data]`, `[train]`,
`[generate]` and a raw `[deepspeed]` table passed through to DeepSpeed. `[model] preset = "XL/2"` starts
from a named preset (`PRESETS`) and the other keys of the table override it.
Each part of the toolkit receives only its own section (`build_model(recipe.model)`).
A field with a fixed set of values has a `Literal` type (`Sampler`, `Prediction`, ...): the list of choices is
written there once, and the loader, the dataclasses and the command line all read it from there.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A recipe that cannot be used; the message names the key and the file."""


def check_choices(config: Any, section: str) -> None:
    """Raise ConfigError when a `Literal` field of the dataclass `config` holds a value outside its choices
    (the check for configs built in code; the loader checks the same while reading `[section]`)."""
    for name, annotation in typing.get_type_hints(type(config)).items():
        if typing.get_origin(annotation) is Literal:
            _check_value(getattr(config, name), annotation, f"{section}.{name}")


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """Check a TOML value against a field's type; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            raise ConfigError(f"{where} must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, str, bool, float):
        if type(value) is not annotation:
            raise ConfigError(f"{where} must be {annotation.__name__}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_check_value(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, arg = typing.get_args(annotation)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return {k: _check_value(v, arg, f"{where}.{k}") for k, v in value.items()}
    return value  # Any


Prediction = Literal["eps", "v", "x0"]
"""What a model can be trained to predict (`diffusion.prediction`)."""
VideoCodecName = Literal["opensora", "pixel"]
"""Video codecs (`codec.video`): Open-Sora VAE v1.2, or the weight-free pixel codec."""
AudioCodecName = Literal["audioldm", "mel"]
"""Audio codecs (`codec.audio`): AudioLDM VAE + HiFi-GAN, or the weight-free mel codec."""
Job = Literal["t2av", "a2v", "v2a", "extend", "retake", "i2av"]
"""What a training sample is asked to do (`data.task_weights`): the paper's three tasks, or a span job
(`diffusion.tasks`): extend (the first frames of both modalities given), retake (a span of one or both
modalities generated, the rest given), i2av (the first video frame given)."""
TaskSampling = Literal["iteration", "sample"]
"""How training draws tasks (`data.task_sampling`)."""
Precision = Literal["bf16", "fp32"]
"""Training precision (`train.precision`)."""
ZeroStage = Literal[0, 1, 2, 3]
"""DeepSpeed ZeRO stages (`train.zero_stage`)."""
Sampler = Literal["ddpm", "ddim", "dpm++", "euler"]
"""Samplers (`generate.sampler`, `uniform generate --sampler`; `diffusion.samplers.SAMPLERS` maps them): the first
three for the "iddpm" objective, "euler" for "rflow"."""
NullTextMask = Literal["full", "prompt"]
"""Which tokens of the learned null text a dropped caption attends to (`model.null_text_mask`)."""
QKNorm = Literal["rms", "layernorm", "none"]
"""Normalisation of queries and keys in self-attention (`model.qk_norm`)."""
Objective = Literal["iddpm", "rflow"]
"""Training objectives (`diffusion.objective`)."""
FlowTimes = Literal["logit-normal", "uniform"]
"""How rectified-flow training draws its times (`diffusion.flow_times`)."""


@dataclass
class ModelConfig:
    """The UniForm backbone (STDiT3 blocks over audible frames)."""

    preset: str = "debug"
    """Named preset the other fields start from ("debug", "demo", "XL/2")."""
    hidden_size: int = 64
    """Token width."""
    depth: int = 2
    """Number of spatial blocks; there are as many temporal blocks."""
    num_heads: int = 4
    """Attention heads in every block."""
    mlp_ratio: float = 4.0
    """MLP hidden width over token width."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """PatchEmbed3D patch over (frames, height, width)."""
    video_latent: tuple[int, int, int, int] = (4, 4, 8, 8)
    """Video latent shape C, F, H, W."""
    audio_latent: tuple[int, int, int] = (8, 20, 4)
    """Audio latent shape C, T, M; T must be a multiple of the video latent's F."""
    task_width: int = 2
    """Width (in latent pixels) of the task-token block appended to each audible frame."""
    num_tasks: int = 3
    """Size of the task embedding (T2AV, A2V, V2A)."""
    text_dim: int = 32
    """Width of the text encoder's embeddings (4096 for T5-v1.1-XXL)."""
    text_len: int = 16
    """Longest text in tokens (300 in the paper); also the length of the null embedding."""
    null_text_mask: NullTextMask = "full"
    """Tokens of the null text that a dropped caption (training's text dropping, guidance's unconditional half)
    attends to: "full", all `text_len` of them, so nothing of the caption is left, not even its length (this
    toolkit's default); or "prompt", the prompt's own mask, as Open-Sora does (the pattern its weights saw)."""
    pred_sigma: bool = True
    """Predict the learned-range variance next to the noise (IDDPM)."""
    qk_norm: QKNorm = "rms"
    """Queries and keys of self-attention: "rms", RMSNorm per head (Open-Sora STDiT3); "layernorm", LayerNorm with
    a bias over the whole width (PixArt's `qk_norm`, for importing PixArt models trained with it); or "none" (PixArt
    without it: the only setting in which an imported PixArt's spatial stack is its own function). Older configs'
    true / false read as "rms" / "none"."""
    grad_checkpointing: bool = False
    """Recompute block activations in the backward pass to save memory (all `depth` block pairs)."""
    checkpoint_blocks: int = 0
    """Recompute only the first N (spatial, temporal) block pairs: less recomputation where memory allows."""

    def __post_init__(self) -> None:
        check_choices(self, "model")
        self.patch_size = tuple(self.patch_size)
        self.video_latent = tuple(self.video_latent)
        self.audio_latent = tuple(self.audio_latent)
        if not 0 <= self.checkpoint_blocks <= self.depth:
            raise ConfigError(f"model.checkpoint_blocks {self.checkpoint_blocks} must be in 0..depth ({self.depth})")
        if self.grad_checkpointing and self.checkpoint_blocks not in (0, self.depth):
            raise ConfigError("model.grad_checkpointing = true recomputes every block; set it to false to recompute "
                              f"only the first model.checkpoint_blocks = {self.checkpoint_blocks}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.audio_latent[1] % self.video_latent[1]:
            raise ConfigError(
                f"model.audio_latent T={self.audio_latent[1]} is not a multiple of video frames F={self.video_latent[1]}"
            )


PRESETS: dict[str, ModelConfig] = {
    # Tiny: a training step on a laptop CPU in well under a second; shapes keep the paper's ratios
    # (Cv=4, Ca=8, 5 audio rows per video frame) so every packing path is exercised.
    "debug": ModelConfig(
        preset="debug",
        hidden_size=64,
        depth=2,
        num_heads=4,
        video_latent=(4, 4, 8, 8),
        audio_latent=(8, 20, 4),
        text_dim=32,
        text_len=16,
    ),
    # The demo (`uniform demo`, recipes/demo.toml): trains in minutes on a 2-core CPU. Latents of the weight-free
    # codecs for 32 x 32, 68-frame clips: "pixel" video [24, 20, 4, 4] and "mel" audio [16, 100, 4]; 32-wide
    # "hash" word embeddings of captions of at most 8 words. 240 tokens per clip.
    "demo": ModelConfig(
        preset="demo",
        hidden_size=128,
        depth=2,
        num_heads=4,
        video_latent=(24, 20, 4, 4),
        audio_latent=(16, 100, 4),
        text_dim=32,
        text_len=8,
    ),
    # The paper: STDiT3-XL/2 over Open-Sora VAE v1.2 and AudioLDM VAE latents of a 4 s clip, T5-XXL text.
    "XL/2": ModelConfig(
        preset="XL/2",
        hidden_size=1152,
        depth=28,
        num_heads=16,
        video_latent=(4, 20, 32, 32),
        audio_latent=(8, 100, 16),
        text_dim=4096,
        text_len=300,
    ),
}
"""Named model presets: `[model] preset = NAME` starts from one of these."""


@dataclass
class DiffusionConfig:
    """The training objective: IDDPM's schedule and loss (the paper), or Open-Sora 1.2's rectified flow."""

    objective: Objective = "iddpm"
    """"iddpm" (the paper: eps prediction, hybrid loss, [generate] samplers ddpm/ddim/dpm++) or "rflow" (Open-Sora
    1.2's rectified flow, what hpcai-tech/OpenSora-STDiT-v3 was trained with: the model's first output half is
    the velocity x0 - noise; [generate] sampler = "euler"). rflow reads num_timesteps, flow_times and flow_shift;
    the betas and `prediction` are IDDPM's, and the variance outputs of a pred_sigma model stay untrained."""
    num_timesteps: int = 1000
    """Training diffusion steps."""
    beta_start: float = 1e-4
    """First beta of the linear schedule (for 1,000 steps; rescaled for other counts)."""
    beta_end: float = 0.02
    """Last beta of the linear schedule (for 1,000 steps; rescaled for other counts)."""
    learn_sigma: bool = True
    """Learned-range variance trained with the variational bound (hybrid loss)."""
    prediction: Prediction = "eps"
    """What the model predicts: "eps", the noise (the paper, IDDPM); "v" = sqrt(abar) eps - sqrt(1 - abar) x0
    (Salimans & Ho 2022); or "x0", the clean latent, trained with the v error it implies (Li & He 2025, "Back to
    Basics: Let Denoising Generative Models Denoise"). v and x0 keep the x0 estimate bounded at high noise,
    where eps errors are amplified; x0 also suits tokens nearly as wide as the model, which cannot carry the
    noise that eps and v must reproduce at low noise."""
    flow_times: FlowTimes = "logit-normal"
    """rflow: how training draws t / T ("logit-normal", Open-Sora 1.2's, or "uniform")."""
    flow_shift: float = 0.0
    """rflow: Open-Sora's timestep-transform ratio; 0 takes its rule for the recipe's clip, sqrt(H W / 512^2) *
    sqrt(frames // 17 * 5) (2.24 at 256 px and 68 frames); 1 is no shift."""

    def __post_init__(self) -> None:
        check_choices(self, "diffusion")
        if self.objective == "rflow" and self.prediction != "eps":
            raise ConfigError(f'diffusion.prediction = "{self.prediction}" is an IDDPM setting; "rflow" always '
                              "predicts the velocity")
        if self.flow_shift < 0:
            raise ConfigError(f"diffusion.flow_shift must be 0 (Open-Sora's rule) or positive, not {self.flow_shift}")


@dataclass
class CodecConfig:
    """The pretrained parts that turn media into latents and back (hub ids or local folders)."""

    video: VideoCodecName = "opensora"
    """Video codec: "opensora" (Open-Sora VAE v1.2) or "pixel" (weight-free, for the demo)."""
    audio: AudioCodecName = "audioldm"
    """Audio codec: "audioldm" (AudioLDM VAE + HiFi-GAN) or "mel" (weight-free log-mel, for the demo)."""
    video_vae: str = "hpcai-tech/OpenSora-VAE-v1.2"
    """Open-Sora VAE v1.2: hub id or folder with config.json + model.safetensors."""
    audio_vae: str = "cvssp/audioldm-s-full-v2"
    """AudioLDM checkpoint: hub id or folder with vae/ and vocoder/ subfolders."""
    text_encoder: str = "DeepFloyd/t5-v1_1-xxl"
    """Text encoder: hub id or folder of a transformers encoder and its tokenizer; "none" for no text."""


def with_codec_overrides(codec: CodecConfig, video_vae: str | None = None, audio_vae: str | None = None,
                         text_encoder: str | None = None) -> CodecConfig:
    """`codec` with the --video-vae/--audio-vae/--text-encoder values of a command applied (None: unchanged).

    "pixel" and "mel" select the weight-free codecs (the name then also stands in for the weights, as in
    recipes/demo.toml, and is what the shards record); any other value is a hub id or folder of the VAE's
    weights and selects the VAE codec. A folder named pixel or mel is passed as a path (`./pixel`).
    """
    changes: dict[str, str] = {}
    if video_vae is not None:
        changes.update(video="pixel" if video_vae == "pixel" else "opensora", video_vae=video_vae)
    if audio_vae is not None:
        changes.update(audio="mel" if audio_vae == "mel" else "audioldm", audio_vae=audio_vae)
    if text_encoder is not None:
        changes["text_encoder"] = text_encoder
    return dataclasses.replace(codec, **changes)


@dataclass(frozen=True)
class ClipSpec:
    """What a prepared clip looks like (the paper: 17 fps, 256 x 256, 4 s, 16 kHz): the clip part of `[data]`."""

    fps: int = 17
    """Frames per second of clips."""
    size: int = 256
    """Clip side in pixels (short side scaled, then centre-cropped)."""
    seconds: float = 4.0
    """Clip length in seconds."""
    sample_rate: int = 16000
    """Audio sample rate of clips."""

    def __post_init__(self) -> None:
        for name in ("fps", "size", "seconds", "sample_rate"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"data.{name} must be positive, not {getattr(self, name)}")

    @property
    def frames(self) -> int:
        """Frames per clip (68 for 17 fps x 4 s)."""
        return round(self.fps * self.seconds)

    @property
    def samples(self) -> int:
        """Audio samples per clip (64,000 for 16 kHz x 4 s)."""
        return round(self.sample_rate * self.seconds)

    @property
    def tag(self) -> str:
        """A short text naming the spec, e.g. `17fps-256px-4s-16000Hz` (status tables record it)."""
        return f"{self.fps}fps-{self.size}px-{self.seconds:g}s-{self.sample_rate}Hz"


@dataclass(frozen=True)
class DataConfig(ClipSpec):
    """The clip format (`ClipSpec`'s fields) and the training data."""

    shards: list[str] = field(default_factory=list)
    """Shard folders written by `uniform encode` (each holds index.json)."""
    task_weights: dict[str, float] = field(default_factory=lambda: {"t2av": 1.0, "a2v": 1.0, "v2a": 1.0})
    """Relative frequency of each job in training (`Job`: the paper's t2av, a2v, v2a, and the span jobs extend,
    retake, i2av); a job not named has weight 0."""
    task_sampling: TaskSampling = "iteration"
    """"iteration": one job per step for the whole batch (the paper); "sample": one per sample."""
    text_drop: float = 0.5
    """Probability that a sample's text is replaced by the null embedding."""
    num_workers: int = 2
    """Data loader worker processes."""
    shuffle_buffer: int = 256
    """Samples held for shuffling."""

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.task_weights) - set(typing.get_args(Job))
        if unknown:
            raise ConfigError(f"data.task_weights has unknown jobs {sorted(unknown)}; use "
                              f"{', '.join(typing.get_args(Job))}")
        check_choices(self, "data")
        if not 0.0 <= self.text_drop <= 1.0:
            raise ConfigError(f"data.text_drop must lie in [0, 1], not {self.text_drop}")

    @property
    def clip(self) -> ClipSpec:
        """The clip format alone (what `prepare_media` and the codecs take)."""
        return ClipSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ClipSpec)})


SAMPLE_PROMPTS = ("a dog barks in a park", "rain falls on a tin roof")
"""The default T2AV captions of the samples made during training (`train.sample_prompts`)."""


@dataclass
class TrainConfig:
    """Optimisation, checkpoints and logging."""

    name: str = "debug"
    """Run name: outputs go to {output_dir}/{name}/."""
    output_dir: str = "runs"
    """Folder that holds runs."""
    steps: int = 100
    """Optimizer steps in total."""
    batch_size: int = 4
    """Global batch per optimizer step (all GPUs); gradient accumulation = batch_size / (micro_batch x GPUs)."""
    micro_batch: int = 2
    """Samples per GPU per forward."""
    lr: float = 1e-4
    """Learning rate after warmup (constant)."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    adam_eps: float = 1e-15
    """AdamW epsilon (Open-Sora uses 1e-15)."""
    grad_clip: float = 1.0
    """Gradient norm clip; 0 disables."""
    ema_decay: float = 0.99
    """EMA decay of the exported weights."""
    precision: Precision = "fp32"
    """"bf16" or "fp32"."""
    zero_stage: ZeroStage = 0
    """DeepSpeed ZeRO stage (2 on GPUs)."""
    compile: bool = False
    """torch.compile the model."""
    init_from: str = ""
    """Initial weights: "" (random), "pixart:PATH", "opensora:PATH" or "uniform:PATH"."""
    lora_rank: int = 0
    """LoRA adapters (peft) of this rank on the `lora_targets`, the rest of the model frozen; 0 trains everything
    (or the `trainable` modules only). Start from trained weights with init_from = "uniform:PATH"."""
    lora_alpha: float = 0.0
    """LoRA scale numerator (the update is alpha / rank x B A); 0 takes the rank (scale 1)."""
    lora_targets: list[str] = field(default_factory=lambda: [
        "attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj", "mlp.fc1", "mlp.fc2"])
    """Linear layers that get adapters, by the end of their names (peft's match): the attention and MLP layers of
    every block by default."""
    trainable: list[str] = field(default_factory=list)
    """Modules trained in full, by name, e.g. ["temporal_blocks", "task_embedder"]; set (or lora_rank > 0), every
    other parameter is frozen. They get no adapters."""
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every N steps."""
    keep_last: int = 3
    """Resumable checkpoints kept."""
    log_every: int = 1
    """Write metrics every N steps."""
    sample_every: int = 0
    """Every N steps rank 0 samples the EMA model into {output_dir}/{name}/samples/step_N/ (and TensorBoard when
    it is on); 0 = off. Sampling uses the run's codecs and the [generate] sampler, steps, guidance and seed."""
    sample_prompts: list[str] = field(default_factory=lambda: list(SAMPLE_PROMPTS))
    """Captions sampled as T2AV every `sample_every` steps."""
    sample_clips: int = 2
    """Clips of a fixed batch of the shards (their "val" split when there is one) sampled every `sample_every`
    steps as A2V (their sound given) and as V2A (their picture given), each with its own caption."""
    seed: int = 0
    """Seed of everything random."""
    deterministic: bool = False
    """Deterministic algorithms (exact resume tests)."""

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        if self.batch_size % self.micro_batch:
            raise ConfigError(f"train.batch_size {self.batch_size} is not a multiple of micro_batch {self.micro_batch}")
        if self.lora_rank < 0 or self.lora_alpha < 0:
            raise ConfigError(f"train.lora_rank ({self.lora_rank}) and lora_alpha ({self.lora_alpha}) must not be negative")
        check_choices(self, "train")
        if self.sample_every < 0 or self.sample_clips < 0:
            raise ConfigError("train.sample_every and train.sample_clips must be 0 (off) or positive")
        if self.sample_every and not (self.sample_prompts or self.sample_clips):
            raise ConfigError("train.sample_every is set but there is nothing to sample: give train.sample_prompts "
                              "or train.sample_clips")


@dataclass
class GenerateConfig:
    """Sampling defaults for `uniform generate` (each can be changed on the command line)."""

    sampler: Sampler = "dpm++"
    """"ddpm" (ancestral), "ddim" or "dpm++" (DPM-Solver++(2M)) for IDDPM; "euler" for rectified flow."""
    steps: int = 25
    """Sampling steps."""
    cfg_video: float = 4.0
    """Classifier-free guidance scale of the video."""
    cfg_audio: float = 4.0
    """Classifier-free guidance scale of the audio."""
    batch_size: int = 4
    """Clips per batch."""
    seed: int = 0
    """Seed of rows without their own."""
    cache: float = 0.0
    """First-block step cache threshold (`model.cache`): 0 = off; about 0.05-0.1 skips steps at some cost."""

    def __post_init__(self) -> None:
        check_choices(self, "generate")
        if self.cache < 0:
            raise ConfigError(f"generate.cache {self.cache} must be 0 (off) or a positive relative threshold")


@dataclass
class Recipe:
    """A whole recipe: one dataclass per part, plus DeepSpeed settings passed through as given."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        flow, euler = self.diffusion.objective == "rflow", self.generate.sampler == "euler"
        if flow != euler:
            raise ConfigError(
                'diffusion.objective = "rflow" samples with generate.sampler = "euler"' if flow else
                f'generate.sampler = "euler" samples "rflow" models; diffusion.objective is "{self.diffusion.objective}"'
                " (use ddpm, ddim or dpm++)"
            )


def _build(cls: type, table: dict[str, Any], where: str, base: Any = None) -> Any:
    """Make dataclass `cls` from a TOML table, starting from `base` (an instance) when given."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]} (known: {', '.join(sorted(names))})")
    values = dataclasses.asdict(base) if base is not None else {}
    for key, value in table.items():
        values[key] = _check_value(value, hints[key], f"{where}.{key}")
    return cls(**values)


def _model_table(table: dict[str, Any]) -> dict[str, Any]:
    """A `[model]` table with the boolean `qk_norm` of configs written before its kinds existed read as a kind."""
    if isinstance(table.get("qk_norm"), bool):
        return {**table, "qk_norm": "rms" if table["qk_norm"] else "none"}
    return table


def model_config_from_dict(data: dict[str, Any], where: str) -> ModelConfig:
    """A ModelConfig from a table of its fields (a checkpoint's config.json), each type-checked."""
    return _build(ModelConfig, _model_table(data), where)


def _model_from_table(table: dict[str, Any], where: str) -> ModelConfig:
    name = table.get("preset", ModelConfig.preset)
    if name not in PRESETS:
        raise ConfigError(f"{where}.preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return _build(ModelConfig, _model_table(table), where, base=PRESETS[name])


def recipe_from_dict(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Build a Recipe from nested dicts (parsed TOML); errors name the key and `source`."""
    sections = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"{source}: unknown table [{unknown[0]}] (known: {', '.join(sorted(sections))})")
    try:
        hints = typing.get_type_hints(Recipe)
        parts: dict[str, Any] = {}
        for name in sections:
            table = data.get(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{name} must be a table, got {table!r}")
            if name == "deepspeed":
                parts[name] = dict(table)
            elif name == "model":
                parts[name] = _model_from_table(table, name)
            else:
                parts[name] = _build(hints[name], table, name)
        return Recipe(**parts)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`model.depth=2` -> (["model", "depth"], 2). Values are read as TOML, else taken as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"override {text!r}: the key must be section.key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a TOML recipe, apply `section.key=value` overrides, and check everything."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))  # a BOM (Windows editors) is no TOML error
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for text in overrides:
        keys, value = parse_override(text)
        table = data
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise ConfigError(f"override {text!r}: {k} is not a table")
        table[keys[-1]] = value
    return recipe_from_dict(data, source=str(path))


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain TOML-ready dicts (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(recipe))


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML text; `recipe_from_dict(tomllib.loads(text))` gives it back."""
    import tomli_w

    return tomli_w.dumps(recipe_to_dict(recipe))
