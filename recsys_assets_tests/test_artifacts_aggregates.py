"""Daily aggregates and their merge: hand-computed days and brute-force properties."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_assets.aggregates.daily import (
    AGGREGATE_KINDS,
    AGGREGATE_SCHEMAS,
    EVENT_SCHEMA,
    TRANSITION_UNIT,
    as_frame,
    daily_aggregates,
    empty_aggregate,
    merge_aggregates,
)

DAY = datetime(2026, 1, 1, tzinfo=UTC)


def day_frames(events: pl.DataFrame, **params: int) -> dict[str, pl.DataFrame]:
    """A day's aggregates, every kind in frame form."""
    return {kind: as_frame(kind, a) for kind, a in daily_aggregates(events, **params).items()}


def merged_frame(kind: str, aggregates: list) -> pl.DataFrame:
    return as_frame(kind, merge_aggregates(kind, aggregates))


def events_frame(rows: list[tuple[int, str, str, str | None]]) -> pl.DataFrame:
    """Canonical events from (minute, session_id, item_id, user_id), in canonical order."""
    frame = pl.DataFrame(
        {
            "ts": [DAY + timedelta(minutes=minute) for minute, *_ in rows],
            "tenant": ["demo"] * len(rows),
            "surface": ["home"] * len(rows),
            "session_id": [row[1] for row in rows],
            "item_id": [row[2] for row in rows],
            "user_id": [row[3] for row in rows],
            "request_id": [None] * len(rows),
            "rank": list(range(len(rows))),
        },
        schema=EVENT_SCHEMA,
    )
    return frame.sort(["ts", "session_id", "rank", "item_id", "user_id", "request_id"])


def as_dict(frame: pl.DataFrame) -> dict:
    *keys, value = frame.columns
    return {tuple(row[:-1]): row[-1] for row in frame.select(*keys, value).iter_rows()}


SAMPLE = events_frame(
    [
        (0, "s1", "A", None),
        (1, "s1", "B", None),
        (2, "s2", "A", None),
        (3, "s2", "C", None),
        (4, "s3", "D", None),
    ]
)


def test_sample_counts_and_pairs():
    aggregates = day_frames(SAMPLE)
    assert set(aggregates) == set(AGGREGATE_KINDS)
    for kind, frame in aggregates.items():
        assert dict(frame.schema) == AGGREGATE_SCHEMAS[kind]
    assert aggregates["item_counts"].rows() == [("A", 2), ("B", 1), ("C", 1), ("D", 1)]
    assert aggregates["cooc_pairs"].rows() == [("A", "B", 1), ("A", "C", 1)]
    assert aggregates["cooc_stats"].row(0, named=True) == {
        "sessions": 3,
        "events": 5,
        "excluded_sessions": 0,
        "excluded_events": 0,
    }
    assert aggregates["user_item_counts"].is_empty()


def test_a_pair_counts_once_per_session_and_crawlers_are_left_out():
    events = events_frame(
        [
            (0, "s1", "A", None),
            (1, "s1", "B", None),
            (2, "s1", "A", None),
            (3, "s1", "B", None),
            (4, "s2", "A", None),
            (5, "s2", "B", None),
            (6, "bot", "A", None),
            (7, "bot", "B", None),
            (8, "bot", "C", None),
            (9, "bot", "C", None),
        ]
    )
    aggregates = day_frames(events, max_items_per_session=2)
    assert aggregates["cooc_pairs"].rows() == [("A", "B", 2)]
    assert aggregates["cooc_stats"].row(0, named=True) == {
        "sessions": 3,
        "events": 10,
        "excluded_sessions": 1,
        "excluded_events": 4,
    }
    assert as_dict(aggregates["item_counts"]) == {("A",): 4, ("B",): 4, ("C",): 2}


def test_user_transitions_follow_time_across_sessions_and_count_repeats():
    events = events_frame(
        [
            (0, "s1", "A", "u1"),
            (1, "s1", "B", "u1"),
            (2, "x", "Z", None),
            (5, "s2", "B", "u1"),
            (6, "s2", "C", "u1"),
            (7, "s3", "C", "u2"),
        ]
    )
    aggregates = day_frames(events)
    # u1: A -> B -> B -> C adds 1 to B twice and to C once; u2 has a single event.
    assert aggregates["user_transitions"].rows() == [("u1", "B", 2), ("u1", "C", 1)]
    assert aggregates["user_item_counts"].rows() == [
        ("u1", "A", 1),
        ("u1", "B", 2),
        ("u1", "C", 1),
        ("u2", "C", 1),
    ]


def test_same_timestamp_events_keep_the_canonical_rank_order():
    # One request at one instant shows C then A (ranks 0, 1): C comes first.
    frame = pl.DataFrame(
        {
            "ts": [DAY, DAY],
            "tenant": ["demo"] * 2,
            "surface": ["home"] * 2,
            "session_id": ["s1", "s1"],
            "item_id": ["C", "A"],
            "user_id": ["u1", "u1"],
            "request_id": ["r1", "r1"],
            "rank": [0, 1],
        },
        schema=EVENT_SCHEMA,
    )
    aggregates = day_frames(frame)
    assert aggregates["user_transitions"].rows() == [("u1", "A", 1)]
    assert aggregates["item_transitions"].rows() == [("C", "A", TRANSITION_UNIT)]


