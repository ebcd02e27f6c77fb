"""Window states: the next day's window is yesterday's plus a day minus a day, and equals a
window summed afresh whatever happened to the days in between."""

from __future__ import annotations

import datetime as dt
import random
import shutil

import orjson
import polars as pl
import pytest

from recsys_assets.aggregates.daily import (
    AGGREGATE_KINDS,
    EVENT_SCHEMA,
    PAIR_KINDS,
    as_frame,
    daily_aggregates,
)
from recsys_assets.aggregates.store import write_aggregates
from recsys_assets.aggregates.window import aggregate_params, load_window
from recsys_assets.events.canonical import Partition
from recsys_assets.events.store import CanonicalStore

DAY0 = dt.date(2026, 1, 1)
WINDOW = 3
# Every daily kind, and the users' totals derived from user_item_counts.
KINDS = [*AGGREGATE_KINDS, "user_activity"]
STATE_KINDS = [*PAIR_KINDS, "user_activity"]


def day_events(offset: int, salt: int = 0) -> pl.DataFrame:
    """A small day whose items and users change with the day, so days enter and leave."""
    start = dt.datetime.combine(DAY0 + dt.timedelta(days=offset), dt.time(8), dt.UTC)
    rows = []
    for i in range(12):
        rows.append(
            {
                "ts": start + dt.timedelta(minutes=i),
                "tenant": "demo",
                "surface": "home",
                "session_id": f"s{offset}-{i % 3}",
                "item_id": f"I{(i * (offset + 2) + salt) % 7}",
                "user_id": None if i % 4 == 0 else f"u{(i + offset) % 5}",
                "request_id": None,
                "rank": i,
            }
        )
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


@pytest.fixture
def setup(make_config, tmp_path):
    config = make_config()
    entry = config.tenants[0]
    store = CanonicalStore(location=str(config.out_dir))
    params = aggregate_params(config, entry)

    def aggregate(offset: int, salt: int = 0) -> None:
        partition = Partition("demo", "home", DAY0 + dt.timedelta(days=offset))
        aggregates = daily_aggregates(day_events(offset, salt), **params)
        write_aggregates(store, partition, aggregates, params, f"{offset}-{salt}")

    def window(offset: int):
        day = DAY0 + dt.timedelta(days=offset)
        data = load_window(store, config, entry, day, WINDOW, KINDS)
        data.wait_saved()
        return data

    def fresh(offset: int):
        """The same window summed from the days alone, in a copy without states."""
        copy = tmp_path / "fresh"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(config.out_dir, copy, ignore=shutil.ignore_patterns("windows"))
        day = DAY0 + dt.timedelta(days=offset)
        copied = CanonicalStore(location=str(copy))
        data = load_window(copied, config, entry, day, WINDOW, KINDS)
        data.wait_saved()  # its states land in the copy before the next call replaces it
        assert set(data.merge.values()) == {"summed"}
        return data

    return aggregate, window, fresh, config.out_dir / "demo/home/windows"


def frames(data) -> dict[str, list]:
    rows = {kind: as_frame(kind, data.frames[kind]).rows() for kind in AGGREGATE_KINDS}
    activity = data.frames["user_activity"]
    counts = activity.matrix.toarray()[:, 0].tolist()
    rows["user_activity"] = list(zip(activity.rows, counts, strict=True))
    # The derived totals are those of the window's user_item_counts.
    totals: dict[str, int] = {}
    for user, _, count in rows["user_item_counts"]:
        totals[user] = totals.get(user, 0) + count
    assert rows["user_activity"] == sorted(totals.items())
    return rows


def test_the_next_day_updates_yesterdays_window(setup):
    aggregate, window, fresh, _ = setup
    for offset in range(5):
        aggregate(offset)
    first = window(3)
    assert set(first.merge.values()) == {"summed"}
    following = window(4)
    assert following.merge == {kind: "updated (+1 -1 days)" for kind in STATE_KINDS}
    assert frames(following) == frames(fresh(4))
    assert following.source_hash == fresh(4).source_hash
    again = window(4)
    assert set(again.merge.values()) == {"reused"}
    assert frames(again) == frames(following)


def test_a_late_day_is_added_and_a_rewritten_one_is_summed_afresh(setup):
    aggregate, window, fresh, _ = setup
    for offset in (0, 1, 3):
        aggregate(offset)
    assert window(3).days_missing == [DAY0 + dt.timedelta(days=2)]
    aggregate(2)  # arrives late
    late = window(3)
    assert late.merge == {kind: "updated (+1 -0 days)" for kind in STATE_KINDS}
    assert frames(late) == frames(fresh(3))
    aggregate(2, salt=3)  # re-aggregated: the version the state summed is gone
    rewritten = window(3)
    assert set(rewritten.merge.values()) == {"summed"}
    assert frames(rewritten) == frames(fresh(3))
    assert frames(rewritten) != frames(late)


@pytest.mark.parametrize(
    ("array", "damage"),
    [("data", "last byte"), ("indices", "second half garbled"), ("indptr", "all garbled")],
)
def test_a_damaged_state_is_not_used(setup, array, damage):
    """A state whose hash fails is not used, whether the damage would make it unreadable or
    a readable matrix of other values."""
    aggregate, window, fresh, states = setup
    for offset in range(5):
        aggregate(offset)
    window(3)
    for path in states.rglob(f"2026-01-04.{array}.npy"):
        data = path.read_bytes()
        if damage == "last byte":
            damaged = data[:-1] + bytes([data[-1] ^ 0xFF])
        else:
            start = len(data) // 2 if damage == "second half garbled" else 0
            damaged = data[:start] + random.Random(path.name).randbytes(len(data) - start)
        path.write_bytes(damaged)
    damaged = window(4)
    assert set(damaged.merge.values()) == {"summed"}
    assert frames(damaged) == frames(fresh(4))


def test_states_older_than_yesterday_are_deleted(setup):
    aggregate, window, _, states = setup
    for offset in range(6):
        aggregate(offset)
    for offset in (2, 3, 4, 5):
        window(offset)
    folders = [folder for folder in states.glob("*/*") if folder.is_dir()]
    assert len(folders) == len(STATE_KINDS)
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == [
            *(f"2026-01-05.{name}" for name in ("data.npy", "indices.npy", "indptr.npy", "json")),
            *(f"2026-01-06.{name}" for name in ("data.npy", "indices.npy", "indptr.npy", "json")),
        ]
        marker = orjson.loads((folder / "2026-01-06.json").read_bytes())
        assert sorted(marker["days"]) == ["2026-01-04", "2026-01-05", "2026-01-06"]
    before = {path: path.read_bytes() for path in states.rglob("*") if path.is_file()}
    for offset in (2, 3, 4, 5):  # re-running the days adds no state back
        window(offset)
    assert {path: path.read_bytes() for path in states.rglob("*") if path.is_file()} == before
