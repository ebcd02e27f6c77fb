"""Session-sequence payload on a hand-computed day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from recsys_assets.aggregates.daily import (
    EVENT_SCHEMA,
    TRANSITION_UNIT,
    as_coded,
    daily_aggregates,
    merge_aggregates,
)
from recsys_assets.artifacts.session_seq import session_seq_payload

DAY = datetime(2026, 1, 1, tzinfo=UTC)
# (minute, session, item, user). u1: A B C | B A; u2: C A; an anonymous session: A C.
ROWS = [
    (0, "s1", "A", "u1"),
    (1, "s1", "B", "u1"),
    (2, "s1", "C", "u1"),
    (10, "s2", "B", "u1"),
    (11, "s2", "A", "u1"),
    (20, "s3", "C", "u2"),
    (21, "s3", "A", "u2"),
    (30, "s4", "A", None),
    (31, "s4", "C", None),
]


def daily(rows=ROWS, window=3):
    frame = pl.DataFrame(
        {
            "ts": [DAY + timedelta(minutes=row[0]) for row in rows],
            "tenant": ["demo"] * len(rows),
            "surface": ["home"] * len(rows),
            "session_id": [row[1] for row in rows],
            "item_id": [row[2] for row in rows],
            "user_id": [row[3] for row in rows],
            "request_id": [None] * len(rows),
            "rank": [0] * len(rows),
        },
        schema=EVENT_SCHEMA,
    )
    return daily_aggregates(frame, transition_window=window)


def payload(rows=ROWS, window=3, **caps):
    aggregates = daily(rows, window)
    return session_seq_payload(
        aggregates["user_transitions"],
        aggregates["user_item_counts"],
        aggregates["item_transitions"],
        **caps,
    )


def entries(*pairs):
    return [{"item_id": item, "score": score} for item, score in pairs]


def test_hand_computed_users_and_transitions():
    result, stats = payload()
    # u1: A>B, B>C, C>B, B>A give B 2, A 1, C 1; u2: C>A gives A 1.
    assert result["users"] == [
        {"user_id": "u1", "items": entries(("B", 2), ("A", 1), ("C", 1))},
        {"user_id": "u2", "items": entries(("A", 1))},
    ]
    # A>B 1 (s1), A>C 1/2 (s1, gap 2) + 1 (s4), B>C 1 (s1), B>A 1 (s2), C>A 1 (s3).
    assert result["transitions"] == [
        {"item_id": "A", "items": entries(("C", 1.5), ("B", 1))},
        {"item_id": "B", "items": entries(("A", 1), ("C", 1))},
        {"item_id": "C", "items": entries(("A", 1))},
    ]
    assert all(type(entry["score"]) is int for row in result["users"] for entry in row["items"])
    assert stats == {
        "users": 2,
        "users_written": 2,
        "transition_items": 3,
        "transition_rows_written": 3,
    }


def test_window_one_keeps_only_adjacent_items():
    result, _ = payload(window=1)
    assert result["transitions"][0] == {"item_id": "A", "items": entries(("B", 1), ("C", 1))}


def test_caps_keep_the_most_active_users_and_the_most_frequent_predecessors():
    result, stats = payload(
        max_users=1, max_items_per_user=1, max_items_per_artifact=1, max_neighbors_per_item=1
    )
    assert result == {
        "users": [{"user_id": "u1", "items": entries(("B", 2))}],
        # Outgoing weight: A 2.5, B 2, C 1.
        "transitions": [{"item_id": "A", "items": entries(("C", 1.5))}],
    }
    assert stats["users"] == 2 and stats["users_written"] == 1


def test_scores_are_rounded_to_six_decimals():
    rows = [(0, "s1", "A", None), (1, "s1", "X", None), (2, "s1", "Y", None), (3, "s1", "B", None)]
    result, _ = payload(rows)
    assert result["transitions"][0] == {
        "item_id": "A",
        "items": entries(("X", 1), ("Y", 0.5), ("B", 0.333333)),
    }


def test_no_events_give_empty_lists_and_bad_caps_are_refused():
    empty = daily_aggregates(pl.DataFrame(schema=EVENT_SCHEMA))
    result, stats = session_seq_payload(
        merge_aggregates("user_transitions", [empty["user_transitions"]] * 2),
        empty["user_item_counts"],
        empty["item_transitions"],
    )
    assert result == {"users": [], "transitions": []}
    assert stats["users"] == 0
    with pytest.raises(ValueError, match="artifacts.session_seq.max_users must be an integer >= 1"):
        payload(max_users=0)


def test_users_totals_alone_rank_the_users_as_the_whole_counts_do():
    """A window hands session_seq only each user's total exposures (`user_activity`)."""
    rows = [*ROWS, (40, "s5", "C", "u2"), (41, "s5", "B", "u2"), (42, "s5", "D", "u3")]
    for cap in (1, 2, 3):
        whole, _ = payload(rows, max_users=cap)
        aggregates = daily(rows)
        totals, _ = session_seq_payload(
            aggregates["user_transitions"],
            as_coded("user_item_counts", aggregates["user_item_counts"]).totals(),
            aggregates["item_transitions"],
            max_users=cap,
        )
        assert totals == whole


def test_neighbors_that_round_to_the_same_score_are_ranked_by_id():
    """Weights a hair apart round to one score; the id then decides, also when the smaller id
    has the smaller weight and only one neighbor is kept (its entry must not be cut early)."""
    unit = TRANSITION_UNIT
    item_transitions = pl.DataFrame(
        {
            "item_id": ["P"] * 4,
            "next_item_id": ["A", "B", "C", "D"],
            "weight_units": [unit // 2 - 1, unit // 2, unit // 4, unit // 2 - 10**4],
        }
    )
    empty = daily_aggregates(pl.DataFrame(schema=EVENT_SCHEMA))
    for keep, expected in ((1, [("A", 0.5)]), (2, [("A", 0.5), ("B", 0.5)])):
        result, _ = session_seq_payload(
            empty["user_transitions"],
            empty["user_item_counts"],
            item_transitions,
            max_neighbors_per_item=keep,
        )
        assert result["transitions"] == [{"item_id": "P", "items": entries(*expected)}]
