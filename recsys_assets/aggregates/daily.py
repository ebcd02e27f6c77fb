"""Daily partial aggregates of one day's canonical exposures, and their merge over a window.

Each kind is computed once per (UTC day, tenant, surface) by `daily_aggregates`, stored under
`aggregates/<kind>/YYYY-MM-DD.parquet`, and summed over the days of an artifact window by
`merge_aggregates`. item_counts and cooc_stats are frames; the four pair kinds are `Coded`
(a sparse matrix over sorted id dictionaries, see `coded`), whose frame form (`as_frame`)
has the columns below, sorted by its key columns, which are unique. This module is pure: it
knows neither storage nor the tenant's id space (`store` puts a day into it).

Kinds (key columns first, then the summed value):
- item_counts: item_id, count. Exposures of the item.
- cooc_pairs: item_id, neighbor_id, count. Sessions that showed both items; item_id <
  neighbor_id, so each unordered pair appears once.
- cooc_stats: one row of sessions, events, excluded_sessions, excluded_events.
- user_item_counts: user_id, item_id, count. Exposures of the item to the known user.
- user_transitions: user_id, item_id, count. Times the item came right after another of the
  user's events.
- item_transitions: item_id, next_item_id, weight_units. Sum of 1/gap over the times
  next_item_id came gap steps after item_id in a session (gap <= window), in units of
  1/TRANSITION_UNIT.

Two parameters belong to the daily aggregation: `max_items_per_session`
(limits.max_items_per_session; a session with more distinct items is left out of cooc_pairs and
counted in cooc_stats) and `transition_window` (artifacts.session_seq.window). Changing either
affects the days aggregated afterwards, so the asset layer keys the aggregates on them.

Transition weights are kept as integers (`weight = weight_units / TRANSITION_UNIT`, the unit
being lcm(1..MAX_TRANSITION_WINDOW)) so that sums over days are exact and bit-identical in any
order; a float sum would depend on how the engine splits the work.

Merging days differs from reading the whole window at once in three ways, all documented
consequences of partial aggregation:
- a session that crosses midnight is two sessions: a pair seen in both halves counts twice, its
  transitions across midnight are lost, and cooc_stats counts it twice;
- the crawler cut-off applies to each day's part of a session;
- a user's sequence breaks at midnight: the first event of a day has no predecessor.

Days are read in the canonical order (ts, session_id, rank, item_id, user_id, request_id): "in
time order" below means that order, so exposures of one request follow their rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_assets.aggregates.coded import (
    Coded,
    coded_from_ids,
    codes,
    empty_coded,
    in_id_order,
    pair_matrix,
)
from recsys_assets.events.canonical import EVENT_SCHEMA

AGGREGATE_KINDS = (
    "item_counts",
    "cooc_pairs",
    "cooc_stats",
    "user_item_counts",
    "user_transitions",
    "item_transitions",
)
AGGREGATE_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "item_counts": {"item_id": pl.String(), "count": pl.Int64()},
    "cooc_pairs": {"item_id": pl.String(), "neighbor_id": pl.String(), "count": pl.Int64()},
    "cooc_stats": {
        "sessions": pl.Int64(),
        "events": pl.Int64(),
        "excluded_sessions": pl.Int64(),
        "excluded_events": pl.Int64(),
    },
    "user_item_counts": {"user_id": pl.String(), "item_id": pl.String(), "count": pl.Int64()},
    "user_transitions": {"user_id": pl.String(), "item_id": pl.String(), "count": pl.Int64()},
    "item_transitions": {
        "item_id": pl.String(),
        "next_item_id": pl.String(),
        "weight_units": pl.Int64(),
    },
}
PAIR_KINDS = ("cooc_pairs", "user_item_counts", "user_transitions", "item_transitions")
# The id spaces (dictionaries) of each pair kind's rows and columns.
PAIR_SPACES = {
    "cooc_pairs": ("items", "items"),
    "user_item_counts": ("users", "items"),
    "user_transitions": ("users", "items"),
    "item_transitions": ("items", "items"),
}
Aggregate = pl.DataFrame | Coded
AGGREGATE_KEYS: dict[str, tuple[str, ...]] = {
    "item_counts": ("item_id",),
    "cooc_pairs": ("item_id", "neighbor_id"),
    "cooc_stats": (),
    "user_item_counts": ("user_id", "item_id"),
    "user_transitions": ("user_id", "item_id"),
    "item_transitions": ("item_id", "next_item_id"),
}
MAX_TRANSITION_WINDOW = 20
TRANSITION_UNIT = math.lcm(*range(1, MAX_TRANSITION_WINDOW + 1))


def empty_aggregate(kind: str) -> Aggregate:
    """The aggregate of `kind` for a day without events."""
    schema = _schema(kind)
    if kind in PAIR_KINDS:
        return empty_coded()
    if kind == "cooc_stats":
        return pl.DataFrame({name: [0] for name in schema}, schema=schema)
    return pl.DataFrame(schema=schema)


def as_frame(kind: str, aggregate: Aggregate) -> pl.DataFrame:
    """An aggregate in frame form; a pair kind's has its three columns, sorted by the keys."""
    if isinstance(aggregate, pl.DataFrame):
        return aggregate
    schema = _pair_schema(kind)
    coded = in_id_order(aggregate.matrix, aggregate.rows, aggregate.columns)  # any order in
    names = list(schema)
    return pl.DataFrame(
        {
            names[0]: coded.rows.gather(coded.row_codes()),
            names[1]: coded.columns.gather(coded.matrix.indices),
            names[2]: coded.matrix.data,
        },
        schema=schema,
    )


