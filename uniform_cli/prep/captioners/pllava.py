"""PLLaVA (Xu et al. 2024) built from transformers parts, and a converter for the published checkpoints.

The model: CLIP ViT (features of layer -2, CLS dropped) -> projector (linear -> GELU -> linear, per token)
-> adaptive average pooling over (frames, h, w) to `pooling_shape` -> the video tokens replace the one
`<image>` token of the prompt -> Llama generates greedily.

The published checkpoints (`ermu2001/pllava-7b|13b|34b`) hold sharded safetensors whose LLM weights carry
PEFT LoRA names (`language_model.base_model.model.*`, `.base_layer.weight`, `.lora_A.default.weight`,
`.lora_B.default.weight` on q_proj/v_proj). `convert_pllava_state_dict` strips the PEFT prefixes and merges
each LoRA pair into its base weight with the scale used at inference (lora_alpha / r = 4 / 128).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from uniform_cli.prep.captioners.contract import (
    OPEN_SORA_QUESTION,
    OPEN_SORA_SYSTEM,
    CaptionError,
    CaptionInput,
    CaptionWeightsError,
    clean_caption,
    default_device,
)
from uniform_cli.prep.captioners.frames import CLIP_MEAN, CLIP_STD, clip_pixels
from uniform_cli.pretrained import resolve_pretrained

DEFAULT_MODEL = "ermu2001/pllava-7b"
IMAGE_TOKEN = "<image>"
PEFT_PREFIX = "language_model.base_model.model."
LORA_A, LORA_B, BASE_LAYER = ".lora_A.default.weight", ".lora_B.default.weight", ".base_layer."
DEFAULT_LORA_ALPHA = 4.0  # every PLLaVA inference script (and Open-Sora's captioning) uses alpha 4 with r 128


@dataclass(frozen=True)
class PllavaSettings:
    """The PLLaVA-specific part of a checkpoint's config.json, plus the pooling chosen for captioning."""

    image_token_index: int = 32000
    """Id of the `<image>` token that the video tokens replace."""
    pad_token_id: int = 0
    """Id written after a sequence ended."""
    vision_feature_layer: int = -2
    """Which CLIP hidden state feeds the projector."""
    projector_hidden_act: str = "gelu"
    """Activation between the projector's two linears."""
    pooling_shape: tuple[int, int, int] = (4, 12, 12)
    """Video tokens after pooling: (frames, h, w)."""


# --------------------------------------------------------------------------------------------------- model


