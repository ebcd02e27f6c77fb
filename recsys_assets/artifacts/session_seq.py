"""Session-sequence payload (SPEC §4): what users and sessions move to next.

`users`: for each known user, each pair of consecutive events (in time order, within a day)
adds 1 to the score of the second item; scores are integers. The most active users (exposures
in user_item_counts, ties by id) are kept, and only users with at least one scored item
have a row.

`transitions`: item -> next items within sessions, weighted 1/gap for items up to
`artifacts.session_seq.window` steps ahead (the window is applied by the daily aggregation),
an item never being its own next item. Rows are kept for the most frequent predecessors,
measured by total outgoing weight (ties by id); neighbors are ranked by their rounded
score, then id.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from recsys_assets.artifacts.aggregates import TRANSITION_UNIT
from recsys_assets.artifacts.envelope import json_scores, round_scores
from recsys_assets.artifacts.ranking import check_cap, codes, most_active, nest, top_k_per_row


def session_seq_payload(
    user_transitions: pl.DataFrame,
    user_item_counts: pl.DataFrame,
    item_transitions: pl.DataFrame,
    *,
    max_users: int = 100_000,
    max_items_per_user: int = 50,
    max_neighbors_per_item: int = 50,
    max_items_per_artifact: int = 1000,
) -> tuple[dict[str, Any], dict[str, int]]:
    """`{"users": [...], "transitions": [...]}` from merged aggregates, and stats.

    users: `[{"user_id", "items": [{"item_id", "score"}]}]` sorted by user id, at most
    max_users (artifacts.session_seq.max_users), each with at most max_items_per_user items
    by score descending, then id. transitions: `[{"item_id", "items": [{"item_id",
    "score"}]}]` sorted by item id, at most max_items_per_artifact rows, each with at most
    max_neighbors_per_item items.

    Stats: users (with a scored item), users_written, transition_items (items with a next
    item), transition_rows_written.
    """
    check_cap("artifacts.session_seq.max_users", max_users)
    check_cap("limits.max_items_per_user", max_items_per_user)
    check_cap("limits.max_neighbors_per_item", max_neighbors_per_item)
    check_cap("limits.max_items_per_artifact", max_items_per_artifact)
    users, user_stats = _users(user_transitions, user_item_counts, max_users, max_items_per_user)
    transitions, transition_stats = _transitions(
        item_transitions, max_neighbors_per_item, max_items_per_artifact
    )
    return {"users": users, "transitions": transitions}, {**user_stats, **transition_stats}


def _users(
    user_transitions: pl.DataFrame, user_item_counts: pl.DataFrame, cap: int, per_user: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    activity = user_item_counts.group_by("user_id").agg(activity=pl.col("count").sum())
    scored = (
        user_transitions.select(pl.col("user_id").unique())
        .join(activity, on="user_id", how="left")
        .with_columns(pl.col("activity").fill_null(0))
    )
    kept = most_active(scored, key="user_id", activity="activity", k=cap)["user_id"]
    rows = user_transitions.filter(pl.col("user_id").is_in(kept.implode()))
    items = rows["item_id"].unique().sort()
    user = codes(rows["user_id"], kept, "user_transitions.user_id")
    item = codes(rows["item_id"], items, "user_transitions.item_id")
    count = rows["count"].to_numpy()
    top = top_k_per_row(user, count, item, per_user)
    nested = nest(
        kept.gather(user[top]),
        items.gather(item[top]).to_list(),
        count[top].tolist(),
        row_key="user_id",
        list_key="items",
        value_key="score",
    )
    return nested, {"users": scored.height, "users_written": len(nested)}


def _transitions(
    item_transitions: pl.DataFrame, per_item: int, cap: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    outgoing = item_transitions.group_by("item_id").agg(activity=pl.col("weight_units").sum())
    kept = most_active(outgoing, key="item_id", activity="activity", k=cap)["item_id"]
    rows = item_transitions.filter(pl.col("item_id").is_in(kept.implode()))
    following = rows["next_item_id"].unique().sort()
    item = codes(rows["item_id"], kept, "item_transitions.item_id")
    following_code = codes(rows["next_item_id"], following, "item_transitions.next_item_id")
    score = round_scores(rows["weight_units"].to_numpy() / TRANSITION_UNIT)
    top = top_k_per_row(item, score, following_code, per_item)
    nested = nest(
        kept.gather(item[top]),
        following.gather(following_code[top]).to_list(),
        json_scores(score[top]),
        row_key="item_id",
        list_key="items",
        value_key="score",
    )
    return nested, {"transition_items": outgoing.height, "transition_rows_written": len(nested)}
