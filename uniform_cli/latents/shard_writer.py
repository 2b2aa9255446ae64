"""Writing WebDataset shards of latents (the layout: shards.py): samples go into `{shard}.tmp`, which is renamed
to its final name when complete and only then gets its stats.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from uniform_cli.latents.shards import ShardFormatError, ShardStats, npy_bytes
from uniform_cli.prep.manifest import SAFE_KEY
from uniform_cli.stage import Part

TMP_SUFFIX = ".tmp"


@dataclass
class LatentSample:
    """One encoded clip, ready to be written."""

    key: str
    video: np.ndarray
    """fp16 `C F H W`."""
    audio: np.ndarray
    """fp16 `C T M`."""
    caption: str
    meta: dict[str, Any]
    """Goes to the sample's `json` (key, label, split, codecs, shapes, source facts)."""
    text: np.ndarray | None = None
    """fp16 `L D_text`, valid tokens only."""


def sample_to_wds(sample: LatentSample) -> dict[str, Any]:
    """The WebDataset record of a sample: `__key__` and one bytes value per file extension."""
    if "." in sample.key or "/" in sample.key:
        raise ShardFormatError(f"key {sample.key!r} contains '.' or '/', which WebDataset cannot hold")
    record: dict[str, Any] = {
        "__key__": sample.key,
        "video.npy": npy_bytes(sample.video.astype(np.float16)),
        "audio.npy": npy_bytes(sample.audio.astype(np.float16)),
        "txt": sample.caption.encode("utf-8"),
        "json": json.dumps(sample.meta, sort_keys=True).encode("utf-8"),
    }
    if sample.text is not None:
        record["text.npy"] = npy_bytes(sample.text.astype(np.float16))
    return record


def shard_prefix(split: str, part: Part) -> str:
    """`train` for a run of the whole work, `train-03` for part 3 of `--part 3/N`."""
    if not SAFE_KEY.match(split):
        raise ShardFormatError(f"split {split!r} may only hold letters, digits, '_' and '-'")
    return split if part.count == 1 else f"{split}-{part.index:02d}"


def _seq_pattern(prefix: str, suffix: str = "") -> re.Pattern:
    return re.compile(rf"^{re.escape(prefix)}-(\d{{5,}})\.tar{re.escape(suffix)}$")


def next_sequence(folder: Path, prefix: str) -> int:
    """The sequence number after the last complete shard of `prefix` (0 when there is none)."""
    pattern = _seq_pattern(prefix)
    seqs = [int(m.group(1)) for p in folder.glob(f"{prefix}-*.tar") if (m := pattern.match(p.name))]
    return max(seqs) + 1 if seqs else 0


def discard_partial(folder: Path, prefix: str) -> list[Path]:
    """Delete temp shards of `prefix` left by a killed run (only this process's names); return them."""
    pattern = _seq_pattern(prefix, TMP_SUFFIX)
    gone = [p for p in folder.glob(f"{prefix}-*.tar{TMP_SUFFIX}") if pattern.match(p.name)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


# ------------------------------------------------------------------------------------------------- writer


class SplitShardWriter:
    """Writes one split's samples into complete shards of `samples_per_shard` (the last may be smaller).

    Built on webdataset's ShardWriter writing to `{shard}.tmp`; when a shard is full (or at `close`), it is
    renamed to its final name, its stats are written and `on_sealed(stats)` is called.
    """

    def __init__(
        self,
        folder: Path,
        split: str,
        part: Part,
        samples_per_shard: int,
        info: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
        on_sealed: Callable[[ShardStats], None],
    ) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples per shard must be positive, got {samples_per_shard}")
        self.folder = folder
        self.split = split
        self.part = part
        self.prefix = shard_prefix(split, part)
        self.samples_per_shard = samples_per_shard
        self.info = info
        self.on_sealed = on_sealed
        self.keys: list[str] = []
        self.failed: dict[str, str] = {}
        self._writer = None

    def write(self, sample: LatentSample) -> None:
        import webdataset as wds

        record = sample_to_wds(sample)
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = wds.ShardWriter(
                str(self.folder / f"{self.prefix}-%05d.tar{TMP_SUFFIX}"),
                maxcount=self.samples_per_shard,
                maxsize=float("inf"),
                post=self._seal,
                start_shard=next_sequence(self.folder, self.prefix),
                verbose=0,
                encoder=False,
                compress=False,
            )
        # ShardWriter seals the previous shard (post) before it writes the first sample of the next one
        self._writer.write(record)
        self.keys.append(sample.key)

    def fail(self, key: str, status: str) -> None:
        """Note a failed key in the stats of the shard being written."""
        self.failed[key] = status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _seal(self, tmp_name: str) -> None:
        tmp = Path(tmp_name)
        if not self.keys:
            tmp.unlink(missing_ok=True)
            return
        final = tmp.with_name(tmp.name[: -len(TMP_SUFFIX)])
        tmp.replace(final)
        codecs, shapes = self.info()
        stats = ShardStats(
            file=final.name,
            split=self.split,
            count=len(self.keys),
            keys=self.keys,
            failed=self.failed,
            codecs=codecs,
            shapes=shapes,
            writer=f"{self.part.index}/{self.part.count}",
            created=time.time(),
            size=final.stat().st_size,
        )
        stats.save(self.folder)
        self.keys, self.failed = [], {}
        self.on_sealed(stats)
