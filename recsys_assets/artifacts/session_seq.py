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

import numpy as np

from recsys_assets.aggregates.coded import Coded, positions
from recsys_assets.aggregates.daily import TRANSITION_UNIT, Aggregate, as_coded
from recsys_assets.artifacts.envelope import (
    SCORE_DECIMALS,
    EncodedList,
    json_scores,
    round_scores,
)
from recsys_assets.artifacts.ranking import (
    check_cap,
    ids_at,
    most_active,
    nest,
    nest_json,
    reaching_of_rows,
    top_k_of_rows,
    top_k_per_row,
)


def session_seq_payload(
    user_transitions: Aggregate,
    user_item_counts: Aggregate,
    item_transitions: Aggregate,
    *,
    max_users: int = 100_000,
    max_items_per_user: int = 50,
    max_neighbors_per_item: int = 50,
    max_items_per_artifact: int = 1000,
) -> tuple[dict[str, Any], dict[str, int]]:
    """`{"users": [...], "transitions": [...]}` from merged aggregates (coded or frames).

    Of user_item_counts only each user's total is read (who is most active), so its row
    totals (`Coded.totals`, the window's `user_activity`) serve as well as the whole.

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
    users, user_stats = _users(
        as_coded("user_transitions", user_transitions),
        as_coded("user_item_counts", user_item_counts),
        max_users,
        max_items_per_user,
    )
    transitions, transition_stats = _transitions(
        as_coded("item_transitions", item_transitions),
        max_neighbors_per_item,
        max_items_per_artifact,
    )
    return {"users": users, "transitions": transitions}, {**user_stats, **transition_stats}


def _users(
    user_transitions: Coded,
    user_item_counts: Coded,
    cap: int,
    per_user: int,
) -> tuple[EncodedList, dict[str, int]]:
    # Each scored user's exposures (0 for none): both id lists are sorted, so a binary
    # search finds them, where a join would hash a million ids.
    at = positions(user_transitions.rows, user_item_counts.rows)
    activity = np.zeros(at.size, dtype=np.int64)
    activity[at >= 0] = user_item_counts.row_sums()[at[at >= 0]]
    # Codes follow ids, so ranking by code breaks ties by id.
    kept = most_active(activity, cap)
    user, item, count = top_k_of_rows(user_transitions, kept, per_user)
    # Every kept user has a scored item, so each position of `kept` has a row.
    nested = nest_json(
        user_transitions.rows.gather(kept),
        user,
        user_transitions.columns,
        item,
        count,
        row_key="user_id",
        list_key="items",
        value_key="score",
    )
    return nested, {"users": user_transitions.rows.len(), "users_written": len(nested)}


def _transitions(
    item_transitions: Coded, per_item: int, cap: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    kept = most_active(item_transitions.row_sums(), cap)
    # Rounding moves a score by half a step (10**-6) at most: only the entries within two
    # steps of their row's k-th largest can be kept, and only they are rounded (the top
    # rows hold millions of entries).
    step = TRANSITION_UNIT * 10.0**-SCORE_DECIMALS
    item, following, units = reaching_of_rows(item_transitions, kept, per_item, 2 * step)
    score = round_scores(units / TRANSITION_UNIT)
    top = top_k_per_row(item, score, following, per_item)
    nested = nest(
        item_transitions.rows.gather(kept[item[top]]),
        ids_at(item_transitions.columns, following[top]),
        json_scores(score[top]),
        row_key="item_id",
        list_key="items",
        value_key="score",
    )
    return nested, {
        "transition_items": item_transitions.rows.len(),
        "transition_rows_written": len(nested),
    }
