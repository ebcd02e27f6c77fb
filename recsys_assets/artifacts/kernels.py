"""Compiled loops (numba) for the passes that no array library makes in one go.

The big artifacts rank the rows of matrices of tens of millions of entries (each row's k
best, ties by column) and write millions of entries as JSON. With numpy each such step is
several passes, each leaving a temporary of the whole size (a sort of every entry, a
Python string per entry); the loops here read their inputs once and write each result once,
where it belongs. A matrix reaches them as `CsrArrays`.

They release the GIL (callers run blocks of rows on threads) and are compiled once per
machine (`cache=True`: the machine code is kept next to this file, or in numba's cache
folder when that is read-only). numba compiles a function again for each combination of
argument types, in seconds, so the callers hand arrays over `frozen`: read-only, and in
int64 but for the column codes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from recsys_assets.compiled import frozen


class CsrArrays(NamedTuple):
    """A CSR matrix as the compiled loops read it: entry e of row r (indptr[r] <= e <
    indptr[r + 1]) is in column indices[e], with value data[e]. Read-only; indptr and data
    in int64, indices in int32 (int64 beyond 2**31 entries)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray


def csr_arrays(matrix: Any) -> CsrArrays:
    """A scipy CSR matrix's arrays, `frozen` (see `CsrArrays`)."""
    return CsrArrays(
        frozen(matrix.indptr, np.int64),
        frozen(matrix.indices, matrix.indices.dtype),
        frozen(matrix.data, np.int64),
    )


@njit(nogil=True, cache=True)
def top_k_rows(low, high, matrix, rows, k, out_indptr, out_indices, out_values):
    """The k largest values of each of `rows` (positions low..high-1 of it) of a matrix
    held as `CsrArrays` with values >= 0, ties by smaller column, written from
    `out_indptr[position]` on: by value descending, then column."""
    for position in range(low, high):
        start, end, exact = _row(matrix, rows[position])
        best, columns = _best(exact, matrix.indices[start:end], k)
        out = out_indptr[position]
        out_values[out : out + best.size] = best
        out_indices[out : out + best.size] = columns


@njit(nogil=True, cache=True)
def reaching_rows(low, high, matrix, rows, k, slack, floors, at, columns, found, fill):
    """The entries of `rows` (positions low..high-1 of it) of a matrix held as
    `CsrArrays` whose value is at least their row's k-th largest minus `slack`
    (`ranking.reaching_of_rows`). Counting (`fill` false): each position's floor goes to
    `floors[position]`, its number of entries to `at[position + 1]`. Filling: their columns
    and values are written from `at[position]` on, in the row's order."""
    for position in range(low, high):
        start, end, exact = _row(matrix, rows[position])
        if not fill:
            floors[position] = -np.inf
            if end - start > k:
                part = np.partition(exact.astype(np.float64), end - start - k)
                floors[position] = part[end - start - k] - slack
        floor = floors[position]
        out = at[position] if fill else 0
        for entry in range(start, end):
            if exact[entry - start] >= floor:
                if fill:
                    columns[out] = matrix.indices[entry]
                    found[out] = exact[entry - start]
                out += 1
        if not fill:
            at[position + 1] = out


@njit(nogil=True, cache=True)
def anchor_floors(low, high, anchor_rows, matrix, k, floors):
    """For anchors low..high-1 (see `anchor_top`): the k-th largest value of the anchor's
    row when it has k entries or more, else 0. Nothing below it can be one of the anchor's
    k best, so `anchor_columns` leaves it out. The matrix is held as `CsrArrays`."""
    for anchor in range(low, high):
        row = anchor_rows[anchor]
        size = matrix.indptr[row + 1] - matrix.indptr[row] if row >= 0 else 0
        if size < k:
            floors[anchor] = 0
            continue
        part = _row(matrix, row)[2]
        floors[anchor] = np.partition(part, size - k)[size - k]


