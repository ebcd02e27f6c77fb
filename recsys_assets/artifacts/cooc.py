"""Co-occurrence payload (SPEC §4): items seen in the same session as each anchor.

Input is the merged `cooc_pairs` aggregate (each unordered pair once, counted once per
session, crawler sessions already left out by the daily aggregation), the merged `cooc_stats`
and the merged `item_counts` (exposure, which ranks anchors for the row cap). Only the pairs
touching a kept anchor are expanded, so a 28-day window of ~50M pairs costs one pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from recsys_assets.artifacts.aggregates import Aggregate, as_coded
from recsys_assets.artifacts.coded import Coded
from recsys_assets.artifacts.ranking import check_cap, codes, ids_at, nest


def cooc_payload(
    pairs: Aggregate,
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
    max_neighbors_per_item neighbors by count descending, then id. `pairs` is the merged
    cooc_pairs aggregate, coded or as a frame.

    Stats: sessions, events, excluded_sessions, excluded_events, excluded_event_ratio (the
    SPEC §6 guard: events of excluded sessions / all events, 0 without events), pairs
    (unordered pairs meeting the support), rows_written, neighbors_written.
    """
    check_cap("limits.min_cooc_support", min_cooc_support)
    check_cap("limits.max_neighbors_per_item", max_neighbors_per_item)
    check_cap("limits.max_items_per_artifact", max_items_per_artifact)
    if stats.height != 1:
        raise ValueError(f"cooc_stats must have one row (merge the days first), got {stats.height}")
    supported = as_coded("cooc_pairs", pairs)
    if min_cooc_support > 1:
        supported = supported.where(supported.matrix.data >= min_cooc_support)
    by_id = item_counts.sort("item_id")
    items = by_id["item_id"]
    what = "cooc_pairs has ids missing from item_counts"
    # Item codes (positions in item_counts) of the pairs' first and second ids.
    first_item = codes(supported.rows, items, what)
    second_item = codes(supported.columns, items, what)
    # Every id of a canonical coded aggregate has an entry, so these are the items with a
    # neighbor; the anchors are the most exposed of them.
    has_neighbor = np.zeros(items.len(), dtype=bool)
    has_neighbor[first_item] = True
    has_neighbor[second_item] = True
    by_exposure = np.lexsort((np.arange(items.len()), -by_id["count"].to_numpy()))
    anchors = by_exposure[has_neighbor[by_exposure]][:max_items_per_artifact]
    anchor, neighbor, counts = _top_neighbors(
        supported, first_item, second_item, np.sort(anchors), max_neighbors_per_item
    )
    rows = nest(
        items.gather(anchor),
        ids_at(items, neighbor),
        counts.tolist(),
        row_key="item_id",
        list_key="items",
        value_key="count",
    )
    totals = {name: int(stats[name][0]) for name in stats.columns}
    events = totals["events"]
    return {"neighbors": rows}, {
        **totals,
        "excluded_event_ratio": totals["excluded_events"] / events if events else 0.0,
        "pairs": supported.nnz,
        "rows_written": len(rows),
        "neighbors_written": int(counts.size),
    }


def _top_neighbors(
    pairs: Coded, first_item: np.ndarray, second_item: np.ndarray, anchors: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor, neighbor, count) item codes of each anchor's k best neighbors, by anchor,
    then count descending, then neighbor.

    A pair is stored once, so an anchor's neighbors are its row (pairs where it comes first)
    plus its column (where it comes second). Popular anchors pair with most items, so this
    goes anchor by anchor (at most max_items_per_artifact of them) over slices of the CSR
    and CSC forms, rather than materializing tens of millions of (anchor, neighbor) rows.
    """
    is_anchor = np.zeros(max(first_item.max(initial=-1), second_item.max(initial=-1)) + 1, bool)
    is_anchor[anchors] = True
    # Position of an anchor in the pairs' row dictionary, and in the anchor columns.
    row_of = {item: code for code, item in enumerate(first_item.tolist()) if is_anchor[item]}
    anchor_columns = np.flatnonzero(is_anchor[second_item])
    column_of = {item: code for code, item in enumerate(second_item[anchor_columns].tolist())}
    by_row = pairs.matrix
    by_column = pairs.matrix[:, anchor_columns].tocsc()  # a CSC of all pairs costs seconds
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for item in anchors.tolist():
        neighbors, counts = [], []
        if item in row_of:
            lo, hi = by_row.indptr[row_of[item]], by_row.indptr[row_of[item] + 1]
            neighbors.append(second_item[by_row.indices[lo:hi]])
            counts.append(by_row.data[lo:hi])
        if item in column_of:
            lo, hi = by_column.indptr[column_of[item]], by_column.indptr[column_of[item] + 1]
            neighbors.append(first_item[by_column.indices[lo:hi]])
            counts.append(by_column.data[lo:hi])
        neighbor, count = np.concatenate(neighbors), np.concatenate(counts)
        if count.size > k:  # only what reaches the k-th largest count can be kept
            reaching = count >= np.partition(count, count.size - k)[count.size - k]
            neighbor, count = neighbor[reaching], count[reaching]
        best = np.lexsort((neighbor, -count))[:k]
        parts.append((np.full(best.size, item), neighbor[best], count[best]))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    anchor, neighbor, count = (np.concatenate(column) for column in zip(*parts, strict=True))
    return anchor, neighbor, count
