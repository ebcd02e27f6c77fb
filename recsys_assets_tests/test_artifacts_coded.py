"""Coded pair values: exact sums and differences over days, canonical form, storage bytes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_assets.artifacts import coded as coded_module
from recsys_assets.artifacts.aggregates import as_coded, as_frame, merge_aggregates
from recsys_assets.artifacts.coded import (
    Coded,
    Stored,
    coded_from_codes,
    coded_from_ids,
    combine,
    empty_coded,
    id_union,
    parquet_bytes,
    raw_bytes,
    read_parquet,
    read_raw,
    read_stored,
    updated,
)

KIND = "user_item_counts"
SCHEMA = {"user_id": pl.String, "item_id": pl.String, "count": pl.Int64}

entries = st.dictionaries(
    st.tuples(st.sampled_from(["u1", "u2", "u3", "ü4", ""]), st.sampled_from("ABCDEFG")),
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


@contextmanager
def blocks_of(entries: int) -> Iterator[None]:
    """`updated` works in blocks of about this many state entries."""
    saved, coded_module._BLOCK = coded_module._BLOCK, entries
    try:
        yield
    finally:
        coded_module._BLOCK = saved


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


@settings(max_examples=60, deadline=None)
@given(st.lists(entries, min_size=2, max_size=6), st.data())
def test_taking_a_day_out_gives_the_sum_of_the_others(days, data):
    out = data.draw(st.integers(0, len(days) - 1))
    window = merge_aggregates(KIND, [day(values) for values in days])
    slid = combine([(window, 1), (as_coded(KIND, day(days[out])), -1)], KIND)
    others = merge_aggregates(KIND, [day(v) for i, v in enumerate(days) if i != out])
    assert same(slid, others)  # ids seen only on that day are gone from the dictionaries


def test_taking_out_a_day_that_was_not_summed_is_an_error():
    window = as_coded(KIND, day({("u1", "A"): 1}))
    other = as_coded(KIND, day({("u1", "A"): 2}))
    with pytest.raises(ValueError, match="user_item_counts: subtracting a day left negative"):
        combine([(window, 1), (other, -1)], KIND)


def test_unsorted_codes_with_duplicates_are_summed():
    ids = pl.Series(["a", "b"])
    coded = coded_from_codes(
        ids, ids, np.array([1, 0, 1, 0]), np.array([0, 1, 0, 0]), np.array([2, 3, 4, 0])
    )
    assert coded.matrix.toarray().tolist() == [[0, 3], [6, 0]]
    assert coded.row_sums().tolist() == [3, 6]


def test_where_keeps_entries_and_prunes_ids():
    coded = as_coded(KIND, day({("u1", "A"): 1, ("u1", "B"): 5, ("u2", "C"): 1}))
    strong = coded.where(coded.matrix.data >= 2)
    assert as_frame(KIND, strong).rows() == [("u1", "B", 5)]
    assert strong.rows.to_list() == ["u1"] and strong.columns.to_list() == ["B"]


@settings(max_examples=30, deadline=None)
@given(entries)
def test_both_storage_forms_round_trip_and_are_deterministic(values):
    coded = merge_aggregates(KIND, [day(values)])
    for write, read in ((parquet_bytes, read_parquet), (raw_bytes, read_raw)):
        data = write(coded)
        assert same(read(data), coded)
        assert write(merge_aggregates(KIND, [day(values)])) == data


def test_bytes_that_are_not_a_coded_aggregate_are_refused():
    with pytest.raises(ValueError, match="bad magic"):
        read_raw(b"PAR1 not this")
    with pytest.raises(ValueError, match="trailing bytes"):
        read_raw(raw_bytes(empty_coded()) + b"x")
    buffer = io.BytesIO()
    pl.DataFrame({"item_id": ["A"]}).write_parquet(buffer)
    with pytest.raises(ValueError, match="not a coded aggregate: columns"):
        read_parquet(buffer.getvalue())


@pytest.mark.parametrize("big", [1000, 2**31 - 6, 2**31 + 7, 2**40])
def test_a_state_read_back_sums_exactly_whatever_its_values(big):
    """A state is held as int32 when its values fit; a sum that could leave int32 is int64."""
    state = read_raw(raw_bytes(as_coded(KIND, day({("u1", "A"): big, ("u2", "A"): 3}))))
    assert state.matrix.data.dtype == (np.int32 if big < 2**31 else np.int64)
    more = as_coded(KIND, day({("u1", "A"): 10, ("u3", "C"): 1}))
    for summed in (
        combine([(state, 1), (more, 1)], KIND),
        updated(read_stored(raw_bytes(state)), [(more, 1)], KIND),
    ):
        assert summed.matrix.data.dtype == (np.int32 if big + 10 < 2**31 else np.int64)
        assert as_frame(KIND, summed).rows() == [
            ("u1", "A", big + 10),
            ("u2", "A", 3),
            ("u3", "C", 1),
        ]
        assert summed.row_sums().tolist() == [big + 10, 3, 1]
        slid = updated(read_stored(raw_bytes(summed)), [(more, -1)], KIND)
        assert as_frame(KIND, slid).rows() == [("u1", "A", big), ("u2", "A", 3)]


@settings(max_examples=80, deadline=None)
@given(st.lists(entries, min_size=1, max_size=5), entries, st.data(), st.sampled_from([1, 2, 64]))
def test_a_stored_state_updated_block_by_block_equals_the_sum_of_its_days(
    days, new_day, data, block
):
    """yesterday's stored window + a new day - the day that left, in blocks of 1, 2 or 64
    entries (row ids and column ids entering and leaving, whole rows cancelling), is the
    same data as the window summed from its days."""
    out = data.draw(st.integers(0, len(days) - 1))
    state = read_stored(raw_bytes(merge_aggregates(KIND, [day(values) for values in days])))
    with blocks_of(block):
        slid = updated(
            state, [(as_coded(KIND, day(new_day)), 1), (as_coded(KIND, day(days[out])), -1)], KIND
        )
    kept = [values for index, values in enumerate(days) if index != out] + [new_day]
    expected = merge_aggregates(KIND, [day(values) for values in kept])
    assert as_frame(KIND, slid).equals(as_frame(KIND, expected))
    assert same(slid, expected)  # canonical: the same arrays (values in a narrower type)


def test_updating_a_state_with_a_day_it_does_not_hold_is_an_error():
    state = read_stored(raw_bytes(as_coded(KIND, day({("u1", "A"): 1, ("u2", "B"): 4}))))
    other = as_coded(KIND, day({("u1", "A"): 2}))
    with pytest.raises(ValueError, match="user_item_counts: subtracting a day left negative"):
        updated(state, [(other, -1)], KIND)


@pytest.mark.parametrize("ids", [["b", "a"], ["a", "a"]])
def test_a_dictionary_that_is_not_sorted_and_unique_is_refused(ids):
    good = as_coded(KIND, day({("a", "A"): 1, ("c", "A"): 1}))
    bad = Coded(pl.Series(ids), good.columns, good.matrix)
    with pytest.raises(ValueError, match="user_item_counts: id dictionaries must be sorted"):
        combine([(good, 1), (bad, 1)], KIND)


def _column_of(values: np.ndarray) -> Coded:
    """One entry per row (user ids u00000...), all in column "A"."""
    users = pl.Series([f"u{index:05d}" for index in range(values.size)])
    return coded_from_ids(users, pl.Series(["A"] * values.size), values, "test")


@pytest.mark.parametrize(
    ("values", "dtype", "apart"),
    [
        (np.r_[np.full(5000, 7), [10**6, 2**40]], np.uint8, 2),  # counts, a few huge
        (np.full(5000, 38798760) * np.r_[np.arange(1, 5000), 10**5], np.uint16, 1),  # weights
        (np.arange(1, 5001) * 70_000 + 1, np.uint32, 0),  # all large: plain
    ],
)
def test_state_values_take_the_smallest_form_and_read_back_exactly(values, dtype, apart):
    coded = _column_of(values.astype(np.int64))
    stored = read_stored(raw_bytes(coded))
    assert stored.data.dtype == dtype and stored.overflow_at.size == apart
    assert same(stored.coded(), coded)
    assert stored.values(10, 4999, np.int64).tolist() == coded.matrix.data[10:4999].tolist()


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(1, 300) | st.integers(1, 2**36), min_size=1, max_size=60),
    st.sampled_from([1, 6, 38798760]),
    st.integers(1, 7),
)
def test_any_values_survive_storage_and_a_blockwise_update(values, scale, block):
    coded = _column_of(np.array(values, dtype=np.int64) * scale)
    stored = read_stored(raw_bytes(coded))
    assert same(stored.coded(), coded)
    day_out = _column_of(np.array(values, dtype=np.int64)[:1] * scale)
    with blocks_of(block):
        slid = updated(stored, [(day_out, -1)], KIND)
    assert as_frame(KIND, slid).equals(as_frame(KIND, combine([(coded, 1), (day_out, -1)], KIND)))


def _with_part(data: bytes, name: str, change) -> bytes:
    """`data` (raw_bytes) with the array part `name` replaced by change(array)."""
    magic = data.index(b"\n") + 1
    size = int.from_bytes(data[magic : magic + 8], "little")
    offset = magic + 8 + size
    for part, dtype, nbytes in orjson.loads(data[magic + 8 : offset])["parts"]:
        if part == name:
            array = change(np.frombuffer(data[offset : offset + nbytes], dtype=dtype).copy())
            return data[:offset] + array.tobytes() + data[offset + nbytes :]
        offset += nbytes
    raise KeyError(name)


@pytest.mark.parametrize(
    ("part", "change"),
    [
        ("indptr", lambda a: np.where(np.arange(a.size) == 1, 2**40, a)),  # points past the end
        ("indptr", lambda a: a[::-1].copy()),  # not increasing
        ("indices", lambda a: a + 7),  # codes past the columns
    ],
)
def test_stored_arrays_that_point_outside_themselves_are_refused(part, change):
    """A damaged state whose header is intact is refused before a sum reads out of bounds."""
    data = raw_bytes(as_coded(KIND, day({("u1", "A"): 1, ("u1", "B"): 2, ("u2", "C"): 3})))
    with pytest.raises(ValueError, match="arrays do not fit its header"):
        read_stored(_with_part(data, part, change))


def test_an_updated_state_keeps_its_narrow_form_and_its_exact_values():
    """The sum is written as the state file holds it (one byte a value here, the few that
    outgrow it listed apart), and reads back exactly; values at the type's largest that
    were never listed apart (a plain one-byte state) stay exact too."""
    values = np.r_[np.full(3000, 255), np.arange(1, 3001) % 200 + 1]
    coded = _column_of(values)
    state = read_stored(raw_bytes(coded))
    assert state.data.dtype == np.uint8 and state.overflow_at.size == 0
    users = pl.Series([f"u{index:05d}" for index in range(0, 6000, 600)])
    grown = coded_from_ids(users, pl.Series(["A"] * 10), np.full(10, 7), "test")
    slid = updated(state, [(grown, 1)], KIND)
    expected = combine([(coded, 1), (grown, 1)], KIND)
    assert isinstance(slid, Stored) and slid.data.dtype == np.uint8
    assert slid.overflow_at.size == 5  # the 255s that grew past a byte (users 0 to 2400)
    assert same(slid, expected)
    assert slid.row_sums().tolist() == expected.row_sums().tolist()


def test_a_state_whose_values_outgrow_its_form_is_widened():
    """When more than one value in sixteen would be listed apart, the sum comes back wide
    (and is narrowed afresh when it is stored)."""
    values = 150 + np.arange(1000) % 100
    state = read_stored(raw_bytes(_column_of(values)))
    assert state.data.dtype == np.uint8
    slid = updated(state, [(_column_of(np.full(1000, 100)), 1)], KIND)
    assert isinstance(slid, Coded)
    assert slid.matrix.data.tolist() == (values + 100).tolist()
    assert read_stored(raw_bytes(slid)).data.dtype == np.uint16


ids_text = st.text(alphabet="ab\u00e9\U0001f600\x00", max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(ids_text, max_size=8).map(lambda ids: sorted(set(ids))), min_size=1, max_size=4
    ),
    st.sampled_from(["", "x", "user-000000"]),
)
def test_the_union_of_sorted_dictionaries_is_the_sorted_set_of_their_ids(dictionaries, prefix):
    """By code point (UTF-8 byte order), ids that extend others, shared prefixes longer than
    the 8 bytes compared at once, NULs and the empty id included."""
    dictionaries = [[prefix + text for text in ids] for ids in dictionaries]
    union, maps = id_union([pl.Series(ids, dtype=pl.String) for ids in dictionaries], "test")
    expected = sorted(set().union(*dictionaries))
    assert union.to_list() == expected
    for ids, code_map in zip(dictionaries, maps, strict=True):
        codes = range(len(ids)) if code_map is None else code_map.tolist()
        assert [expected[code] for code in codes] == ids