@njit(nogil=True, cache=True)
def anchor_columns(low, high, matrix, slot, floors):
    """The entries of rows low..high-1 of a matrix held as `CsrArrays` in the
    columns that have a `slot` (-1 for none) and a value >= the slot's floor, in row
    order: (slot, row, value) arrays.

    One pass over the entries, by blocks on the threads: a CSC of the whole matrix is not
    needed for a thousand columns, nor a copy of their entries that cannot rank. Few
    entries pass, so the arrays start small and grow by doubling."""
    indptr, indices, values = matrix
    size = 0
    slots = np.empty(1024, dtype=np.int64)
    rows = np.empty(1024, dtype=np.int64)
    found = np.empty(1024, dtype=np.int64)
    for row in range(low, high):
        for entry in range(indptr[row], indptr[row + 1]):
            value = values[entry]
            column_slot = slot[indices[entry]]
            if column_slot < 0 or value < floors[column_slot]:
                continue
            if size == slots.size:
                slots, rows, found = _doubled(slots), _doubled(rows), _doubled(found)
            slots[size] = column_slot
            rows[size] = row
            found[size] = value
            size += 1
    return slots[:size], rows[:size], found[:size]


@njit(nogil=True, cache=True)
def _doubled(array):
    grown = np.empty(2 * array.size, dtype=array.dtype)
    grown[: array.size] = array
    return grown


@njit(nogil=True, cache=True)
def grouped_order(keys, starts):
    """The stable order of `keys` by key (a counting sort): `starts[key]` is where key's
    run begins (the counts' running sum); it is overwritten."""
    order = np.empty(keys.size, dtype=np.int64)
    for position in range(keys.size):
        order[starts[keys[position]]] = position
        starts[keys[position]] += 1
    return order


@njit(nogil=True, cache=True)
def anchor_top(
    low,
    high,
    anchor_rows,
    matrix,
    column_starts,
    column_rows,
    column_values,
    first_item,
    second_item,
    k,
    out_indptr,
    out_neighbors,
    out_counts,
):
    """The k best neighbors of anchors low..high-1 of a symmetric relation stored once per
    pair: an anchor's row in the matrix (held as `CsrArrays`: its pairs as first
    item; `anchor_rows` gives the row, -1 for none) and its column (as second item, from
    `anchor_columns`). By count descending, then neighbor item code; written from
    `out_indptr[anchor]` on."""
    for anchor in range(low, high):
        row = anchor_rows[anchor]
        if row >= 0:
            start, end, exact = _row(matrix, row)
        else:
            start, end, exact = 0, 0, np.zeros(0, dtype=np.int64)
        first, last = column_starts[anchor], column_starts[anchor + 1]
        size = end - start + last - first
        counts = np.empty(size, dtype=np.int64)
        neighbors = np.empty(size, dtype=np.int64)
        counts[: end - start] = exact
        for entry in range(start, end):
            neighbors[entry - start] = second_item[matrix.indices[entry]]
        for entry in range(first, last):
            counts[end - start + entry - first] = column_values[entry]
            neighbors[end - start + entry - first] = first_item[column_rows[entry]]
        best, items = _best(counts, neighbors, k)
        out = out_indptr[anchor]
        out_counts[out : out + best.size] = best
        out_neighbors[out : out + best.size] = items


@njit(nogil=True, cache=True)
def _best(values, ties, k):
    """(values, ties) of the k largest `values` (>= 0), ties by smaller `tie` (>= 0): by
    value descending, then tie. One int64 key per entry when both fit in it."""
    if values.size == 0:
        return values, ties.astype(np.int64)
    largest = values.max()
    tie_bits = _bits(ties.max())
    if _bits(largest) + tie_bits <= 62:
        keys = ((largest - values) << tie_bits) | ties
        if keys.size > k:
            keys = np.partition(keys, k - 1)[:k]
        keys = np.sort(keys)
        return largest - (keys >> tie_bits), keys & ((np.int64(1) << tie_bits) - 1)
    order = np.argsort(ties, kind="mergesort")
    order = order[np.argsort(largest - values[order], kind="mergesort")][:k]
    return values[order], ties[order].astype(np.int64)


@njit(nogil=True, cache=True)
def _bits(value):
    """Bits of a non-negative integer (0 for 0)."""
    size = 0
    while value > 0:
        value >>= 1
        size += 1
    return size


@njit(nogil=True, cache=True)
def _digits(value):
    """Characters of an integer's decimal form."""
    size = 1 if value >= 0 else 2
    value = abs(value)
    while value >= 10:
        value //= 10
        size += 1
    return size


@njit(nogil=True, cache=True)
def _copy(out, at, source, start, end):
    for offset in range(end - start):
        out[at + offset] = source[start + offset]
    return at + end - start


