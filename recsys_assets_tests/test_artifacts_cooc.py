"""Popularity and co-occurrence payloads, and the top-k ranking they share."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_assets.aggregates.coded import Coded
from recsys_assets.aggregates.daily import EVENT_SCHEMA, daily_aggregates, merge_aggregates
from recsys_assets.artifacts.cooc import cooc_payload
from recsys_assets.artifacts.popularity import popularity_payload
from recsys_assets.artifacts.ranking import (
    most_active,
    reaching_of_rows,
    top_k_of_rows,
    top_k_per_row,
)

DAY = datetime(2026, 1, 1, tzinfo=UTC)


def events_frame(rows: list[tuple[str, str]]) -> pl.DataFrame:
    """Canonical anonymous events from (session_id, item_id), one minute apart."""
    return pl.DataFrame(
        {
            "ts": [DAY + timedelta(minutes=index) for index in range(len(rows))],
            "tenant": ["demo"] * len(rows),
            "surface": ["home"] * len(rows),
            "session_id": [session for session, _ in rows],
            "item_id": [item for _, item in rows],
            "user_id": [None] * len(rows),
            "request_id": [None] * len(rows),
            "rank": [0] * len(rows),
        },
        schema=EVENT_SCHEMA,
    )


def cooc(rows, **caps):
    aggregates = daily_aggregates(
        events_frame(rows), max_items_per_session=caps.pop("cut_off", 200)
    )
    return cooc_payload(
        aggregates["cooc_pairs"], aggregates["cooc_stats"], aggregates["item_counts"], **caps
    )


SAMPLE = [("s1", "A"), ("s1", "B"), ("s2", "A"), ("s2", "C"), ("s3", "D")]


def test_reference_sample():
    aggregates = daily_aggregates(events_frame(SAMPLE))
    popularity, stats = popularity_payload(aggregates["item_counts"], max_items_per_artifact=1000)
    assert popularity == {
        "items": [
            {"item_id": "A", "count": 2},
            {"item_id": "B", "count": 1},
            {"item_id": "C", "count": 1},
            {"item_id": "D", "count": 1},
        ]
    }
    assert stats == {"items": 4, "items_written": 4, "events": 5}
    payload, stats = cooc(SAMPLE)
    assert payload == {
        "neighbors": [
            {"item_id": "A", "items": [{"item_id": "B", "count": 1}, {"item_id": "C", "count": 1}]},
            {"item_id": "B", "items": [{"item_id": "A", "count": 1}]},
            {"item_id": "C", "items": [{"item_id": "A", "count": 1}]},
        ]
    }
    assert stats["rows_written"] == 3 and stats["pairs"] == 2


def test_popularity_cap_keeps_the_top_with_ties_by_id():
    aggregates = daily_aggregates(events_frame(SAMPLE))
    payload, _ = popularity_payload(aggregates["item_counts"], max_items_per_artifact=2)
    assert payload["items"] == [{"item_id": "A", "count": 2}, {"item_id": "B", "count": 1}]
    with pytest.raises(ValueError, match="limits.max_items_per_artifact must be an integer >= 1"):
        popularity_payload(aggregates["item_counts"], max_items_per_artifact=0)


def test_cooc_caps_keep_the_most_exposed_anchors_and_the_top_neighbors():
    payload, _ = cooc(SAMPLE, max_items_per_artifact=1, max_neighbors_per_item=1)
    assert payload == {"neighbors": [{"item_id": "A", "items": [{"item_id": "B", "count": 1}]}]}


def test_cooc_support_filter_and_count_order():
    rows = [
        ("s1", "A"),
        ("s1", "B"),
        ("s1", "C"),
        ("s2", "A"),
        ("s2", "C"),
        ("s3", "C"),
        ("s3", "A"),
    ]
    payload, stats = cooc(rows, min_cooc_support=2)
    assert payload == {
        "neighbors": [
            {"item_id": "A", "items": [{"item_id": "C", "count": 3}]},
            {"item_id": "C", "items": [{"item_id": "A", "count": 3}]},
        ]
    }
    assert stats["pairs"] == 1
    full, _ = cooc(rows)
    assert full["neighbors"][0]["items"] == [
        {"item_id": "C", "count": 3},
        {"item_id": "B", "count": 1},
    ]


def test_exposed_items_without_neighbors_do_not_take_rows():
    # X is the most exposed item but never shares a session: the cap goes to paired items.
    rows = [(f"x{n}", "X") for n in range(10)] + [
        ("s1", "A"),
        ("s1", "B"),
        ("s2", "A"),
        ("s2", "C"),
    ]
    payload, _ = cooc(rows, max_items_per_artifact=2)
    assert [row["item_id"] for row in payload["neighbors"]] == ["A", "B"]


def test_guard_stats_count_crawler_sessions_and_their_events():
    rows = SAMPLE + [("bot", "A"), ("bot", "B"), ("bot", "C"), ("bot", "C")]
    payload, stats = cooc(rows, cut_off=2)
    assert stats["excluded_sessions"] == 1 and stats["excluded_events"] == 4
    assert stats["excluded_event_ratio"] == pytest.approx(4 / 9)
    assert payload == cooc(SAMPLE)[0]
    assert cooc([])[1]["excluded_event_ratio"] == 0.0


def test_cooc_needs_merged_stats():
    aggregates = daily_aggregates(events_frame(SAMPLE))
    two_rows = pl.concat([aggregates["cooc_stats"]] * 2)
    with pytest.raises(ValueError, match="cooc_stats must have one row"):
        cooc_payload(aggregates["cooc_pairs"], two_rows, aggregates["item_counts"])
    merged = merge_aggregates("cooc_stats", [aggregates["cooc_stats"]] * 2)
    assert (
        cooc_payload(aggregates["cooc_pairs"], merged, aggregates["item_counts"])[1]["events"] == 10
    )


sessions = st.lists(
    st.tuples(st.sampled_from([f"s{n}" for n in range(8)]), st.sampled_from(list("abcdefgh"))),
    max_size=60,
)


def sorted_by_count_then_id(entries) -> bool:
    keys = [(-entry["count"], entry["item_id"]) for entry in entries]
    return keys == sorted(keys) and len(set(keys)) == len(keys)


@settings(max_examples=120, deadline=None)
@given(sessions, st.integers(1, 4), st.integers(1, 5), st.integers(1, 2))
def test_cooc_is_symmetric_before_caps_and_caps_keep_prefixes(
    rows, rows_cap, neighbors_cap, support
):
    full, _ = cooc(
        rows, min_cooc_support=support, max_items_per_artifact=100, max_neighbors_per_item=100
    )
    lists = {
        row["item_id"]: {e["item_id"]: e["count"] for e in row["items"]}
        for row in full["neighbors"]
    }
    brute: Counter = Counter()
    for items in pl.DataFrame(rows, schema=["s", "i"], orient="row").group_by("s").agg("i")["i"]:
        brute.update(itertools.combinations(sorted(set(items)), 2))
    expected: dict[str, dict[str, int]] = {}
    for (a, b), count in brute.items():
        if count >= support:
            expected.setdefault(a, {})[b] = count
            expected.setdefault(b, {})[a] = count
    assert lists == expected
    for anchor, neighbors in lists.items():
        assert all(lists[neighbor][anchor] == count for neighbor, count in neighbors.items())

    capped, _ = cooc(
        rows,
        min_cooc_support=support,
        max_items_per_artifact=rows_cap,
        max_neighbors_per_item=neighbors_cap,
    )
    anchors = [row["item_id"] for row in capped["neighbors"]]
    assert anchors == sorted(anchors) and len(anchors) == min(rows_cap, len(expected))
    exposure = Counter(item for _, item in rows)
    ranked = sorted(expected, key=lambda item: (-exposure[item], item))
    assert set(anchors) == set(ranked[:rows_cap])
    by_anchor = {row["item_id"]: row["items"] for row in full["neighbors"]}
    for row in capped["neighbors"]:
        assert sorted_by_count_then_id(row["items"])
        assert row["items"] == by_anchor[row["item_id"]][:neighbors_cap]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(0, 30)), max_size=60),
    st.integers(1, 6),
)
def test_top_k_per_row_equals_sorting_each_row(entries, k):
    unique = list({(row, tie): value for row, tie, value in entries}.items())
    row = np.array([key[0] for key, _ in unique], dtype=np.int64)
    tie = np.array([key[1] for key, _ in unique], dtype=np.int64)
    value = np.array([value for _, value in unique], dtype=np.int64)
    chosen = top_k_per_row(row, value, tie, k)
    expected = []
    for r in sorted(set(row.tolist())):
        members = sorted(np.flatnonzero(row == r).tolist(), key=lambda i: (-value[i], tie[i]))
        expected.extend(members[:k])
    assert chosen.tolist() == expected


# Mostly small values, some past a byte and two bytes.
matrices = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(1, 40) | st.integers(200, 70_000)),
    max_size=60,
).map(lambda entries: list({(row, column): value for row, column, value in entries}.items()))


def csr_of(entries, scale: int) -> sp.csr_matrix:
    rows = [key[0] for key, _ in entries]
    columns = [key[1] for key, _ in entries]
    values = np.array([value for _, value in entries], dtype=np.int64) * scale
    matrix = sp.csr_matrix((values, (rows, columns)), shape=(6, 7))
    matrix.sort_indices()
    return matrix


def held_as(matrix: sp.csr_matrix) -> Coded:
    return Coded(pl.Series([f"r{i}" for i in range(6)]), pl.Series(list("abcdefg")), matrix)


@settings(max_examples=150, deadline=None)
@given(matrices, st.integers(1, 5), st.sampled_from([1, 2**31, 2**45]), st.data())
def test_the_top_k_of_kept_rows_equals_sorting_those_rows(entries, k, scale, data):
    """Values past 32 bits (`scale`) take the kernel's other ordering, and rank the same."""
    matrix = csr_of(entries, scale)
    kept = np.array(data.draw(st.lists(st.integers(0, 5), unique=True).map(sorted)), dtype=int)
    position, column, value = top_k_of_rows(held_as(matrix), kept, k)
    expected = []
    for at, row in enumerate(kept.tolist()):
        members = zip(matrix[row].indices.tolist(), matrix[row].data.tolist(), strict=True)
        best = sorted(members, key=lambda member: (-member[1], member[0]))[:k]
        expected += [(at, c, v) for c, v in best]
    assert list(zip(position.tolist(), column.tolist(), value.tolist(), strict=True)) == expected