def test_item_transitions_weigh_one_over_gap_within_sessions_without_self():
    events = events_frame(
        [
            (0, "s1", "A", None),
            (1, "s1", "B", None),
            (2, "s1", "C", None),
            (3, "s1", "A", None),
            (4, "s2", "C", None),
            (5, "s2", "B", None),
        ]
    )
    weights = {
        key: units / TRANSITION_UNIT
        for key, units in as_dict(
            day_frames(events, transition_window=3)["item_transitions"]
        ).items()
    }
    # s1 = A B C A: gap 1 A>B B>C C>A, gap 2 A>C B>A, gap 3 A>A (self, left out); s2 = C B.
    assert weights == {
        ("A", "B"): 1.0,
        ("A", "C"): 0.5,
        ("B", "A"): 0.5,
        ("B", "C"): 1.0,
        ("C", "A"): 1.0,
        ("C", "B"): 1.0,
    }
    narrow = as_dict(day_frames(events, transition_window=1)["item_transitions"])
    assert set(narrow) == {("A", "B"), ("B", "C"), ("C", "A"), ("C", "B")}


def test_empty_day_gives_empty_frames_and_a_zero_stats_row():
    aggregates = day_frames(SAMPLE.clear())
    for kind, frame in aggregates.items():
        assert frame.equals(as_frame(kind, empty_aggregate(kind)))
        assert dict(frame.schema) == AGGREGATE_SCHEMAS[kind]
    assert aggregates["cooc_stats"].rows() == [(0, 0, 0, 0)]


def test_merge_sums_days_by_key():
    day1 = day_frames(SAMPLE)
    day2 = day_frames(
        events_frame([(0, "t1", "A", "u1"), (1, "t1", "B", "u1"), (2, "t2", "E", None)])
    )
    merged = {kind: merged_frame(kind, [day1[kind], day2[kind]]) for kind in AGGREGATE_KINDS}
    assert merged["item_counts"].rows() == [("A", 3), ("B", 2), ("C", 1), ("D", 1), ("E", 1)]
    assert merged["cooc_pairs"].rows() == [("A", "B", 2), ("A", "C", 1)]
    assert merged["cooc_stats"].rows() == [(5, 8, 0, 0)]
    assert merged["user_item_counts"].rows() == [("u1", "A", 1), ("u1", "B", 1)]
    assert merged_frame("cooc_pairs", []).equals(
        as_frame("cooc_pairs", empty_aggregate("cooc_pairs"))
    )
    assert merged_frame("cooc_stats", []).rows() == [(0, 0, 0, 0)]


def test_merge_and_daily_refuse_wrong_frames():
    with pytest.raises(ValueError, match="unknown aggregate kind 'pairs'"):
        merged_frame("pairs", [])
    with pytest.raises(ValueError, match="cooc_pairs frame has columns"):
        merged_frame("cooc_pairs", [pl.DataFrame({"item_id": ["A"]})])
    with pytest.raises(ValueError, match="item_counts aggregate #0 is"):
        merged_frame("item_counts", [pl.DataFrame({"item_id": ["A"]})])
    with pytest.raises(ValueError, match="max_items_per_session must be an integer >= 1, got 0"):
        day_frames(SAMPLE, max_items_per_session=0)
    with pytest.raises(ValueError, match="session_seq.window must be an integer in 1..20, got 21"):
        day_frames(SAMPLE, transition_window=21)
    with pytest.raises(ValueError, match="column item_id of type String"):
        day_frames(SAMPLE.with_columns(pl.col("item_id").cast(pl.Categorical)))


# Random days: a few sessions, items and users, so that pairs and transitions repeat.
event_rows = st.lists(
    st.tuples(
        st.integers(0, 50),
        st.sampled_from(["s1", "s2", "s3", "s4"]),
        st.sampled_from(["a", "b", "c", "d", "e", "é", "B"]),
        st.sampled_from(["u1", "u2", None]),
    ),
    max_size=40,
)


def brute_pairs(rows, cut_off: int) -> Counter:
    sessions: dict[str, set[str]] = {}
    for _, session, item, _ in rows:
        sessions.setdefault(session, set()).add(item)
    pairs: Counter = Counter()
    for items in sessions.values():
        if len(items) <= cut_off:
            pairs.update(itertools.combinations(sorted(items), 2))
    return pairs


@settings(max_examples=150, deadline=None)
@given(event_rows, st.integers(1, 6))
def test_pair_counts_equal_a_brute_force_count_and_are_deterministic(rows, cut_off):
    events = events_frame(rows)
    first = day_frames(events, max_items_per_session=cut_off)
    pairs = as_dict(first["cooc_pairs"])
    assert pairs == dict(brute_pairs(rows, cut_off))
    assert all(item < neighbor for item, neighbor in pairs)
    again = day_frames(events, max_items_per_session=cut_off)
    assert all(first[kind].equals(again[kind]) for kind in AGGREGATE_KINDS)
    for kind, frame in first.items():
        keys = [column for column in frame.columns if column.endswith("_id")]
        assert frame.equals(frame.sort(keys)), f"{kind} is not sorted by its keys"


@settings(max_examples=100, deadline=None)
@given(event_rows, event_rows)
def test_merging_days_equals_one_pass_when_no_session_crosses_midnight(first, second):
    # Day two's sessions get their own names, so no session spans both days.
    second = [
        (minute + 24 * 60, f"d2-{session}", item, user) for minute, session, item, user in second
    ]
    days = [day_frames(events_frame(rows)) for rows in (first, second)]
    whole = day_frames(events_frame(first + second))
    for kind in ("item_counts", "cooc_pairs", "cooc_stats", "user_item_counts", "item_transitions"):
        merged = merged_frame(kind, [day[kind] for day in days])
        assert merged.equals(whole[kind]), kind
