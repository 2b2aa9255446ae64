"""Find a pretrained checkpoint on disk: a local folder, or a hub id already in the Hugging Face cache.

Nothing here touches the network: a hub id resolves only through the local cache
(`snapshot_download(..., local_files_only=True)`), and a missing checkpoint is a `CodecError` that says
what to download and where to put it.
"""

from __future__ import annotations

from pathlib import Path

from uniform_cli.latents.codecs import CodecError


def resolve_checkpoint(
    id_or_path: str | Path,
    files: list[str],
    what: str,
    cache_dir: str | Path | None = None,
) -> Path:
    """The folder holding `files` for `id_or_path` (a folder, or a hub id in the local HF cache).

    `what` names the part in error messages (e.g. "Open-Sora VAE v1.2"). `cache_dir` overrides the
    Hugging Face cache folder (default: $HF_HUB_CACHE, usually ~/.cache/huggingface/hub).
    """
    folder = Path(id_or_path).expanduser()
    if folder.is_dir():
        _check_files(folder, files, what)
        return folder
    repo_id = str(id_or_path)
    if _looks_like_path(repo_id):
        raise CodecError(
            f"{what}: folder {repo_id!r} does not exist. Pass a folder holding {', '.join(files)}, or a hub id "
            f"that is in the Hugging Face cache."
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(
            snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True, allow_patterns=files)
        )
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError) as err:
        where = f" --cache-dir {cache_dir}" if cache_dir is not None else ""
        raise CodecError(
            f"{what}: {repo_id!r} is not in the local Hugging Face cache ({err.__class__.__name__}). "
            f"Download it once with `hf download {repo_id} {' '.join(files)}{where}` (nothing is downloaded "
            f"automatically), or put {', '.join(files)} in a folder and pass that folder instead."
        ) from err
    _check_files(snapshot, files, what)
    return snapshot


def _looks_like_path(name: str) -> bool:
    # A hub id is `name` or `owner/name`; anything else (absolute, relative with ./ or ../, deeper) is a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _check_files(folder: Path, files: list[str], what: str) -> None:
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise CodecError(
            f"{what}: {folder} lacks {', '.join(missing)}; a complete checkpoint holds {', '.join(files)}."
        )
