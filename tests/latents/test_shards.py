"""The shard writer and the shards on disk: complete shards only, stats and index, readable by plain webdataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from uniform_cli.latents.shard_writer import LatentSample, SplitShardWriter, discard_partial, next_sequence
from uniform_cli.latents.shards import (
    INDEX_FILE,
    ShardFormatError,
    ShardStats,
    check_compatible,
    done_keys,
    read_index,
    read_stats,
    recover_stats,
    write_index,
)
from uniform_cli.stage import Part

VIDEO = (4, 20, 32, 32)
AUDIO = (8, 100, 16)
CODECS = {"video": {"id": "vae-a"}, "audio": {"id": "ldm-a"}, "text": None}


def make_sample(key: str, rng: np.random.Generator, text_dim: int | None = None, split: str = "train") -> LatentSample:
    text = rng.standard_normal((int(rng.integers(0, 7)), text_dim)).astype(np.float16) if text_dim else None
    return LatentSample(
        key=key,
        video=rng.standard_normal(VIDEO).astype(np.float16),
        audio=rng.standard_normal(AUDIO).astype(np.float16),
        caption=f"caption of {key}",
        meta={"key": key, "split": split, "codecs": CODECS, "shapes": {"video": list(VIDEO), "audio": list(AUDIO)}},
        text=text,
    )


def write_random_shards(
    folder: Path,
    keys: list[str],
    per_shard: int,
    text_dim: int | None = None,
    split: str = "train",
    part: Part = Part(),
    seed: int = 0,
) -> list[ShardStats]:
    """Write samples with random latents through the real writer; return the sealed shards' stats."""
    rng = np.random.default_rng(seed)
    sealed: list[ShardStats] = []
    shapes = {"video": list(VIDEO), "audio": list(AUDIO), "text_dim": text_dim}
    codecs = dict(CODECS, text={"id": "t5-tiny"} if text_dim else None)
    writer = SplitShardWriter(folder, split, part, per_shard, lambda: (codecs, shapes), sealed.append)
    for key in keys:
        writer.write(make_sample(key, rng, text_dim, split))
    writer.close()
    write_index(folder)
    return sealed


def test_shards_are_complete_and_readable_by_plain_webdataset(tmp_path):
    import webdataset as wds

    keys = [f"clip_{i:03d}" for i in range(7)]
    sealed = write_random_shards(tmp_path, keys, per_shard=3, text_dim=5)
    assert [s.file for s in sealed] == ["train-00000.tar", "train-00001.tar", "train-00002.tar"]
    assert [s.count for s in sealed] == [3, 3, 1]
    assert not list(tmp_path.glob("*.tmp"))

    urls = [str(tmp_path / s.file) for s in sealed]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == keys
    first = samples[0]
    assert first["video.npy"].shape == VIDEO and first["video.npy"].dtype == np.float16
    assert first["audio.npy"].shape == AUDIO and first["audio.npy"].dtype == np.float16
    assert first["text.npy"].ndim == 2 and first["text.npy"].shape[1] == 5
    assert first["txt"] == "caption of clip_000"
    assert first["json"]["key"] == "clip_000"

    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["num_samples"] == 7 and index["splits"] == {"train": 7}
    assert index["shapes"] == {"video": list(VIDEO), "audio": list(AUDIO), "text_dim": 5}
    assert [e["count"] for e in index["shards"]] == [3, 3, 1]
    assert done_keys(tmp_path) == set(keys)


def test_a_rerun_continues_after_the_last_complete_shard(tmp_path):
    write_random_shards(tmp_path, ["a", "b", "c"], per_shard=2)
    assert next_sequence(tmp_path, "train") == 2
    sealed = write_random_shards(tmp_path, ["d"], per_shard=2)
    assert sealed[0].file == "train-00002.tar"
    assert done_keys(tmp_path) == {"a", "b", "c", "d"}


def test_the_processes_of_parts_write_their_own_names(tmp_path):
    s0 = write_random_shards(tmp_path, ["a", "b"], per_shard=5, part=Part(0, 2))
    s1 = write_random_shards(tmp_path, ["c"], per_shard=5, part=Part(1, 2), split="test")
    assert s0[0].file == "train-00-00000.tar" and s1[0].file == "test-01-00000.tar"
    assert s0[0].writer == "0/2"
    index = read_index(tmp_path)
    assert index["splits"] == {"train": 2, "test": 1}
    # the names of a run of the whole work are not confused with part 0's
    assert next_sequence(tmp_path, "train") == 0 and next_sequence(tmp_path, "train-00") == 1


def test_partial_temp_shards_are_discarded_only_for_their_own_prefix(tmp_path):
    write_random_shards(tmp_path, ["a"], per_shard=5)
    mine = tmp_path / "train-00001.tar.tmp"
    other = tmp_path / "train-01-00000.tar.tmp"
    mine.write_bytes(b"half a tar")
    other.write_bytes(b"another process at work")
    assert discard_partial(tmp_path, "train") == [mine]
    assert not mine.exists() and other.exists()
    assert done_keys(tmp_path) == {"a"}


def test_a_complete_shard_without_stats_is_recovered(tmp_path):
    write_random_shards(tmp_path, ["a", "b", "c"], per_shard=2)
    (tmp_path / "train-00001.tar.stats.json").unlink()  # killed between the rename and the stats
    assert done_keys(tmp_path) == {"a", "b"}
    (recovered,) = recover_stats(tmp_path)
    assert recovered.file == "train-00001.tar" and recovered.keys == ["c"] and recovered.split == "train"
    assert recovered.shapes == {"video": list(VIDEO), "audio": list(AUDIO)}
    assert done_keys(tmp_path) == {"a", "b", "c"}


def test_a_stale_index_is_rebuilt_from_the_stats(tmp_path):
    write_random_shards(tmp_path, ["a", "b"], per_shard=1)
    stale = json.loads((tmp_path / INDEX_FILE).read_text())
    write_random_shards(tmp_path, ["c"], per_shard=1)
    (tmp_path / INDEX_FILE).write_text(json.dumps(stale))  # another process's older write landed last
    assert read_index(tmp_path)["num_samples"] == 3
    assert len(read_stats(tmp_path)) == 3


def test_latents_of_other_codecs_are_refused(tmp_path):
    write_random_shards(tmp_path, ["a"], per_shard=1)
    other = dict(CODECS, video={"id": "vae-b"})
    with pytest.raises(ShardFormatError, match="cannot be mixed"):
        check_compatible(tmp_path, other, None)
    with pytest.raises(ShardFormatError, match="latent shapes"):
        check_compatible(tmp_path, CODECS, {"video": [4, 10, 32, 32], "audio": list(AUDIO), "text_dim": None})
    check_compatible(tmp_path, CODECS, {"video": list(VIDEO), "audio": list(AUDIO), "text_dim": None})


def test_keys_with_dots_are_refused(tmp_path):
    writer = SplitShardWriter(tmp_path, "train", Part(), 2, lambda: ({}, {}), lambda s: None)
    with pytest.raises(ShardFormatError, match="contains '.'"):
        writer.write(make_sample("a.b", np.random.default_rng(0)))
