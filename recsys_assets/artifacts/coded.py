"""Pair values as integer-coded sparse matrices, and their exact sums over days.

The pair aggregates of `aggregates` (cooc_pairs, user_item_counts, ...) map (first id, second
id) to an integer. Over a window they are summed day by day; on string keys that costs a hash
of every row of every day. `Coded` holds them as a CSR matrix over two sorted id
dictionaries, so a sum is a linear merge of sorted rows (scipy releases the GIL in it), and
the payload builders work on codes, going back to strings only for what they write.

Canonical form, so that equal content is equal data whatever the order of the sums: the
dictionaries are exactly the ids with an entry, sorted by code point; the matrix has sorted
indices, no duplicates and no zeros. Values are int64, or int32 in window states and their
sums when every value and every sum fits (half the memory of a state of tens of millions of
entries); sums are exact, so a window updated incrementally (yesterday's window + today - the
day that left it) is identical to one summed from scratch.

A window state is held as `Stored`: the same matrix in the narrow form its file holds (codes
in the smallest unsigned type, values over a common scale in one or two bytes, the few that
do not fit listed apart). `updated` writes its sum in that form and the builders' compiled
loops read it (`ValueArrays`); whatever else asks for `.matrix` gets it widened, once.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import orjson
import polars as pl
import scipy.sparse as sp

from recsys_assets.artifacts.kernels import (
    count_at_least,
    frozen,
    frozen_csr,
    merge_rows,
    narrowed,
    on_threads,
    sorted_union,
    spans,
    stored_row_sums,
    value_range,
)
from recsys_assets.artifacts.ranking import codes, utf8_texts

Buffer = Any  # bytes, mmap, memoryview: anything with the buffer protocol


@dataclass(frozen=True)
class Coded:
    """Pair values: `matrix[i, j]` is the value of (rows[i], columns[j]); see the module doc."""

    rows: pl.Series
    columns: pl.Series
    matrix: sp.csr_matrix

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    def row_codes(self) -> np.ndarray:
        """The row code of each stored entry, in storage order (by row, then column)."""
        return np.repeat(np.arange(self.rows.len(), dtype=np.int64), np.diff(self.matrix.indptr))

    def row_sums(self) -> np.ndarray:
        """Sum of each row's values (every row has an entry in canonical form)."""
        if not self.nnz:
            return np.zeros(self.rows.len(), dtype=np.int64)
        return np.add.reduceat(self.matrix.data, self.matrix.indptr[:-1], dtype=np.int64)

    def totals(self) -> Coded:
        """Each row's sum, as one column (id ""): what a ranking of rows by volume needs."""
        return _totals(self)

    def value_arrays(self) -> ValueArrays:
        """The arrays the compiled loops read (see `ValueArrays`): nothing listed apart."""
        return ValueArrays(*frozen_csr(self.matrix), 1, _NONE, _NONE)

    def has_negative(self) -> bool:
        return bool(self.nnz and self.matrix.data.min() < 0)

    def where(self, keep: np.ndarray) -> Coded:
        """Only the entries where `keep` (a mask over the stored entries) holds."""
        matrix = self.matrix
        row_lengths = np.add.reduceat(keep.astype(np.int64), matrix.indptr[:-1]) if self.nnz else []
        indptr = np.concatenate(([0], np.cumsum(row_lengths, dtype=np.int64)))
        kept = _csr(matrix.data[keep], matrix.indices[keep], indptr, self.columns.len())
        return _pruned(Coded(self.rows, self.columns, kept))


