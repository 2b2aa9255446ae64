"""Safe writes: appends never follow a planted link and never join a line cut by a kill."""

import os

import pytest

from uniform_cli.atomic import UnsafePathError, complete_prefix, open_append, read_complete, write_text_atomic
from uniform_cli.generate.results import append_line
from uniform_cli.stage import ItemResult, StatusTable, read_status


def test_complete_prefix_ends_at_the_last_whole_line():
    assert complete_prefix(b"") == 0
    assert complete_prefix(b"a\nb") == 2
    assert complete_prefix(b'a\n"b\nc') == 5  # without CSV quoting a break is a break
    assert complete_prefix(b'a\n"b\nc', csv_quotes=True) == 2  # inside an open quoted field
    assert complete_prefix(b'a\n"b\nc"\n', csv_quotes=True) == 8
    assert complete_prefix(b'a,"say ""hi""\n"\n', csv_quotes=True) == 16


def test_reading_a_line_file_leaves_out_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c\xff')
    assert read_complete(path) == '{"id": "a"}\n{"id": "b"}\n'
    path.write_bytes(b'key,error\na,"two\nlines"\nb,"cut\n')
    assert read_complete(path, csv_quotes=True) == 'key,error\na,"two\nlines"\n'


@pytest.mark.parametrize("write", ["table", "results", "open_append"])
def test_appends_refuse_a_link_planted_at_their_path(tmp_path, write):
    target = tmp_path / "outside" / "precious.txt"
    target.parent.mkdir()
    target.write_text("line one\nline two without a break")
    root = tmp_path / "root"
    root.mkdir()
    link = root / ("clips.csv" if write == "table" else "results.jsonl")
    link.symlink_to(target)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        if write == "table":
            StatusTable(link, ["path"]).record(ItemResult("a", "ok"))
        elif write == "results":
            append_line(link, '{"id": "a"}')
        else:
            open_append(link)
    assert target.read_text() == "line one\nline two without a break"
    assert os.path.islink(link)


def test_appends_refuse_a_directory_or_fifo(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    os.mkfifo(tmp_path / "fifo.csv")
    for name in ("dir.csv", "fifo.csv"):
        with pytest.raises(UnsafePathError, match="not a regular file"):
            open_append(tmp_path / name)


def test_a_row_cut_inside_a_quoted_line_break_swallows_nothing(tmp_path):
    path = tmp_path / "captions.csv"
    table = StatusTable(path, ["caption"])
    table.record(ItemResult("a", "ok", fields={"caption": "two\nlines"}))
    table.close()
    with open(path, "a", newline="") as f:
        f.write('b,ok,,"cut\nhere')  # killed inside a quoted field that holds a line break
    for key in ("c", "d"):
        again = StatusTable(path, ["caption"])
        again.record(ItemResult(key, "ok", fields={"caption": key}))
        again.close()
    rows = read_status(tmp_path, "captions")
    assert sorted(rows) == ["a", "c", "d"] and rows["a"]["caption"] == "two\nlines"


def test_atomic_writes_replace_a_planted_link_not_its_target(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    (tmp_path / "index.json").symlink_to(target)
    write_text_atomic(tmp_path / "index.json", "{}")
    assert target.read_text() == "keep"
    assert not os.path.islink(tmp_path / "index.json") and (tmp_path / "index.json").read_text() == "{}"


def test_a_killed_runs_temp_files_are_swept_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from uniform_cli.atomic import sweep_temp, temp_beside

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended, as a killed run's has
    live = temp_beside(tmp_path / "clip.mp4")
    live.write_bytes(b"being written")
    left = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{pid}-"))
    left.write_bytes(b"half written")
    folder = tmp_path / (temp_beside(tmp_path / "key").name.replace(f"-{os.getpid()}-", f"-{pid}-"))
    folder.mkdir()
    (folder / "media.part").write_bytes(b"x")
    other_host = tmp_path / f".clip.otherhost-{pid}-0123abcd.tmp.mp4"
    other_host.write_bytes(b"another machine's")
    (tmp_path / "clip.mp4").write_bytes(b"done")
    assert sorted(sweep_temp(tmp_path)) == sorted([left, folder])
    assert live.exists() and other_host.exists() and (tmp_path / "clip.mp4").exists()
