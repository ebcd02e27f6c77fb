"""Pair values: exact sums over days in any order, subtraction in the tenant's id space, and
the id-ordered canonical form the builders read."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_assets.aggregates.coded import Coded, coded_from_ids, in_id_order
from recsys_assets.aggregates.daily import as_coded, as_frame, merge_aggregates
from recsys_assets.aggregates.ids import IdIndex
from recsys_assets.aggregates.store import entries_parquet, in_id_space, read_entries
from recsys_assets.aggregates.window import read_matrix, write_matrix
from recsys_assets.storage import LocalStore

KIND = "user_item_counts"
SCHEMA = {"user_id": pl.String, "item_id": pl.String, "count": pl.Int64}

entries = st.dictionaries(
    st.tuples(st.sampled_from(["u1", "u2", "u3", "ü4", ""]), st.sampled_from("ABCDEFGé")),
    st.integers(1, 1000),
    max_size=12,
)


def day(values: dict[tuple[str, str], int]) -> pl.DataFrame:
    """A day's frame, deliberately not sorted."""
    return pl.DataFrame(
        [(user, item, count) for (user, item), count in reversed(list(values.items()))],
        schema=SCHEMA,
        orient="row",
    )


def brute_sum(days: list[dict[tuple[str, str], int]]) -> pl.DataFrame:
    totals: dict[tuple[str, str], int] = {}
    for values in days:
        for key, count in values.items():
            totals[key] = totals.get(key, 0) + count
    rows = sorted((user, item, count) for (user, item), count in totals.items() if count)
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def same(left: Coded, right: Coded) -> bool:
    return (
        left.rows.equals(right.rows)
        and left.columns.equals(right.columns)
        and np.array_equal(left.matrix.indptr, right.matrix.indptr)
        and np.array_equal(left.matrix.indices, right.matrix.indices)
        and np.array_equal(left.matrix.data, right.matrix.data)
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(entries, max_size=6))
def test_the_sum_of_days_equals_a_brute_force_sum_in_any_order(days):
    merged = merge_aggregates(KIND, [day(values) for values in days])
    assert as_frame(KIND, merged).equals(brute_sum(days))
    backwards = merge_aggregates(KIND, [as_coded(KIND, day(values)) for values in days[::-1]])
    assert same(backwards, merged)
    # Canonical form: the dictionaries are exactly the ids with an entry.
    frame = as_frame(KIND, merged)
    assert merged.rows.to_list() == sorted(set(frame["user_id"]))
    assert merged.columns.to_list() == sorted(set(frame["item_id"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(entries, min_size=2, max_size=6), st.data())
def test_a_window_in_the_id_space_minus_a_day_is_the_sum_of_the_others(
    tmp_path_factory, days, data
):
    """Days coded in the tenant's id space (ids in the order they first came), summed, one
    taken out, then put in id order: the same as summing the other days by id."""
    store = LocalStore(tmp_path_factory.mktemp("ids"))
    spaces = {space: IdIndex(store, "t", "s", space) for space in ("items", "users")}
    matrices = [in_id_space(KIND, as_coded(KIND, day(values)), spaces) for values in days]
    shape = (spaces["users"].ids().len(), spaces["items"].ids().len())
    for matrix in matrices:
        matrix.resize(shape)
    out = data.draw(st.integers(0, len(days) - 1))
    window = sum(matrices[1:], matrices[0]) - matrices[out]
    slid = in_id_order(window, spaces["users"].ids(), spaces["items"].ids())
    others = merge_aggregates(KIND, [day(v) for i, v in enumerate(days) if i != out])
    assert same(slid, others)  # ids seen only on that day are gone from the dictionaries


def test_a_sum_left_negative_is_refused():
    matrix = sp.csr_matrix(np.array([[1, -1]], dtype=np.int64))
    with pytest.raises(ValueError, match="a pair value is negative"):
        in_id_order(matrix, pl.Series(["u"]), pl.Series(["A", "B"]))


def test_a_stored_matrix_reads_back_grown_to_the_id_space(tmp_path):
    """Days (Parquet entries) and window states (.npy arrays) read back as written, with
    rows and columns for the codes added since."""
    coded = coded_from_ids(pl.Series(["b", "a"]), pl.Series(["X", "X"]), np.array([2, 5]), "t")
    expected = [[5, 0, 0], [2, 0, 0], [0, 0, 0], [0, 0, 0]]
    day = read_entries(entries_parquet(coded.matrix), (4, 3))
    assert day.shape == (4, 3) and day.toarray().tolist() == expected
    store = LocalStore(tmp_path)
    checksums = write_matrix(store, "state", coded.matrix)
    marker = {"checksums": checksums, "shape": list(coded.matrix.shape)}
    state = read_matrix(store, "state", marker, (4, 3))
    assert state.shape == (4, 3) and state.toarray().tolist() == expected
    (tmp_path / "state.data.npy").write_bytes(b"garbage")
    assert read_matrix(store, "state", marker, (4, 3)) is None