class ValueArrays(NamedTuple):
    """A CSR matrix as the compiled loops read it, whatever form it is held in: entry e of
    row r (indptr[r] <= e < indptr[r + 1]) is in column indices[e]; its value is
    data[e] * scale, or the `overflow_values` of e where e is listed in `overflow_at`
    (sorted). All read-only; int64 but for `indices` and `data`."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    scale: int
    overflow_at: np.ndarray
    overflow_values: np.ndarray


_NONE = frozen(np.zeros(0, dtype=np.int64), np.int64)


def _totals(coded: Coded | Stored) -> Coded:
    if not coded.nnz:
        return empty_coded()
    size = coded.rows.len()
    matrix = _csr(coded.row_sums(), np.zeros(size, np.int32), np.arange(size + 1), 1)
    return Coded(coded.rows, pl.Series([""], dtype=pl.String), matrix)


def empty_coded() -> Coded:
    ids = pl.Series(dtype=pl.String)
    return Coded(ids, ids, _csr(np.zeros(0, np.int64), np.zeros(0, np.int32), [0], 0))


def coded_from_codes(
    rows: pl.Series,
    columns: pl.Series,
    row_code: np.ndarray,
    column_code: np.ndarray,
    values: np.ndarray,
) -> Coded:
    """Entries given as codes into sorted dictionaries; duplicates are summed."""
    ordered = (row_code[1:] > row_code[:-1]) | (
        (row_code[1:] == row_code[:-1]) & (column_code[1:] > column_code[:-1])
    )
    if ordered.all():  # already by row then column, without duplicates: no sort needed
        counts = np.bincount(row_code, minlength=rows.len())
        matrix = _csr(values, column_code, np.concatenate(([0], np.cumsum(counts))), columns.len())
    else:
        matrix = sp.csr_matrix(
            (values.astype(np.int64, copy=False), (row_code, column_code)),
            shape=(rows.len(), columns.len()),
        )
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
    return _pruned(Coded(rows, columns, matrix))


def coded_from_ids(first: pl.Series, second: pl.Series, values: np.ndarray, what: str) -> Coded:
    """Entries given as (first id, second id, value); duplicates are summed."""
    if first.len() == 0:
        return empty_coded()
    rows = first.unique().sort()
    columns = second.unique().sort()
    return coded_from_codes(
        rows,
        columns,
        codes(first, rows, f"{what} {first.name}"),
        codes(second, columns, f"{what} {second.name}"),
        values,
    )


def combine(terms: Sequence[tuple[Coded, int]], what: str = "aggregate") -> Coded:
    """The sum of `sign * values` over (values, sign) terms (`updated` for a stored state).

    Used with sign -1 to take a day out of a window: a negative result means the day was
    not part of it, which is an error, not a value.
    """
    present = [(coded, sign) for coded, sign in terms if coded.nnz]
    if not present:
        return empty_coded()
    if len(present) == 1 and present[0][1] == 1:
        return present[0][0]
    rows, row_maps = id_union([coded.rows for coded, _ in present], what)
    columns, column_maps = id_union([coded.columns for coded, _ in present], what)
    values = [coded.matrix.data for coded, _ in present]
    dtype = _sum_dtype(any(part.dtype == np.int32 for part in values), values)
    matrices = [
        _recoded(coded.matrix, row_map, column_map, rows.len(), columns.len(), sign, dtype)
        for (coded, sign), row_map, column_map in zip(present, row_maps, column_maps, strict=True)
    ]
    fresh = len(matrices) > 1  # a sum's arrays belong to no term
    total = _tree_sum(matrices)
    if all(sign > 0 for _, sign in present):
        # Positive sums cancel nothing: every id of the union keeps an entry.
        return Coded(rows, columns, total)
    total.eliminate_zeros()
    _refuse_negative(total, what)
    return _pruned(Coded(rows, columns, total), in_place=fresh)


def parquet_bytes(coded: Coded) -> bytes:
    """One Parquet table (how daily aggregates are stored, SPEC §3): the entries by row then
    column as `column` code and `value`; the first len(rows) rows also carry `row_id` and
    `row_length` (entries in that row), the first len(columns) rows `column_id`, null after.

    Canonical form makes no dictionary longer than the entries, so one table holds it all.
    """
    matrix = coded.matrix
    size = coded.nnz
    frame = pl.DataFrame(
        {
            "column": pl.Series(matrix.indices, dtype=pl.Int32),
            "value": pl.Series(matrix.data, dtype=pl.Int64),
            "row_id": coded.rows.extend_constant(None, size - coded.rows.len()),
            "row_length": pl.Series(np.diff(matrix.indptr), dtype=pl.Int64).extend_constant(
                None, size - coded.rows.len()
            ),
            "column_id": coded.columns.extend_constant(None, size - coded.columns.len()),
        },
        schema=_PARQUET_SCHEMA,
    )
    buffer = io.BytesIO()
    # Uncompressed: reading a day back is on the path of every window update.
    # The dictionaries' length in the file's metadata: a reader decodes only that many rows
    # of the id columns (null after; a view of 16 bytes each, whole, would cost more memory
    # than the entries).
    frame.write_parquet(
        buffer,
        compression="uncompressed",
        statistics=False,
        metadata={_IDS_KEY: str(max(coded.rows.len(), coded.columns.len()))},
    )
    return buffer.getvalue()


def read_parquet(data: bytes) -> Coded:
    """Read what `parquet_bytes` wrote."""
    ids = pl.read_parquet_metadata(data).get(_IDS_KEY)
    entries = pl.read_parquet(data, columns=None if ids is None else ["column", "value"])
    # Without the dictionaries' length (an older file), the whole table is read at once.
    dictionaries = entries if ids is None else pl.read_parquet(data, n_rows=int(ids))
    if dict(dictionaries.schema) != _PARQUET_SCHEMA:
        raise ValueError(f"not a coded aggregate: columns {dict(dictionaries.schema)}")
    columns = dictionaries["column_id"].drop_nulls()
    row_lengths = dictionaries["row_length"].drop_nulls().to_numpy()
    indptr = np.concatenate(([0], np.cumsum(row_lengths)))
    matrix = _csr(entries["value"].to_numpy(), entries["column"].to_numpy(), indptr, columns.len())
    return Coded(dictionaries["row_id"].drop_nulls().rename(""), columns.rename(""), matrix)


_PARQUET_SCHEMA = {
    "column": pl.Int32(),
    "value": pl.Int64(),
    "row_id": pl.String(),
    "row_length": pl.Int64(),
    "column_id": pl.String(),
}
_IDS_KEY = "recsys_assets.ids"  # Parquet metadata: rows that hold an id (see parquet_bytes)
_MAGIC = b"recsys-assets coded v2\n"
_SLICE = 1 << 22  # entries per slice of a pass over a big state's arrays
_BLOCK = 1 << 20  # state entries per block of `updated`


def raw_bytes(coded: Coded) -> bytes:
    """A self-describing binary form (window states): magic, header length, JSON header,
    then the parts.

    The parts are the two dictionaries (Parquet) and the CSR arrays, raw little-endian: a
    window state is rewritten every day, and raw arrays cost a copy where Parquet's
    encoders cost seconds. Codes are in the narrowest unsigned type that holds them. Values
    (never negative) are divided by their common divisor (`scale`: a transition weight is a
    multiple of TRANSITION_UNIT / lcm(1..window)) and stored in the type that makes them
    smallest: one byte each, say, with the few that do not fit listed apart (`overflow_at`,
    `overflow_values`, in full) and clipped in place. The header names each part with its
    dtype and length in bytes.
    """
    return b"".join(raw_chunks(coded))


def raw_chunks(coded: Coded | Stored, chunk_entries: int = _SLICE) -> Iterator[bytes | memoryview]:
    """`raw_bytes` in pieces, narrowed a slice at a time: a stream to write a big state
    without holding a second copy of it. A `Stored` (an updated state) is written in the
    form it is held in."""
    narrow = None
    if isinstance(coded, Stored):
        scale, largest = coded.scale, coded.largest
        held = (coded.indptr, coded.indices, coded.data, coded.overflow_at, coded.overflow_values)
        dtypes = ("<i8", coded.indices.dtype.str, coded.data.dtype.str, "<i8", "<i8")
    else:
        matrix = coded.matrix
        values = _Values.of(matrix.data)
        scale, largest = values.scale, values.largest
        # The overflow arrays are filled while the data is narrowed, which comes first.
        held = (
            matrix.indptr,
            matrix.indices,
            matrix.data,
            values.overflow_at,
            values.overflow_values,
        )
        dtypes = ("<i8", _narrowest(coded.columns.len() - 1), values.dtype, "<i8", "<i8")
        listed = 0

        def narrow(piece: np.ndarray, start: int) -> np.ndarray:
            nonlocal listed
            stored = np.empty(piece.size, values.dtype)
            arrays = (values.overflow_at, values.overflow_values)
            listed = narrowed(
                frozen(piece, piece.dtype), start, scale, values.limit, stored, *arrays, listed
            )
            return stored

    names = ("indptr", "indices", "data", "overflow_at", "overflow_values")
    dictionaries = {"rows": _parquet(coded.rows), "columns": _parquet(coded.columns)}
    parts = [[name, "parquet", len(part)] for name, part in dictionaries.items()]
    parts += [
        [name, np.dtype(dtype).str, array.size * np.dtype(dtype).itemsize]
        for name, array, dtype in zip(names, held, dtypes, strict=True)
    ]
    header = orjson.dumps(
        {
            "shape": [coded.rows.len(), coded.columns.len()],
            "parts": parts,
            "scale": scale,
            "largest": largest,
        }
    )
    yield _MAGIC + len(header).to_bytes(8, "little") + header
    yield from dictionaries.values()
    for name, array, dtype in zip(names, held, dtypes, strict=True):
        for start in range(0, array.size, chunk_entries):
            piece = array[start : start + chunk_entries]
            if name == "data" and narrow is not None:
                piece = narrow(piece, start)
            piece = piece.astype(dtype, copy=False)
            yield memoryview(np.ascontiguousarray(piece)).cast("B")


@dataclass(frozen=True)
class _Values:
    """How `raw_chunks` stores an array of values (see `raw_bytes`): divided by `scale`, in
    `dtype`; with `limit`, the values whose quotient reaches it are clipped to it and listed
    apart in the overflow arrays (sized here, filled by `kernels.narrowed`)."""

    dtype: str
    scale: int
    largest: int
    limit: int  # 0: none listed apart
    overflow_at: np.ndarray
    overflow_values: np.ndarray

    @classmethod
    def of(cls, data: np.ndarray) -> _Values:
        data = frozen(data, data.dtype)
        largest, divisor = (int(value) for value in value_range(data))
        if largest < 2**8:
            return cls(_narrowest(largest), 1, largest, 0, *_overflow(0))
        scale = divisor  # >= 1: not every value is 0
        # Bytes per form: plain in the narrowest type, or one or two bytes with the values
        # that do not fit listed apart (16 bytes each).
        top = largest // scale
        forms = {_narrowest(top): (data.size * _itemsize(top), 0, 0)}
        if top >= 2**8 - 1:
            # (thresholds past int64 reach no value)
            first, second = (min(limit * scale, 2**63 - 1) for limit in (2**8 - 1, 2**16 - 1))
            over = count_at_least(data, first, second)
            for (dtype, limit), listed in zip(
                (("<u1", 2**8 - 1), ("<u2", 2**16 - 1)), over, strict=True
            ):
                if top >= limit:
                    size = data.size * np.dtype(dtype).itemsize + 16 * listed
                    forms[dtype] = (size, limit, int(listed))
        dtype = min(forms, key=lambda name: forms[name][0])
        _, limit, listed = forms[dtype]
        return cls(dtype, scale, largest, limit, *_overflow(listed))


def _overflow(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)


def _itemsize(largest: int) -> int:
    return np.dtype(_narrowest(largest)).itemsize


@dataclass(frozen=True)
class Stored:
    """A Coded as `raw_bytes` stores it: the CSR arrays in their stored (narrow) types,
    views of the buffer they were read from, or the arrays `updated` wrote in that form.
    A window's sum stays this from its update to its builders and its file."""

    rows: pl.Series
    columns: pl.Series
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    overflow_at: np.ndarray
    overflow_values: np.ndarray
    scale: int
    largest: int

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def value_dtype(self) -> type:
        """int32 when every value fits it (see the module doc), else int64."""
        return np.int32 if self.largest < 2**31 else np.int64

    def values(self, first: int, last: int, dtype: type) -> np.ndarray:
        """The values of entries first..last-1, in `dtype` (one that holds them)."""
        values = self.data[first:last].astype(dtype)
        if self.scale != 1 and values.size:  # (an empty state's scale may not fit dtype)
            values *= self.scale
        low, high = np.searchsorted(self.overflow_at, [first, last])
        values[self.overflow_at[low:high] - first] = self.overflow_values[low:high]
        return values

    def coded(self) -> Coded:
        """The whole, in memory (values and codes widened where they are stored narrower)."""
        values = self.values(0, self.nnz, self.value_dtype)
        matrix = _csr(values, self.indices, self.indptr, self.columns.len())
        return Coded(self.rows, self.columns, matrix)

    # What a Coded offers, for the readers that take either: the compiled loops read the
    # stored arrays (`value_arrays`); anything else reads the widened whole, made once.

    @cached_property
    def _wide(self) -> Coded:
        return self.coded()

    @property
    def matrix(self) -> sp.csr_matrix:
        return self._wide.matrix

    def row_codes(self) -> np.ndarray:
        return np.repeat(np.arange(self.rows.len(), dtype=np.int64), np.diff(self.indptr))

    def row_sums(self) -> np.ndarray:
        return stored_row_sums(self.value_arrays())

    def totals(self) -> Coded:
        return _totals(self)

    def where(self, keep: np.ndarray) -> Coded:
        return self._wide.where(keep)

    def value_arrays(self) -> ValueArrays:
        return ValueArrays(
            frozen(self.indptr, np.int64),
            frozen(self.indices, self.indices.dtype),
            frozen(self.data, self.data.dtype),
            self.scale,
            frozen(self.overflow_at, np.int64),
            frozen(self.overflow_values, np.int64),
        )

    def has_negative(self) -> bool:
        """Never, for a state (its sums refuse them); checked for a damaged one."""
        negative = self.data.dtype.kind == "i" and self.nnz and self.data.min() < 0
        return bool(negative or (self.overflow_values.size and self.overflow_values.min() < 0))


