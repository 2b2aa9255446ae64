"""Shared stage machinery: status tables that survive a killed run, parts of the work, failure caps, workers, the
result every stage returns and its summary."""

from collections import Counter

import pytest

from uniform_cli.stage import (
    FailureGuard,
    ItemResult,
    Part,
    StageError,
    StageResult,
    StatusTable,
    TooManyFailures,
    common_errors,
    drop_done,
    parse_part,
    print_summary,
    read_status,
    run_stage,
)


def test_status_table_resumes_after_a_partial_last_line(tmp_path):
    table = StatusTable(tmp_path / "clips.csv", ["path"])
    table.record(ItemResult("a", "ok", fields={"path": "x"}))
    table.record(ItemResult("b", "too_short", "2.0 s\nshort"))
    table.close()
    with open(tmp_path / "clips.csv", "a") as f:
        f.write("c,ok,,pa")  # killed mid-row
    again = StatusTable(tmp_path / "clips.csv", ["path"])
    assert again.status("a") == "ok" and again.status("b") == "too_short" and again.status("c") is None
    assert again.rows["b"]["error"] == "2.0 s short"
    again.record(ItemResult("b", "ok", fields={"path": "y"}))  # the last row of a key wins
    again.close()
    rows = read_status(tmp_path, "clips")
    assert rows["b"]["status"] == "ok" and rows["b"]["path"] == "y" and set(rows) == {"a", "b"}
    with pytest.raises(ValueError, match="not columns"):
        again.record(ItemResult("d", "ok", fields={"nope": 1}))


def test_compact_and_part_tables_merge(tmp_path):
    for i in range(2):
        t = StatusTable.for_part(tmp_path, "fetch", Part(i, 2), [])
        t.record(ItemResult(f"k{i}", "ok"))
        t.record(ItemResult(f"k{i}", "ok"))
        t.compact()
    assert (tmp_path / "fetch.part-0-of-2.csv").read_text().count("k0") == 1
    assert set(read_status(tmp_path, "fetch")) == {"k0", "k1"}


def test_parts_split_keys_into_disjoint_sets():
    keys = [f"video{i}_{i:06d}" for i in range(500)]
    parts = [Part(i, 4) for i in range(4)]
    owners = [[p.index for p in parts if p.owns(k)] for k in keys]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [i] for o in owners) for i in range(4)]
    assert min(sizes) > 80  # roughly even
    assert Part().suffix == "" and Part(1, 4).suffix == ".part-1-of-4"
    assert sum(len(p.select(keys, key=str)) for p in parts) == len(keys)


def test_part_comes_from_the_flag_or_the_launcher_environment():
    assert parse_part("2/8", {}) == Part(2, 8)
    assert parse_part(None, {"RANK": "3", "WORLD_SIZE": "4"}) == Part(3, 4)
    slurm = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10"}
    assert parse_part(None, slurm) == Part(1, 4)
    assert parse_part(None, {}) == Part(0, 1)
    assert parse_part("1/2", {"RANK": "0", "WORLD_SIZE": "4"}) == Part(1, 2)  # the flag wins
    for bad in ("3", "a/b", "4/4", "-1/2"):
        with pytest.raises(ValueError):
            parse_part(bad, {})


def test_failure_guard_tolerates_a_few_bad_items_but_not_many():
    guard = FailureGuard(max_rate=0.2, min_items=10, max_consecutive=5)
    for i in range(100):
        guard.update(i % 10 != 0)  # 10 % bad, spread out: never trips
    with pytest.raises(TooManyFailures, match="in a row"):
        for _ in range(5):
            guard.update(False)
    rate = FailureGuard(max_rate=0.2, min_items=10, max_consecutive=100)
    for i in range(9):
        rate.update(i % 2 == 0)  # 4 of 9 failed, but too few items to judge yet
    with pytest.raises(TooManyFailures, match="max-failures"):
        rate.update(False)


def _work(n: int) -> ItemResult:
    if n == 3:
        raise StageError("too_short", "three is short")
    if n == 4:
        raise RuntimeError("boom")
    return ItemResult(str(n), fields={"double": 2 * n})


@pytest.mark.parametrize("workers, threads", [(1, False), (2, False), (3, True)])
def test_run_stage_records_every_item_and_survives_bad_ones(tmp_path, workers, threads):
    table = StatusTable(tmp_path / "s.csv", ["double"])
    counts = run_stage(list(range(6)), _work, table, key=str, workers=workers, threads=threads)
    assert counts == {"ok": 4, "too_short": 1, "error": 1}
    rows = read_status(tmp_path, "s")
    assert rows["5"]["double"] == "10" and rows["4"]["error"] == "RuntimeError: boom"


