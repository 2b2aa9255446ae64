"""Audible frames: video latents, time-aligned audio latents and the task token in one `B C F H W'` tensor.

For each video latent frame f, the audio latent rows f*r .. f*r+r-1 (r = T / F, 5 at the paper's shapes)
are laid out as a strip of Cv channels: the audio channels are split into groups of Cv, and the groups are
stacked along height (mel bins down, time across). When the stacked groups are taller than the video, the
remaining groups continue in further columns of width r. The strip is zero-padded up to the video height and
to a width that the patch width divides (padded, never truncated). The task block follows the audio strip:

    video [Cv, F, Hv, Wv] | audio strip [Cv, F, Hv, audio_width] | task [Cv, F, Hv, task_width]

At the paper's shapes: [4, 20, 32, 32] | [4, 20, 32, 6] | [4, 20, 32, 2] -> [4, 20, 32, 40].
Every function here is pure; `unpack_audible_frames(pack_audible_frames(...))` returns the inputs exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from uniform_cli.config import ModelConfig
from uniform_cli.types import AV

VIDEO, AUDIO, TASK = 0, 1, 2
"""Token kinds: which part of the audible frame a token's patch covers."""


class PackingError(ValueError):
    """Latent shapes that cannot be placed in an audible frame; the message says which and why."""


@dataclass(frozen=True)
class AudibleFrameLayout:
    """Where video, audio and task values sit inside an audible frame (all sizes in latent pixels)."""

    video_shape: tuple[int, int, int, int]
    """Video latent C, F, H, W."""
    audio_shape: tuple[int, int, int]
    """Audio latent C, T, M."""
    patch_size: tuple[int, int, int]
    """Patch over frames, height, width."""
    task_width: int
    """Width of the task block."""
    rows_per_frame: int
    """Audio latent rows per video latent frame (T / F)."""
    groups: int
    """Groups of Cv channels the audio channels split into (the last one zero-filled if Cv does not divide Ca)."""
    groups_per_column: int
    """Groups stacked along height in one column of the strip (H // M)."""
    columns: int
    """Columns of width `rows_per_frame` in the strip."""
    audio_width: int
    """Strip width: columns * rows_per_frame rounded up to a multiple of the patch width."""

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "AudibleFrameLayout":
        """The layout of `cfg`'s latent shapes; PackingError when they cannot be placed."""
        cv, f, h, w = cfg.video_latent
        ca, t, m = cfg.audio_latent
        pt, ph, pw = cfg.patch_size
        if t % f:
            raise PackingError(f"audio latent T={t} is not a multiple of the video latent's F={f}")
        if f % pt or h % ph or w % pw:
            raise PackingError(f"video latent F, H, W = {f}, {h}, {w} must be multiples of the patch {cfg.patch_size}")
        if cfg.task_width <= 0 or cfg.task_width % pw:
            raise PackingError(f"task_width {cfg.task_width} must be a positive multiple of the patch width {pw}")
        if m > h:
            raise PackingError(
                f"audio latent has {m} mel bins but the video latent is only {h} high; "
                "an audio strip needs M <= H (use a taller video latent or fewer mel bins)"
            )
        r = t // f
        groups = math.ceil(ca / cv)
        per_column = h // m
        columns = math.ceil(groups / per_column)
        audio_width = math.ceil(columns * r / pw) * pw
        return cls(
            video_shape=(cv, f, h, w),
            audio_shape=(ca, t, m),
            patch_size=(pt, ph, pw),
            task_width=cfg.task_width,
            rows_per_frame=r,
            groups=groups,
            groups_per_column=per_column,
            columns=columns,
            audio_width=audio_width,
        )

    @property
    def channels(self) -> int:
        """Channels of an audible frame (the video latent's)."""
        return self.video_shape[0]

    @property
    def frame_width(self) -> int:
        """W' = video width + audio strip + task block."""
        return self.video_shape[3] + self.audio_width + self.task_width

    @property
    def task_block_shape(self) -> tuple[int, int, int, int]:
        """Shape of the task block of one sample: Cv, F, Hv, task_width."""
        cv, f, h, _ = self.video_shape
        return (cv, f, h, self.task_width)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Tokens along frames, height and width."""
        _, f, h, _ = self.video_shape
        pt, ph, pw = self.patch_size
        return (f // pt, h // ph, self.frame_width // pw)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


def _check(name: str, x: torch.Tensor, expected: tuple[int, ...]) -> None:
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected):
        raise PackingError(f"{name} has shape {tuple(x.shape)}; expected (B, {', '.join(map(str, expected))})")


def pack_audible_frames(
    video: torch.Tensor, audio: torch.Tensor, task_block: torch.Tensor, layout: AudibleFrameLayout
) -> torch.Tensor:
    """video `B C F H W`, audio `B C T M`, task block `B Cv F H task_width` -> audible frames `B Cv F H W'`."""
    cv, f, h, _ = layout.video_shape
    ca, _, m = layout.audio_shape
    _check("video latent", video, layout.video_shape)
    _check("audio latent", audio, layout.audio_shape)
    _check("task block", task_block, layout.task_block_shape)
    b, r = audio.shape[0], layout.rows_per_frame
    # Zero groups fill the channels up to whole groups and the last column; they are dropped on unpacking.
    slots = layout.columns * layout.groups_per_column
    audio = F.pad(audio, (0, 0, 0, 0, 0, slots * cv - ca))
    # B (col slot cv) (f r) m -> B cv f (slot m) (col r): mel bins down, time across, groups stacked in height
    strip = audio.reshape(b, layout.columns, layout.groups_per_column, cv, f, r, m)
    strip = strip.permute(0, 3, 4, 2, 6, 1, 5).reshape(b, cv, f, layout.groups_per_column * m, layout.columns * r)
    strip = F.pad(strip, (0, layout.audio_width - layout.columns * r, 0, h - layout.groups_per_column * m))
    return torch.cat([video, strip.to(video.dtype), task_block.to(video.dtype)], dim=-1)


def unpack_audible_frames(
    x: torch.Tensor, layout: AudibleFrameLayout
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Audible frames `B k*Cv F H W'` -> (video `B k*Cv F H W`, audio `B k*Ca T M`, task block).

    k = 1 inverts `pack_audible_frames` exactly. For a model output with k = 2 (noise, then variance) each
    half of the channels is unpacked on its own and the halves are concatenated again, so the noise of every
    modality comes first.
    """
    cv, f, h, w = layout.video_shape
    ca, t, m = layout.audio_shape
    if x.dim() != 5 or x.shape[1] % cv or tuple(x.shape[2:]) != (f, h, layout.frame_width):
        raise PackingError(
            f"audible frames have shape {tuple(x.shape)}; expected (B, k*{cv}, {f}, {h}, {layout.frame_width})"
        )
    b, k, r = x.shape[0], x.shape[1] // cv, layout.rows_per_frame
    video = x[..., :w]
    task_block = x[..., w + layout.audio_width :]
    strip = x[..., w : w + layout.audio_width]
    strip = strip[..., : layout.groups_per_column * m, : layout.columns * r]
    # B (k cv) f (slot m) (col r) -> B k (col slot cv) (f r) m
    audio = strip.reshape(b, k, cv, f, layout.groups_per_column, m, layout.columns, r)
    audio = audio.permute(0, 1, 6, 4, 2, 3, 7, 5).reshape(b, k, -1, t, m)[:, :, :ca]
    return video, audio.reshape(b, k * ca, t, m), task_block