def read_raw(data: Buffer) -> Coded:
    """Read what `raw_bytes` wrote, from any buffer (a mapped file is read in place; codes
    already in their in-memory type stay views of it, read-only)."""
    return read_stored(data).coded()


def read_stored(data: Buffer) -> Stored:
    """What `raw_bytes` wrote, as stored: nothing is copied but the two dictionaries."""
    view = memoryview(data).cast("B")
    if bytes(view[: len(_MAGIC)]) != _MAGIC:
        raise ValueError("not a coded aggregate (bad magic)")
    start = len(_MAGIC) + 8
    size = int.from_bytes(view[len(_MAGIC) : start], "little")
    header = orjson.loads(view[start : start + size])
    offset = start + size
    parts: dict[str, Any] = {}
    for name, dtype, nbytes in header["parts"]:
        chunk = view[offset : offset + nbytes]
        if dtype == "parquet":
            try:
                parts[name] = pl.read_parquet(bytes(chunk)).to_series().rename("")
            except pl.exceptions.PolarsError as exc:
                raise ValueError(f"coded aggregate: damaged {name} dictionary ({exc})") from exc
        else:
            parts[name] = np.frombuffer(chunk, dtype=np.dtype(dtype))
        offset += nbytes
    if offset != len(view):
        raise ValueError(f"coded aggregate has {len(view) - offset} trailing bytes")
    stored = Stored(**parts, scale=header["scale"], largest=header["largest"])
    _check_bounds(stored, header["shape"])
    return stored