def test_a_table_killed_while_writing_its_header_starts_over(tmp_path):
    (tmp_path / "fetch.csv").write_text("key,sta")
    table = StatusTable(tmp_path / "fetch.csv", ["path"])
    table.record(ItemResult("a", "ok", fields={"path": "p"}))
    table.close()
    assert (tmp_path / "fetch.csv").read_text().splitlines() == ["key,status,error,path", "a,ok,,p"]


def test_done_items_are_dropped_and_counted():
    todo, skipped = drop_done(["a", "b", "c"], lambda key: key == "b")
    assert todo == ["a", "c"] and skipped == 1


def result(tmp_path, counts, skipped=0, **kw) -> StageResult:
    return StageResult("clip", Counter(counts), skipped, 1.5, tmp_path / "clips.csv", tmp_path / "clips", **kw)


def test_a_result_says_whether_nothing_succeeded(tmp_path):
    assert result(tmp_path, {"too_short": 2}).nothing_succeeded
    assert not result(tmp_path, {"too_short": 2, "ok": 1}).nothing_succeeded
    assert not result(tmp_path, {"too_short": 2}, skipped=3).nothing_succeeded  # done before
    assert not result(tmp_path, {}).nothing_succeeded  # nothing was meant for this run
    assert result(tmp_path, {}, left_out=["k"], needs="fetch").nothing_succeeded  # nothing could be tried
    assert not result(tmp_path, {"local": 1}, ok=("ok", "local")).nothing_succeeded


def test_summary_shows_counts_errors_what_was_left_out_and_where(tmp_path, capsys):
    table = StatusTable(tmp_path / "clips.csv", [])
    for i in range(3):
        table.record(ItemResult(f"k{i}", "too_short", "video ends 2.0 s into the clip [data] needs 4 s"))
    table.record(ItemResult("k9", "ok"))
    table.close()
    errors = common_errors(table)
    assert errors == [("video ends 2.0 s into the clip [data] needs 4 s", 3)]
    print_summary(result(tmp_path, {"ok": 1, "too_short": 3}, skipped=2, errors=errors, left_out=["x", "y"],
                         needs="fetch"))
    out = capsys.readouterr().out
    assert "uniform clip: 4 items" in out and "skipped (done before)" in out
    assert "3 x video ends 2.0 s into the clip [data] needs 4 s" in out  # printed as text, not markup
    assert "2 item(s) have no `fetch` output yet (e.g. x): run `uniform fetch`" in out
    assert f"status table: {tmp_path / 'clips.csv'}" in out and f"outputs: {tmp_path / 'clips'}" in out


def test_every_data_command_ends_with_the_same_summary_and_exit_codes(tmp_path):
    """fetch, clip, caption and encode on one local file (weight-free codecs): each returns a StageResult that its
    command prints the same way; a rerun skips everything and still exits 0."""
    from typer.testing import CliRunner

    from tests.fixtures.av_corpus import make_media
    from uniform_cli.cli.main import app

    media = make_media(tmp_path / "dog.mp4", seconds=1.5)
    manifest = tmp_path / "mine.csv"
    manifest.write_text(f"id,url,start,end,label,split\ndog,{media},0,,dog barking,train\n")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('# a tiny recipe\n[data]\nsize = 32\nseconds = 1.0\n\n[codec]\ntext_encoder = "hash:16"\n')
    root = tmp_path / "data"
    commands = {
        "fetch": ("fetch.csv", "raw", []),
        "clip": ("clips.csv", "clips", ["--recipe", str(recipe), "--workers", "1"]),
        "caption": ("captions.csv", "captions.csv", ["--captioner", "labels"]),
        "encode": ("encode.csv", "shards", ["--recipe", str(recipe), "--video-vae", "pixel", "--audio-vae", "mel",
                                            "--device", "cpu", "--workers", "1"]),
    }
    for stage, (table, outputs, flags) in commands.items():
        for run in ("first", "again"):
            result = CliRunner().invoke(app, [stage, str(manifest), "--root", str(root), *flags])
            assert result.exit_code == 0, (stage, run, result.output)
            assert f"uniform {stage}: {1 if run == 'first' else 0} items in" in result.output, result.output
            assert f"status table: {root / table}\noutputs: {root / outputs}" in result.output
            assert ("skipped (done before)" in result.output) == (run == "again"), (stage, result.output)
    assert read_status(root, "encode")["dog"]["status"] == "ok"


def test_a_command_whose_items_all_wait_for_the_stage_before_exits_1(tmp_path):
    from typer.testing import CliRunner

    from uniform_cli.cli.main import app

    manifest = tmp_path / "remote.csv"
    manifest.write_text("id,url,start,end,label,split\ndog,https://example.org/dog.mp4,0,,dog,train\n")
    result = CliRunner().invoke(app, ["clip", str(manifest), "--root", str(tmp_path / "data"), "--workers", "1"])
    assert result.exit_code == 1
    assert "1 item(s) have no `fetch` output yet (e.g. dog): run `uniform fetch`" in result.output
