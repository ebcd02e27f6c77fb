"""A day's aggregates on storage, beside the canonical partition they come from:
`<tenant>/<surface>/aggregates/<kind>/<day>.parquet`, then a marker with their hashes, last.

The canonical store keeps canonical data only; what the aggregates are and how a pair kind
is stored (`artifacts.coded`) is known here.
"""

from __future__ import annotations

import orjson
import polars as pl

from recsys_assets.artifacts import coded
from recsys_assets.artifacts.aggregates import PAIR_KINDS, Aggregate
from recsys_assets.events.canonical import Partition, parquet_bytes, sha256_hex
from recsys_assets.events.store import CanonicalStore, PartitionNotReady, marker_key

# Version of the aggregates' storage: 2 stores the pair kinds coded (artifacts.coded).
# Days written in another format count as not aggregated under the current rules, so an
# artifact re-aggregates them from their canonical partition.
AGGREGATES_FORMAT = 2


def aggregate_key(partition: Partition, kind: str) -> str:
    return (
        f"{partition.tenant}/{partition.surface}/aggregates/{kind}/"
        f"{partition.day.isoformat()}.parquet"
    )


def write_aggregates(
    canonical: CanonicalStore,
    partition: Partition,
    aggregates: dict[str, Aggregate],
    params: dict[str, object],
    source_hash: str,
) -> dict[str, object]:
    """Write each aggregate kind of a day, then one marker with their hashes."""
    store = canonical.store()
    hashes, rows = {}, {}
    for kind, aggregate in sorted(aggregates.items()):
        if isinstance(aggregate, coded.Coded):
            data, rows[kind] = coded.parquet_bytes(aggregate), aggregate.nnz
        else:
            data, rows[kind] = parquet_bytes(aggregate), aggregate.height
        store.write_bytes(aggregate_key(partition, kind), data)
        hashes[kind] = sha256_hex(data)
    marker = {
        "v": AGGREGATES_FORMAT,
        "dataset": "aggregates",
        "tenant": partition.tenant,
        "surface": partition.surface,
        "day": partition.day.isoformat(),
        "source_hash": source_hash,
        "params": params,
        "content_hashes": hashes,
        "rows": rows,
    }
    store.write_bytes(
        marker_key(partition, "aggregates"), orjson.dumps(marker, option=orjson.OPT_INDENT_2)
    )
    return marker


def aggregates_marker(canonical: CanonicalStore, partition: Partition) -> dict | None:
    """The day's aggregates marker; None when absent or in another storage format."""
    marker = canonical.marker(partition, "aggregates")
    return marker if marker is not None and marker.get("v") == AGGREGATES_FORMAT else None


def read_aggregates(
    canonical: CanonicalStore, partition: Partition, kinds: list[str]
) -> tuple[dict[str, Aggregate], dict] | None:
    """The day's aggregates of `kinds` as its marker vouches for them; None when absent
    or stored in another format (see AGGREGATES_FORMAT)."""
    marker = aggregates_marker(canonical, partition)
    if marker is None:
        return None
    return {kind: read_aggregate(canonical, partition, kind, marker) for kind in kinds}, marker


def read_aggregate(
    canonical: CanonicalStore, partition: Partition, kind: str, marker: dict
) -> Aggregate:
    """One kind of the day's aggregates, checked against `marker` (its aggregates marker)."""
    data = canonical.store().read_bytes(aggregate_key(partition, kind))
    if data is None or sha256_hex(data) != marker["content_hashes"].get(kind):
        raise PartitionNotReady(
            f"aggregates {kind} of {partition}: file does not match the marker's hash"
        )
    return coded.read_parquet(data) if kind in PAIR_KINDS else pl.read_parquet(data)
