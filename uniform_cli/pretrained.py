"""Pretrained parts on disk: a hub id or a local folder, and never a download behind the user's back.

The VAEs, the text encoder and the captioners all name their weights the same way: a folder, or a Hugging
Face hub id that is already in the local cache (`snapshot_download(..., local_files_only=True)`). When the
weights are not there, the error says what to download and where to put it; nothing is fetched.

Every error about missing or mismatched pretrained weights derives from `PretrainedError`, so a command
can catch that one class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


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
) -> Path:
    """The local folder of `id_or_path`: the folder itself, or the hub id's snapshot in the local HF cache.

    `files` are names or glob patterns relative to the folder ("config.json", "vae/*"), the parts of the
    repository the caller needs: each must match a file, and the download command names them. An empty list
    means the whole repository (the caller checks what it needs). `what` names the part in messages, and
    `example` is the hub id the message suggests when `id_or_path` is a folder that does not exist.
    `cache_dir` overrides the Hugging Face cache folder (default: $HF_HUB_CACHE). Failures raise `error`.
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
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(
            snapshot_download(name, cache_dir=cache_dir, local_files_only=True, allow_patterns=list(files) or None)
        )
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError) as err:
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
