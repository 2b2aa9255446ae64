"""The training data: batches of latents (and text) read back from `uniform encode` shards with webdataset.

    info = shard_info(cfg.data.shards)                # shapes and counts, before any work (shard_info.py)
    loader = make_loader(cfg.data.shards, batch_size=8, seed=cfg.train.seed, rank=r, world_size=w)
    for step, batch in enumerate(loader.from_step(resume_step), start=resume_step):
        batch.latents.video   # B 4 20 32 32 float32
        batch.text            # B L D float32, padded to the longest caption in the batch (None without
        batch.text_mask       # B L bool        text embeddings in the shards: use batch.captions then)

Order. With `resampled=True` (training) each rank reads an endless stream of shards drawn with replacement
(webdataset's `ResampledShards`), and an epoch is `batches_per_epoch` batches per rank (webdataset's
`with_epoch`). Every random choice (which shards, the shuffle buffer) is seeded by (seed, epoch, rank,
stream), where the DataLoader's worker w serves the stream that owns the epoch's batches i = w (mod W). The
batches of an epoch are therefore a pure function of (seed, epoch, rank, num_workers).

Resume. `loader.epoch(e, skip=k)` yields exactly the batches k, k+1, ... of epoch e, the same ones an
uninterrupted run yields: each stream skips its own batches below k inside its worker (they are read but
not sent), and the workers are rotated so that the DataLoader's round-robin starts at the stream that owns
batch k. `loader.from_step(s)` does this for global step s (epoch s // batches_per_epoch, skip the rest)
and goes on through the following epochs forever. Changing num_workers, batch size or world size changes
the order.

With `resampled=False` (evaluation, inspection) each epoch reads every shard of the split once, shuffled by
(seed, epoch) and split across ranks and then workers; every sample comes once, the last batch of each
worker may be short.

A sample that cannot be read (a broken tar member, a bad `.npy`, a latent of the wrong shape) is skipped
and counted; more than `max_bad_samples` in one worker's epoch is an error (`ShardDataError`).
"""

from __future__ import annotations

import functools
import itertools
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset

from uniform_cli.latents.shard_info import ShardDataError, ShardInfo, shard_info
from uniform_cli.latents.shards import npy_array
from uniform_cli.types import AV

# ------------------------------------------------------------------------------------------------ batches


@dataclass
class LatentBatch:
    """A training batch."""

    latents: AV
    """video `B C F H W`, audio `B C T M`, float32."""
    captions: list[str]
    keys: list[str]
    text: torch.Tensor | None = None
    """`B L D_text` float32, zero where padded; None when the shards hold no text embeddings."""
    text_mask: torch.Tensor | None = None
    """`B L` bool, True at valid tokens."""

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "LatentBatch":
        """Tensors on `device` (floats in `dtype` if given)."""
        move = (lambda x: x.to(device, dtype)) if dtype is not None else (lambda x: x.to(device))
        return LatentBatch(
            latents=self.latents.map(move),
            captions=self.captions,
            keys=self.keys,
            text=None if self.text is None else move(self.text),
            text_mask=None if self.text_mask is None else self.text_mask.to(device),
        )


def collate(samples: list[dict[str, Any]]) -> LatentBatch:
    """Decoded samples -> a batch; text embeddings padded to the longest in the batch (at least 1 token)."""
    video = torch.stack([s["video"] for s in samples])  # B C F H W
    audio = torch.stack([s["audio"] for s in samples])  # B C T M
    text = mask = None
    if samples[0]["text"] is not None:
        longest = max(1, max(s["text"].shape[0] for s in samples))
        dim = samples[0]["text"].shape[1]
        text = torch.zeros(len(samples), longest, dim)  # B L D
        mask = torch.zeros(len(samples), longest, dtype=torch.bool)  # B L
        for i, s in enumerate(samples):
            n = s["text"].shape[0]
            text[i, :n] = s["text"]
            mask[i, :n] = True
    return LatentBatch(
        latents=AV(video=video, audio=audio),
        captions=[s["caption"] for s in samples],
        keys=[s["key"] for s in samples],
        text=text,
        text_mask=mask,
    )


