"""The tenant/surface id space: codes that never change, shared by processes that grow it at
once (locally and on S3), and refused when the files under it were tampered with."""

from __future__ import annotations

import datetime as dt
import random
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest

from recsys_assets.aggregates.daily import AGGREGATE_KINDS, as_frame, daily_aggregates
from recsys_assets.aggregates.ids import IdIndex, IdIndexError, forget_indexes
from recsys_assets.aggregates.store import read_aggregates, write_aggregates
from recsys_assets.aggregates.window import aggregate_params, load_window
from recsys_assets.events.canonical import Partition
from recsys_assets.events.store import CanonicalStore
from recsys_assets.storage import LocalStore, S3Store
from recsys_assets_tests.s3_fixtures import s3_connection, s3_server  # noqa: F401
from recsys_assets_tests.test_artifacts_window import DAY0, KINDS, day_events


def ids(*values: str) -> pl.Series:
    return pl.Series(list(values), dtype=pl.String)


def test_a_code_once_given_never_changes(tmp_path):
    store = LocalStore(tmp_path)
    first = IdIndex(store, "t", "s", "items")
    assert first.encode(ids("b", "a", "b")).tolist() == [1, 0, 1]  # new ids sorted
    # Another process, which has not read the index yet, adds ids of its own.
    other = IdIndex(store, "t", "s", "items")
    assert other.encode(ids("c", "a")).tolist() == [2, 0]
    assert first.encode(ids("a", "c", "d")).tolist() == [0, 2, 3]
    fresh = IdIndex(store, "t", "s", "items")
    assert fresh.ids().to_list() == ["a", "b", "c", "d"]
    assert sorted(p.name for p in (tmp_path / "t/s/ids/items").iterdir()) == [
        "000000.parquet",
        "000001.parquet",
        "000002.parquet",
    ]


def grow_at_once(make_store) -> None:
    """Eight writers, each its own index object (as separate processes are), add overlapping
    ids at once; every writer's codes are those of the index everyone reads afterwards."""
    rng = random.Random(5)
    batches = [ids(*(f"id{rng.randrange(60)}" for _ in range(25))) for _ in range(8)]

    def grow(batch: pl.Series) -> list[int]:
        return IdIndex(make_store(), "t", "s", "users").encode(batch).tolist()

    with ThreadPoolExecutor(max_workers=8) as pool:
        given = list(pool.map(grow, batches))
    final = IdIndex(make_store(), "t", "s", "users").ids()
    assert final.n_unique() == final.len()
    assert set(final) == set().union(*(set(batch) for batch in batches))
    for batch, codes in zip(batches, given, strict=True):
        assert final.gather(codes).to_list() == batch.to_list()


def test_writers_growing_the_index_at_once_agree_locally(tmp_path):
    grow_at_once(lambda: LocalStore(tmp_path))


def test_writers_growing_the_index_at_once_agree_on_s3(s3_connection):  # noqa: F811
    grow_at_once(lambda: S3Store(s3_connection.bucket, "out", s3_connection))


def test_a_hole_or_a_repeated_id_is_refused(tmp_path):
    store = LocalStore(tmp_path)
    index = IdIndex(store, "t", "s", "items")
    for batch in (ids("a"), ids("b"), ids("c")):
        index.encode(batch)
    folder = tmp_path / "t/s/ids/items"
    (folder / "000001.parquet").unlink()
    with pytest.raises(IdIndexError, match="000001.parquet is missing but .*000002.parquet"):
        IdIndex(store, "t", "s", "items").ids()
    (folder / "000001.parquet").write_bytes((folder / "000000.parquet").read_bytes())
    with pytest.raises(IdIndexError, match="an id is in two segments"):
        IdIndex(store, "t", "s", "items").ids()


def test_days_coded_against_a_changed_index_are_not_read(make_config):
    config = make_config()
    store = CanonicalStore(location=str(config.out_dir))
    params = aggregate_params(config, config.tenants[0])
    partition = Partition("demo", "home", DAY0)
    write_aggregates(store, partition, daily_aggregates(day_events(0), **params), params, "x")
    assert read_aggregates(store, partition, ["cooc_pairs"]) is not None
    # The first item segment rewritten by hand, with the same ids in another order.
    segment = config.out_dir / "demo/home/ids/items/000000.parquet"
    frame = pl.read_parquet(segment)
    frame.reverse().write_parquet(segment)
    forget_indexes()  # a new process: nothing of the index in memory
    assert read_aggregates(store, partition, ["cooc_pairs"]) is None


def test_the_window_is_the_same_whatever_order_days_were_aggregated_in(make_config, tmp_path):
    """Codes follow the order days were first aggregated in; the sums the builders read are
    in id order, so they do not."""
    config = make_config()
    entry = config.tenants[0]
    params = aggregate_params(config, entry)
    windows = []
    for name, order in (("forwards", range(5)), ("backwards", range(4, -1, -1))):
        store = CanonicalStore(location=str(tmp_path / name))
        for offset in order:
            partition = Partition("demo", "home", DAY0 + dt.timedelta(days=offset))
            # Each day brings ids of its own, so the order days come in orders the codes.
            events = day_events(offset).with_columns(pl.col("item_id") + f"-{offset % 3}")
            write_aggregates(store, partition, daily_aggregates(events, **params), params, "x")
        data = load_window(store, config, entry, DAY0 + dt.timedelta(days=4), 5, KINDS)
        data.wait_saved()
        windows.append({kind: as_frame(kind, data.frames[kind]) for kind in AGGREGATE_KINDS})
    codes = [
        IdIndex(LocalStore(tmp_path / name), "demo", "home", "items").ids().to_list()
        for name in ("forwards", "backwards")
    ]
    assert codes[0] != codes[1]  # the two id spaces differ ...
    for kind in AGGREGATE_KINDS:  # ... and the window does not
        assert windows[0][kind].equals(windows[1][kind]), kind