def as_coded(kind: str, aggregate: Aggregate) -> Coded:
    """A pair aggregate in coded form, from either form."""
    schema = _pair_schema(kind)
    if isinstance(aggregate, Coded):
        return aggregate
    if dict(aggregate.schema) != schema:
        raise ValueError(f"{kind} frame has columns {dict(aggregate.schema)}, expected {schema}")
    first, second, value = schema
    return coded_from_ids(aggregate[first], aggregate[second], aggregate[value].to_numpy(), kind)


# What `daily_aggregates` reads of the canonical events (in their time order): a day's
# other columns need not be loaded for it.
EVENT_COLUMNS = ["session_id", "item_id", "user_id"]


def daily_aggregates(
    events: pl.DataFrame | pl.LazyFrame,
    *,
    max_items_per_session: int = 200,
    transition_window: int = 3,
    shards: int = 1,
) -> dict[str, Aggregate]:
    """Every aggregate kind of one day's canonical events (kind -> aggregate): a frame, or a
    scan of the day's file (it needs only EVENT_COLUMNS, in time order).

    With `shards` > 1 the day is aggregated a part at a time, so that memory holds one
    part's events and scratch arrays rather than the day's: the session kinds by a hash of
    the session (a session is whole in one part), the user kinds by a hash of the user, each
    coded against the day's sorted items and users and summed. Sums of integers over parts
    that split sessions and users whole are the day's sums: the result does not depend on
    `shards`.
    """
    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"scale.shard_events gives {shards!r} shards; expected an integer >= 1")
    if not isinstance(max_items_per_session, int) or max_items_per_session < 1:
        raise ValueError(
            f"limits.max_items_per_session must be an integer >= 1, got {max_items_per_session!r}"
        )
    if (
        not isinstance(transition_window, int)
        or not 1 <= transition_window <= MAX_TRANSITION_WINDOW
    ):
        raise ValueError(
            f"artifacts.session_seq.window must be an integer in 1..{MAX_TRANSITION_WINDOW},"
            f" got {transition_window!r}"
        )
    scan = events.lazy().select(EVENT_COLUMNS)
    day = scan.collect() if shards == 1 else scan.head(0).collect()
    _check_events(day)
    if shards == 1:
        items = day["item_id"].unique().sort()
        users = day["user_id"].drop_nulls().unique().sort()
    else:
        items = scan.select(pl.col("item_id").unique().sort()).collect().to_series()
        users = scan.select(pl.col("user_id").drop_nulls().unique().sort()).collect().to_series()
    if items.len() == 0:
        return {kind: empty_aggregate(kind) for kind in AGGREGATE_KINDS}

    # One kind of part after the other: each already keeps the cores busy (its kernels run
    # on the threads, polars on its own), and at once their scratch arrays would add up.
    sums: dict[str, Aggregate | np.ndarray] = {}
    for part in range(shards):
        events = day if shards == 1 else _shard(scan, "session_id", shards, part)
        if events.height:
            item_code = codes(events["item_id"], items, "item_id")
            _add(
                sums,
                _session_kinds(events, item_code, items, max_items_per_session, transition_window),
            )
    for part in range(shards):
        events = day if shards == 1 else _shard(scan, "user_id", shards, part)
        if events.height:
            if shards > 1:
                item_code = codes(events["item_id"], items, "item_id")
            _add(sums, _user_kinds(events, item_code, items, users))
    del day, events, item_code
    dictionaries = {"items": items, "users": users}
    coded = {
        kind: in_id_order(sums.pop(kind), *(dictionaries[space] for space in PAIR_SPACES[kind]))
        for kind in PAIR_KINDS
        if kind in sums
    }
    return {
        **{kind: empty_aggregate(kind) for kind in AGGREGATE_KINDS},
        **sums,
        **coded,
        "item_counts": pl.DataFrame(
            {"item_id": items, "count": sums["item_counts"]},
            schema=AGGREGATE_SCHEMAS["item_counts"],
        ),
    }


