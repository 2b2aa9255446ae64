"""WebDataset shards of pre-encoded latents on disk: their stats and index, which `encode`, the loader and
`train` read to know which shards are complete and what they hold (the writer: shard_writer.py).

Layout of `ROOT/shards/`:
    {prefix}-{seq:05d}.tar       one shard; prefix is the split ("train") for a run of the whole work and
                                 "{split}-{I:02d}" for part I of `--part I/N`, so processes never
                                 write the same name
    {shard}.tar.stats.json       written after the shard is complete: sample count, keys, failures,
                                 codecs, latent shapes and the shard's size in bytes
    {shard}.tar.broken           a shard set aside by `encode` (cut after sealing, or unreadable without
                                 stats); never read, kept for inspection; its clips are encoded again
    index.json                   every complete shard with its counts, the codecs and the shapes

Per sample (WebDataset key = clip key, which never contains '.'):
    video.npy   fp16 `C F H W`  ([4, 20, 32, 32])
    audio.npy   fp16 `C T M`    ([8, 100, 16])
    text.npy    fp16 `L D_text` (only the caption's valid tokens; present when text embeddings are stored)
    txt         the caption (utf-8)
    json        key, label, split, codecs (ids, classes, versions), shapes, source facts

A shard is written under `{shard}.tmp` and renamed when complete; a killed run leaves at most a temp file,
which the next run of the same process deletes. The truth about what is done is the set of `.stats.json`
files: each is written atomically by the one process that wrote its shard, so processes never contend.
`index.json` is a summary rebuilt from them after every shard; two processes can race on it, so readers
(`read_index`) check it against the stats files on disk and rebuild it in memory when it is stale.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uniform_cli.atomic import write_text_atomic
from uniform_cli.config import DataConfig
from uniform_cli.prep.manifest import SAFE_KEY

SHARDS_DIR = "shards"
INDEX_FILE = "index.json"
STATS_SUFFIX = ".stats.json"
BROKEN_SUFFIX = ".broken"
FORMAT_VERSION = 1
SHARD_NAME = re.compile(r"^[A-Za-z0-9_-]+-\d{5,}\.tar$")
"""The only shard file names there are (what the writer makes): never a URL, a `pipe:` command or a path."""


class ShardFormatError(ValueError):
    """Shards, stats or an index that cannot be used as they are; the message says what to do."""


# ---------------------------------------------------------------------------------------------- npy files


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as `.npy` bytes (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_array(data: bytes) -> np.ndarray:
    """`.npy` bytes back to an array; never unpickles."""
    return np.load(io.BytesIO(data), allow_pickle=False)


# -------------------------------------------------------------------------------------------------- stats


@dataclass
class ShardStats:
    """What `{shard}.stats.json` holds: written once the shard is complete."""

    file: str
    """Shard file name, relative to the shards folder."""
    split: str
    count: int
    keys: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    """Keys of this split that failed while the shard was open, with their status word."""
    codecs: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, Any] = field(default_factory=dict)
    """video / audio latent shapes (lists) and text_dim (int, or None without text embeddings)."""
    writer: str = "0/1"
    """The `--part I/N` of the process that wrote it."""
    created: float = 0.0
    format: int = FORMAT_VERSION
    size: int | None = None
    """Bytes of the complete shard: a shard of another size was cut (or changed) after it was sealed.
    None in stats written before the size was recorded."""

    @classmethod
    def load(cls, path: Path) -> "ShardStats":
        """The stats at `path`, which must name its own shard (`{shard}.stats.json` names `{shard}`)."""
        try:
            stats = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise ShardFormatError(f"{path}: unreadable shard stats ({err}); delete it and its shard, then rerun encode") from err
        own = path.name[: -len(STATS_SUFFIX)]
        if stats.file != own or not SHARD_NAME.match(own):
            raise ShardFormatError(
                f"{path}: names the shard {stats.file!r}, but a stats file may only describe its own shard "
                f"{own!r}; this file was not written by `uniform encode`: delete it"
            )
        problem = stats.problem()
        if problem:
            raise ShardFormatError(
                f"{path}: {problem}; this file was not written by `uniform encode`: delete it and its shard"
            )
        return stats

    def problem(self) -> str:
        """What makes these stats impossible for a shard `uniform encode` wrote ('' when nothing)."""
        if not isinstance(self.split, str) or not SAFE_KEY.match(self.split):
            return f"split {self.split!r} is not a split name"
        if not isinstance(self.keys, list) or not all(isinstance(k, str) and SAFE_KEY.match(k) for k in self.keys):
            return "keys are not a list of clip keys"
        if type(self.count) is not int or self.count != len(self.keys) or self.count < 1:
            return f"count {self.count!r} does not match its {len(self.keys)} keys"
        if self.size is not None and (type(self.size) is not int or self.size < 0):
            return f"size {self.size!r} is not a byte count"
        shapes = self.shapes if isinstance(self.shapes, dict) else {}
        for part, rank in (("video", 4), ("audio", 3)):
            dims = shapes.get(part)
            if not (isinstance(dims, list) and len(dims) == rank and all(type(d) is int and d > 0 for d in dims)):
                return f"{part} latent shape {dims!r} is not {rank} positive integers"
        text_dim = shapes.get("text_dim")
        if text_dim is not None and (type(text_dim) is not int or text_dim < 1):
            return f"text_dim {text_dim!r} is not a positive integer"
        if not isinstance(self.codecs, dict) or not isinstance(self.failed, dict):
            return "codecs or failed is not a table"
        return ""

    def shard_problem(self, folder: Path) -> str:
        """Why this stats' shard in `folder` cannot be read as complete ('' when it can): its size differs."""
        size = (folder / self.file).stat().st_size
        if self.size is not None and size != self.size:
            return f"{folder / self.file} is {size:,} bytes but was sealed at {self.size:,} (cut or changed since)"
        return ""

    def save(self, folder: Path) -> None:
        write_text_atomic(folder / (self.file + STATS_SUFFIX), json.dumps(asdict(self), indent=1))


