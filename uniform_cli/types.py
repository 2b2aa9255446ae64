"""Small typed bundles that travel between stages: tasks, and one tensor per modality (`AV`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

import torch


class Task(enum.IntEnum):
    """The three UniForm tasks; the value is the id fed to the task-token embedding."""

    T2AV = 0  # generate video and audio (from text, or from nothing)
    A2V = 1  # audio given, generate video
    V2A = 2  # video given, generate audio

    @classmethod
    def parse(cls, name: str) -> "Task":
        """'t2av' / 'a2v' / 'v2a' (any case) to a Task; a clear ValueError otherwise."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            choices = ", ".join(t.name.lower() for t in cls)
            raise ValueError(f"unknown task {name!r}; choose one of {choices}") from None


@dataclass
class AV:
    """One tensor per modality of a batch: latents, model outputs, masks or losses.

    Latents are video `B C F H W` (Open-Sora VAE: 4 x 20 x 32 x 32 for a 4 s clip) and audio `B C T M`
    (AudioLDM VAE: 8 x 100 x 16; T = time rows, M = mel bins); masks and losses have the leading dims of these.
    """

    video: torch.Tensor
    audio: torch.Tensor

    def map(self, fn: Callable[..., torch.Tensor], *others: "AV") -> "AV":
        """Apply `fn(video, *other_videos)` and `fn(audio, *other_audios)`."""
        return AV(
            video=fn(self.video, *(o.video for o in others)),
            audio=fn(self.audio, *(o.audio for o in others)),
        )

    def to(self, *args, **kwargs) -> "AV":
        return self.map(lambda x: x.to(*args, **kwargs))

    @property
    def batch_size(self) -> int:
        return self.video.shape[0]