class PllavaProjector(nn.Module):
    """Per-token linear -> act -> linear, then adaptive average pooling over (frames, h, w)."""

    def __init__(self, vision_hidden: int, text_hidden: int, act: str, pooling_shape: tuple[int, int, int]):
        super().__init__()
        from transformers.activations import ACT2FN

        self.linear_1 = nn.Linear(vision_hidden, text_hidden, bias=True)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=True)
        self.pooling_shape = tuple(pooling_shape)

    def forward(self, features: torch.Tensor, num_frames: int) -> torch.Tensor:
        """`(B F) (h w) C_vision` -> `B (F' h' w') D` with (F', h', w') = pooling_shape."""
        x = self.linear_2(self.act(self.linear_1(features)))
        bf, n, d = x.shape
        side = math.isqrt(n)
        if side * side != n or bf % num_frames:
            raise ValueError(f"expected (B*{num_frames}) square patch grids, got features {tuple(features.shape)}")
        x = x.view(bf // num_frames, num_frames, side, side, d).permute(0, 4, 1, 2, 3)  # B D F h w
        x = F.adaptive_avg_pool3d(x, self.pooling_shape)
        return x.flatten(2).transpose(1, 2)  # B (F' h' w') D


class PllavaForCaptioning(nn.Module):
    """CLIP vision tower + PLLaVA projector/pooling + Llama; attribute names match the published keys."""

    def __init__(self, vision_config, text_config, settings: PllavaSettings):
        super().__init__()
        from transformers import CLIPVisionModel, LlamaForCausalLM

        self.settings = settings
        self.vision_tower = CLIPVisionModel(vision_config)
        self.multi_modal_projector = PllavaProjector(
            vision_config.hidden_size, text_config.hidden_size, settings.projector_hidden_act, settings.pooling_shape
        )
        self.language_model = LlamaForCausalLM(text_config)

    def video_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """float `B F 3 S S` -> video tokens `B N D` (N = prod(pooling_shape))."""
        b, f = pixels.shape[:2]
        tower_dtype = next(self.vision_tower.parameters()).dtype
        out = self.vision_tower(pixels.flatten(0, 1).to(tower_dtype), output_hidden_states=True)
        features = out.hidden_states[self.settings.vision_feature_layer][:, 1:]  # (B F) (h w) C, CLS dropped
        return self.multi_modal_projector(features, num_frames=f)

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings with the video tokens spliced in at `<image>`, and the matching attention mask."""
        image = self.settings.image_token_index
        # The image id may lie past the embedding table; its row is replaced anyway.
        safe_ids = input_ids.masked_fill(input_ids == image, self.settings.pad_token_id)
        text = self.language_model.get_input_embeddings()(safe_ids)
        video = self.video_tokens(pixels).to(text.dtype)
        return splice_video(text, input_ids, attention_mask, video, image)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Logits `B L' V` over the spliced sequence (L' = L - 1 + N)."""
        embeds, mask = self.embed(input_ids, attention_mask, pixels)
        return self.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask), use_cache=False
        ).logits

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixels: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int,
    ) -> torch.Tensor:
        """Greedy continuation `B T` (T <= max_new_tokens); rows that ended hold pad ids after their eos.

        Decoding is transformers' own `generate` on the spliced prompt embeddings, so its logits processors,
        stopping criteria and cache implementations apply; it derives the same left-padding-aware position ids
        as `forward` from the mask.
        """
        embeds, mask = self.embed(input_ids, attention_mask, pixels)
        return self.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos_token_id,
            pad_token_id=self.settings.pad_token_id,
        )


