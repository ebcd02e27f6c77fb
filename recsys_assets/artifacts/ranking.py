"""Ordering, top-K and nesting shared by the payload builders.

Every list in an artifact is sorted with an explicit tie-break on the id (ascending, by code
point, which is also polars' byte order for UTF-8 strings), so the bytes are reproducible.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import polars as pl

from recsys_assets.artifacts.envelope import SCORE_DECIMALS, EncodedList
from recsys_assets.artifacts.kernels import (
    csr_arrays,
    nested_json,
    reaching_rows,
    top_k_rows,
)
from recsys_assets.compiled import frozen, on_threads, spans

if TYPE_CHECKING:
    from recsys_assets.aggregates.coded import Coded


def check_cap(name: str, value: object) -> None:
    """Refuse a cap or limit that is not an integer >= 1, naming its config key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


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


def reaching(row: np.ndarray, value: np.ndarray, k: int) -> np.ndarray:
    """Indices of the entries whose value is at least their row's k-th largest: all that a
    top-k of the row can keep."""
    if row.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(value >= _kth_largest(row, value, k))


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


def most_active(activity: np.ndarray, k: int) -> np.ndarray:
    """Positions of the `k` largest `activity` values, ties by smaller position, sorted.

    One partition of packed (activity rank, position) int64 keys for non-negative integers
    (a million users in a few ms), a lexsort otherwise.
    """
    size = activity.size
    if size <= k:
        return np.arange(size)
    position_bits = int(size - 1).bit_length()
    if np.issubdtype(activity.dtype, np.integer) and activity.min() >= 0:
        largest = int(activity.max())
        if largest.bit_length() + position_bits <= 62:
            key = (largest - activity.astype(np.int64)) << position_bits
            key |= np.arange(size)
            return np.sort(np.partition(key, k - 1)[:k] & ((1 << position_bits) - 1))
    return np.sort(np.lexsort((np.arange(size), -activity))[:k])


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


_NEST_PART = 1 << 18
# Floats `nest_json` writes: below 2**33 (see there), with room to spare.
FIXED_LIMIT = 1e9  # entries per block of the row kernels below, on the threads


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
    """`nest`, written straight to JCS bytes (see `EncodedList`).

    Entry i is (rows[row[i]], items[item[i]], values[i]); `row` is non-decreasing and every
    position of `rows` has an entry. Values are integers, or floats already rounded to
    SCORE_DECIMALS (`round_scores`), >= 0 and below FIXED_LIMIT. The text is written once,
    into one buffer, by a compiled loop (`kernels.nested_json`) over blocks of rows on the
    threads: no dict per entry, no string column per piece.

    A rounded float v is written from the integer k = v * 10**6: below 2**33 two numbers of
    6 decimals are never the same double, so k / 10**6 without its trailing zeros is the
    shortest text that reads back as v, which is what JCS (ECMAScript) writes from 1e-6 on.
    """
    if row.size == 0:
        return EncodedList(b"[]", 0)
    decimals = 0
    if np.issubdtype(values.dtype, np.floating):
        if not (np.isfinite(values).all() and values.min() >= 0 and values.max() < FIXED_LIMIT):
            raise ValueError(f"nest_json writes floats in [0, {FIXED_LIMIT:g}), got others")
        decimals = SCORE_DECIMALS
        values = np.rint(values * 10.0**decimals).astype(np.int64)
    elif not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"nest_json writes integer or float values, got {values.dtype}")
    if np.abs(values).max() > 2**53 - 1:
        raise ValueError("values beyond 2**53 - 1 have no exact JSON form (RFC 8785)")
    if np.any(row[1:] < row[:-1]):
        raise ValueError("nest_json entries must come grouped by row, in row order")
    counts = np.bincount(row, minlength=rows.len())
    if counts.size != rows.len() or not counts.all():
        raise ValueError(f"{rows.len()} rows but entries for {np.count_nonzero(counts)}")
    entry_indptr = np.concatenate(([0], np.cumsum(counts)))
    # Members in JCS order: a row is `{"items":[...],"user_id":"u"}` or
    # `{"item_id":"i","items":[...]}`, an entry `{"count":1,"item_id":"i"}` or
    # `{"item_id":"i","score":1}`.
    key, list_name, value_name = (orjson.dumps(name) for name in (row_key, list_key, value_key))
    text_first = row_key < list_key
    if text_first:
        row_pieces = [b"{" + key + b":", b"," + list_name + b":[", b"]}", b""]
    else:
        row_pieces = [b"{" + list_name + b":[", b"", b"]," + key + b":", b"}"]
    value_first = value_key < "item_id"
    if value_first:
        entry_pieces = [b"{" + value_name + b":", b',"item_id":', b"}"]
    else:
        entry_pieces = [b'{"item_id":', b"," + value_name + b":", b"}"]
    arguments = [
        frozen(entry_indptr, np.int64),
        *_json_texts(rows),
        *_json_texts(items),
        frozen(item, np.int64),
        frozen(values, np.int64),
        *_joined(row_pieces),
        text_first,
        *_joined(entry_pieces),
        value_first,
        decimals,
    ]
    out_at = np.zeros(rows.len() + 1, dtype=np.int64)
    out_at[0] = 1  # after the array's `[`
    blocks = spans(entry_indptr, _NEST_PART)
    empty = np.zeros(0, dtype=np.uint8)
    on_threads(nested_json, blocks, *arguments, out_at, empty, False)
    np.cumsum(out_at, out=out_at)
    out = np.empty(int(out_at[-1]) + 1, dtype=np.uint8)
    out[0], out[-1] = ord("["), ord("]")
    on_threads(nested_json, blocks, *arguments, out_at, out, True)
    return EncodedList([memoryview(out)], rows.len())


