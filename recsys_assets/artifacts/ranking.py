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
import orjson
import polars as pl

from recsys_assets.artifacts.envelope import EncodedList


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
    candidates = None
    if row.size > 4 * k * np.count_nonzero(np.bincount(row - row.min())):
        # Long rows: first keep what reaches each row's k-th largest value.
        candidates = reaching(row, value, k)
        row, value, tie = row[candidates], value[candidates], tie[candidates]
    order = _row_value_tie_order(row, _descending_rank(value), tie)
    # Sorted by row first: each row's run starts where the counts of the rows before end.
    base = int(row.min())
    counts = np.bincount(row - base if base else row)
    starts = np.cumsum(counts) - counts
    kept = order[np.arange(order.size) < np.repeat(starts + k, counts)]
    return kept if candidates is None else candidates[kept]


def reaching(row: np.ndarray, value: np.ndarray, k: int, slack: int | float = 0) -> np.ndarray:
    """Indices of the entries whose value is at least their row's k-th largest minus `slack`:
    all that a top-k of the row can keep, also after a transformation of the values that
    moves none of them by more than `slack` / 2 (rounding)."""
    if row.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(value >= _kth_largest(row, value, k) - slack)


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
    """The order by row, rank, tie; `rank` (fresh from `_descending_rank`) is overwritten.

    The three are packed into one int64 key, built in place: temporaries of millions of
    entries cost more than the arithmetic.
    """
    row_base, tie_base = int(row.min()), int(tie.min())
    widths = [
        (int(row.max()) - row_base).bit_length(),
        int(rank.max()).bit_length(),
        (int(tie.max()) - tie_base).bit_length(),
    ]
    if sum(widths) > 63:
        return np.lexsort((tie, rank, row))
    key = row.astype(np.int64)
    key -= row_base
    key <<= widths[1] + widths[2]
    rank <<= widths[2]
    key |= rank
    key += tie  # the low bits are zero: adding is or-ing
    key -= tie_base
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


_NEST_PART = 1 << 18  # entries per part of a `nest_json` list (~8 MB of JSON)


def nest_json(
    rows: pl.Series,
    row: np.ndarray,
    items: pl.Series,
    item: np.ndarray,
    values: np.ndarray,
    *,
    row_key: str,
    list_key: str,
    value_key: str,
) -> EncodedList:
    """`nest` for integer values, written straight to JCS bytes (see `EncodedList`).

    Entry i is (rows[row[i]], items[item[i]], values[i]); `row` is non-decreasing and every
    position of `rows` has an entry. Each entry's text carries what comes before it (its row's
    opening, for a row's first entry) and after it (`,`, or its row's closing), so the array
    is one join of one string column: no dict per entry, no intermediate text per row.
    """
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"nest_json writes integer values, got {values.dtype}")
    if row.size == 0:
        return EncodedList(b"[]", 0)
    if np.abs(values).max() > 2**53 - 1:
        raise ValueError("values beyond 2**53 - 1 have no exact JSON form (RFC 8785)")
    first = np.r_[True, row[1:] != row[:-1]]
    if np.count_nonzero(first) != rows.len():
        raise ValueError(f"{rows.len()} rows but entries for {np.count_nonzero(first)}")
    # A row is `{"user_id":"u","items":[` entries `]}`, members in JCS order; the array's
    # `[` opens the first row and its `]` closes the last.
    ids = json_strings(rows)
    key, list_name = orjson.dumps(row_key).decode(), orjson.dumps(list_key).decode()
    same = pl.Series([""] * rows.len())
    if list_key < row_key:
        openings, closings = same + f"{{{list_name}:[", f"],{key}:" + ids + "}"
    else:
        openings, closings = f"{{{key}:" + ids + f",{list_name}:[", same + "]}"
    openings = pl.concat([pl.Series(["["]), same.slice(1)]) + openings
    closings = closings + pl.Series([","] * (rows.len() - 1) + ["]"])
    frame = pl.DataFrame(
        {
            "item": item,
            "value": values,
            "row": np.cumsum(first) - 1,
            "first": first,
            "last": np.r_[first[1:], True],
        }
    )
    # One concatenation of all the pieces: each intermediate column would be a copy.
    member = {"item_id": pl.lit(json_strings(items)).gather(pl.col("item"))}
    text = pl.concat_str(
        [
            pl.lit(openings).gather(pl.when(pl.col("first")).then(pl.col("row"))),
            *_object_parts({**member, value_key: pl.col("value").cast(pl.String)}),
            pl.lit(closings).gather(pl.when(pl.col("last")).then(pl.col("row"))).fill_null(","),
        ],
        ignore_nulls=True,
    ).str.join("")
    # Written in parts of _NEST_PART entries, two at a time: a part's temporaries are small
    # and reused, where the whole list at once would hold several columns of its size
    # (fresh memory is slow to touch on a virtual machine). Each entry's text carries its
    # row's opening and closing, so the parts can end anywhere.
    ends = [*range(_NEST_PART, row.size, _NEST_PART), row.size]
    queries = [
        frame.lazy().slice(start, end - start).select(text)
        for start, end in zip([0, *ends[:-1]], ends, strict=True)
    ]
    # Straight to bytes: a Python str would be one more copy (a cast inside the select costs
    # several).
    parts = [part.to_series().cast(pl.Binary).item() for part in pl.collect_all(queries)]
    return EncodedList(parts, rows.len())


def json_strings(ids: pl.Series) -> pl.Series:
    """Each string as its JSON literal, quoted and escaped as orjson (and JCS) write it."""
    return pl.Series([orjson.dumps(value).decode() for value in ids.to_list()], dtype=pl.String)


def _object_parts(members: dict[str, pl.Expr]) -> list[pl.Expr]:
    """The pieces of a JSON object's text from its members' JSON texts, keys sorted as JCS
    sorts them; `pl.concat_str` of them is the object."""
    parts: list[pl.Expr] = []
    for position, key in enumerate(sorted(members)):
        opening = "{" if position == 0 else ","
        parts += [pl.lit(f"{opening}{orjson.dumps(key).decode()}:"), members[key]]
    return [*parts, pl.lit("}")]


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