def stable_id(id_or_path: str) -> str:
    """A local checkpoint folder as an absolute path (the same folder gives the same id); hub ids unchanged."""
    path = Path(id_or_path).expanduser()
    return str(path.resolve()) if path.exists() else id_or_path


def shard_file(folder: Path, name: Any) -> Path:
    """The shard `name` of `folder` as a checked, resolved path: a file name of the writer's pattern that is a
    regular file inside `folder` (not a link out of it). Names come from stats and index files, which are data:
    nothing in them may become a URL, a shell command (webdataset's `pipe:`) or a path elsewhere."""
    if not isinstance(name, str) or not SHARD_NAME.match(name):
        raise ShardFormatError(
            f"{folder}: {name!r} is not a shard file name (PREFIX-NNNNN.tar); the index or stats naming it were "
            "not written by `uniform encode`"
        )
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or not path.is_file():
        raise ShardFormatError(f"{folder / name} is not a regular file inside {folder}")
    return path


def recover_stats(folder: Path) -> list[ShardStats]:
    """Write stats for complete shards that lack them (a run killed between the rename and the stats).

    The shard is complete (it was renamed only after closing), so its keys and count are read from it;
    its codecs and shapes come from the sample `json` of its first record. A shard that cannot be read
    (not a tar, or cut) is set aside as `{shard}.broken`, so that its clips are encoded again.
    """
    recovered = []
    for tar in sorted(folder.glob("*.tar")):
        if (folder / (tar.name + STATS_SUFFIX)).exists() or not SHARD_NAME.match(tar.name):
            continue
        keys: list[str] = []
        meta: dict[str, Any] = {}
        try:
            with tarfile.open(tar) as tf:
                for member in tf:
                    key, _, ext = member.name.partition(".")
                    if not keys or keys[-1] != key:
                        keys.append(key)
                    if ext == "json" and not meta:
                        meta = json.loads(tf.extractfile(member).read())
            stats = ShardStats(
                file=tar.name,
                split=str(meta.get("split", "train")),
                count=len(keys),
                keys=keys,
                codecs=meta.get("codecs", {}),
                shapes=meta.get("shapes", {}),
                writer="recovered",
                created=time.time(),
                size=tar.stat().st_size,
            )
            problem = stats.problem()
        except (tarfile.TarError, OSError, ValueError, AttributeError) as err:
            problem = f"{type(err).__name__}: {err}"
        if problem:
            set_aside(tar, f"unreadable and without stats ({problem})")
            continue
        stats.save(folder)
        recovered.append(stats)
    return recovered


def set_aside(tar: Path, why: str) -> Path:
    """Rename a shard that cannot be trusted to `{shard}.broken` (kept for inspection, never read) and drop its
    stats, so that the next `encode` encodes its clips again; warns with `why`."""
    import warnings

    broken = tar.with_name(tar.name + BROKEN_SUFFIX)
    tar.replace(broken)
    (tar.parent / (tar.name + STATS_SUFFIX)).unlink(missing_ok=True)
    warnings.warn(f"{tar}: {why}; set aside as {broken.name}, its clips will be encoded again", stacklevel=2)
    return broken