@settings(max_examples=150, deadline=None)
@given(matrices, st.integers(1, 5), st.sampled_from([0, 1, 2.5]), st.data())
def test_reaching_of_kept_rows_keeps_what_can_reach_their_k_th_largest(entries, k, slack, data):
    matrix = csr_of(entries, 1)
    kept = np.array(data.draw(st.lists(st.integers(0, 5), unique=True).map(sorted)), dtype=int)
    position, column, value = reaching_of_rows(held_as(matrix), kept, k, slack)
    expected = []
    for at, row in enumerate(kept.tolist()):
        values = matrix[row].data.tolist()
        floor = sorted(values)[-k] - slack if len(values) > k else -np.inf
        columns = matrix[row].indices.tolist()
        expected += [(at, c, v) for c, v in zip(columns, values, strict=True) if v >= floor]
    assert list(zip(position.tolist(), column.tolist(), value.tolist(), strict=True)) == expected


@given(st.lists(st.integers(0, 9), max_size=40), st.integers(1, 12), st.booleans())
def test_most_active_keeps_the_largest_with_ties_by_position(activity, k, as_float):
    values = np.array(activity, dtype=np.float32 if as_float else np.int64)
    ranked = sorted(range(len(activity)), key=lambda at: (-activity[at], at))
    assert most_active(values, k).tolist() == sorted(ranked[:k])