def splice_video(
    text: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, video: torch.Tensor, image_token: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the one `image_token` of each row of `text` `B L D` with `video` `B N D` -> `B (L-1+N) D`, mask."""
    hits = input_ids == image_token
    counts = hits.sum(1)
    if not bool((counts == 1).all()):
        raise ValueError(f"each prompt needs exactly one {IMAGE_TOKEN} token; counts per row: {counts.tolist()}")
    where = hits.int().argmax(1).tolist()
    ones = mask.new_ones(video.shape[1])
    rows = [torch.cat([text[b, :p], video[b], text[b, p + 1 :]]) for b, p in enumerate(where)]
    masks = [torch.cat([mask[b, :p], ones, mask[b, p + 1 :]]) for b, p in enumerate(where)]
    return torch.stack(rows), torch.stack(masks)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 at each row's first real token (left padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------------------------- converter


def convert_pllava_state_dict(
    state: dict[str, torch.Tensor], lora_alpha: float = DEFAULT_LORA_ALPHA, lora_r: int | None = None
) -> dict[str, torch.Tensor]:
    """Published PLLaVA keys -> `PllavaForCaptioning` keys, LoRA merged: W = W0 + (alpha / r) * B @ A.

    `lora_r` defaults to the rank stored in the checkpoint (128 for the published ones). Keys without PEFT
    names (an already-merged checkpoint) pass through unchanged. The merge runs in float32.
    """
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = "language_model." + key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        if name.endswith(LORA_A) or name.endswith(LORA_B):
            base = name[: -len(LORA_A)] + ".weight"
            pairs.setdefault(base, {})["A" if name.endswith(LORA_A) else "B"] = value
            continue
        out[name.replace(BASE_LAYER, ".")] = value
    for base, ab in pairs.items():
        if set(ab) != {"A", "B"} or base not in out:
            have = sorted(ab) + (["base"] if base in out else [])
            raise CaptionError(f"PLLaVA checkpoint: LoRA for {base} is incomplete (has {have}); is a shard missing?")
        a, b = ab["A"].float(), ab["B"].float()  # A: r x in, B: out x r
        r = lora_r or a.shape[0]
        w = out[base]
        out[base] = (w.float() + (lora_alpha / r) * (b @ a)).to(w.dtype)
    return out


# ------------------------------------------------------------------------------------------------- loading


def read_safetensors(folder: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards listed in `model.safetensors.index.json`."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CaptionError(f"{folder}: shard(s) {missing} listed in {index.name} are missing; download them.")
    elif (folder / "model.safetensors").is_file():
        shards, weight_map = ["model.safetensors"], None
    else:
        raise CaptionError(f"{folder}: no model.safetensors.index.json or model.safetensors (weights are needed).")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        with safe_open(str(folder / shard), framework="pt", device=str(device)) as f:
            for key in f.keys():
                state[key] = f.get_tensor(key)
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(state))
        if absent:
            raise CaptionError(f"{folder}: {len(absent)} tensors listed in the index are absent, e.g. {absent[:3]}")
    return state


def configs_from_json(config: dict, pooling_shape: tuple[int, int, int]):
    """(CLIPVisionConfig, LlamaConfig, PllavaSettings) from a PllavaConfig-style config.json."""
    from transformers import CLIPVisionConfig, LlamaConfig

    if "vision_config" not in config or "text_config" not in config:
        raise CaptionError("PLLaVA config.json needs `vision_config` and `text_config` sections")
    vision = {k: v for k, v in config["vision_config"].items() if k != "model_type"}
    text = {k: v for k, v in config["text_config"].items() if k != "model_type"}
    text.setdefault("vocab_size", config.get("vocab_size", 32000))
    pad = config.get("pad_token_id", text.get("pad_token_id"))
    settings = PllavaSettings(
        image_token_index=int(config.get("image_token_index", 32000)),
        pad_token_id=int(pad if pad is not None else 0),
        vision_feature_layer=int(config.get("vision_feature_layer", -2)),
        projector_hidden_act=config.get("projector_hidden_act", "gelu"),
        pooling_shape=tuple(int(x) for x in pooling_shape),
    )
    return CLIPVisionConfig(**vision), LlamaConfig(**text), settings


@contextlib.contextmanager
def torch_default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in `dtype` (no float32 copy of a 7B model first)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_pllava(
    config: dict, pooling_shape: tuple[int, int, int], device: str | torch.device, dtype: torch.dtype
) -> PllavaForCaptioning:
    """A randomly initialised PllavaForCaptioning for `config` on `device` (weights are loaded next)."""
    vision, text, settings = configs_from_json(config, pooling_shape)
    with torch.device(device), torch_default_dtype(dtype):
        return PllavaForCaptioning(vision, text, settings).eval()


def align_vision_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """`vision_tower.vision_model.*` (published) -> `vision_tower.*` where this transformers' CLIPVisionModel
    holds its weights without the inner `vision_model` (transformers >= 5.2x flattened it)."""
    published = "vision_tower.vision_model."
    if any(k.startswith(published) for k in expected):
        return state
    return {("vision_tower." + k[len(published) :] if k.startswith(published) else k): v for k, v in state.items()}


def load_state(model: PllavaForCaptioning, state: dict[str, torch.Tensor], where: Path) -> None:
    """Load converted weights strictly; buffers that older transformers saved are ignored."""
    state = {k: v for k, v in state.items() if not k.endswith(("position_ids", "rotary_emb.inv_freq"))}
    expected = set(model.state_dict())
    state = align_vision_keys(state, expected)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CaptionError(
            f"{where} does not match PLLaVA: {len(missing)} missing tensors (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    model.load_state_dict(state, strict=True)


def load_pllava(
    model: str = DEFAULT_MODEL,
    *,
    pooling_shape: tuple[int, int, int] = (4, 12, 12),
    lora_alpha: float = DEFAULT_LORA_ALPHA,
    lora_r: int | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
):
    """(PllavaForCaptioning with LoRA merged, tokenizer, folder, config dict) from a hub id or folder."""
    from transformers import AutoTokenizer

    folder = resolve_pretrained(
        model, [], "PLLaVA checkpoint (config.json, model.safetensors.index.json with its shards, tokenizer files)",
        example=DEFAULT_MODEL, error=CaptionWeightsError,
    )
    if not (folder / "config.json").is_file():
        raise CaptionError(f"{folder}: config.json is missing; is this a PLLaVA checkpoint folder?")
    config = json.loads((folder / "config.json").read_text())
    device = device or default_device()
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    state = convert_pllava_state_dict(read_safetensors(folder, device), lora_alpha, lora_r)
    net = build_pllava(config, pooling_shape, device, dtype)
    load_state(net, {k: v.to(dtype) for k, v in state.items()}, folder)
    del state
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise CaptionError(f"{folder}: cannot load the tokenizer ({err}); the tokenizer files are needed") from None
    ids = tokenizer(IMAGE_TOKEN, add_special_tokens=False).input_ids
    if ids != [net.settings.image_token_index]:
        raise CaptionError(
            f"{folder}: the tokenizer encodes {IMAGE_TOKEN} as {ids}, but config.json says image_token_index="
            f"{net.settings.image_token_index}"
        )
    return net, tokenizer, folder, config


def pllava_prompt(question: str = OPEN_SORA_QUESTION, system: str = OPEN_SORA_SYSTEM) -> str:
    """PLLaVA's conversation format as Open-Sora used it: `{system} USER:<image> {question} ASSISTANT:`."""
    head = f"{system} " if system else ""
    return f"{head}USER:{IMAGE_TOKEN} {question} ASSISTANT:"


# ----------------------------------------------------------------------------------------------- captioner


class PllavaCaptioner:
    """Captions clips with PLLaVA: N frames at segment centres, greedy decoding, Open-Sora's clean-up."""

    name = "pllava"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        num_frames: int = 4,
        pooling_shape: tuple[int, int, int] = (4, 12, 12),
        max_new_tokens: int = 256,
        question: str = OPEN_SORA_QUESTION,
        system: str = OPEN_SORA_SYSTEM,
        lora_alpha: float = DEFAULT_LORA_ALPHA,
        lora_r: int | None = None,
        device: str | None = None,
    ):
        if num_frames < 1 or max_new_tokens < 1 or min(pooling_shape) < 1:
            raise CaptionError("num_frames, max_new_tokens and every pooling size must be >= 1")
        self.net, self.tokenizer, folder, config = load_pllava(
            model, pooling_shape=pooling_shape, lora_alpha=lora_alpha, lora_r=lora_r, device=device
        )
        self.model = model
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self.prompt = pllava_prompt(question, system)
        self.device = next(self.net.parameters()).device
        self.image_size = self.net.vision_tower.config.image_size
        pre = folder / "preprocessor_config.json"
        pre_cfg = json.loads(pre.read_text()) if pre.is_file() else {}
        self.mean = tuple(pre_cfg.get("image_mean", CLIP_MEAN))
        self.std = tuple(pre_cfg.get("image_std", CLIP_STD))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.net.settings.pad_token_id
        self.eos_token_id = self.tokenizer.eos_token_id

    def caption(self, inputs: list[CaptionInput]) -> list[str]:
        pixels = torch.stack([clip_pixels(i.frames, self.image_size, self.mean, self.std) for i in inputs])
        enc = self.tokenizer([self.prompt] * len(inputs), return_tensors="pt", padding=True)
        tokens = self.net.generate(
            enc.input_ids.to(self.device),
            enc.attention_mask.to(self.device),
            pixels.to(self.device),
            self.max_new_tokens,
            self.eos_token_id,
        )
        rows = [_until_eos(row, self.eos_token_id) for row in tokens.tolist()]
        return [clean_caption(self.tokenizer.decode(row, skip_special_tokens=True)) for row in rows]


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens
