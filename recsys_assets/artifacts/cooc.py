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

from recsys_assets.aggregates.coded import Coded, columns_with_entries, positions
from recsys_assets.aggregates.daily import Aggregate, as_coded
from recsys_assets.artifacts.kernels import (
    anchor_columns,
    anchor_floors,
    anchor_top,
    csr_arrays,
    grouped_order,
)
from recsys_assets.artifacts.ranking import check_cap, ids_at, nest
from recsys_assets.compiled import frozen, on_threads, spans


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
    cooc_pairs aggregate, coded (in any order of its ids, which may include ids without an
    entry: a window hands over its sum in the tenant's codes) or as a frame.

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
    # Item codes (positions in item_counts, -1 for none) of the pairs' first and second ids.
    first_item = positions(supported.rows, items)
    second_item = positions(supported.columns, items)
    matrix = supported.matrix
    used_rows = first_item[np.diff(matrix.indptr) > 0]
    used_columns = second_item[columns_with_entries(matrix)]
    if (used_rows < 0).any() or (used_columns < 0).any():
        raise ValueError("cooc_pairs has ids missing from item_counts")
    # The items with a neighbor; the anchors are the most exposed of them.
    has_neighbor = np.zeros(items.len(), dtype=bool)
    has_neighbor[used_rows] = True
    has_neighbor[used_columns] = True
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
    pairs: Coded,
    first_item: np.ndarray,
    second_item: np.ndarray,
    anchors: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor, neighbor, count) item codes of each anchor's k best neighbors, by anchor,
    then count descending, then neighbor.

    A pair is stored once, so an anchor's neighbors are its row (pairs where it comes first)
    plus its column (where it comes second): the anchors' columns are gathered in one pass
    over the pairs (`kernels.anchor_columns`), then each anchor's row and column are ranked
    on their own, on the threads (`kernels.anchor_top`), rather than materializing tens of
    millions of (anchor, neighbor) rows.
    """
    if pairs.nnz and pairs.matrix.data.min() < 0:
        raise ValueError("cooc_pairs counts must be >= 0")
    # Position of each anchor in the pairs' row dictionary (-1: none), and each pairs'
    # column's anchor slot (-1: not an anchor). Item -1 (an id without an entry) reads the
    # -1 appended last.
    largest = max(first_item.max(initial=-1), second_item.max(initial=-1), anchors.max(initial=-1))
    slot_of_item = np.full(largest + 2, -1)
    slot_of_item[anchors] = np.arange(anchors.size)
    anchor_rows = np.full(anchors.size, -1)
    in_rows = slot_of_item[first_item]
    anchor_rows[in_rows[in_rows >= 0]] = np.flatnonzero(in_rows >= 0)
    matrix = csr_arrays(pairs.matrix)
    column_slot = frozen(slot_of_item[second_item], np.int64)
    anchor_rows = frozen(anchor_rows, np.int64)
    row_sizes = np.where(anchor_rows >= 0, np.diff(matrix.indptr)[anchor_rows], 0)
    floors = np.empty(anchors.size, dtype=np.int64)
    by_rows = spans(np.concatenate(([0], np.cumsum(row_sizes))), 1 << 20)
    on_threads(anchor_floors, by_rows, anchor_rows, matrix, k, floors)
    # The anchors' columns, gathered by blocks of rows, then grouped by slot (in row order).
    parts = on_threads(anchor_columns, spans(matrix.indptr, 1 << 22), matrix, column_slot, floors)
    slots, rows, found = (
        np.concatenate([np.zeros(0, np.int64), *(part[index] for part in parts)])
        for index in range(3)
    )
    column_starts = np.zeros(anchors.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(slots, minlength=anchors.size), out=column_starts[1:])
    order = grouped_order(frozen(slots, np.int64), column_starts[:-1].copy())
    rows, found = rows[order], found[order]
    columns = (frozen(column_starts, np.int64), frozen(rows, np.int64), frozen(found, np.int64))
    sizes = np.minimum(row_sizes + np.diff(columns[0]), k)
    out_indptr = np.concatenate(([0], np.cumsum(sizes)))
    neighbor, count = np.empty(out_indptr[-1], np.int64), np.empty(out_indptr[-1], np.int64)
    items = (frozen(first_item, np.int64), frozen(second_item, np.int64))
    arguments = (anchor_rows, matrix, *columns, *items, k)
    on_threads(anchor_top, spans(out_indptr, 1 << 16), *arguments, out_indptr, neighbor, count)
    return np.repeat(anchors, sizes), neighbor, count
