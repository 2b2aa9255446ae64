"""What a set of shard folders holds, read from their index files only, and whether a recipe can train on it:
`train` checks this before any work, `make_loader` reads the shards it lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from uniform_cli.config import CodecConfig, DataConfig
from uniform_cli.latents.shards import (
    INDEX_FILE,
    SHARDS_DIR,
    broken_shards,
    clip_settings,
    read_index,
    shard_file,
    stable_id,
)


class ShardDataError(ValueError):
    """Shard folders that cannot be trained on as given, or too many unreadable samples."""


@dataclass(frozen=True)
class ShardInfo:
    """What a set of shard folders holds, read from their index files only."""

    folders: tuple[Path, ...]
    video_shape: tuple[int, ...]
    """Latent `C F H W` of one sample (4, 20, 32, 32)."""
    audio_shape: tuple[int, ...]
    """Latent `C T M` of one sample (8, 100, 16)."""
    text_dim: int | None
    """Width of the stored text embeddings; None when the shards hold captions only."""
    num_samples: dict[str, int]
    """Samples per split, over all folders."""
    shards: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Shard paths per split."""
    codecs: dict[str, Any] = field(default_factory=dict)
    """The codecs of the first folder (all folders must agree on ids)."""

    def urls(self, split: str) -> list[str]:
        """The shard paths of one split; an error naming the splits there are when it has none."""
        if not self.shards.get(split):
            raise ShardDataError(
                f"no shards of split {split!r} in {', '.join(map(str, self.folders))}; "
                f"they hold {self.num_samples or 'nothing'}"
            )
        return list(self.shards[split])

    def check_shapes(self, video_shape: Sequence[int], audio_shape: Sequence[int]) -> None:
        """Raise ShardDataError unless the shards' latents have these per-sample shapes."""
        if tuple(video_shape) != self.video_shape or tuple(audio_shape) != self.audio_shape:
            raise ShardDataError(
                f"the shards hold video latents {list(self.video_shape)} and audio latents {list(self.audio_shape)}, "
                f"but the recipe needs {list(video_shape)} and {list(audio_shape)}; re-encode the data or change "
                "the recipe's data settings"
            )


    def check_codecs(self, codec: CodecConfig, data: DataConfig | None = None) -> None:
        """Raise ShardDataError unless the shards were encoded with `codec` (a recipe's `[codec]`), the codecs that
        `generate` will decode the trained model's latents with, and (given `data`) in its clip format; the
        message names both sides."""
        made = self.codecs
        problems = []
        if data is not None and made.get("clip") is not None and made["clip"] != clip_settings(data):
            problems.append(f"clips: the shards hold {made['clip']}, the recipe's [data] says {clip_settings(data)}")
        for part, kind, source, pretrained in (
            ("video", codec.video, codec.video_vae, "opensora"), ("audio", codec.audio, codec.audio_vae, "audioldm"),
        ):
            entry = made.get(part) or {}
            if entry.get("codec") != kind or (kind == pretrained and entry.get("id") != stable_id(source)):
                shards_side = f"{entry.get('codec')} ({entry.get('id')})"
                problems.append(f"{part}: the shards hold {shards_side}, the recipe says {kind} ({source})")
        text = made.get("text")
        if text is not None and text.get("id") != stable_id(codec.text_encoder):
            problems.append(f"text: the shards hold embeddings of {text.get('id')}, the recipe says {codec.text_encoder}")
        if problems:
            raise ShardDataError(
                f"the recipe's [codec] or [data] differs from what encoded {', '.join(map(str, self.folders))}: "
                + "; ".join(problems) + ". A model trained on them could not be decoded by the recipe's codecs: "
                "set [codec] and [data] to what the shards hold, or encode the data again with the recipe's settings"
            )


def _shards_folder(source: str | Path) -> Path:
    """A shard folder, a data root holding `shards/`, or an index.json path -> the shards folder."""
    path = Path(source)
    if path.name == INDEX_FILE:
        return path.parent
    if not (path / INDEX_FILE).exists() and (path / SHARDS_DIR).is_dir():
        return path / SHARDS_DIR
    return path


def shard_info(sources: Sequence[str | Path] | str | Path) -> ShardInfo:
    """Shapes and sample counts of shard folders (or their index.json, or data roots), checked to agree.

    Missing folders, folders without shards and folders with different latent shapes or codecs are a
    ShardDataError naming them, so that `train` can check a recipe before any work.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise ShardDataError("no shard folders given: set data.shards in the recipe to folders written by `uniform encode`")
    folders = [_shards_folder(s) for s in sources]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise ShardDataError(f"shard folder(s) not found: {', '.join(missing)}; run `uniform encode` or fix data.shards")
    broken = [why for f in folders for _, why in broken_shards(f)]
    if broken:
        raise ShardDataError(
            "shard(s) changed after they were sealed: " + "; ".join(broken) + ". Run `uniform encode` on the "
            "dataset again: it sets them aside and encodes their clips again"
        )
    indexes = [read_index(f) for f in folders]
    empty = [str(f) for f, ix in zip(folders, indexes) if not ix["shards"]]
    if empty:
        raise ShardDataError(f"shard folder(s) without complete shards: {', '.join(empty)}; run `uniform encode` there")
    first = indexes[0]
    for folder, ix in zip(folders[1:], indexes[1:]):
        if ix["shapes"] != first["shapes"]:
            raise ShardDataError(f"{folders[0]} holds latents {first['shapes']} but {folder} holds {ix['shapes']}")
        ids = {k: (ix["codecs"].get(k) or {}).get("id") for k in ("video", "audio", "text")}
        ids0 = {k: (first["codecs"].get(k) or {}).get("id") for k in ("video", "audio", "text")}
        if ids != ids0:
            raise ShardDataError(f"{folders[0]} was encoded with {ids0} but {folder} with {ids}; latents would not match")
    num_samples: dict[str, int] = {}
    shards: dict[str, list[str]] = {}
    for folder, ix in zip(folders, indexes):
        for entry in ix["shards"]:
            num_samples[entry["split"]] = num_samples.get(entry["split"], 0) + entry["count"]
            shards.setdefault(entry["split"], []).append(str(shard_file(folder, entry["file"])))
    shapes = first["shapes"]
    return ShardInfo(
        folders=tuple(folders),
        video_shape=tuple(shapes["video"]),
        audio_shape=tuple(shapes["audio"]),
        text_dim=shapes.get("text_dim"),
        num_samples=num_samples,
        shards={k: tuple(v) for k, v in shards.items()},
        codecs=first["codecs"],
    )
