"""A weight-free video codec: frames -> a fixed pixel-space downsampling, and back by interpolation.

It needs no download, so the demo (and anyone without the Open-Sora VAE) can run the whole pipeline. It is a
codec in the same sense as the VAE: `encode` gives a latent with the VAE's frame count and spatial factor,
`decode` gives exactly the requested frames back; what it loses is detail finer than its grid.

    encode: uint8 `B F H W 3` -> [-1, 1] -> area mean over 4 x 4 pixels
            -> linear resampling in time to 2 F' sub-frames (2 per latent frame)
            -> the 2 sub-frames and 2 x 2 pixel blocks folded into channels -> / 0.5
            -> `B 24 F' H/8 W/8` in [-2, 2]
    decode: the inverse folds -> x 0.5 -> trilinear interpolation to `F H W` -> clamp -> uint8 `B F H W 3`

F' is the Open-Sora VAE v1.2 frame count (`video_vae.latent_frames`: 68 -> 20, i.e. 0.2 s per latent frame at
17 fps), so latents keep the paper's time grid (5 audio latent rows per video latent frame). Each latent frame
keeps 2 sub-frames (1.7 clip frames apart at 68 -> 20) instead of one average: an average over 0.2 s smears a
flash or a hit over 4-5 frames and puts the decoded motion on a 0.2 s grid, coarser than AV-Align's one-frame
tolerance. The 2 x 2 fold keeps an 8 x 8 grid of colours for a 32 x 32 clip while the model sees 4 x 4 latent
pixels (a 2 x 2 patch then covers 16 x 16 pixels, as it does on the VAE's latents). Channels are ordered (RGB,
sub-frame, block row, block column); a patch holds 24 x 2 x 2 = 96 values, which fit the demo model's
128-wide tokens (more sub-frames would not).

Shapes: 32 x 32 x 68 frames (the demo) -> `[24, 20, 4, 4]`; 256 x 256 x 68 frames -> `[24, 20, 32, 32]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uniform_cli.latents.video_vae import frames_to_pixels, latent_frames, pixels_to_frames

POOL = 4
"""Pixels averaged along each side before the fold."""
FOLD = 2
"""Side of the pixel blocks folded into channels (space factor = POOL * FOLD = 8, the SDXL VAE's)."""
SUBFRAMES = 2
"""Time samples per latent frame folded into channels."""
PIXEL_SCALE = 0.5
"""latent = pixels in [-1, 1] / PIXEL_SCALE: pixels of everyday video have a standard deviation near 0.5, so
latents come out near unit variance, the scale the diffusion noise assumes (cf. the VAEs' scaling factors)."""


class PixelCodec:
    """The weight-free `VideoCodec` ("pixel" in a recipe's [codec] video). Deterministic; works on any device."""

    pool = POOL
    fold = FOLD
    subframes = SUBFRAMES

    @property
    def space_factor(self) -> int:
        """Pixels per latent pixel along each side (8, like the SDXL VAE)."""
        return self.pool * self.fold

    @property
    def channels(self) -> int:
        """Latent channels: RGB x sub-frames x the folded pixel block (24)."""
        return 3 * self.subframes * self.fold**2

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """`C F' H' W'` of a clip of `num_frames` frames of `height` x `width` pixels."""
        self._check_size(height, width)
        return (self.channels, latent_frames(num_frames), height // self.space_factor, width // self.space_factor)

    def _check_size(self, height: int, width: int) -> None:
        if height % self.space_factor or width % self.space_factor:
            raise ValueError(
                f"the pixel codec needs frame sides that are multiples of {self.space_factor}, got {height}x{width}; "
                f"clip to such a size (e.g. `uniform clip --size 64`)"
            )

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, *, sample: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 `B F H W 3` -> float32 latent `B 24 F' H/8 W/8` in [-2, 2].

        The latent is a fixed function of the frames (no posterior), so `sample` and `generator`, taken for
        the `VideoCodec` contract, change nothing.
        """
        if frames.dim() != 5 or frames.shape[-1] != 3:
            raise ValueError(f"pixel codec expects uint8 frames `B F H W 3`, got shape {tuple(frames.shape)}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"pixel codec expects uint8 frames, got {frames.dtype}")
        b, f, h, w, _ = frames.shape
        c, lf, lh, lw = self.latent_shape(f, h, w)
        s, u = self.subframes, self.fold
        x = frames_to_pixels(frames)  # B 3 F H W in [-1, 1]
        x = F.adaptive_avg_pool3d(x, (f, lh * u, lw * u))  # B 3 F H/4 W/4
        # sub-frame k of latent frame i samples the clip at the centre of window i * s + k of F' * s
        x = F.interpolate(x, size=(lf * s, lh * u, lw * u), mode="trilinear", align_corners=False)
        x = x.reshape(b, 3, lf, s, lh, u, lw, u)  # B 3 (F' s) (H' u) (W' u) -> B (3 s u u) F' H' W'
        return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c, lf, lh, lw).contiguous() / PIXEL_SCALE

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """latent `B 24 F' H' W'` -> uint8 `B F H W 3` with exactly `num_frames` frames of 8H' x 8W' pixels."""
        if latents.dim() != 5 or latents.shape[1] != self.channels:
            raise ValueError(f"pixel codec decodes latents `B {self.channels} F H W`, got shape {tuple(latents.shape)}")
        b, _, lf, lh, lw = latents.shape
        if latent_frames(num_frames) != lf:
            raise ValueError(f"{lf} latent frames cannot decode to {num_frames} frames (they encode {num_frames} "
                             f"frames as {latent_frames(num_frames)})")
        s, u = self.subframes, self.fold
        x = (latents.float() * PIXEL_SCALE).reshape(b, 3, s, u, u, lf, lh, lw).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, 3, lf * s, lh * u, lw * u)  # B 3 (F' s) H/4 W/4
        x = F.interpolate(x, size=(num_frames, lh * self.space_factor, lw * self.space_factor), mode="trilinear",
                          align_corners=False)
        return pixels_to_frames(x)
