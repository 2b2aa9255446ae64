"""`uniform encode` with the real (tiny, random) codecs: paper shapes, recorded failures, kill and resume, --part."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.codecs import make_audioldm_folder, make_opensora_vae_folder, make_text_encoder_folder
from uniform_cli.config import CodecConfig, DataConfig
from uniform_cli.latents.encode import EncodeOptions, encode_dataset
from uniform_cli.latents.loader import make_loader
from uniform_cli.latents.shard_info import ShardDataError, shard_info
from uniform_cli.latents.shards import ShardFormatError, read_stats
from uniform_cli.media.io import write_mp4, write_wav
from uniform_cli.prep.manifest import read_manifest
from uniform_cli.stage import ItemResult, Part, StatusTable, read_status

REPO = Path(__file__).resolve().parents[2]
TEXT_DIM = 16


@pytest.fixture(scope="module")
def codecs(tmp_path_factory) -> CodecConfig:
    folder = tmp_path_factory.mktemp("codecs")
    return CodecConfig(
        video_vae=str(make_opensora_vae_folder(folder / "opensora")),
        audio_vae=str(make_audioldm_folder(folder / "audioldm")),
        text_encoder=str(make_text_encoder_folder(folder / "t5", d_model=TEXT_DIM)),
    )


def caption(i: int) -> str:
    return ["a dog barks", "rain falls on the roof at night"][i % 2] + f" {i}"


def make_dataset(
    root: Path,
    keys: list[str],
    data: DataConfig,
    corrupt: tuple[str, ...] = (),
    uncaptioned: tuple[str, ...] = (),
    splits: dict[str, str] | None = None,
    too_small: tuple[str, ...] = (),
) -> Path:
    """What `clip` and `caption` leave behind: clips/{key}.mp4|.wav, clips.csv, captions.csv; and a manifest."""
    rng = np.random.default_rng(0)
    clips = StatusTable(root / "clips.csv", ["video", "audio", "label", "split"])
    captions = StatusTable(root / "captions.csv", ["text", "captioner", "model"])
    manifest = ["id,url,start,end,label,split"]
    t = np.arange(data.samples) / data.sample_rate
    for i, key in enumerate(keys):
        video, audio = root / "clips" / f"{key}.mp4", root / "clips" / f"{key}.wav"
        video.parent.mkdir(parents=True, exist_ok=True)
        if key in corrupt:
            video.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
        else:
            side = data.size // 16 if key in too_small else data.size // 8
            base = rng.integers(0, 255, (1, side, side, 3)).astype(np.uint8)
            frames = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2).repeat(data.frames, axis=0)
            frames = (frames + np.arange(data.frames)[:, None, None, None] * 3).astype(np.uint8)
            write_mp4(video, frames, data.fps)
        write_wav(audio, 0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t), data.sample_rate)
        split = (splits or {}).get(key, "train")
        clips.record(ItemResult(key, "ok", fields={"video": f"clips/{key}.mp4", "audio": f"clips/{key}.wav",
                                                   "label": f"label {i}", "split": split}))
        if key not in uncaptioned:
            captions.record(ItemResult(key, "ok", fields={"text": caption(i), "captioner": "labels", "model": "-"}))
        manifest.append(f"{key},/nowhere/{key}.mp4,0,,label {i},{split}")
    clips.close()
    captions.close()
    path = root / "manifest.csv"
    path.write_text("\n".join(manifest) + "\n")
    return path


def all_shard_keys(folder: Path) -> list[str]:
    """Keys of every complete shard, read with plain webdataset (duplicates kept)."""
    import webdataset as wds

    urls = sorted(str(p) for p in folder.glob("*.tar"))
    return [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]


def test_encode_gives_the_paper_shapes_and_records_failures(tmp_path, codecs):
    """Real clip size (68 x 256 x 256, 64,000 samples); 13-18 s on 2 shared CPU cores."""
    data = DataConfig()
    root = tmp_path / "data"
    manifest = make_dataset(root, ["good_a", "good_b", "broken", "silent_c"], data,
                            corrupt=("broken",), uncaptioned=("silent_c",))
    summary = encode_dataset(read_manifest(manifest), root, codecs, data,
                             EncodeOptions(batch_size=2, samples_per_shard=4, workers=2))

    assert summary.counts == {"ok": 2, "corrupt": 1, "no_caption": 1}
    assert summary.table == root / "encode.csv" and summary.outputs == root / "shards" and not summary.left_out
    status = read_status(root, "encode")
    assert {k: r["status"] for k, r in status.items()} == {
        "good_a": "ok", "good_b": "ok", "broken": "corrupt", "silent_c": "no_caption"}
    assert "cannot decode" in status["broken"]["error"] and "allow-missing-captions" in status["silent_c"]["error"]
    assert status["good_a"]["shard"] == "train-00000.tar"

    info = shard_info([root / "shards"])
    assert info.video_shape == (4, 20, 32, 32) and info.audio_shape == (8, 100, 16)
    assert info.text_dim == TEXT_DIM and info.num_samples == {"train": 2}
    (stats,) = read_stats(root / "shards")
    assert stats.failed == {"broken": "corrupt", "silent_c": "no_caption"}

    (batch,) = list(make_loader([root / "shards"], 2, resampled=False, num_workers=0).epoch(0))
    assert sorted(batch.keys) == ["good_a", "good_b"]
    assert batch.latents.video.shape == (2, 4, 20, 32, 32) and batch.latents.audio.shape == (2, 8, 100, 16)
    assert batch.latents.video.isfinite().all() and batch.latents.video.std() > 0
    assert batch.text.shape[0] == 2 and batch.text.shape[2] == TEXT_DIM
    # only the valid tokens were stored: each caption keeps its own length, padded in the batch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(codecs.text_encoder)
    lengths = [len(tokenizer(c)["input_ids"]) for c in batch.captions]
    assert lengths[0] != lengths[1] and batch.text_mask.sum(1).tolist() == lengths
    assert sorted(batch.captions) == [caption(0), caption(1)]

    import webdataset as wds

    sample = next(iter(wds.WebDataset(str(root / "shards" / "train-00000.tar"), shardshuffle=False).decode()))
    meta = sample["json"]
    assert meta["codecs"]["video"]["id"] == str(Path(codecs.video_vae).resolve())
    assert meta["codecs"]["audio"]["scaling_factor"] == pytest.approx(0.93929)
    assert meta["codecs"]["versions"]["uniform"]
    assert meta["source"]["frames"] == 68 and meta["source"]["samples"] == 64000
    assert meta["label"] == "label 0" and meta["split"] == "train"


TINY_DATA = DataConfig(size=64, seconds=1.0)  # 17 frames of 64 x 64, 16,000 samples: the kill test needs speed


def tiny_recipe(path: Path, codecs: CodecConfig) -> Path:
    path.write_text(
        "[data]\nsize = 64\nseconds = 1.0\n\n[codec]\n"
        f'video_vae = "{codecs.video_vae}"\naudio_vae = "{codecs.audio_vae}"\ntext_encoder = "{codecs.text_encoder}"\n'
    )
    return path


def test_killed_mid_shard_then_rerun_gives_every_key_once(tmp_path, codecs):
    """About 18 s: one CLI run in a subprocess, killed with SIGKILL while its second shard is open."""
    keys = [f"clip_{i}" for i in range(7)]
    root = tmp_path / "data"
    manifest = make_dataset(root, keys, TINY_DATA, uncaptioned=("clip_6",))
    recipe = tiny_recipe(tmp_path / "tiny.toml", codecs)
    shards = root / "shards"
    cmd = [sys.executable, "-m", "uniform_cli.cli.main", "encode", str(manifest), "--root", str(root),
           "--recipe", str(recipe), "--samples-per-shard", "2", "--batch-size", "1", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while not ((shards / "train-00000.tar").exists() and list(shards.glob("*.tar.tmp"))):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "encode never reached its second shard"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert list(shards.glob("*.tar.tmp")), "the kill should leave a partial shard behind"
    first = set(all_shard_keys(shards))
    assert len(first) in (2, 4) and len(first) < 6

    summary = encode_dataset(read_manifest(manifest), root, codecs, TINY_DATA,
                             EncodeOptions(samples_per_shard=2, batch_size=3, allow_missing_captions=True))
    assert summary.skipped == len(first)
    assert not list(shards.glob("*.tmp"))
    found = all_shard_keys(shards)
    assert sorted(found) == keys  # every key exactly once, clip_6 now with empty text
    assert {r["status"] for r in read_status(root, "encode").values()} == {"ok"}
    info = shard_info([shards])
    assert info.video_shape == (4, 5, 8, 8) and info.audio_shape == (8, 25, 16)
    assert info.num_samples == {"train": 7}
    captions = {k: c for b in make_loader([shards], 7, resampled=False, num_workers=0).epoch(0)
                for k, c in zip(b.keys, b.captions)}
    assert captions["clip_6"] == "" and captions["clip_0"] == caption(0)

    shard_files = sorted(shards.iterdir())
    again = encode_dataset(read_manifest(manifest), root, codecs, TINY_DATA, EncodeOptions(samples_per_shard=2))
    assert again.skipped == 7 and not again.counts and sorted(shards.iterdir()) == shard_files


def test_processes_of_parts_split_the_work_and_the_index_merges(tmp_path, codecs):
    keys = [f"k{i}" for i in range(6)]
    root = tmp_path / "data"
    manifest = make_dataset(root, [*keys, "small"], TINY_DATA, splits={"k0": "test", "k1": "test"}, too_small=("small",))
    items = read_manifest(manifest)
    for i in range(2):
        encode_dataset(items, root, codecs, TINY_DATA,
                       EncodeOptions(part=Part(i, 2), samples_per_shard=8, text_embeddings=False))
    names = sorted(p.name for p in (root / "shards").glob("*.tar"))
    assert all(n.split("-")[1] in ("00", "01") for n in names)
    assert sorted(all_shard_keys(root / "shards")) == keys
    info = shard_info([root])
    assert info.num_samples == {"train": 4, "test": 2} and info.text_dim is None
    status = read_status(root, "encode")  # encode.part-0-of-2.csv + encode.part-1-of-2.csv
    assert sorted(status) == sorted([*keys, "small"])
    assert status["small"]["status"] == "bad_clip" and "17x32x32x3, expected 17x64x64x3" in status["small"]["error"]


def test_a_shard_cut_after_sealing_stops_train_and_is_encoded_again(tmp_path, codecs):
    root = tmp_path / "data"
    keys = [f"k{i}" for i in range(4)]
    manifest = make_dataset(root, keys, TINY_DATA)
    options = dict(batch_size=2, samples_per_shard=2, text_embeddings=False)
    encode_dataset(read_manifest(manifest), root, codecs, TINY_DATA, EncodeOptions(**options))
    shards = root / "shards"
    cut = shards / "train-00001.tar"
    lost = set(next(s for s in read_stats(shards) if s.file == cut.name).keys)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # its stats survive
    with pytest.raises(ShardDataError, match="train-00001.tar is .* bytes but was sealed at"):
        shard_info([shards])
    with pytest.warns(UserWarning, match="set aside as train-00001.tar.broken"):
        summary = encode_dataset(read_manifest(manifest), root, codecs, TINY_DATA, EncodeOptions(**options))
    assert summary.counts == {"ok": len(lost)} and (shards / "train-00001.tar.broken").is_file()
    assert sorted(all_shard_keys(shards)) == keys  # every key once, the set-aside copy never read


def test_garbage_stats_and_tars_are_clear_errors_naming_the_file(tmp_path, codecs):
    root = tmp_path / "data"
    manifest = make_dataset(root, ["a", "b"], TINY_DATA)
    options = EncodeOptions(batch_size=2, samples_per_shard=2, text_embeddings=False)
    encode_dataset(read_manifest(manifest), root, codecs, TINY_DATA, options)
    shards = root / "shards"
    (shards / "train-00005.tar").write_bytes(b"not a tar at all" * 100)  # no stats: recovery finds garbage
    with pytest.warns(UserWarning, match="train-00005.tar: unreadable and without stats"):
        encode_dataset(read_manifest(manifest), root, codecs, TINY_DATA, options)
    assert (shards / "train-00005.tar.broken").is_file() and not (shards / "train-00005.tar").exists()
    stats = shards / "train-00000.tar.stats.json"
    real = json.loads(stats.read_text())
    for spoiled, needle in (("{not json", "unreadable shard stats"), (dict(real, count=7), "count 7"),
                            (dict(real, split="../x"), "split"), (dict(real, shapes={"video": "big"}), "video latent")):
        stats.write_text(spoiled if isinstance(spoiled, str) else json.dumps(spoiled))
        with pytest.raises(ShardFormatError, match=needle) as err:
            shard_info([shards])
        assert "train-00000.tar.stats.json" in str(err.value)


def test_a_second_encode_of_the_same_part_on_one_root_is_refused(tmp_path, codecs):
    from uniform_cli.atomic import Busy, exclusive

    root = tmp_path / "data"
    manifest = make_dataset(root, ["a", "b"], TINY_DATA)
    (root / "shards").mkdir()
    (root / "shards" / "train-00000.tar.tmp").write_bytes(b"the first run's shard in progress")
    options = EncodeOptions(batch_size=2, samples_per_shard=2, text_embeddings=False)
    with exclusive(root / "shards" / ".encode.lock", "the first run"):  # as a first run holds it
        with pytest.raises(Busy, match="another `uniform encode` with --part 0/1"):
            encode_dataset(read_manifest(manifest), root, codecs, TINY_DATA, options)
        assert (root / "shards" / "train-00000.tar.tmp").is_file()  # nothing of the first run was touched
    other_part = EncodeOptions(batch_size=2, samples_per_shard=2, text_embeddings=False, part=Part(1, 2))
    with exclusive(root / "shards" / ".encode.lock", "the first run"):  # another --part is other work
        encode_dataset(read_manifest(manifest), root, codecs, TINY_DATA, other_part)
