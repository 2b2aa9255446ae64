"""Shared stage machinery: status tables that survive a killed run, sharding, failure caps, workers."""

import pytest

from uniform_cli.stage import (
    FailureGuard,
    ItemResult,
    Shard,
    StageError,
    StatusTable,
    TooManyFailures,
    parse_shard,
    read_status,
    run_items,
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


def test_compact_and_sharded_tables_merge(tmp_path):
    for i in range(2):
        t = StatusTable(tmp_path / f"fetch.shard-{i}-of-2.csv", [])
        t.record(ItemResult(f"k{i}", "ok"))
        t.record(ItemResult(f"k{i}", "ok"))
        t.compact()
    assert (tmp_path / "fetch.shard-0-of-2.csv").read_text().count("k0") == 1
    assert set(read_status(tmp_path, "fetch")) == {"k0", "k1"}


def test_shards_split_keys_into_disjoint_parts():
    keys = [f"video{i}_{i:06d}" for i in range(500)]
    shards = [Shard(i, 4) for i in range(4)]
    owners = [[s.index for s in shards if s.owns(k)] for k in keys]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [i] for o in owners) for i in range(4)]
    assert min(sizes) > 80  # roughly even
    assert Shard().suffix == "" and Shard(1, 4).suffix == ".shard-1-of-4"


def test_shard_comes_from_the_flag_or_the_launcher_environment():
    assert parse_shard("2/8", {}) == Shard(2, 8)
    assert parse_shard(None, {"RANK": "3", "WORLD_SIZE": "4"}) == Shard(3, 4)
    slurm = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10"}
    assert parse_shard(None, slurm) == Shard(1, 4)
    assert parse_shard(None, {}) == Shard(0, 1)
    assert parse_shard("1/2", {"RANK": "0", "WORLD_SIZE": "4"}) == Shard(1, 2)  # the flag wins
    for bad in ("3", "a/b", "4/4", "-1/2"):
        with pytest.raises(ValueError):
            parse_shard(bad, {})


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
def test_run_items_records_every_item_and_survives_bad_ones(tmp_path, workers, threads):
    table = StatusTable(tmp_path / "s.csv", ["double"])
    counts = run_items(list(range(6)), _work, table, key=str, workers=workers, threads=threads)
    assert counts == {"ok": 4, "too_short": 1, "error": 1}
    rows = read_status(tmp_path, "s")
    assert rows["5"]["double"] == "10" and rows["4"]["error"] == "RuntimeError: boom"


def test_a_table_killed_while_writing_its_header_starts_over(tmp_path):
    (tmp_path / "fetch.csv").write_text("key,sta")
    table = StatusTable(tmp_path / "fetch.csv", ["path"])
    table.record(ItemResult("a", "ok", fields={"path": "p"}))
    table.close()
    assert (tmp_path / "fetch.csv").read_text().splitlines() == ["key,status,error,path", "a,ok,,p"]
