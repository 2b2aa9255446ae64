"""What every captioner takes, returns and raises (the `Captioner` contract), and the Open-Sora prompt and clean-up
the video captioners share. `uniform_cli.prep.captioners` maps a captioner's name to its class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from uniform_cli.pretrained import PretrainedError

# Open-Sora 1.2's PLLaVA captioning prompt (tools/caption/pllava_dir/caption_pllava.py): system text + question.
OPEN_SORA_SYSTEM = (
    "Describe this video. Pay attention to all objects in the video. The description should be useful for AI to "
    "re-generate the video. The description should be no more than six sentences. Here are some examples of good "
    "descriptions: 1. A stylish woman walks down a Tokyo street filled with warm glowing neon and animated city "
    "signage. She wears a black leather jacket, a long red dress, and black boots, and carries a black purse. She "
    "wears sunglasses and red lipstick. She walks confidently and casually. The street is damp and reflective, "
    "creating a mirror effect of the colorful lights. Many pedestrians walk about. 2. Several giant wooly mammoths "
    "approach treading through a snowy meadow, their long wooly fur lightly blows in the wind as they walk, snow "
    "covered trees and dramatic snow capped mountains in the distance, mid afternoon light with wispy clouds and a "
    "sun high in the distance creates a warm glow, the low camera view is stunning capturing the large furry "
    "mammal with beautiful photography, depth of field. 3. Drone view of waves crashing against the rugged cliffs "
    "along Big Sur's garay point beach. The crashing blue waters create white-tipped waves, while the golden light "
    "of the setting sun illuminates the rocky shore. A small island with a lighthouse sits in the distance, and "
    "green shrubbery covers the cliff's edge. The steep drop from the road down to the beach is a dramatic feat, "
    "with the cliff\u2019s edges jutting out over the sea. This is a view that captures the raw beauty of the coast "
    "and the rugged landscape of the Pacific Coast Highway."
)
OPEN_SORA_QUESTION = "Describe the video in details."
ASSISTANT_TAG = "ASSISTANT:"


class CaptionError(RuntimeError):
    """A captioner cannot be set up (missing model, bad settings); the message says what to do."""


class CaptionWeightsError(CaptionError, PretrainedError):
    """A captioner's model is missing or incomplete; the message says what to download and where."""


@dataclass(frozen=True)
class CaptionInput:
    """One item to caption: its key, its sampled frames (video captioners) and its label (label captioner)."""

    key: str
    frames: Any = None
    """uint8 `F H W 3` numpy frames at segment centres of the clip, for video captioners."""
    label: str = ""


class Captioner(Protocol):
    name: str
    """The captioner's name as written in the `captioner` column."""
    model: str
    """What produced the text (a model id or folder, or the template), written in the `model` column."""
    prompt: str
    """The text the captioner was prompted with ('' for labels); degenerate checks look for echoes of it."""
    num_frames: int
    """Frames sampled per clip (0: the captioner needs no video)."""

    def caption(self, inputs: list[CaptionInput]) -> list[str]:
        """One cleaned caption per input, in order. Raises on a failure of the whole batch."""
        ...


def clean_caption(text: str) -> str:
    """Open-Sora's clean-up: keep the text after the last "ASSISTANT:", drop `</s>`, newlines to spaces, strip."""
    text = text.split(ASSISTANT_TAG)[-1].replace("</s>", "")
    return text.replace("\r\n", " ").replace("\n", " ").strip()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
