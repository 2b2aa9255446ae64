"""Manifest reading: VGGSound's own CSV, the toolkit's headed CSV, folders, and every bad row reported."""

from pathlib import Path

import pytest

from uniform_cli.prep.manifest import ManifestError, default_root, folder_items, read_items, read_manifest

SHIPPED = Path(__file__).resolve().parents[2] / "manifests" / "vggsound.csv"


def test_shipped_vggsound_excerpt_reads_with_quoted_labels_and_dash_ids():
    items = read_manifest(SHIPPED)
    assert len(items) == 108
    first = items[0]
    assert first.key == "---g-f_I2yQ_000001" and first.start == 1.0 and first.split == "test"
    assert first.url == "https://www.youtube.com/watch?v=---g-f_I2yQ"  # a '-' id goes to tools as a full URL
    by_key = {i.key: i for i in items}
    assert by_key["--9O4XZOge4_000030"].label == "female speech, woman speaking"
    assert by_key["--Lj4Y_96f0_000120"].label == "bee, wasp, etc. buzzing"
    assert all("." not in i.key and "/" not in i.key for i in items)
    assert default_root(SHIPPED) == Path("data/vggsound")


def test_toolkit_csv_resolves_local_paths_next_to_the_manifest(tmp_path):
    (tmp_path / "media").mkdir()
    path = tmp_path / "mine.csv"
    path.write_text(
        "id,url,start,end,label,split\n"
        "a,https://example.org/a.mp4,1.5,,dog,train\n"
        "b,media/b.mp4,0,10,\"cat, meowing\",test\n"
    )
    a, b = read_manifest(path)
    assert a.is_remote and a.start == 1.5 and a.end is None
    assert not b.is_remote and b.url == str((tmp_path / "media" / "b.mp4").resolve()) and b.label == "cat, meowing"


def test_every_problem_is_reported_together(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "id,url,start,end,label,split\n"
        "a.b,https://x/a,0,,,\n"
        "c,ftp://x/c,0,,,\n"
        "d,https://x/d,five,,,\n"
        "e,https://x/e,3,2,,\n"
        "f,https://x/f,0,,,\n"
        "f,https://x/g,0,,,\n"
        "g,data:video/mp4;base64;AAAA,0,,,\n"
        "h,javascript:alert(1),0,,,\n"
    )
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    text = str(e.value)
    assert "7 problem(s)" in text
    for part in ("'a.b'", "ftp://", "'five'", "bad time range", "duplicate key 'f'", "'data:video", "'javascript:"):
        assert part in text
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,url,label\n")
    with pytest.raises(ManifestError, match="lacks column"):
        read_manifest(wrong)
    vgg = tmp_path / "vgg.csv"
    vgg.write_text("not_an_id,1,dog,train\nabcdefghijk,x,dog,train\nabcdefghijk,1,dog\n")
    with pytest.raises(ManifestError, match="3 problem"):
        read_manifest(vgg)


def test_folder_items_take_every_file_with_safe_keys(tmp_path):
    for name in ("clip one.mp4", "b.MKV", "readme.txt", ".hidden"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    items = read_items(tmp_path)
    assert [i.key for i in items] == ["b", "clip_one", "readme"] and all(i.start == 0 for i in items)
    (tmp_path / "clip.one.mp4").write_bytes(b"x")
    with pytest.raises(ManifestError, match="same key"):
        folder_items(tmp_path)