@njit(nogil=True, cache=True)
def nested_json(
    low,
    high,
    entry_indptr,
    row_text,
    row_text_at,
    item_text,
    item_text_at,
    items,
    values,
    row_pieces,
    row_pieces_at,
    text_first,
    entry_pieces,
    entry_pieces_at,
    value_first,
    decimals,
    out_at,
    out,
    fill,
):
    """The JSON text of rows low..high-1 of a nested list (see `ranking.nest_json`).

    Row r is `row_pieces` 0 to 3 with its text after piece 0 (`text_first`) or piece 2 and
    its entries (entry_indptr[r] to entry_indptr[r+1]-1, joined by commas) after piece 1,
    then a comma unless it is the last row. Entry e is `entry_pieces` 0 to 2 with the
    item's text after piece 0 and the value's digits after piece 1, or the other way round
    (`value_first`); a value is an integer, or with `decimals` > 0 a count of
    10**-decimals written as JCS writes that number (`_write_fixed`). Texts are UTF-8
    bytes cut at their `_at` offsets. Sizing (`fill` false): each row's size goes to
    `out_at[r + 1]`. Filling: row r is written from `out_at[r]` on.
    """
    last_row = row_text_at.size - 2
    for row in range(low, high):
        at = out_at[row]
        size = row_pieces_at[4] + row_text_at[row + 1] - row_text_at[row]
        size += 1 if row < last_row else 0
        first, end = entry_indptr[row], entry_indptr[row + 1]
        for entry in range(first, end):
            size += entry_pieces_at[3] + _fixed_size(values[entry], decimals)
            size += 1 if entry > first else 0
            size += item_text_at[items[entry] + 1] - item_text_at[items[entry]]
        if not fill:
            out_at[row + 1] = size
            continue
        for part in range(4):
            at = _copy(out, at, row_pieces, row_pieces_at[part], row_pieces_at[part + 1])
            if (part == 0 and text_first) or (part == 2 and not text_first):
                at = _copy(out, at, row_text, row_text_at[row], row_text_at[row + 1])
            if part != 1:
                continue
            for entry in range(first, end):
                if entry > first:
                    out[at] = 44  # ,
                    at += 1
                item = items[entry]
                at = _copy(out, at, entry_pieces, entry_pieces_at[0], entry_pieces_at[1])
                for piece in range(2):
                    if (piece == 0) == value_first:
                        at = _write_fixed(out, at, values[entry], decimals)
                    else:
                        at = _copy(out, at, item_text, item_text_at[item], item_text_at[item + 1])
                    after = entry_pieces_at[piece + 1], entry_pieces_at[piece + 2]
                    at = _copy(out, at, entry_pieces, *after)
        if row < last_row:
            out[at] = 44  # ,


@njit(nogil=True, cache=True)
def _write_integer(out, at, value):
    """Write an integer's decimal form from `at`; returns where it ends."""
    end = at + _digits(value)
    number = abs(value)
    for position in range(end - 1, at - 1, -1):
        out[position] = 48 + number % 10
        number //= 10
    if value < 0:
        out[at] = 45  # -
    return end


@njit(nogil=True, cache=True)
def _fraction(value, decimals):
    """(whole part, fraction digits without trailing zeros, their count) of a count >= 0
    of 10**-decimals."""
    scale = np.int64(1)
    for _ in range(decimals):
        scale *= 10
    whole, fraction, width = value // scale, value % scale, decimals
    while fraction and fraction % 10 == 0:
        fraction //= 10
        width -= 1
    return whole, fraction, width if fraction else 0


@njit(nogil=True, cache=True)
def _fixed_size(value, decimals):
    if decimals == 0:
        return _digits(value)
    whole, _, width = _fraction(value, decimals)
    return _digits(whole) + (width + 1 if width else 0)


@njit(nogil=True, cache=True)
def _write_fixed(out, at, value, decimals):
    """Write value * 10**-decimals (value >= 0 when decimals > 0) from `at` as ECMAScript
    writes it for numbers below 1e21: the whole part, then `.` and the fraction's digits
    when it has any; returns where it ends."""
    if decimals == 0:
        return _write_integer(out, at, value)
    whole, fraction, width = _fraction(value, decimals)
    at = _write_integer(out, at, whole)
    if width:
        out[at] = 46  # .
        for position in range(at + width, at, -1):
            out[position] = 48 + fraction % 10
            fraction //= 10
        at += width + 1
    return at


@njit(nogil=True, cache=True)
def _row(matrix, row):
    """(start, end, values) of a row of a matrix held as `CsrArrays`."""
    start, end = matrix.indptr[row], matrix.indptr[row + 1]
    return start, end, matrix.data[start:end]