# Which part of the day an event falls in is a hash of its session or user; any hash gives
# the same sums.
_SHARD_SEED = 20_260_101


def _shard(scan: pl.LazyFrame, key: str, shards: int, part: int) -> pl.DataFrame:
    """The events (in time order) whose `key` hashes to `part` of `shards`; a user part
    leaves out events without a user."""
    chosen = pl.col(key).hash(seed=_SHARD_SEED) % shards == part
    if key == "user_id":
        chosen = chosen & pl.col(key).is_not_null()
    return scan.filter(chosen).collect()


def _add(sums: dict[str, Aggregate | np.ndarray], part: dict[str, Aggregate | np.ndarray]):
    """Add a part's aggregates to the sums (kind -> sum), all over the same dictionaries."""
    for kind, value in part.items():
        if kind not in sums:
            sums[kind] = value
        elif isinstance(value, sp.csr_matrix):
            sums[kind] = sums[kind] + value
        elif isinstance(value, pl.DataFrame):
            sums[kind] = pl.concat([sums[kind], value]).sum()
        else:
            sums[kind] = sums[kind] + value


def _session_kinds(
    events: pl.DataFrame,
    item_code: np.ndarray,
    items: pl.Series,
    max_items_per_session: int,
    transition_window: int,
) -> dict[str, Aggregate | np.ndarray]:
    """The kinds of whole sessions (and the item counts) of some events in time order."""
    grouped = (
        events.select("session_id")
        .with_row_index("row")
        .group_by("session_id", maintain_order=True)
        .agg("row")
    )
    session_length = grouped["row"].list.len().to_numpy().astype(np.int64)
    session_rows = grouped["row"].explode().to_numpy()
    del grouped
    session_of = np.repeat(np.arange(session_length.size), session_length)
    session_items = item_code[session_rows]  # session by session, in time order
    del session_rows
    pairs, stats = _cooc(session_of, session_items, session_length, items, max_items_per_session)
    return {
        "item_counts": np.bincount(item_code, minlength=items.len()),
        "cooc_pairs": pairs,
        "cooc_stats": stats,
        "item_transitions": _item_transitions(session_of, session_items, items, transition_window),
    }


def merge_aggregates(kind: str, aggregates: Sequence[Aggregate]) -> Aggregate:
    """Sum the daily aggregates of `kind` by key; none give the empty aggregate.

    Pair kinds (frames or coded) give a `Coded`; item_counts and cooc_stats a frame.
    """
    if kind in PAIR_KINDS:
        frames = [as_frame(kind, as_coded(kind, aggregate)) for aggregate in aggregates]
        present = [frame for frame in frames if frame.height]
        if not present:
            return empty_coded()
        first, second, value = AGGREGATE_SCHEMAS[kind]
        summed = pl.concat(present).group_by(first, second).agg(pl.col(value).sum())
        return coded_from_ids(summed[first], summed[second], summed[value].to_numpy(), kind)
    schema = _schema(kind)
    for index, frame in enumerate(aggregates):
        if not isinstance(frame, pl.DataFrame) or dict(frame.schema) != schema:
            found = dict(frame.schema) if isinstance(frame, pl.DataFrame) else type(frame)
            raise ValueError(f"{kind} aggregate #{index} is {found}, expected columns {schema}")
    if kind == "cooc_stats":
        if not aggregates:
            return empty_aggregate(kind)
        return pl.concat(aggregates).sum()
    present = [frame for frame in aggregates if frame.height]
    if not present:
        return empty_aggregate(kind)
    if len(present) == 1:
        return present[0]
    return pl.concat(present).group_by("item_id").agg(pl.col("count").sum()).sort("item_id")


def _schema(kind: str) -> dict[str, pl.DataType]:
    if kind not in AGGREGATE_SCHEMAS:
        raise ValueError(f"unknown aggregate kind {kind!r}; known: {', '.join(AGGREGATE_KINDS)}")
    return AGGREGATE_SCHEMAS[kind]


def _pair_schema(kind: str) -> dict[str, pl.DataType]:
    if kind not in PAIR_KINDS:
        raise ValueError(f"{kind!r} is not a pair aggregate; pair kinds: {', '.join(PAIR_KINDS)}")
    return AGGREGATE_SCHEMAS[kind]


