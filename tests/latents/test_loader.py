"""The training loader: shapes up front, padded text, a reproducible order that resumes exactly, bad samples."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.latents.test_shards import AUDIO, VIDEO, write_random_shards
from uniform_cli.latents.loader import make_loader
from uniform_cli.latents.shard_info import ShardDataError, shard_info
from uniform_cli.latents.shards import ShardFormatError

KEYS = [f"k{i:02d}" for i in range(24)]


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "data" / "shards"
    write_random_shards(folder, KEYS, per_shard=4, text_dim=6)
    return folder


def keys_of(batches):
    return [b.keys for b in batches]


def test_shard_info_reads_shapes_and_counts(shards, tmp_path):
    info = shard_info([shards])
    assert info.video_shape == VIDEO and info.audio_shape == AUDIO and info.text_dim == 6
    assert info.num_samples == {"train": 24} and len(info.urls("train")) == 6
    assert shard_info(shards / "index.json").num_samples == {"train": 24}
    assert shard_info(shards.parent).folders == (shards,)  # a data root finds its shards/
    info.check_shapes(VIDEO, AUDIO)
    with pytest.raises(ShardDataError, match=r"\[4, 10, 32, 32\]"):
        info.check_shapes((4, 10, 32, 32), AUDIO)
    with pytest.raises(ShardDataError, match="split 'test'"):
        info.urls("test")


def test_missing_or_empty_folders_are_named(shards, tmp_path):
    with pytest.raises(ShardDataError, match="nowhere/a.*nowhere/b"):
        shard_info([shards, tmp_path / "nowhere" / "a", tmp_path / "nowhere" / "b"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardDataError, match="without complete shards"):
        shard_info([tmp_path / "empty"])


def test_folders_with_other_latents_are_refused(shards, tmp_path):
    other = tmp_path / "other"
    write_random_shards(other, ["x"], per_shard=1, text_dim=None)
    with pytest.raises(ShardDataError, match="holds latents"):
        shard_info([shards, other])


def test_one_pass_gives_every_sample_once_with_padded_text(shards):
    loader = make_loader([shards], batch_size=5, resampled=False, num_workers=0, seed=3)
    batches = list(loader.epoch(0))
    seen = [k for b in batches for k in b.keys]
    assert sorted(seen) == KEYS
    b = batches[0]
    assert b.latents.video.shape == (5, *VIDEO) and b.latents.video.dtype == torch.float32
    assert b.latents.audio.shape == (5, *AUDIO)
    lengths = b.text_mask.sum(1)
    assert b.text.shape == (5, max(1, int(lengths.max())), 6)
    for i in range(5):  # valid tokens first, zeros after
        n = int(lengths[i])
        assert b.text_mask[i, :n].all() and not b.text_mask[i, n:].any()
        assert (b.text[i, n:] == 0).all()
    assert b.captions[0] == f"caption of {b.keys[0]}"


def test_ranks_split_one_pass_between_them(shards):
    per_rank = [
        [k for b in make_loader([shards], 4, resampled=False, num_workers=0, rank=r, world_size=2).epoch(1) for k in b.keys]
        for r in range(2)
    ]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == KEYS


def test_shards_without_embeddings_give_captions(tmp_path):
    write_random_shards(tmp_path, KEYS[:6], per_shard=3, text_dim=None)
    (batch,) = list(make_loader([tmp_path], 6, resampled=False, num_workers=0).epoch(0))
    assert batch.text is None and batch.text_mask is None
    assert sorted(batch.captions) == sorted(f"caption of {k}" for k in KEYS[:6])


def test_resampled_order_is_reproducible_and_resumes_exactly(shards):
    def loader(seed, rank=0):
        return make_loader([shards], 3, seed=seed, num_workers=2, shuffle_buffer=8, rank=rank, world_size=2,
                           batches_per_epoch=5)

    full = keys_of(loader(7).epoch(0))
    assert len(full) == 5 and all(len(k) == 3 for k in full)
    assert keys_of(loader(7).epoch(0)) == full
    assert keys_of(loader(8).epoch(0)) != full
    assert keys_of(loader(7, rank=1).epoch(0)) != full
    assert keys_of(loader(7).epoch(1)) != full
    for skip in (1, 2, 3):
        assert keys_of(loader(7).epoch(0, skip=skip)) == full[skip:]
    # a run resumed at global step 3 continues exactly as the unbroken one, across the epoch boundary
    unbroken = [b.keys for _, b in zip(range(9), loader(7).from_step(0))]
    resumed = [b.keys for _, b in zip(range(6), loader(7).from_step(3))]
    assert resumed == unbroken[3:]


def _corrupt_one_sample(shard_path, key, data=b"not an npy file"):
    """Rewrite a shard with one sample's video.npy replaced by `data`, as if it had been sealed so (its stats
    get the new size: a shard cut after sealing is refused as a whole, see test_encode)."""
    with tarfile.open(shard_path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(shard_path, "w") as tf:
        for m, content in members:
            if m.name == f"{key}.video.npy":
                content = data
            m.size = len(content)
            tf.addfile(m, io.BytesIO(content))
    stats = shard_path.with_name(shard_path.name + ".stats.json")
    stats.write_text(json.dumps({**json.loads(stats.read_text()), "size": shard_path.stat().st_size}))


def test_a_sample_of_the_wrong_dtype_is_refused_like_a_wrong_shape(shards):
    from uniform_cli.latents.shards import npy_bytes

    _corrupt_one_sample(shards / "train-00000.tar", "k01", npy_bytes(np.zeros(VIDEO, np.float64)))
    with pytest.warns(UserWarning, match="float64"):
        batches = list(make_loader([shards], 4, resampled=False, num_workers=0, max_bad_samples=1).epoch(0))
    assert sorted(k for b in batches for k in b.keys) == [k for k in KEYS if k != "k01"]


def test_a_bad_sample_is_skipped_and_counted_up_to_the_cap(shards):
    _corrupt_one_sample(shards / "train-00000.tar", "k01")
    with pytest.warns(UserWarning, match="skipping an unreadable sample"):
        batches = list(make_loader([shards], 4, resampled=False, num_workers=0, max_bad_samples=1).epoch(0))
    seen = sorted(k for b in batches for k in b.keys)
    assert seen == [k for k in KEYS if k != "k01"]
    with pytest.raises(ShardDataError, match="unreadable samples"):
        list(make_loader([shards], 4, resampled=False, num_workers=0, max_bad_samples=0).epoch(0))


# ---------------------------------------------------------------------------------------------- hostile


def _plant_stats(shards, name: str, file: str) -> None:
    """A stats file naming `file`, beside the real ones, with the real shards' shapes and codecs."""
    real = json.loads(next(shards.glob("*.stats.json")).read_text())
    (shards / name).write_text(json.dumps({**real, "file": file}))


