"""A day's aggregates on storage, beside the canonical partition they come from (SPEC §3):

    <tenant>/<surface>/aggregates/<kind>/<day>.parquet   one file per kind
    <tenant>/<surface>/markers/aggregates/<day>.json     written last: hashes, params, ids

item_counts and cooc_stats are frames by id. A pair kind is a sparse matrix over the
tenant/surface's id space (`ids`), stored as its entries (`row`, `column`, `value`, by row
then column): row and column codes are the same on every day, so a window sums the days'
matrices as they are. The marker
records the index each day was coded against; a day whose index no longer matches is not
read (`DayAggregates.coded_against`), and is re-aggregated from its canonical partition.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson
import polars as pl
import scipy.sparse as sp

from recsys_assets.aggregates.coded import Coded, csr, grown, in_id_order, positions, reordered
from recsys_assets.aggregates.daily import (
    EVENT_COLUMNS,
    PAIR_KINDS,
    PAIR_SPACES,
    Aggregate,
    daily_aggregates,
)
from recsys_assets.aggregates.ids import IdIndex, id_index
from recsys_assets.events.canonical import Partition, parquet_bytes, sha256_hex
from recsys_assets.events.spill import bucket_count
from recsys_assets.events.store import CanonicalStore, PartitionNotReady, marker_key


def aggregate_key(partition: Partition, kind: str) -> str:
    return (
        f"{partition.tenant}/{partition.surface}/aggregates/{kind}/"
        f"{partition.day.isoformat()}.parquet"
    )


def indexes(canonical: CanonicalStore, tenant: str, surface: str) -> dict[str, IdIndex]:
    """The tenant/surface's id spaces (space -> index)."""
    store = canonical.store()
    return {space: id_index(store, tenant, surface, space) for space in ("items", "users")}


def in_id_space(
    kind: str, coded: Coded, spaces: dict[str, IdIndex], encoded: Encoded | None = None
) -> sp.csr_matrix:
    """A pair aggregate over the tenant's codes (shape: the indexes' sizes once encoded);
    `encoded` gives codes already looked up (`encode_days`)."""
    encoded = encoded or encode_days([{kind: coded}], spaces)
    row_space, column_space = PAIR_SPACES[kind]
    row_map = encoded.codes(row_space, coded.rows)
    column_map = encoded.codes(column_space, coded.columns)
    n_rows, n_columns = (spaces[name].ids().len() for name in PAIR_SPACES[kind])
    if _is_identity(row_map) and _is_identity(column_map):  # e.g. a tenant's first day
        return grown(coded.matrix, n_rows, n_columns)
    row_source = np.full(n_rows, -1, dtype=np.int64)
    row_source[row_map] = np.arange(row_map.size)
    return reordered(coded.matrix, row_source, column_map, n_columns)


def _is_identity(codes: np.ndarray) -> bool:
    return bool((codes == np.arange(codes.size)).all())


@dataclass(frozen=True)
class Encoded:
    """The codes of some days' ids, looked up (and added) once per id space."""

    ids: dict[str, pl.Series]  # space -> the days' ids, sorted
    codes_of_ids: dict[str, np.ndarray]  # space -> their codes

    def size(self, space: str) -> int:
        """How many codes the days' ids in `space` need: their largest + 1."""
        codes = self.codes_of_ids[space]
        return int(codes.max()) + 1 if codes.size else 0

    def codes(self, space: str, ids: pl.Series) -> np.ndarray:
        """The codes of `ids` (a subset of the days' ids in `space`)."""
        at = positions(ids, self.ids[space])
        if (at < 0).any():
            raise ValueError(f"{space}: ids not among the days' ones")
        return self.codes_of_ids[space][at]


def encode_days(days: list[dict[str, Aggregate]], spaces: dict[str, IdIndex]) -> Encoded:
    """Look up (and add) the ids of the pair kinds of `days` (kind -> aggregate each) once
    per space: a day's kinds share most of their ids."""
    found: dict[str, list[pl.Series]] = {space: [] for space in spaces}
    for aggregates in days:
        for kind, aggregate in aggregates.items():
            if kind in PAIR_SPACES and isinstance(aggregate, Coded):
                row_space, column_space = PAIR_SPACES[kind]
                found[row_space].append(aggregate.rows.rename(""))
                found[column_space].append(aggregate.columns.rename(""))
    ids = {
        space: pl.concat(lists).unique().sort() if lists else pl.Series("", [], pl.String)
        for space, lists in found.items()
    }
    return Encoded(ids, {space: spaces[space].encode(ids[space]) for space in ids})


def entries_parquet(matrix: sp.csr_matrix) -> memoryview:
    """A canonical CSR matrix's entries as Parquet (`row`, `column`, `value`)."""
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int32), np.diff(matrix.indptr))
    frame = pl.DataFrame(
        {"row": rows, "column": matrix.indices.astype(np.int32), "value": matrix.data}
    )
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="lz4", statistics=False)
    return buffer.getbuffer()  # not copied: a big day's entries are hundreds of MB


