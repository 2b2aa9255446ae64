"""Pretrained parts on disk: a hub id or a local folder, and never a download behind the user's back.

The VAEs, the text encoder and the captioners all name their weights the same way: a folder, or a Hugging
Face hub id that is already in the local cache (`snapshot_download(..., local_files_only=True)`). When the
weights are not there, the error says what to download and where to put it; nothing is fetched.

Every error about missing or mismatched pretrained weights derives from `PretrainedError`, so a command
can catch that one class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch


class PretrainedError(RuntimeError):
    """Pretrained weights that are missing or do not match; the message says what to download and where."""


class CodecError(PretrainedError):
    """A codec's weights are missing or do not match; the message says what to download and where."""


def resolve_pretrained(
    id_or_path: str | Path,
    files: Sequence[str],
    what: str,
    cache_dir: str | Path | None = None,
    *,
    example: str | None = None,
    error: type[PretrainedError] = PretrainedError,
    local_files_only: bool = True,
) -> Path:
    """The local folder of `id_or_path`: the folder itself, or the hub id's snapshot in the local HF cache.

    `files` are names or glob patterns relative to the folder ("config.json", "vae/*"), the parts of the
    repository the caller needs: each must match a file, and the download command names them. An empty list
    means the whole repository (the caller checks what it needs). `what` names the part in messages, and
    `example` is the hub id the message suggests when `id_or_path` is a folder that does not exist.
    `cache_dir` overrides the Hugging Face cache folder (default: $HF_HUB_CACHE). Failures raise `error`.
    `local_files_only=False` (only where the user asked for it) lets a hub id missing from the cache be
    downloaded; huggingface_hub then still keeps to the cache when HF_HUB_OFFLINE is set.
    """
    folder = Path(id_or_path).expanduser()
    if folder.is_dir():
        _check_files(folder, files, what, error)
        return folder
    name = str(id_or_path)
    holding = ", ".join(files) if files else "its files"
    if _looks_like_path(name):
        suggestion = f" (e.g. `{download_command(example, files, cache_dir)}`)" if example else ""
        raise error(
            f"{what}: folder {name!r} does not exist. Pass a folder holding {holding}, or a hub id that is in "
            f"the local Hugging Face cache{suggestion}; nothing is downloaded automatically."
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(name, cache_dir=cache_dir, local_files_only=local_files_only,
                                          allow_patterns=list(files) or None))
    except (LocalEntryNotFoundError, HFValidationError, HfHubHTTPError, FileNotFoundError) as err:
        if not local_files_only:
            raise error(f"{what}: {name!r} is not in the local Hugging Face cache and could not be downloaded: "
                        f"{err.__class__.__name__}: {err}") from err
        raise error(
            f"{what}: {name!r} is not in the local Hugging Face cache ({err.__class__.__name__}). "
            f"Download it once with `{download_command(name, files, cache_dir)}` (nothing is downloaded "
            f"automatically), or put {holding} in a folder and pass that folder instead."
        ) from err
    _check_files(snapshot, files, what, error)
    return snapshot


def download_command(repo_id: str, files: Sequence[str] = (), cache_dir: str | Path | None = None) -> str:
    """The `hf download` command that puts `files` (names or glob patterns; none: all) of `repo_id` in the cache."""
    words = ["hf", "download", repo_id]
    if any(set(f) & set("*?[") for f in files):
        words += ["--include", *(f"'{f}'" for f in files)]
    else:
        words += list(files)
    if cache_dir is not None:
        words += ["--cache-dir", str(cache_dir)]
    return " ".join(words)


def _looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a folder: a hub id is `name` or `owner/name`; anything else (absolute,
    relative with ./ or ../, home-relative, deeper) is a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _check_files(folder: Path, files: Sequence[str], what: str, error: type[PretrainedError]) -> None:
    missing = [pattern for pattern in files if not any(p.is_file() for p in folder.glob(pattern))]
    if missing:
        raise error(f"{what}: {folder} lacks {', '.join(missing)}; a complete checkpoint holds {', '.join(files)}.")


def read_state_dict(path: str | Path, error: type[Exception] = PretrainedError) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, a `.pth/.pt/.bin/.ckpt` state dict, a sharded `*.index.json`, or a
    folder holding one of those (diffusers' `diffusion_pytorch_model*`, optionally in a `transformer/`
    subfolder, or `model.safetensors`). Torch files are read with `weights_only=True`, so nothing in them runs;
    a missing, truncated or foreign file raises `error`, naming it."""
    path = Path(path)
    if path.is_dir():
        names = ["model.safetensors", "diffusion_pytorch_model.safetensors",
                 "diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"]
        for folder in (path, path / "transformer"):
            for name in names:
                if (folder / name).is_file():
                    return read_state_dict(folder / name, error)
        raise error(f"{path} holds none of {', '.join(names)} (also looked in {path / 'transformer'})")
    if not path.is_file():
        raise error(f"checkpoint {path} does not exist")
    if path.name.endswith(".index.json"):
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
            state.update(read_state_dict(path.parent / shard, error))
        return state
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
        raise error(f"{path}: unknown checkpoint format (use .safetensors, .pth or a folder)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, or a pickle that needs more than tensors
        raise error(f"cannot read {path} as a tensor checkpoint: {e}") from None
    # PixArt's released .pth files wrap the weights as {"state_dict": ...}; training states keep an "ema";
    # PANNs keep them under "model" beside training bookkeeping.
    for key in ("state_dict", "ema", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise error(f"{path} does not hold a state dict of tensors")
    return obj