def test_names_from_stats_files_never_reach_a_shell(shards, tmp_path, monkeypatch):
    marker = tmp_path / "code_ran"
    command = f"pipe:touch {marker}; cat {shards / 'train-00000.tar'}"
    _plant_stats(shards, "train-00009.tar.stats.json", command)
    (shards / command).parent.mkdir(parents=True, exist_ok=True)  # so that `folder / name` "exists"
    (shards / command).write_bytes((shards / "train-00000.tar").read_bytes())
    monkeypatch.chdir(shards)  # data.shards = "." makes `Path(".") / name` the bare name
    with pytest.raises(ShardFormatError, match="train-00009.tar.stats.json"):
        list(make_loader(["."], 4, resampled=False, num_workers=0).epoch(0))
    assert not marker.exists()


def test_a_stats_file_may_only_name_its_own_shard(shards):
    _plant_stats(shards, "train-00009.tar.stats.json", "../elsewhere-00000.tar")
    with pytest.raises(ShardFormatError, match="its own shard"):
        shard_info([shards])


def test_an_index_naming_other_files_is_not_trusted(shards, tmp_path):
    index = json.loads((shards / "index.json").read_text())
    index["shards"][0]["file"] = f"pipe:touch {tmp_path / 'code_ran'}"
    (shards / "index.json").write_text(json.dumps(index))
    info = shard_info([shards])  # the index disagrees with the stats on disk: rebuilt from them
    assert all(Path(u).parent == shards.resolve() for u in info.urls("train"))
    assert len(list(make_loader([shards], 4, resampled=False, num_workers=0).epoch(0))) == 6
    assert not (tmp_path / "code_ran").exists()


def test_a_shard_linked_out_of_its_folder_is_refused(shards, tmp_path):
    outside = tmp_path / "outside.tar"
    (shards / "train-00000.tar").rename(outside)
    (shards / "train-00000.tar").symlink_to(outside)
    with pytest.raises(ShardFormatError, match="not a regular file inside"):
        shard_info([shards])