def top_k_of_rows(
    matrix: Coded, kept: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position in `kept`, column, value) of the `k` largest values of each row `kept` of a
    coded matrix with values >= 0, by position, then value descending, then column.

    `top_k_per_row` of those rows' entries, without gathering them first: a compiled loop
    (`kernels.top_k_rows`) ranks each row on its own, on the threads.
    """
    if matrix.nnz and matrix.matrix.data.min() < 0:
        raise ValueError("top_k_of_rows ranks values >= 0")
    arrays = csr_arrays(matrix.matrix)
    lengths = np.diff(arrays.indptr)[kept]
    out_indptr = np.concatenate(([0], np.cumsum(np.minimum(lengths, k))))
    columns = np.empty(out_indptr[-1], dtype=np.int64)
    values = np.empty(out_indptr[-1], dtype=np.int64)
    arguments = (arrays, frozen(kept, np.int64), k)
    on_threads(top_k_rows, spans(out_indptr, _NEST_PART), *arguments, out_indptr, columns, values)
    position = np.repeat(np.arange(kept.size, dtype=np.int64), np.diff(out_indptr))
    return position, columns, values


def reaching_of_rows(
    matrix: Coded, kept: np.ndarray, k: int, slack: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position in `kept`, column, value) of the entries of the rows `kept` of a coded
    matrix whose value is at least their row's k-th largest minus `slack`, by position then
    column: all that a top-k of the row can keep, also after a change of the values that
    moves none by more than `slack` / 2 (rounding). The rows are not gathered first
    (`kernels.reaching_rows`); values come back in int64."""
    arrays = csr_arrays(matrix.matrix)
    arguments = (arrays, frozen(kept, np.int64), k, float(slack))
    at = np.zeros(kept.size + 1, dtype=np.int64)
    blocks = spans(np.concatenate(([0], np.cumsum(np.diff(arrays.indptr)[kept]))), _NEST_PART)
    empty = np.empty(0, dtype=np.int64)
    floors = np.empty(kept.size, dtype=np.float64)  # each row's, from the counting pass
    on_threads(reaching_rows, blocks, *arguments, floors, at, empty, empty, False)
    np.cumsum(at, out=at)
    columns, values = np.empty(at[-1], dtype=np.int64), np.empty(at[-1], dtype=np.int64)
    on_threads(reaching_rows, blocks, *arguments, floors, at, columns, values, True)
    return np.repeat(np.arange(kept.size, dtype=np.int64), np.diff(at)), columns, values


def _json_texts(ids: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each string's JSON literal, as orjson (and JCS) write it: (UTF-8 bytes, offsets)."""
    if ids.str.contains(r'[\x00-\x1f"\\]').any():  # some need escapes
        return _joined([orjson.dumps(value) for value in ids.to_list()])
    return utf8_texts('"' + ids + '"')


def utf8_texts(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The strings' UTF-8 bytes, one after the other, and where each starts (and the end),
    for the compiled loops (`frozen`)."""
    offsets = np.zeros(texts.len() + 1, dtype=np.int64)
    np.cumsum(texts.str.len_bytes().to_numpy(), out=offsets[1:])
    joined = texts.str.join("").cast(pl.Binary).item() if texts.len() else b""
    return frozen(np.frombuffer(joined, dtype=np.uint8), np.uint8), frozen(offsets, np.int64)


def _joined(texts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings as one uint8 array and the offsets where each starts (and the end)."""
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(text) for text in texts], out=offsets[1:])
    return np.frombuffer(b"".join(texts), dtype=np.uint8), frozen(offsets, np.int64)


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