def _check_events(events: pl.DataFrame) -> None:
    for name in ("session_id", "item_id", "user_id"):
        dtype = events.schema.get(name)
        if dtype != EVENT_SCHEMA[name]:
            raise ValueError(
                f"canonical events need column {name} of type {EVENT_SCHEMA[name]}, got {dtype}"
            )
    for name in ("session_id", "item_id"):
        nulls = events[name].null_count()
        if nulls:
            raise ValueError(f"canonical events have {nulls} null {name} values")


def _workers() -> int:
    return max(1, pl.thread_pool_size())


def _cooc(
    session_of: np.ndarray,
    session_items: np.ndarray,
    session_length: np.ndarray,
    items: pl.Series,
    max_items_per_session: int,
) -> tuple[sp.csr_matrix, pl.DataFrame]:
    n_sessions, n_items = session_length.size, items.len()
    # Binary session x item matrix: duplicates summed by the COO -> CSR conversion, then
    # set to 1 so that a session counts a pair once.
    x = sp.csr_matrix(
        (np.ones(session_items.size, dtype=np.int32), (session_of, session_items)),
        shape=(n_sessions, n_items),
    )
    x.sum_duplicates()
    distinct = np.diff(x.indptr)
    excluded = distinct > max_items_per_session
    if excluded.any():
        x = x[~excluded]
    x.data[:] = 1
    pairs = pair_matrix(n_items, n_items, *_upper_pair_counts(x))
    stats = pl.DataFrame(
        {
            "sessions": [n_sessions],
            "events": [int(session_length.sum())],
            "excluded_sessions": [int(excluded.sum())],
            "excluded_events": [int(session_length[excluded].sum())],
        },
        schema=AGGREGATE_SCHEMAS["cooc_stats"],
    )
    return pairs, stats


def _upper_pair_counts(x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries above the diagonal of C = x.T @ x as (row, column, value), sorted.

    C is symmetric, so its upper part in rows [lo, hi) is read from D = C[lo:, lo:hi] =
    x[:, lo:].T @ x[:, lo:hi]: with several column blocks that is about half of the full
    product's work. D's CSC form lists, for each column, its rows sorted, which is the
    wanted order. Blocks run on a thread pool (scipy's kernels release the GIL) and are
    concatenated in order.
    """
    n_items = x.shape[1]
    by_column = x.tocsc()
    bounds = np.linspace(0, n_items, 8 * _workers() + 1).astype(np.int64)

    def block(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = (by_column[:, lo:].T @ by_column[:, lo:hi].tocsr()).tocsc()
        rows = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(d.indptr))
        columns = d.indices.astype(np.int64) + lo
        upper = columns > rows
        return rows[upper], columns[upper], d.data[upper]

    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        parts = list(pool.map(block, bounds[:-1].tolist(), bounds[1:].tolist()))
    rows, columns, counts = (np.concatenate(column) for column in zip(*parts, strict=True))
    return rows, columns, counts


def _user_kinds(
    events: pl.DataFrame, item_code: np.ndarray, items: pl.Series, users: pl.Series
) -> dict[str, sp.csr_matrix]:
    """The kinds of whole users of some events in time order, over the day's `users`."""
    known = np.flatnonzero(events["user_id"].is_not_null().to_numpy())
    if known.size == 0:
        return {}
    user_code = codes(events["user_id"].gather(known), users, "user_id")
    user_item = item_code[known]
    shape = (users.len(), items.len())
    seen = pair_matrix(*shape, user_code, user_item, np.ones(known.size, np.int64))
    # Stable sort: each user's events stay in time order.
    order = np.argsort(user_code, kind="stable")
    user_seq, item_seq = user_code[order], user_item[order]
    follows = user_seq[1:] == user_seq[:-1]
    moved = pair_matrix(
        *shape,
        user_seq[1:][follows],
        item_seq[1:][follows],
        np.ones(int(follows.sum()), np.int64),
    )
    return {"user_item_counts": seen, "user_transitions": moved}


def _item_transitions(
    session_of: np.ndarray, session_items: np.ndarray, items: pl.Series, window: int
) -> sp.csr_matrix:
    firsts, seconds, units = [], [], []
    for gap in range(1, window + 1):
        same_session = session_of[gap:] == session_of[:-gap]
        first, second = session_items[:-gap][same_session], session_items[gap:][same_session]
        # An item is not its own next item: repeats in a session carry no signal for it.
        moved = first != second
        firsts.append(first[moved])
        seconds.append(second[moved])
        units.append(np.full(int(moved.sum()), TRANSITION_UNIT // gap, dtype=np.int64))
    n_items = items.len()
    return pair_matrix(
        n_items, n_items, np.concatenate(firsts), np.concatenate(seconds), np.concatenate(units)
    )