def token_kinds(layout: AudibleFrameLayout) -> torch.Tensor:
    """Kind of every token (VIDEO, AUDIO or TASK), `N` long, in the model's token order (frame, row, column)."""
    t, h, w = layout.grid
    pw = layout.patch_size[2]
    video_cols = layout.video_shape[3] // pw
    audio_cols = layout.audio_width // pw
    column = torch.arange(w)
    kind = torch.full((w,), TASK, dtype=torch.long)
    kind[column < video_cols + audio_cols] = AUDIO
    kind[column < video_cols] = VIDEO
    return kind.repeat(t * h)


def given_token_mask(generated: AV, layout: AudibleFrameLayout) -> torch.Tensor:
    """Per-token "given" mask `B N` of a job's generated masks (`[B]` or `[B, F]` per modality, see
    `diffusion.tasks`): a video or audio token is given where its frames of that modality are not generated;
    the task token is always given."""
    t, h, w = layout.grid
    pt = layout.patch_size[0]

    def per_token_frame(m: torch.Tensor) -> torch.Tensor:
        m = m.reshape(m.shape[0], -1)
        if m.shape[1] == t * pt and pt > 1:  # a token spans pt latent frames: generated if any of them is
            m = m.view(m.shape[0], t, pt).any(dim=2)
        if m.shape[1] not in (1, t):
            raise ValueError(f"job masks have {m.shape[1]} frames; the model has {t * pt} latent frames")
        return m.expand(-1, t)

    video, audio = per_token_frame(generated.video), per_token_frame(generated.audio)
    kind = token_kinds(layout).to(video.device).view(1, t, h * w)
    given = ((kind == VIDEO) & ~video[..., None]) | ((kind == AUDIO) & ~audio[..., None]) | (kind == TASK)
    return given.reshape(video.shape[0], -1)