def _check_bounds(stored: Stored, shape: list[int]) -> None:
    """Refuse arrays that would make a sum read outside them (a damaged file whose header
    is intact); wrong values inside the bounds are for the caller's hash check to find."""
    indptr, indices, at = stored.indptr, stored.indices, stored.overflow_at
    problems = [
        shape != [stored.rows.len(), stored.columns.len()],
        indptr.size != stored.rows.len() + 1 or indptr[0] != 0 or indptr[-1] != indices.size,
        indices.size != stored.data.size or at.size != stored.overflow_values.size,
        bool((indptr[1:] < indptr[:-1]).any()),
        indices.size > 0 and int(indices.max()) >= stored.columns.len(),
        at.size > 0 and (int(at[-1]) >= indices.size or bool((at[1:] <= at[:-1]).any())),
        stored.scale < 1,
    ]
    if any(problems):
        raise ValueError("coded aggregate: its arrays do not fit its header")


def updated(
    state: Stored, terms: Sequence[tuple[Coded, int]], what: str = "aggregate"
) -> Stored | Coded:
    """`combine` of the stored state and `terms` (a window state, plus a day, minus another).

    The terms are summed first (a day or two: small); the state is then merged into them
    in one pass, by blocks of rows on the threads (`kernels.merge_rows`), read as stored
    (narrow codes and values) and never widened. The sum is written in the state's own
    stored form (a `Stored` in memory: narrow codes, values over the state's scale in its
    type, the few that do not fit listed apart). That is what the state file holds and
    what the builders read: widened copies of a state of tens of millions of entries would
    cost more than the sums, as fresh memory is slow to touch on a virtual machine. When
    too many values are listed apart (a young window's counts outgrowing a byte), the sum
    is widened into a `Coded`, and narrowed afresh when it is stored.
    """
    present = [(coded, sign) for coded, sign in terms if coded.nnz]
    if not state.nnz or not present:
        return combine([(state.coded(), 1), *present], what)
    rows, row_maps = id_union([state.rows, *[coded.rows for coded, _ in present]], what)
    columns, column_maps = id_union([state.columns, *[coded.columns for coded, _ in present]], what)
    dtype = _sum_dtype(
        state.value_dtype == np.int32,
        [coded.matrix.data for coded, _ in present],
        state.largest,
    )
    delta = _tree_sum(
        [
            _recoded(coded.matrix, row_map, column_map, rows.len(), columns.len(), sign, dtype)
            for (coded, sign), row_map, column_map in zip(
                present, row_maps[1:], column_maps[1:], strict=True
            )
        ]
    )
    indptr = _spread(state.indptr, row_maps[0], rows.len())
    state_columns = column_maps[0]
    state_columns = frozen(
        np.arange(columns.len()) if state_columns is None else state_columns, np.int64
    )
    arrays = (
        state.value_arrays()._replace(indptr=frozen(indptr, np.int64)),
        state_columns,
        frozen(delta.indptr, np.int64),
        *(frozen(array, array.dtype) for array in (delta.indices, delta.data)),
    )
    # One pass, in blocks of whole rows of about _BLOCK state entries, each writing from
    # where its rows would start if nothing cancelled (the sum of both row pointers): the
    # arrays are sized for that, and only the pages written are ever touched. The blocks
    # are then moved down over the few entries that cancelled.
    listed_before = np.searchsorted(state.overflow_at, indptr)
    bounds = [
        (
            low,
            high,
            int(indptr[low] + delta.indptr[low]),
            int(listed_before[low] + delta.indptr[low]),
        )
        for low, high in spans(indptr, _BLOCK)
    ]
    value_type, cap = state.data.dtype, int(np.iinfo(state.data.dtype).max)
    out_indices = np.empty(state.nnz + delta.nnz, _narrowest(columns.len() - 1))
    out_values = np.empty(state.nnz + delta.nnz, value_type)
    listed_at = np.empty(state.overflow_at.size + delta.nnz, np.int64)
    listed_values = np.empty(state.overflow_at.size + delta.nnz, np.int64)
    row_lengths = np.zeros(rows.len(), dtype=np.int64)
    column_used = np.zeros(columns.len(), dtype=bool)
    outputs = (row_lengths, column_used, out_indices, out_values, cap)
    blocks = on_threads(merge_rows, bounds, *arrays, *outputs, listed_at, listed_values)
    if any(negative for _, _, negative, _ in blocks):
        raise _negative_sum(what)
    size, overflow_at, overflow_values = _moved_down(
        bounds, blocks, out_indices, out_values, listed_at, listed_values
    )
    largest = max(block[3] for block in blocks)
    out_indices, out_values = out_indices[:size], out_values[:size]
    # Ids left without an entry (a day taken out leaves some) are dropped.
    starts = np.zeros(rows.len() + 1, dtype=np.int64)
    np.cumsum(row_lengths, out=starts[1:])
    row_kept = row_lengths > 0
    if not row_kept.all():
        rows = rows.filter(pl.Series(row_kept))
        starts = np.concatenate(([0], starts[1:][row_kept]))
    if not column_used.all():
        columns = columns.filter(pl.Series(column_used))
        out_indices = _mapped(np.cumsum(column_used) - 1, out_indices, in_place=True)
    summed = Stored(
        rows,
        columns,
        starts,
        out_indices,
        out_values,
        overflow_at,
        overflow_values,
        state.scale,
        int(largest),
    )
    if overflow_at.size * 16 > size:  # listing apart costs more than a byte an entry
        return summed.coded()  # wide: narrowed afresh when it is stored
    return summed