def set_aside_broken(folder: Path) -> list[Path]:
    """Set aside every shard whose size differs from its stats (see `ShardStats.shard_problem`)."""
    return [set_aside(folder / s.file, why) for s, why in broken_shards(folder)]


def _all_stats(folder: Path) -> list[ShardStats]:
    """Stats of every shard in `folder` that is there (a stats file whose shard is gone is ignored)."""
    stats = [ShardStats.load(path) for path in sorted(folder.glob(f"*.tar{STATS_SUFFIX}"))]
    return [s for s in stats if (folder / s.file).is_file()]


def read_stats(folder: Path) -> list[ShardStats]:
    """Stats of every complete shard in `folder`: its stats are valid and its size is the sealed one."""
    return [s for s in _all_stats(folder) if not s.shard_problem(folder)]


def broken_shards(folder: Path) -> list[tuple[ShardStats, str]]:
    """Shards with stats whose file was cut or changed after sealing, with why."""
    return [(s, why) for s in _all_stats(folder) if (why := s.shard_problem(folder))]


def done_keys(folder: Path) -> set[str]:
    """Keys that are in a complete shard, whichever process wrote it."""
    return {k for s in read_stats(folder) for k in s.keys}


# -------------------------------------------------------------------------------------------------- index


def build_index(stats: list[ShardStats]) -> dict[str, Any]:
    """The index of a shards folder from its shards' stats. Mixed codecs or shapes are an error."""
    codecs: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    first = ""
    for s in stats:
        if not first:
            codecs, shapes, first = s.codecs, s.shapes, s.file
        elif s.shapes != shapes or _codec_ids(s.codecs) != _codec_ids(codecs):
            raise ShardFormatError(
                f"shards {first} and {s.file} were encoded differently (shapes {shapes} vs {s.shapes}, "
                f"codecs {_codec_ids(codecs)} vs {_codec_ids(s.codecs)}); keep one kind per shards folder"
            )
    splits: dict[str, int] = {}
    for s in stats:
        splits[s.split] = splits.get(s.split, 0) + s.count
    return {
        "format": FORMAT_VERSION,
        "num_samples": sum(s.count for s in stats),
        "splits": splits,
        "shapes": shapes,
        "codecs": codecs,
        "shards": [{"file": s.file, "split": s.split, "count": s.count, "failed": len(s.failed)} for s in stats],
    }


def _codec_ids(codecs: dict[str, Any]) -> dict[str, Any]:
    """The parts of codec info that make latents (in)compatible: which codec and which weights, and the clip
    settings (fps, size, seconds, sample rate; absent in shards written before they were recorded)."""
    ids = {part: (codecs.get(part) or {}).get("id") for part in ("video", "audio", "text")}
    return {**ids, "clip": codecs.get("clip")}


def clip_settings(data: DataConfig) -> dict[str, Any]:
    """The clip format of a `[data]` table, as shards record it."""
    return dataclasses.asdict(data.clip)


def write_index(folder: Path) -> dict[str, Any]:
    """Rebuild `index.json` from the stats files and write it atomically; return it."""
    index = build_index(read_stats(folder))
    write_text_atomic(folder / INDEX_FILE, json.dumps(index, indent=1))
    return index


def read_index(folder: Path) -> dict[str, Any]:
    """The index of a shards folder, rebuilt in memory from the stats when index.json is missing or stale."""
    stats = read_stats(folder)
    path = folder / INDEX_FILE
    if path.is_file():
        try:
            index = json.loads(path.read_text())
        except ValueError:
            index = None
        if index and sorted((e["file"], e["count"]) for e in index.get("shards", [])) == sorted(
            (s.file, s.count) for s in stats
        ):
            return index
    return build_index(stats)


def check_compatible(folder: Path, codecs: dict[str, Any], shapes: dict[str, Any] | None) -> None:
    """Refuse to add latents from other codecs (or of other shapes) to a folder that already has shards."""
    stats = read_stats(folder)
    if not stats:
        return
    old = stats[0]
    if _codec_ids(old.codecs) != _codec_ids(codecs):
        raise ShardFormatError(
            f"{folder} holds shards encoded with {_codec_ids(old.codecs)}, but this run uses {_codec_ids(codecs)}; "
            "latents of different codecs cannot be mixed: use another --root, or delete the old shards"
        )
    if shapes is not None and old.shapes != shapes:
        raise ShardFormatError(
            f"{folder} holds shards with latent shapes {old.shapes}, but this run gives {shapes}; "
            "use another --root, or delete the old shards"
        )