def stream_seed(*parts: int) -> int:
    """One 64-bit seed from several integers (seed, epoch, rank, stream, purpose)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


def share(total: int, stream: int, streams: int) -> int:
    """How many of batches 0..total-1 belong to `stream` when batch i belongs to stream i % streams."""
    return len(range(stream, total, streams))


def open_shards(sources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset's shard opener for local files only: each `url` (a path `shard_info` checked) is opened with
    `open`, never with webdataset's `gopen`, which would run `pipe:` URLs through the shell."""
    for source in sources:
        with open(source["url"], "rb") as stream:
            yield {**source, "stream": stream}


class _BadSamples:
    """webdataset exception handler: count a bad sample, warn, and fail past the cap."""

    def __init__(self, cap: int, where: str) -> None:
        self.cap = cap
        self.where = where
        self.count = 0

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        if self.count > self.cap:
            raise ShardDataError(
                f"{self.count} unreadable samples in one epoch of {self.where} (cap {self.cap}); last: {exn!r}. "
                "Check the shards (re-encode the broken ones) or raise max_bad_samples"
            ) from exn
        warnings.warn(f"skipping an unreadable sample ({self.count} so far, {self.where}): {exn!r}", stacklevel=2)
        return True


# ------------------------------------------------------------------------------------------------ dataset