def read_entries(data: bytes, shape: tuple[int, int]) -> sp.csr_matrix:
    """The matrix of `entries_parquet`, at `shape` (the id spaces only grow: codes past the
    file's have no entry)."""
    frame = pl.read_parquet(bytes(data) if isinstance(data, memoryview) else data)
    rows = frame["row"].to_numpy()
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    return csr(frame["value"].to_numpy(), frame["column"].to_numpy(), indptr, shape[1])


@dataclass(frozen=True)
class DayAggregation:
    """A day aggregated from its canonical partition: the aggregates, the canonical marker
    they come from, and the number of shards the day was worked in."""

    aggregates: dict[str, Aggregate]
    canonical: dict
    shards: int


def aggregate_partition(
    canonical: CanonicalStore,
    partition: Partition,
    params: dict[str, int],
    shard_events: int,
    scratch: str | None = None,
    log: Callable[[str], None] | None = None,
) -> DayAggregation:
    """Aggregate a canonical partition a shard at a time: the day's file is scanned (a local
    store's own file, or a download under `scratch`), never loaded whole, and cut into one
    shard per `shard_events` events (`daily_aggregates`; the result does not depend on it).
    `log` hears how a day of more than one shard is cut. Raises PartitionNotReady when the
    partition is absent or does not match its marker."""
    with canonical.events_file(partition, scratch) as (path, marker):
        events = marker["counts"]["rows"]
        shards = bucket_count(events, shard_events)
        if shards > 1 and log is not None:
            log(
                f"{partition}: aggregating {events:,} events in {shards} shards of sessions "
                f"and of users (scale.shard_events {shard_events:,})"
            )
        aggregates = daily_aggregates(
            pl.scan_parquet(path).select(EVENT_COLUMNS), **params, shards=shards
        )
    return DayAggregation(aggregates, marker, shards)


def write_aggregates(
    canonical: CanonicalStore,
    partition: Partition,
    aggregates: dict[str, Aggregate],
    params: dict[str, object],
    source_hash: str,
) -> dict[str, object]:
    """Write each aggregate kind of a day, then one marker with their hashes."""
    store = canonical.store()
    spaces = indexes(canonical, partition.tenant, partition.surface)
    encoded = encode_days([aggregates], spaces)
    hashes, rows = {}, {}
    for kind, aggregate in sorted(aggregates.items()):
        if isinstance(aggregate, Coded):
            data = entries_parquet(in_id_space(kind, aggregate, spaces, encoded))
            rows[kind] = aggregate.nnz
        else:
            data, rows[kind] = parquet_bytes(aggregate), aggregate.height
        store.write_parts(aggregate_key(partition, kind), [data])
        hashes[kind] = hashlib.sha256(data).hexdigest()
        del data
    marker = {
        "dataset": "aggregates",
        "tenant": partition.tenant,
        "surface": partition.surface,
        "day": partition.day.isoformat(),
        "source_hash": source_hash,
        "params": params,
        "content_hashes": hashes,
        "rows": rows,
        "ids": {
            space: list(spaces[space].covering(encoded.size(space))) for space in sorted(spaces)
        },
    }
    store.write_bytes(
        marker_key(partition, "aggregates"), orjson.dumps(marker, option=orjson.OPT_INDENT_2)
    )
    return marker


def coded_against_current(marker: dict, spaces: dict[str, IdIndex]) -> bool:
    """Whether a day's codes are still those of the id spaces (see `ids`)."""
    recorded = marker.get("ids")
    if not isinstance(recorded, dict):
        return False
    for space, index in spaces.items():
        segments, chain = recorded.get(space, (None, None))
        if not isinstance(segments, int) or index.chain(segments) != chain:
            return False
    return True


def read_day(
    canonical: CanonicalStore, partition: Partition, kind: str, marker: dict, shape=None
) -> pl.DataFrame | sp.csr_matrix:
    """One kind of the day's aggregates as stored (a pair kind in the tenant's codes, grown
    to `shape`), checked against `marker`'s hash."""
    data = canonical.store().read_bytes(aggregate_key(partition, kind))
    if data is None or sha256_hex(data) != marker["content_hashes"].get(kind):
        raise PartitionNotReady(
            f"aggregates {kind} of {partition}: file does not match the marker's hash"
        )
    if kind in PAIR_KINDS:
        return read_entries(data, shape)
    return pl.read_parquet(data)


def read_aggregates(
    canonical: CanonicalStore, partition: Partition, kinds: list[str]
) -> tuple[dict[str, Aggregate], dict] | None:
    """The day's aggregates of `kinds` in id order, as its marker vouches for them; None
    when absent or coded against an index that changed."""
    marker = canonical.marker(partition, "aggregates")
    spaces = indexes(canonical, partition.tenant, partition.surface)
    if marker is None or not coded_against_current(marker, spaces):
        return None
    frames: dict[str, Aggregate] = {}
    for kind in kinds:
        if kind in PAIR_KINDS:
            row_ids, column_ids = (spaces[name].ids() for name in PAIR_SPACES[kind])
            day = read_day(canonical, partition, kind, marker, (row_ids.len(), column_ids.len()))
            frames[kind] = in_id_order(day, row_ids, column_ids)
        else:
            frames[kind] = read_day(canonical, partition, kind, marker)
    return frames, marker
