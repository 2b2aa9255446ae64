"""Captioners: what turns a clip (or its label) into the text the model is conditioned on, and the one place a
captioner's name maps to its class (`build_captioner`).

- `pllava`: PLLaVA (the paper's captioner for VGGSound/AudioSet), built from transformers parts (pllava.py).
- `labels`: the manifest label, optionally in a template (the paper's captions for Landscape) (labels.py).
- `hf`: any transformers image-text-to-text model that takes video and has a chat template (hf.py).

Every captioner takes a batch of `CaptionInput` and returns one text per input (contract.py); the driver
(`uniform_cli.prep.caption`) flags degenerate texts (degenerate.py) and records them.
"""

from __future__ import annotations

from dataclasses import dataclass

from uniform_cli.prep.captioners.contract import OPEN_SORA_QUESTION, OPEN_SORA_SYSTEM, Captioner

CAPTIONERS = ("pllava", "labels", "hf")


@dataclass(frozen=True)
class CaptionerConfig:
    """Which captioner writes the captions, and its settings (the flags of `uniform caption`)."""

    name: str = "pllava"
    """pllava | labels | hf."""
    model: str | None = None
    """Hub id (in the local HF cache) or folder; pllava's default is its 7B checkpoint, hf needs one."""
    template: str | None = None
    """labels: the caption around the label, e.g. "the sound of {label}" (None: the bare label)."""
    num_frames: int = 4
    """Frames sampled at segment centres of each clip (video captioners)."""
    pooling: tuple[int, int, int] = (4, 12, 12)
    """pllava: pooling shape frames, height, width."""
    max_new_tokens: int = 256
    """Longest caption in tokens (video captioners)."""
    question: str = OPEN_SORA_QUESTION
    system: str = OPEN_SORA_SYSTEM
    """Text before the question (video captioners)."""
    lora_alpha: float = 4.0
    """pllava: LoRA alpha of the merge (scale alpha / r), as PLLaVA's own inference uses."""
    lora_r: int | None = None
    """pllava: LoRA rank (None: as stored)."""
    hf_input: str = "auto"
    """hf: how frames reach the model: video | frames (as images) | auto."""
    device: str | None = None
    """torch device (None: cuda when available)."""

    def __post_init__(self) -> None:
        if self.name not in CAPTIONERS:
            raise ValueError(f"--captioner must be {', '.join(CAPTIONERS[:-1])} or {CAPTIONERS[-1]}, not {self.name!r}")
        if self.name == "hf" and not self.model:
            from uniform_cli.prep.captioners.hf import EXAMPLE_MODEL

            raise ValueError(
                f"--captioner hf needs --model (a hub id in the local cache or a folder), e.g. {EXAMPLE_MODEL}"
            )

    @property
    def needs_video(self) -> bool:
        """Whether the captioner reads clips (every one but `labels`)."""
        return self.name != "labels"

    @property
    def recorded_model(self) -> str:
        """What the captioner writes in the `model` column, known without building it (loading a 7B model takes
        a while, and a rerun builds nothing when every key is captioned by this model already)."""
        if self.name == "labels":
            from uniform_cli.prep.captioners.labels import LabelCaptioner

            return LabelCaptioner(self.template).model
        if self.name == "pllava" and not self.model:
            from uniform_cli.prep.captioners.pllava import DEFAULT_MODEL

            return DEFAULT_MODEL
        return str(self.model)


def build_captioner(cfg: CaptionerConfig) -> Captioner:
    """The captioner `cfg` names, loaded (CaptionError, or CaptionWeightsError for missing weights, otherwise)."""
    if cfg.name == "labels":
        from uniform_cli.prep.captioners.labels import LabelCaptioner

        return LabelCaptioner(cfg.template)
    if cfg.name == "pllava":
        from uniform_cli.prep.captioners.pllava import PllavaCaptioner

        return PllavaCaptioner(
            cfg.recorded_model,
            num_frames=cfg.num_frames,
            pooling_shape=cfg.pooling,
            max_new_tokens=cfg.max_new_tokens,
            question=cfg.question,
            system=cfg.system,
            lora_alpha=cfg.lora_alpha,
            lora_r=cfg.lora_r,
            device=cfg.device,
        )
    from uniform_cli.prep.captioners.hf import HFCaptioner

    return HFCaptioner(
        cfg.recorded_model,
        num_frames=cfg.num_frames,
        max_new_tokens=cfg.max_new_tokens,
        question=cfg.question,
        system=cfg.system,
        video_input=cfg.hf_input,
        device=cfg.device,
    )