class LatentDataset(IterableDataset):
    """Batches of one split of some shard folders for one rank; see the module docstring for the order.

    Set `epoch` and `skip` before iterating (LatentLoader does); workers inherit them when they start.
    """

    def __init__(
        self,
        info: ShardInfo,
        batch_size: int,
        *,
        split: str = "train",
        shuffle_buffer: int = 256,
        seed: int = 0,
        resampled: bool = True,
        rank: int = 0,
        world_size: int = 1,
        batches_per_epoch: int | None = None,
        max_bad_samples: int = 100,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.info = info
        self.urls = info.urls(split)
        self.split = split
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.resampled = resampled
        self.rank = rank
        self.world_size = world_size
        self.max_bad_samples = max_bad_samples
        if batches_per_epoch is None:
            batches_per_epoch = max(1, info.num_samples[split] // (batch_size * world_size))
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be positive, got {batches_per_epoch}")
        self.batches_per_epoch = batches_per_epoch
        """Batches per rank per epoch (resampled mode)."""
        if not resampled and len(self.urls) < world_size:
            raise ShardDataError(
                f"{len(self.urls)} shard(s) of split {split!r} cannot be split across {world_size} ranks without "
                "resampling; use resampled=True or write smaller shards"
            )
        self.epoch = 0
        self.skip = 0

    def _decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        key = sample["__key__"]
        missing = [k for k in ("video.npy", "audio.npy", "txt") if k not in sample]
        if self.info.text_dim is not None and "text.npy" not in sample:
            missing.append("text.npy")
        if missing:
            raise ShardDataError(f"sample {key} in {sample.get('__url__')} lacks {missing}")
        video = npy_array(sample["video.npy"])
        audio = npy_array(sample["audio.npy"])
        if video.dtype != np.float16 or audio.dtype != np.float16:
            raise ShardDataError(f"sample {key}: latents of dtype {video.dtype} / {audio.dtype}; shards hold float16")
        if video.shape != self.info.video_shape or audio.shape != self.info.audio_shape:
            raise ShardDataError(
                f"sample {key}: latents {video.shape} / {audio.shape}, index says {self.info.video_shape} / {self.info.audio_shape}"
            )
        text = None
        if self.info.text_dim is not None:
            emb = npy_array(sample["text.npy"])
            if emb.dtype != np.float16 or emb.ndim != 2 or emb.shape[1] != self.info.text_dim:
                raise ShardDataError(
                    f"sample {key}: text embedding {emb.dtype} {emb.shape}, expected float16 L x {self.info.text_dim}"
                )
            text = torch.from_numpy(emb.astype(np.float32))
        return {
            "key": key,
            "video": torch.from_numpy(video.astype(np.float32)),
            "audio": torch.from_numpy(audio.astype(np.float32)),
            "text": text,
            "caption": sample["txt"].decode("utf-8"),
        }

    def __iter__(self) -> Iterator[LatentBatch]:
        import webdataset as wds
        from webdataset.tariterators import group_by_keys, tar_file_expander

        worker_info = torch.utils.data.get_worker_info()
        worker, workers = (worker_info.id, worker_info.num_workers) if worker_info else (0, 1)
        # the stream this worker serves: rotated so that the DataLoader's first worker owns batch `skip`
        stream = (worker + self.skip) % workers
        where = f"rank {self.rank} stream {stream}"
        bad = _BadSamples(self.max_bad_samples, where)
        if self.resampled:
            source = wds.ResampledShards(
                self.urls,
                seed=stream_seed(self.seed, self.epoch, self.rank, stream, 0),
                worker_seed=lambda: 0,
                deterministic=True,
            )
        else:
            urls = list(self.urls)
            random.Random(stream_seed(self.seed, self.epoch, 0)).shuffle(urls)  # the same order on every rank
            source = wds.SimpleShardList(urls[self.rank :: self.world_size][stream::workers])
        stages: list[Any] = [
            source,
            open_shards,
            functools.partial(tar_file_expander, handler=bad),
            functools.partial(group_by_keys, handler=bad),
        ]
        if self.shuffle_buffer > 1:
            rng = random.Random(stream_seed(self.seed, self.epoch, self.rank, stream, 1))
            stages.append(wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng))
        stages += [
            wds.map(self._decode, handler=bad),
            wds.batched(self.batch_size, collation_fn=collate, partial=not self.resampled),
        ]
        pipeline = wds.DataPipeline(*stages)
        if not self.resampled:
            yield from pipeline
            return
        mine = share(self.batches_per_epoch, stream, workers)
        if mine == 0:  # more workers than batches; with_epoch(0) would mean "endless"
            return
        pipeline = pipeline.with_epoch(nbatches=mine)
        yield from itertools.islice(pipeline, share(self.skip, stream, workers), None)


class LatentLoader:
    """A torch DataLoader over a LatentDataset, one epoch at a time (see the module docstring)."""

    def __init__(self, dataset: LatentDataset, num_workers: int = 2) -> None:
        self.dataset = dataset
        self.num_workers = num_workers

    @property
    def batches_per_epoch(self) -> int:
        return self.dataset.batches_per_epoch

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[LatentBatch]:
        """Batches `skip`, `skip + 1`, ... of epoch `epoch` for this rank."""
        from torch.utils.data import DataLoader

        if self.dataset.resampled and not 0 <= skip <= self.batches_per_epoch:
            raise ValueError(f"skip must lie in 0..{self.batches_per_epoch}, got {skip}")
        self.dataset.epoch = epoch
        self.dataset.skip = skip if self.dataset.resampled else 0
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers)
        batches = iter(loader)
        if not self.dataset.resampled:
            batches = itertools.islice(batches, skip, None)
        yield from batches

    def from_step(self, step: int = 0) -> Iterator[LatentBatch]:
        """Endless batches starting at global step `step` (resampled mode), identical to an unbroken run."""
        if not self.dataset.resampled:
            raise ValueError("from_step needs resampled=True; iterate loader.epoch(e) for single passes")
        epoch, skip = divmod(step, self.batches_per_epoch)
        for e in itertools.count(epoch):
            yield from self.epoch(e, skip if e == epoch else 0)

    def __iter__(self) -> Iterator[LatentBatch]:
        return self.from_step(0) if self.dataset.resampled else self.epoch(0)


def make_loader(
    sources: Sequence[str | Path] | str | Path,
    batch_size: int,
    *,
    split: str = "train",
    shuffle_buffer: int = 256,
    num_workers: int = 2,
    seed: int = 0,
    resampled: bool = True,
    rank: int = 0,
    world_size: int = 1,
    batches_per_epoch: int | None = None,
    max_bad_samples: int = 100,
) -> LatentLoader:
    """A loader of `split` from shard folders (or index.json paths, or data roots) for one rank.

    `batches_per_epoch` (per rank) defaults to the split's samples // (batch_size * world_size).
    """
    info = shard_info(sources)
    dataset = LatentDataset(
        info,
        batch_size,
        split=split,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        resampled=resampled,
        rank=rank,
        world_size=world_size,
        batches_per_epoch=batches_per_epoch,
        max_bad_samples=max_bad_samples,
    )
    return LatentLoader(dataset, num_workers=num_workers)
