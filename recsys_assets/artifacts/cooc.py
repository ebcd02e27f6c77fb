"""Co-occurrence payload (SPEC §4): items seen in the same session as each anchor.

Input is the merged `cooc_pairs` aggregate (each unordered pair once, counted once per
session, crawler sessions already left out by the daily aggregation), the merged `cooc_stats`
and the merged `item_counts` (exposure, which ranks anchors for the row cap).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from recsys_assets.artifacts.ranking import check_cap, codes, nest, top_k_per_row


def cooc_payload(
    pairs: pl.DataFrame,
    stats: pl.DataFrame,
    item_counts: pl.DataFrame,
    *,
    min_cooc_support: int = 1,
    max_neighbors_per_item: int = 50,
    max_items_per_artifact: int = 1000,
) -> tuple[dict[str, Any], dict[str, int | float]]:
    """`{"neighbors": [{"item_id", "items": [{"item_id", "count"}]}]}` and stats.

    A pair counts when its count >= min_cooc_support. Rows are the anchors with at least one
    such neighbor, at most max_items_per_artifact of them, the most exposed first (exposure
    from item_counts, ties by id), written sorted by anchor id; each keeps its
    max_neighbors_per_item neighbors by count descending, then id.

    Stats: sessions, events, excluded_sessions, excluded_events, excluded_event_ratio (the
    SPEC §6 guard: events of excluded sessions / all events, 0 without events), pairs
    (unordered pairs meeting the support), rows_written, neighbors_written.
    """
    check_cap("limits.min_cooc_support", min_cooc_support)
    check_cap("limits.max_neighbors_per_item", max_neighbors_per_item)
    check_cap("limits.max_items_per_artifact", max_items_per_artifact)
    if stats.height != 1:
        raise ValueError(f"cooc_stats must have one row (merge the days first), got {stats.height}")
    supported = (
        pairs if min_cooc_support <= 1 else pairs.filter(pl.col("count") >= min_cooc_support)
    )
    by_id = item_counts.sort("item_id")
    items = by_id["item_id"]
    anchors, first, second, count = _exposed_anchors(
        supported, items, by_id["count"].to_numpy(), max_items_per_artifact
    )
    # Both directions of every pair that touches a kept anchor, anchor first.
    is_anchor = np.zeros(items.len(), dtype=bool)
    is_anchor[anchors] = True
    forward, backward = is_anchor[first], is_anchor[second]
    anchor = np.concatenate([first[forward], second[backward]])
    neighbor = np.concatenate([second[forward], first[backward]])
    counts = np.concatenate([count[forward], count[backward]])
    top = top_k_per_row(anchor, counts, neighbor, max_neighbors_per_item)
    rows = nest(
        items.gather(anchor[top]),
        items.gather(neighbor[top]).to_list(),
        counts[top].tolist(),
        row_key="item_id",
        list_key="items",
        value_key="count",
    )
    totals = {name: int(stats[name][0]) for name in stats.columns}
    events = totals["events"]
    return {"neighbors": rows}, {
        **totals,
        "excluded_event_ratio": totals["excluded_events"] / events if events else 0.0,
        "pairs": supported.height,
        "rows_written": len(rows),
        "neighbors_written": int(top.size),
    }


def _exposed_anchors(
    pairs: pl.DataFrame, items: pl.Series, exposure: np.ndarray, cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Codes of the `cap` most exposed items with a neighbor, and the pairs touching them.

    Candidates are taken by exposure, four times more each round until `cap` of them have
    a neighbor or none are left: one pass over the pairs per round, usually a single round.
    Returns (anchor codes, first codes, second codes, counts) of the touching pairs.
    """
    by_exposure = np.lexsort((np.arange(items.len()), -exposure))
    size = cap
    while True:
        candidates = by_exposure[:size]
        names = items.gather(candidates).implode()
        linked = pairs.filter(pl.col("item_id").is_in(names) | pl.col("neighbor_id").is_in(names))
        what = "cooc_pairs has ids missing from item_counts"
        first = codes(linked["item_id"], items, what)
        second = codes(linked["neighbor_id"], items, what)
        has_neighbor = np.zeros(items.len(), dtype=bool)
        has_neighbor[first] = True
        has_neighbor[second] = True
        anchors = candidates[has_neighbor[candidates]][:cap]
        if anchors.size == cap or size >= items.len():
            return anchors, first, second, linked["count"].to_numpy()
        size *= 4