def _moved_down(
    bounds: list[tuple[int, int, int, int]],
    blocks: list[tuple[int, int, bool, int]],
    indices: np.ndarray,
    values: np.ndarray,
    listed_at: np.ndarray,
    listed_values: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Close the gaps `merge_rows`' blocks left (each wrote from its upper-bound start, see
    `updated`): the entries and the values listed apart, moved down in place; returns the
    number of entries and the listed positions (now final) and values."""
    size = listed = 0
    for (_, _, start, listed_start), (written, apart, _, _) in zip(bounds, blocks, strict=True):
        if start != size:
            indices[size : size + written] = indices[start : start + written]
            values[size : size + written] = values[start : start + written]
        at = listed_at[listed_start : listed_start + apart] - (start - size)
        listed_values[listed : listed + apart] = listed_values[listed_start : listed_start + apart]
        listed_at[listed : listed + apart] = at
        size += written
        listed += apart
    return size, listed_at[:listed], listed_values[:listed]


def _narrowest(largest: int) -> str:
    for dtype in ("<u1", "<u2", "<u4"):
        if largest <= np.iinfo(dtype).max:
            return dtype
    return "<i8"


def _parquet(ids: pl.Series) -> bytes:
    buffer = io.BytesIO()
    ids.rename("id").to_frame().write_parquet(buffer, compression="zstd", statistics=False)
    return buffer.getvalue()


def _csr(values: np.ndarray, indices: np.ndarray, indptr, n_columns: int) -> sp.csr_matrix:
    indptr = np.asarray(indptr)
    # scipy keeps int32 indices while they fit; giving it anything else costs a copy.
    fits = int(indptr[-1]) < 2**31 and n_columns < 2**31
    index_dtype = np.int32 if fits else np.int64
    # int32 values stay int32 (see the module doc); anything else is int64.
    values = values if values.dtype == np.int32 else values.astype(np.int64, copy=False)
    matrix = sp.csr_matrix(
        (
            values,
            indices.astype(index_dtype, copy=False),
            indptr.astype(index_dtype, copy=False),
        ),
        shape=(indptr.size - 1, n_columns),
        copy=False,
    )
    matrix.has_sorted_indices = True
    matrix.has_canonical_format = True
    return matrix


def id_union(dictionaries: list[pl.Series], what: str) -> tuple[pl.Series, list[np.ndarray | None]]:
    """The sorted union of sorted id dictionaries, and each one's old-to-new code map.

    One merge of the sorted runs (`kernels.sorted_union`) over their UTF-8 bytes: an id's
    new code counts the distinct ids up to it. No hashing and no searching: that would cost
    more than the sums for a million user ids. A map is None where the dictionary is
    already the union.
    """
    ids = pl.concat([dictionary.rename("") for dictionary in dictionaries], rechunk=True)
    starts = np.zeros(len(dictionaries) + 1, dtype=np.int64)
    np.cumsum([dictionary.len() for dictionary in dictionaries], out=starts[1:])
    codes, first, valid = sorted_union(*utf8_texts(ids), frozen(starts, np.int64))
    if not valid:
        raise ValueError(f"{what}: id dictionaries must be sorted and unique")
    whole = [index for index, d in enumerate(dictionaries) if d.len() == first.size]
    union = dictionaries[whole[0]].rename("") if whole else ids.gather(first)
    maps = [
        None if dictionary.len() == union.len() else codes[starts[index] : starts[index + 1]]
        for index, dictionary in enumerate(dictionaries)
    ]
    return union, maps


def _recoded(
    matrix: sp.csr_matrix,
    row_map: np.ndarray | None,
    column_map: np.ndarray | None,
    n_rows: int,
    n_columns: int,
    sign: int,
    dtype: type = np.int64,
) -> sp.csr_matrix:
    """`sign * matrix` re-indexed over larger sorted dictionaries.

    The maps are increasing (the new dictionaries are sorted and contain the old ones), so
    rows keep their order and each row's columns stay sorted.
    """
    indices = matrix.indices
    if column_map is not None:
        indices = column_map.astype(indices.dtype, copy=False)[indices]
    indptr = _spread(matrix.indptr, row_map, n_rows)
    data = matrix.data.astype(dtype, copy=False)
    data = data if sign == 1 else data * sign
    return _csr(data, indices, indptr, n_columns)


def _spread(indptr: np.ndarray, row_map: np.ndarray | None, n_rows: int) -> np.ndarray:
    """A row pointer over `n_rows` rows of which the old row i is row `row_map[i]` (an
    increasing map; None: the same rows), the new rows empty."""
    if row_map is None:
        return indptr
    lengths = np.zeros(n_rows, dtype=np.int64)
    lengths[row_map] = np.diff(indptr)
    return np.concatenate(([0], np.cumsum(lengths)))


def _sum_dtype(narrow: bool, values: list[np.ndarray], largest: int = 0) -> type:
    """int32 for a sum of terms of which one is held in int32 (`narrow`: a window state)
    when no partial sum can leave int32: the absolute maxima of `values`, plus `largest`
    (a stored state's, known from its header), add up to less than 2**31. int64 otherwise."""
    if not narrow:
        return np.int64
    bound = largest + sum(max(int(part.max()), -int(part.min())) for part in values if part.size)
    return np.int32 if bound < 2**31 else np.int64


def _refuse_negative(total: sp.csr_matrix, what: str) -> None:
    """A sum that took a day out must stay >= 0: a negative value means the day was never in."""
    if total.nnz and total.data.min() < 0:
        raise _negative_sum(what)


def _negative_sum(what: str) -> ValueError:
    return ValueError(
        f"{what}: subtracting a day left negative values; the day was not in the window"
    )


def _tree_sum(matrices: list[sp.csr_matrix]) -> sp.csr_matrix:
    """Pairwise sums in a tree, each a linear merge of sorted rows, smallest first: a window
    state plus a day minus another touches the state's entries once, not twice."""
    with ThreadPoolExecutor(max_workers=max(1, pl.thread_pool_size())) as pool:
        while len(matrices) > 1:
            matrices = sorted(matrices, key=lambda matrix: matrix.nnz)
            pairs = [(matrices[i], matrices[i + 1]) for i in range(0, len(matrices) - 1, 2)]
            rest = matrices[-1:] if len(matrices) % 2 else []
            matrices = list(pool.map(lambda pair: pair[0] + pair[1], pairs)) + rest
    total = matrices[0]
    # scipy merges canonical rows into canonical rows, but does not say so.
    total.has_sorted_indices = True
    return total


def _mapped(code_map: np.ndarray, indices: np.ndarray, in_place: bool) -> np.ndarray:
    """`code_map[indices]` in the indices' dtype; written over them when allowed: a window
    state's hundreds of MB of codes are not copied to change a few ids."""
    code_map = code_map.astype(indices.dtype, copy=False)
    if not (in_place and indices.flags.writeable):
        return code_map[indices]
    # Slice by slice: numpy buffers a gather into its own input as a whole second copy.
    for start in range(0, indices.size, _SLICE):
        part = indices[start : start + _SLICE]
        part[...] = code_map[part]
    return indices


def _pruned(coded: Coded, *, in_place: bool = False) -> Coded:
    """Drop the ids left without an entry (a day taken out of a window leaves some); with
    `in_place`, the matrix's column codes are rewritten where they are."""
    matrix = coded.matrix
    row_kept = np.diff(matrix.indptr) > 0
    column_kept = np.zeros(coded.columns.len(), dtype=bool)
    column_kept[matrix.indices] = True  # several times faster than a bincount
    if row_kept.all() and column_kept.all():
        return coded
    rows = coded.rows.filter(pl.Series(row_kept))
    columns = coded.columns.filter(pl.Series(column_kept))
    indices = matrix.indices
    if not column_kept.all():
        indices = _mapped(np.cumsum(column_kept) - 1, indices, in_place)
    indptr = np.concatenate(([0], matrix.indptr[1:][row_kept]))
    return Coded(rows, columns, _csr(matrix.data, indices, indptr, columns.len()))
