"""Ordering, top-K and nesting shared by the payload builders.

Every list in an artifact is sorted with an explicit tie-break on the id (ascending, by code
point, which is also polars' byte order for UTF-8 strings), so the bytes are reproducible.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import polars as pl


def check_cap(name: str, value: object) -> None:
    """Refuse a cap or limit that is not an integer >= 1, naming its config key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def codes(values: pl.Series, categories: pl.Series, what: str) -> np.ndarray:
    """Position of each value in `categories` (sorted, unique ids) as int64.

    Ids sort the same way as their codes, so sorting codes sorts ids.
    """
    try:
        return values.cast(pl.Enum(categories)).to_physical().cast(pl.Int64).to_numpy()
    except pl.exceptions.InvalidOperationError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def ids_at(ids: pl.Series, positions: np.ndarray) -> list[str]:
    """`ids.gather(positions).to_list()`, sharing one Python string per distinct id: a few
    times faster and smaller for the millions of entries of a big artifact."""
    return np.array(ids.to_list(), dtype=object)[positions].tolist()


def top_k_per_row(row: np.ndarray, value: np.ndarray, tie: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` entries with the largest `value` in each row, ties by smallest `tie`.

    The result is ordered by row, then value descending, then tie ascending; (row, tie)
    pairs must be unique. One stable sort of a packed (row, value rank, tie) int64 key does
    the work when the three fit in 63 bits, a lexsort otherwise.
    """
    if row.size == 0:
        return np.zeros(0, dtype=np.int64)
    candidates = np.arange(row.size)
    if row.size > 4 * k * np.count_nonzero(np.bincount(row - row.min())):
        # Long rows: first keep what reaches each row's k-th largest value.
        candidates = np.flatnonzero(value >= _kth_largest(row, value, k))
    row, value, tie = row[candidates], value[candidates], tie[candidates]
    order = _row_value_tie_order(
        row.astype(np.int64), _descending_rank(value), tie.astype(np.int64)
    )
    ordered_rows = row[order]
    first = np.flatnonzero(np.r_[True, ordered_rows[1:] != ordered_rows[:-1]])
    rank = np.arange(order.size) - np.repeat(first, np.diff(np.r_[first, order.size]))
    return candidates[order[rank < k]]


def _kth_largest(row: np.ndarray, value: np.ndarray, k: int) -> np.ndarray:
    """Each entry's row's k-th largest value (its smallest for shorter rows).

    Rows given grouped (non-decreasing), and few of them long, are cut one by one with
    np.partition; otherwise a grouped top-k in polars does it.
    """
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    ends = np.r_[starts[1:], row.size]
    long_rows = np.flatnonzero(ends - starts > k)
    if long_rows.size <= 20_000 and np.all(row[1:] >= row[:-1]):
        floor = np.full(
            starts.size, np.iinfo(np.int64).min if value.dtype.kind in "iu" else -np.inf
        )
        for index in long_rows.tolist():
            part = value[starts[index] : ends[index]]
            floor[index] = np.partition(part, part.size - k)[part.size - k]
        return np.repeat(floor, ends - starts)
    frame = pl.DataFrame({"row": row, "value": value})
    threshold = frame.group_by("row").agg(pl.col("value").top_k(k).min())
    floor = np.zeros(int(row.max()) + 1, dtype=value.dtype)
    floor[threshold["row"].to_numpy()] = threshold["value"].to_numpy()
    return floor[row]


def _descending_rank(value: np.ndarray) -> np.ndarray:
    """Non-negative int64 that orders like `value` descending (equal values, equal ranks)."""
    if np.issubdtype(value.dtype, np.integer):
        return value.max() - value.astype(np.int64)
    # Scores rounded to 6 decimals map exactly to integers; anything else gets dense ranks.
    scaled = np.rint(value * 1e6)
    if np.abs(scaled).max() < 2**52 and np.array_equal(scaled / 1e6, value):
        return (scaled.max() - scaled).astype(np.int64)
    return np.unique(-value, return_inverse=True)[1].astype(np.int64)


def _row_value_tie_order(row: np.ndarray, rank: np.ndarray, tie: np.ndarray) -> np.ndarray:
    row, tie = row - row.min(), tie - tie.min()
    widths = [int(part.max()).bit_length() for part in (row, rank, tie)]
    if sum(widths) > 63:
        return np.lexsort((tie, rank, row))
    key = (row << (widths[1] + widths[2])) | (rank << widths[2]) | tie
    return np.argsort(key, kind="stable")


def most_active(frame: pl.DataFrame, *, key: str, activity: str, k: int) -> pl.DataFrame:
    """The `k` rows with the largest `activity`, ties by `key` ascending; sorted by `key`."""
    return frame.sort([activity, key], descending=[True, False]).head(k).sort(key)


def nest(
    groups: pl.Series,
    item_ids: list[str],
    values: list[Any],
    *,
    row_key: str,
    list_key: str,
    value_key: str,
) -> list[dict[str, Any]]:
    """Rows `{row_key: group, list_key: [{"item_id", value_key}]}` from entries sorted by group.

    `groups`, `item_ids` and `values` are parallel; equal groups are consecutive.
    """
    runs = groups.rle()
    with gc_paused():
        entries = [
            {"item_id": item_id, value_key: value}
            for item_id, value in zip(item_ids, values, strict=True)
        ]
        rows = []
        start = 0
        for group, length in zip(
            runs.struct.field("value").to_list(), runs.struct.field("len").to_list(), strict=True
        ):
            rows.append({row_key: group, list_key: entries[start : start + length]})
            start += length
    return rows


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of acyclic dicts.

    Each collection would walk every object built so far; nothing built here is cyclic.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
