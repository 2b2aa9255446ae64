"""StyleGAN-V's I3D detector (`i3d_torchscript.pt`), the FVD feature network most published FVDs use.

It is a TorchScript port of the TF-Hub I3D of the original FVD (Unterthiner et al.), whose weights differ
from pytorch-i3d's `rgb_imagenet.pt` (eval/i3d.py). StyleGAN-V calls it on uint8 video `B 3 F H W` with
`rescale=True, resize=True, return_features=True`: the module itself scales to [-1, 1] and resizes to
224x224, and returns the 400 Kinetics logits before the softmax, one vector per clip. We call it the same
way, so its own preprocessing applies and the numbers are StyleGAN-V's.

Loading: the file is run as the archive it is, with `torch.jit.load(map_location="cpu")`. That reads the
TorchScript graph and its tensors through TorchScript's own deserialiser, which rebuilds only tensors and
TorchScript modules (no Python objects, so no pickle payload runs), and the forward is TorchScript code that
can only call torch operators. Reading its parameters into our own InceptionI3d instead was not chosen: its
graph carries the TF network's preprocessing and padding, and without the file to compare against, a
re-implementation could not be shown to give the same features. The forward's signature is checked at load,
so a different archive is refused before it is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from uniform_cli.eval.i3d import checked_frames
from uniform_cli.eval.weights import FeatureInputError, WeightsError

CALL = {"rescale": True, "resize": True, "return_features": True}
"""StyleGAN-V's detector_kwargs in compute_fvd."""
FEATURES = 400


def load_styleganv_i3d(path: str | Path) -> torch.jit.ScriptModule:
    """StyleGAN-V's `i3d_torchscript.pt` at `path` on the CPU, in eval mode; refused unless its forward
    takes `rescale`, `resize` and `return_features`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"detector {path} does not exist")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise WeightsError(f"cannot read {path} as a TorchScript archive: {e}") from None
    try:
        arguments = {a.name for a in module.forward.schema.arguments}
    except (AttributeError, RuntimeError):  # an archive without a scripted forward
        arguments = set()
    if not set(CALL) <= arguments:
        raise WeightsError(
            f"{path} is not StyleGAN-V's I3D detector: its forward takes {sorted(arguments - {'self'})}, "
            f"not {sorted(CALL)}; is it the file named in WEIGHT_FILES?"
        )
    return module.eval()


def styleganv_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames `F H W 3` -> uint8 `1 3 F H W`, the layout StyleGAN-V hands the detector."""
    frames = checked_frames(frames)
    # contiguous: the detector's resize reshapes its input with view()
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].contiguous()


@torch.no_grad()
def styleganv_features(model: torch.jit.ScriptModule, frames: np.ndarray) -> np.ndarray:
    """The detector's 400 pre-softmax Kinetics logits of one clip of uint8 frames `F H W 3`."""
    device = next(model.parameters()).device
    out = model(styleganv_input(frames).to(device), **CALL)
    if tuple(out.shape) != (1, FEATURES):
        raise FeatureInputError(f"the I3D detector returned shape {tuple(out.shape)}, expected (1, {FEATURES})")
    return out[0].float().cpu().numpy()
