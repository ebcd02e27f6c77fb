"""Pair values in id order: what a window hands the artifact builders.

`Coded` is a CSR matrix over two sorted id dictionaries: `matrix[i, j]` is the value of
(rows[i], columns[j]). Canonical form, so that equal content is equal data: the
dictionaries are exactly the ids with an entry, sorted by code point; the matrix has sorted
indices, no duplicates and no zeros; values are int64. Codes follow ids, so a builder that
breaks ties by code breaks them by id, as SPEC §4 asks.

On storage and in window sums the same values are kept in the tenant's id space instead
(`ids`), where codes do not follow ids; `in_id_order` turns such a matrix into a `Coded`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp
from numba import njit

from recsys_assets.compiled import frozen, on_threads, spans


@dataclass(frozen=True)
class Coded:
    """Pair values over sorted id dictionaries; see the module doc."""

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
        if not self.nnz:
            return empty_coded()
        size = self.rows.len()
        matrix = csr(self.row_sums(), np.zeros(size, np.int32), np.arange(size + 1), 1)
        return Coded(self.rows, pl.Series([""], dtype=pl.String), matrix)

    def where(self, keep: np.ndarray) -> Coded:
        """Only the entries where `keep` (a mask over the stored entries) holds; the
        dictionaries stay as they are (ids may be left without an entry)."""
        matrix = self.matrix
        kept_before = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
        indptr = kept_before[matrix.indptr]  # kept entries before each row's first
        kept = csr(matrix.data[keep], matrix.indices[keep], indptr, self.columns.len())
        return Coded(self.rows, self.columns, kept)


def positions(values: pl.Series, ids: pl.Series) -> np.ndarray:
    """Position of each value in `ids` (sorted, unique) as int64, -1 where absent: a binary
    search, no hashing."""
    if ids.len() == 0:
        return np.full(values.len(), -1, dtype=np.int64)
    at = np.minimum(ids.search_sorted(values).to_numpy().astype(np.int64), ids.len() - 1)
    return np.where((ids.gather(at) == values).to_numpy(), at, -1)


def codes(values: pl.Series, categories: pl.Series, what: str) -> np.ndarray:
    """Position of each value in `categories` (sorted, unique ids) as int64.

    Ids sort the same way as their codes, so sorting codes sorts ids.
    """
    try:
        return values.cast(pl.Enum(categories)).to_physical().cast(pl.Int64).to_numpy()
    except pl.exceptions.InvalidOperationError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def empty_coded() -> Coded:
    ids = pl.Series(dtype=pl.String)
    return Coded(ids, ids, csr(np.zeros(0, np.int64), np.zeros(0, np.int32), [0], 0))


def coded_from_codes(
    rows: pl.Series,
    columns: pl.Series,
    row_code: np.ndarray,
    column_code: np.ndarray,
    values: np.ndarray,
) -> Coded:
    """Entries given as codes into sorted dictionaries; duplicates are summed."""
    matrix = pair_matrix(rows.len(), columns.len(), row_code, column_code, values)
    return in_id_order(matrix, rows, columns)


def pair_matrix(
    n_rows: int,
    n_columns: int,
    row_code: np.ndarray,
    column_code: np.ndarray,
    values: np.ndarray,
) -> sp.csr_matrix:
    """Entries given as codes, as a canonical CSR matrix of that shape; duplicates summed."""
    ordered = (row_code[1:] > row_code[:-1]) | (
        (row_code[1:] == row_code[:-1]) & (column_code[1:] > column_code[:-1])
    )
    if ordered.all():  # already by row then column, without duplicates: no sort needed
        counts = np.bincount(row_code, minlength=n_rows)
        indptr = np.concatenate(([0], np.cumsum(counts)))
        return csr(values, column_code, indptr, n_columns)
    matrix = sp.csr_matrix(
        (values.astype(np.int64, copy=False), (row_code, column_code)),
        shape=(n_rows, n_columns),
    )
    matrix.sum_duplicates()
    return matrix


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


def in_id_order(matrix: sp.csr_matrix, row_ids: pl.Series, column_ids: pl.Series) -> Coded:
    """A matrix over codes whose ids are `row_ids[code]` / `column_ids[code]` (any order,
    possibly more ids than the matrix has rows or columns) as a canonical `Coded`: only the
    ids with an entry, sorted; zeros dropped."""
    if matrix.nnz and not matrix.data.all():
        matrix = matrix.copy()
        matrix.eliminate_zeros()
    if matrix.nnz and matrix.data.min() < 0:
        raise ValueError("a pair value is negative: a day was taken out of a sum without it")
    n_rows, n_columns = matrix.shape
    present_rows = np.flatnonzero(np.diff(matrix.indptr))
    present_columns = np.flatnonzero(columns_with_entries(matrix))
    rows = row_ids.gather(present_rows)
    columns = column_ids.gather(present_columns)
    row_order = rows.arg_sort().to_numpy()
    column_order = columns.arg_sort().to_numpy()
    sorted_rows = present_rows[row_order]
    sorted_columns = present_columns[column_order]
    rows, columns = rows.gather(row_order), columns.gather(column_order)
    whole = sorted_rows.size == n_rows and sorted_columns.size == n_columns
    if whole and _increasing(sorted_rows) and _increasing(sorted_columns):
        return Coded(rows, columns, _canonical(matrix))
    rank = np.full(n_columns, -1, dtype=np.int64)
    rank[sorted_columns] = np.arange(sorted_columns.size)
    return Coded(rows, columns, reordered(matrix, sorted_rows, rank, sorted_columns.size))


def reordered(
    matrix: sp.csr_matrix, row_source: np.ndarray, column_rank: np.ndarray, n_columns: int
) -> sp.csr_matrix:
    """The matrix whose row i is row `row_source[i]` of `matrix` (-1: an empty row), with
    each column c renumbered `column_rank[c]`, in canonical form.

    What both moves between the id space and id order need: one pass that writes each entry
    where it belongs, rows sorted by their new columns on the threads (a row is a few
    sorted runs, one per index segment). With scipy it is a row gather, a remap and a sort,
    each touching every entry: 3.6 s instead of 0.4 s for a 28-day cooc state of 48M pairs.
    """
    # Row -1 reads the 0 appended last.
    out_lengths = np.append(np.diff(matrix.indptr).astype(np.int64), 0)[row_source]
    indptr = np.zeros(row_source.size + 1, dtype=np.int64)
    np.cumsum(out_lengths, out=indptr[1:])
    index_dtype = np.int32 if max(n_columns, int(indptr[-1])) < 2**31 else np.int64
    indices = np.empty(int(indptr[-1]), dtype=index_dtype)
    data = np.empty(int(indptr[-1]), dtype=np.int64)
    source = (
        frozen(matrix.indptr, np.int64),
        frozen(matrix.indices, matrix.indices.dtype),
        frozen(matrix.data, np.int64),
    )
    arguments = (*source, frozen(row_source, np.int64), frozen(column_rank, np.int64))
    on_threads(_reorder_rows, spans(indptr, 1 << 21), *arguments, indptr, indices, data)
    return csr(data, indices, indptr, n_columns)


@njit(nogil=True, cache=True)
def _reorder_rows(low, high, indptr, indices, data, row_source, column_rank, out_ptr, out_ix, out):
    for row in range(low, high):
        source = row_source[row]
        if source < 0:
            continue
        start, end, at = indptr[source], indptr[source + 1], out_ptr[row]
        in_order = True
        for entry in range(start, end):
            column = column_rank[indices[entry]]
            out_ix[at + entry - start] = column
            out[at + entry - start] = data[entry]
            if entry > start and column < out_ix[at + entry - start - 1]:
                in_order = False
        if not in_order:
            order = np.argsort(out_ix[at : at + end - start], kind="mergesort")
            out_ix[at : at + end - start] = out_ix[at : at + end - start][order]
            out[at : at + end - start] = out[at : at + end - start][order]


def columns_with_entries(matrix: sp.csr_matrix) -> np.ndarray:
    """Whether each column has an entry (a mask)."""
    present = np.zeros(matrix.shape[1], dtype=bool)
    present[matrix.indices] = True  # several times faster than a bincount or a unique
    return present


def grown(matrix: sp.csr_matrix, n_rows: int, n_columns: int) -> sp.csr_matrix:
    """The matrix with empty rows and columns added up to the shape (the id spaces only
    grow: codes added since have no entry); its data and indices are shared, not copied."""
    indptr = np.concatenate([matrix.indptr, np.full(n_rows - matrix.shape[0], matrix.indptr[-1])])
    return csr(matrix.data, matrix.indices, indptr, n_columns)


def _increasing(codes_: np.ndarray) -> bool:
    return bool(codes_.size < 2 or (codes_[1:] > codes_[:-1]).all())


def _canonical(matrix: sp.csr_matrix) -> sp.csr_matrix:
    matrix.sort_indices()
    matrix.has_canonical_format = True
    if matrix.data.dtype != np.int64:
        matrix.data = matrix.data.astype(np.int64)
    return matrix


def csr(values: np.ndarray, indices: np.ndarray, indptr, n_columns: int) -> sp.csr_matrix:
    """A CSR matrix from arrays already in canonical order (no sort, no check)."""
    indptr = np.asarray(indptr)
    fits = int(indptr[-1]) < 2**31 and n_columns < 2**31
    index_dtype = np.int32 if fits else np.int64
    matrix = sp.csr_matrix(
        (
            values.astype(np.int64, copy=False),
            indices.astype(index_dtype, copy=False),
            indptr.astype(index_dtype, copy=False),
        ),
        shape=(indptr.size - 1, n_columns),
        copy=False,
    )
    matrix.has_sorted_indices = True
    matrix.has_canonical_format = True
    return matrix
