"""I3D (Carreira & Zisserman) RGB in pytorch-i3d's key layout, for FVD and KVD on Kinetics-400 logits.

FVD convention: frames resized to 224x224 (bilinear), scaled to [-1, 1], the whole clip in one pass; the
400 logits per time step are averaged over time, giving one 400-d vector per clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uniform_cli.eval.weights import FeatureInputError, load_into

SIZE = 224
CLASSES = 400
MIN_FRAMES = 9
"""Fewer frames leave the final 2x7x7 average pool with less than 2 time steps."""


def _same_pad(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """TF 'SAME' padding of `B C T H W` (the extra pixel goes after), as pytorch-i3d computes it."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d with SAME padding, optional BatchNorm (eps 1e-3) and ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        bias: bool = False,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pooling with SAME padding (zeros, as in pytorch-i3d)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches (1x1; 1x1-3x3; 1x1-3x3; pool-1x1) concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(in_channels, widths[0])
        self.b1a = Unit3D(in_channels, widths[1])
        self.b1b = Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, widths[3])
        self.b2b = Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, widths[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


_ENDPOINTS: tuple[tuple[str, object], ...] = (
    ("Conv3d_1a_7x7", lambda: Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", lambda: MaxPool3dSame((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", lambda: Unit3D(64, 64)),
    ("Conv3d_2c_3x3", lambda: Unit3D(64, 192, (3, 3, 3))),
    ("MaxPool3d_3a_3x3", lambda: MaxPool3dSame((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", lambda: InceptionModule(192, (64, 96, 128, 16, 32, 32))),
    ("Mixed_3c", lambda: InceptionModule(256, (128, 128, 192, 32, 96, 64))),
    ("MaxPool3d_4a_3x3", lambda: MaxPool3dSame((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", lambda: InceptionModule(480, (192, 96, 208, 16, 48, 64))),
    ("Mixed_4c", lambda: InceptionModule(512, (160, 112, 224, 24, 64, 64))),
    ("Mixed_4d", lambda: InceptionModule(512, (128, 128, 256, 24, 64, 64))),
    ("Mixed_4e", lambda: InceptionModule(512, (112, 144, 288, 32, 64, 64))),
    ("Mixed_4f", lambda: InceptionModule(528, (256, 160, 320, 32, 128, 128))),
    ("MaxPool3d_5a_2x2", lambda: MaxPool3dSame((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", lambda: InceptionModule(832, (256, 160, 320, 32, 128, 128))),
    ("Mixed_5c", lambda: InceptionModule(832, (384, 192, 384, 48, 128, 128))),
)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D with pytorch-i3d's module names (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_5c.b3b.bn.*`,
    `logits.conv3d.*`), so `rgb_imagenet.pt` loads as published."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        for name, build in _ENDPOINTS:
            self.add_module(name, build())  # type: ignore[operator]
        self.logits = Unit3D(1024, num_classes, batch_norm=False, bias=True, activation=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Video `B 3 F 224 224` in [-1, 1] -> Kinetics logits `B 400`, averaged over the remaining time steps."""
        x = video
        for name, _ in _ENDPOINTS:
            x = self._modules[name](x)  # type: ignore[misc]
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))


def checked_frames(frames: np.ndarray) -> np.ndarray:
    """`frames` as an array, or FeatureInputError unless they are uint8 `F H W 3` with at least MIN_FRAMES (both
    I3D detectors)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise FeatureInputError(f"frames must be uint8 `F H W 3`, got {frames.dtype} {frames.shape}")
    if len(frames) < MIN_FRAMES:
        raise FeatureInputError(f"I3D needs at least {MIN_FRAMES} frames, got {len(frames)}")
    return frames


def i3d_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames `F H W 3` -> `1 3 F 224 224` in [-1, 1] (bilinear resize, no crop)."""
    frames = checked_frames(frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # F 3 H W
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = x / 127.5 - 1.0
    return x.permute(1, 0, 2, 3)[None].clamp(-1.0, 1.0)  # 1 3 F H W


def load_i3d(path: str | Path) -> InceptionI3d:
    """I3D with the weights of pytorch-i3d's `rgb_imagenet.pt` at `path`, in eval mode."""
    return load_into(InceptionI3d, path)


@torch.no_grad()
def i3d_logits(model: InceptionI3d, frames: np.ndarray) -> np.ndarray:
    """Kinetics-400 logits `400` of one clip of uint8 frames `F H W 3`."""
    device = next(model.parameters()).device
    return model(i3d_input(frames).to(device))[0].float().cpu().numpy()

