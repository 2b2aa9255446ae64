"""Open-Sora VAE v1.2 (`hpcai-tech/OpenSora-VAE-v1.2`): the SDXL VAE per frame, then a causal temporal VAE.

    uint8 `B F H W 3` -> `B 3 F H W` in [-1, 1]
      -> spatial: SDXL-VAE (diffusers `AutoencoderKL`) per frame, × 0.18215      -> `B 4 F H/8 W/8`
      -> temporal: `TemporalVAE` per 17-frame chunk (each -> 5 latent frames)    -> `B 4 F' H/8 W/8`
      -> (z - shift) / scale with the published per-channel statistics
A 4 s clip (68 frames, 256×256) becomes `[4, 20, 32, 32]`; decoding needs the frame count back (68).

The checkpoint is upstream's `config.json` + `model.safetensors` (keys `spatial_vae.module.*`,
`temporal_vae.*`, `scale`, `shift`). The spatial VAE's architecture is the local `SDXL_VAE_CONFIG` (upstream
downloads PixArt-Σ's VAE only to overwrite its weights). For tests, a `uniform` section in config.json may
shrink the widths; the downsampling factors stay the real ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uniform_cli.latents.temporal_vae import TemporalVAE, TemporalVAEConfig, gaussian_latent, latent_length
from uniform_cli.pretrained import CodecError

REPO_ID = "hpcai-tech/OpenSora-VAE-v1.2"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WHAT = "Open-Sora VAE v1.2"

SDXL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
"""The SDXL VAE as repackaged by PixArt-Σ (`PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers`, `vae/`)."""

SPATIAL_SCALE = 0.18215
"""Open-Sora multiplies SDXL latents by SD1's factor, not the config's 0.13025; the temporal VAE was trained so."""
SHIFT = (-0.10, 0.34, 0.27, 0.98)
"""Published per-channel mean of the temporal latents (also stored as the `shift` buffer)."""
SCALE = (3.85, 2.32, 2.33, 3.06)
"""Published per-channel std of the temporal latents (also stored as the `scale` buffer)."""
MICRO_FRAME_SIZE = 17
"""Frames per temporal chunk; chunks are encoded independently (17 -> 5 latent frames)."""

# The spatial config keys a `uniform` section may change (widths only; the four stages make the ×8).
_SPATIAL_WIDTH_KEYS = {"block_out_channels", "layers_per_block", "norm_num_groups"}
_TEMPORAL_WIDTH_KEYS = {"filters", "num_res_blocks", "num_groups"}


def latent_frames(num_frames: int, micro_frame_size: int | None = MICRO_FRAME_SIZE, time_factor: int = 4) -> int:
    """Latent frames for a clip of `num_frames` frames (68 -> 20; 17 -> 5; 18 -> 6)."""
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    chunk = micro_frame_size or num_frames
    full, rest = divmod(num_frames, chunk)
    return full * latent_length(chunk, time_factor) + (latent_length(rest, time_factor) if rest else 0)


def chunk_lengths(num_frames: int, micro_frame_size: int | None = MICRO_FRAME_SIZE) -> list[int]:
    """Frame counts of the independent temporal chunks of a clip (68 -> [17, 17, 17, 17])."""
    chunk = micro_frame_size or num_frames
    full, rest = divmod(num_frames, chunk)
    return [chunk] * full + ([rest] if rest else [])


def frames_to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 `B F H W 3` -> float `B 3 F H W` in [-1, 1]."""
    return frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def pixels_to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """float `B 3 F H W` in [-1, 1] -> uint8 `B F H W 3` (clamped, rounded as Open-Sora saves samples)."""
    x = (pixels.float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()


class SpatialVAE(nn.Module):
    """Upstream `VideoAutoencoderKL`: the SDXL VAE applied to every frame, in micro-batches of frames."""

    def __init__(self, config: dict[str, Any], frames_per_call: int = 4) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.module = AutoencoderKL(**config)
        self.frames_per_call = frames_per_call

    def encode(self, x: torch.Tensor, sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """`B 3 F H W` in [-1, 1] -> `B 4 F H/8 W/8` (scaled by 0.18215)."""
        b = x.shape[0]
        flat = x.transpose(1, 2).flatten(0, 1)  # (B F) 3 H W
        out = []
        for part in flat.split(self.frames_per_call):
            dist = self.module.encode(part).latent_dist
            out.append(dist.sample(generator) if sample else dist.mode())
        z = torch.cat(out) * SPATIAL_SCALE
        return z.unflatten(0, (b, -1)).transpose(1, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """`B 4 F h w` (scaled) -> `B 3 F 8h 8w` in about [-1, 1]."""
        b = z.shape[0]
        flat = z.transpose(1, 2).flatten(0, 1) / SPATIAL_SCALE
        x = torch.cat([self.module.decode(part).sample for part in flat.split(self.frames_per_call)])
        return x.unflatten(0, (b, -1)).transpose(1, 2)


class OpenSoraVAE(nn.Module):
    """Open-Sora VAE v1.2; a `VideoCodec` (uint8 frames <-> shifted/scaled latents).

    Build with `from_pretrained`; the constructor makes random weights (for tests and benchmarks).
    """

    def __init__(
        self,
        spatial_config: dict[str, Any] | None = None,
        temporal_config: TemporalVAEConfig | None = None,
        micro_frame_size: int | None = MICRO_FRAME_SIZE,
        shift: tuple[float, ...] = SHIFT,
        scale: tuple[float, ...] = SCALE,
        frames_per_call: int = 4,
    ) -> None:
        super().__init__()
        self.spatial_config = dict(spatial_config or SDXL_VAE_CONFIG)
        self.temporal_config = temporal_config or TemporalVAEConfig()
        if self.spatial_config["latent_channels"] != self.temporal_config.in_out_channels:
            raise ValueError("the temporal VAE's in_out_channels must equal the spatial latent_channels")
        self.spatial_vae = SpatialVAE(self.spatial_config, frames_per_call)
        self.temporal_vae = TemporalVAE(self.temporal_config)
        self.micro_frame_size = micro_frame_size
        self.name_or_path: str | None = None
        """The hub id or folder `from_pretrained` loaded (recorded next to the latents it makes)."""
        self.checkpoint_dir: Path | None = None
        """The folder the weights came from (for a hub id: the cache snapshot, named by its commit)."""
        # Upstream's buffers are `1 C 1 1 1` so they broadcast over `B C F H W`.
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1, 1))

    @property
    def frames_per_call(self) -> int:
        """Frames per spatial VAE call (bigger is faster on a GPU until memory runs out)."""
        return self.spatial_vae.frames_per_call

    @frames_per_call.setter
    def frames_per_call(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"frames_per_call must be >= 1, got {value}")
        self.spatial_vae.frames_per_call = value

    @property
    def time_factor(self) -> int:
        """Frames per latent frame inside a chunk (4)."""
        return self.temporal_config.time_factor

    @property
    def space_factor(self) -> int:
        """Pixels per latent pixel along each side (8)."""
        return 2 ** (len(self.spatial_config["block_out_channels"]) - 1)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """`C F' H' W'` of one clip (68, 256, 256 -> (4, 20, 32, 32))."""
        return (
            self.temporal_config.latent_channels,
            latent_frames(num_frames, self.micro_frame_size, self.time_factor),
            height // self.space_factor,
            width // self.space_factor,
        )

    @torch.no_grad()
    def encode(
        self, frames: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """uint8 `B F H W 3` -> latent `B 4 F' H/8 W/8`, shifted and scaled for the model.

        `sample=True` draws from both posteriors (upstream's choice when it made training latents);
        `sample=False` takes their means (deterministic). `generator` makes a sampled encode reproducible.
        """
        self._check_frames(frames)
        param = next(self.parameters())
        pixels = frames_to_pixels(frames.to(param.device)).to(param.dtype)
        z = self.spatial_vae.encode(pixels, sample, generator)  # B 4 F h w
        parts = []
        start = 0
        for length, count in _runs(chunk_lengths(frames.shape[1], self.micro_frame_size)):
            # Chunks of equal length are independent, so they go through the temporal VAE as one batch.
            run = z[:, :, start : start + length * count]
            batch = run.unflatten(2, (count, length)).transpose(1, 2).flatten(0, 1)  # (B n) 4 t h w
            latent = gaussian_latent(self.temporal_vae.encode_moments(batch), sample, generator)
            parts.append(latent.unflatten(0, (z.shape[0], count)).transpose(1, 2).flatten(2, 3))
            start += length * count
        z = torch.cat(parts, dim=2)
        return (z - self.shift.to(z.dtype)) / self.scale.to(z.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """latent `B 4 F' h w` -> uint8 `B num_frames 8h 8w 3`."""
        expected = latent_frames(num_frames, self.micro_frame_size, self.time_factor)
        if latents.ndim != 5 or latents.shape[1] != self.temporal_config.latent_channels:
            raise ValueError(
                f"latents must be B {self.temporal_config.latent_channels} F' H' W', got {tuple(latents.shape)}"
            )
        if latents.shape[2] != expected:
            raise ValueError(
                f"{num_frames} frames need {expected} latent frames, got {latents.shape[2]}; "
                "pass the clip's original frame count"
            )
        param = next(self.parameters())
        z = latents.to(param.device, param.dtype)
        z = z * self.scale.to(z.dtype) + self.shift.to(z.dtype)
        parts = []
        start = 0
        for length, count in _runs(chunk_lengths(num_frames, self.micro_frame_size)):
            step = latent_length(length, self.time_factor)
            run = z[:, :, start : start + step * count]
            batch = run.unflatten(2, (count, step)).transpose(1, 2).flatten(0, 1)  # (B n) 4 t' h w
            x = self.temporal_vae.decode(batch, num_frames=length)
            parts.append(x.unflatten(0, (z.shape[0], count)).transpose(1, 2).flatten(2, 3))
            start += step * count
        return pixels_to_frames(self.spatial_vae.decode(torch.cat(parts, dim=2)))

    def _check_frames(self, frames: torch.Tensor) -> None:
        if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 B F H W 3, got {frames.dtype} {tuple(frames.shape)}")
        h, w = frames.shape[2:4]
        if h % self.space_factor or w % self.space_factor:
            raise ValueError(f"frame size {h}x{w} must be a multiple of {self.space_factor}; crop or resize first")

    # -- checkpoints ---------------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """The `config.json` upstream writes, plus a `uniform` section when widths differ from the published."""
        cfg: dict[str, Any] = {
            "architectures": ["VideoAutoencoderPipeline"],
            "model_type": "VideoAutoencoderPipeline",
            "cal_loss": False,
            "freeze_vae_2d": False,
            "from_pretrained": None,
            "micro_frame_size": self.micro_frame_size,
            "scale": [round(v, 6) for v in self.scale.flatten().tolist()],
            "shift": [round(v, 6) for v in self.shift.flatten().tolist()],
            "torch_dtype": str(next(self.parameters()).dtype).removeprefix("torch."),
            "vae_2d": {
                "type": "VideoAutoencoderKL",
                "from_pretrained": "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",
                "subfolder": "vae",
                "micro_batch_size": self.frames_per_call,
                "local_files_only": False,
            },
            "vae_temporal": {"type": "VAE_Temporal_SD", "from_pretrained": None},
        }
        spatial = {k: v for k, v in self.spatial_config.items() if SDXL_VAE_CONFIG.get(k) != v}
        default_t = asdict(TemporalVAEConfig())
        temporal = {k: v for k, v in asdict(self.temporal_config).items() if default_t[k] != v}
        if spatial or temporal:
            cfg["uniform"] = {"spatial": spatial, "temporal": temporal}
        return cfg

    def save_pretrained(self, folder: str | Path) -> None:
        """Write `config.json` + `model.safetensors` in the published layout (each file atomically)."""
        from safetensors.torch import save_file

        from uniform_cli.atomic import atomic_path, write_text_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        write_text_atomic(folder / CONFIG_NAME, json.dumps(self.config_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str | Path = REPO_ID,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        frames_per_call: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> "OpenSoraVAE":
        """Load from a folder or a hub id already in the local Hugging Face cache (never downloads).

        `frames_per_call` defaults to the checkpoint's `vae_2d.micro_batch_size` (4 upstream).
        Raises `CodecError` when the checkpoint is missing, is not an Open-Sora VAE, or its keys do not match.
        """
        from safetensors import safe_open

        from uniform_cli.pretrained import resolve_pretrained

        folder = resolve_pretrained(
            id_or_path, [CONFIG_NAME, WEIGHTS_NAME], WHAT, cache_dir, example=REPO_ID, error=CodecError
        )
        config = _read_config(folder / CONFIG_NAME)
        kwargs = _constructor_kwargs(config, folder / CONFIG_NAME)
        if frames_per_call is not None:
            kwargs["frames_per_call"] = frames_per_call
        with torch.device("meta"):
            model = cls(**kwargs)

        expected = model.state_dict()
        with safe_open(str(folder / WEIGHTS_NAME), framework="pt", device="cpu") as f:
            names = set(f.keys())
            missing = sorted(set(expected) - names)
            unexpected = sorted(names - set(expected))
            if missing or unexpected:
                raise CodecError(
                    f"{WHAT}: {folder / WEIGHTS_NAME} does not match the model: "
                    f"{_listing('missing', missing)}; {_listing('unexpected', unexpected)}. "
                    f"Use the published {REPO_ID} files (or a folder written by save_pretrained)."
                )
            state = {}
            wrong = []
            for name, ref in expected.items():
                tensor = f.get_tensor(name)
                if tensor.numel() == ref.numel() and name in ("scale", "shift"):
                    tensor = tensor.reshape(ref.shape)  # older exports store them flat
                if tensor.shape != ref.shape:
                    wrong.append(f"{name} {tuple(tensor.shape)} != {tuple(ref.shape)}")
                state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        if wrong:
            raise CodecError(
                f"{WHAT}: {len(wrong)} tensors have the wrong shape for the config in {folder / CONFIG_NAME}: "
                + "; ".join(wrong[:10])
            )
        model.load_state_dict(state, assign=True)
        model.name_or_path, model.checkpoint_dir = str(id_or_path), folder
        return model.eval()


def _runs(lengths: list[int]) -> list[tuple[int, int]]:
    """Consecutive equal chunk lengths as (length, count): [17, 17, 3] -> [(17, 2), (3, 1)]."""
    runs: list[tuple[int, int]] = []
    for n in lengths:
        if runs and runs[-1][0] == n:
            runs[-1] = (n, runs[-1][1] + 1)
        else:
            runs.append((n, 1))
    return runs


def _listing(kind: str, names: list[str], limit: int = 10) -> str:
    if not names:
        return f"no {kind} keys"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} {kind} keys: " + ", ".join(names[:limit]) + more


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CodecError(f"{WHAT}: cannot read {path}: {err}") from err
    if not isinstance(config, dict) or config.get("model_type") != "VideoAutoencoderPipeline":
        raise CodecError(
            f"{WHAT}: {path} is not an Open-Sora VAE config (model_type must be 'VideoAutoencoderPipeline'); "
            f"download {REPO_ID}."
        )
    return config


def _constructor_kwargs(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """OpenSoraVAE arguments from an upstream config.json and our optional `uniform` section."""
    section = config.get("uniform") or {}
    spatial_over = dict(section.get("spatial") or {})
    temporal_over = dict(section.get("temporal") or {})
    unknown = sorted(set(section) - {"spatial", "temporal"})
    unknown += sorted(f"spatial.{k}" for k in set(spatial_over) - _SPATIAL_WIDTH_KEYS)
    unknown += sorted(f"temporal.{k}" for k in set(temporal_over) - _TEMPORAL_WIDTH_KEYS)
    if unknown:
        raise CodecError(
            f"{WHAT}: unknown keys in the `uniform` section of {path}: {', '.join(unknown)} "
            f"(allowed: spatial {sorted(_SPATIAL_WIDTH_KEYS)}, temporal {sorted(_TEMPORAL_WIDTH_KEYS)})"
        )
    spatial = {**SDXL_VAE_CONFIG, **spatial_over}
    if len(spatial["block_out_channels"]) != len(SDXL_VAE_CONFIG["block_out_channels"]):
        raise CodecError(f"{WHAT}: spatial block_out_channels in {path} must have 4 stages (the ×8 downsampling)")
    try:
        temporal = replace(TemporalVAEConfig(), **temporal_over)
    except ValueError as err:
        raise CodecError(f"{WHAT}: bad temporal widths in {path}: {err}") from err
    kwargs: dict[str, Any] = {
        "spatial_config": spatial,
        "temporal_config": temporal,
        "micro_frame_size": config.get("micro_frame_size", MICRO_FRAME_SIZE),
        "shift": tuple(config.get("shift", SHIFT)),
        "scale": tuple(config.get("scale", SCALE)),
    }
    micro_batch = (config.get("vae_2d") or {}).get("micro_batch_size")
    if micro_batch:
        kwargs["frames_per_call"] = int(micro_batch)
    return kwargs
