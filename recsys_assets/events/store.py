"""The canonical store (SPEC §3): exposures, rejects and the marker written last."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import polars as pl

from recsys_assets.events.canonical import (
    EVENT_SCHEMA,
    CanonicalPartition,
    Partition,
    ndjson_bytes,
    parquet_bytes,
    sha256_hex,
)
from recsys_assets.events.spill import sha256_of
from recsys_assets.locations import LocationResource


class PartitionNotReady(RuntimeError):
    """No marker, or files that do not match their marker."""


def _prefix(partition: Partition) -> str:
    return f"{partition.tenant}/{partition.surface}"


def exposures_key(partition: Partition) -> str:
    return f"{_prefix(partition)}/exposures/{partition.day.isoformat()}.parquet"


def rejects_key(partition: Partition) -> str:
    return f"{_prefix(partition)}/rejects/{partition.day.isoformat()}.jsonl"


def marker_key(partition: Partition, dataset: str = "exposures") -> str:
    return f"{_prefix(partition)}/markers/{dataset}/{partition.day.isoformat()}.json"


class CanonicalStore(LocationResource):
    """Canonical partitions under `location` (a local path; `s3://` with the S3 backend)."""

    def write(
        self,
        partition: Partition,
        canonical: CanonicalPartition,
        source: str,
        source_missing: bool = False,
    ) -> dict[str, object]:
        """Write exposures and rejects, then the marker; returns the marker.

        `source_missing` records that the source had no input for the partition (see
        `RawInput.missing`), which the `source_present` guard tells from a day without events.
        """
        store = self.store()
        rejects = ndjson_bytes(canonical.rejects)
        if isinstance(canonical.parquet, bytes):
            store.write_bytes(exposures_key(partition), canonical.parquet)
        else:
            store.write_file(exposures_key(partition), canonical.parquet)
        store.write_bytes(rejects_key(partition), rejects)
        marker = {
            "v": 1,
            "dataset": "exposures",
            "tenant": partition.tenant,
            "surface": partition.surface,
            "day": partition.day.isoformat(),
            "content_hash": canonical.content_hash,
            "rejects_hash": sha256_hex(rejects),
            "source": source,
            "source_missing": source_missing,
            "counts": canonical.counts,
            "rejects_by_reason": canonical.rejects_by_reason,
        }
        store.write_bytes(marker_key(partition), orjson.dumps(marker, option=orjson.OPT_INDENT_2))
        return marker

    def write_unattributed(self, name: str, data: bytes) -> str:
        store = self.store()
        key = f"_unattributed/{name}"
        store.write_bytes(key, data)
        return store.uri(key)

    def marker(self, partition: Partition, dataset: str = "exposures") -> dict | None:
        data = self.store().read_bytes(marker_key(partition, dataset))
        return orjson.loads(data) if data is not None else None

    def read_events(
        self, partition: Partition, columns: list[str] | None = None
    ) -> tuple[pl.DataFrame, dict]:
        """The partition's events (or only `columns` of them), checked against the marker's
        content hash."""
        marker = self.marker(partition)
        if marker is None:
            raise PartitionNotReady(f"canonical partition {partition} has no marker")
        data = self.store().read_bytes(exposures_key(partition))
        if data is None or sha256_hex(data) != marker["content_hash"]:
            raise PartitionNotReady(
                f"canonical partition {partition}: exposures do not match the marker's hash"
            )
        events = pl.read_parquet(data, columns=columns)
        return events.cast({name: EVENT_SCHEMA[name] for name in events.columns}), marker

    @contextmanager
    def events_file(
        self, partition: Partition, scratch: str | None = None
    ) -> Iterator[tuple[Path, dict]]:
        """The partition's events as a local Parquet file checked against the marker's
        content hash (a local store's own file, or a download under `scratch`), with the
        marker: for a reader that scans the day a part at a time rather than loading it."""
        marker = self.marker(partition)
        if marker is None:
            raise PartitionNotReady(f"canonical partition {partition} has no marker")
        with self.store().local_file(exposures_key(partition), scratch) as path:
            if path is None or sha256_of(path) != marker["content_hash"]:
                raise PartitionNotReady(
                    f"canonical partition {partition}: exposures do not match the marker's hash"
                )
            yield path, marker

    def uri(self, key: str) -> str:
        return self.store().uri(key)

    def write_catalog(
        self, tenant: str, surface: str, frame: pl.DataFrame, rejects: bytes, source: dict
    ) -> dict[str, object]:
        """Write a tenant/surface's parsed catalog and its rejects, then the marker."""
        store = self.store()
        data = parquet_bytes(frame)
        store.write_bytes(f"{tenant}/{surface}/catalog/items.parquet", data)
        store.write_bytes(f"{tenant}/{surface}/catalog/rejects.jsonl", rejects)
        marker = {
            "v": 1,
            "dataset": "catalog",
            "tenant": tenant,
            "surface": surface,
            "content_hash": sha256_hex(data),
            "rejects_hash": sha256_hex(rejects),
            "rows": frame.height,
            "source": source,
        }
        store.write_bytes(
            f"{tenant}/{surface}/markers/catalog.json",
            orjson.dumps(marker, option=orjson.OPT_INDENT_2),
        )
        return marker

    def read_catalog(self, tenant: str, surface: str) -> tuple[pl.DataFrame, dict]:
        """The parsed catalog as its marker vouches for it."""
        store = self.store()
        raw = store.read_bytes(f"{tenant}/{surface}/markers/catalog.json")
        if raw is None:
            raise PartitionNotReady(
                f"no item catalog for {tenant}/{surface}: materialize item_catalog first "
                f"(recsys-assets run does)"
            )
        marker = orjson.loads(raw)
        data = store.read_bytes(f"{tenant}/{surface}/catalog/items.parquet")
        if data is None or sha256_hex(data) != marker["content_hash"]:
            raise PartitionNotReady(f"catalog of {tenant}/{surface} does not match its marker")
        return pl.read_parquet(data), marker


def day_range(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
