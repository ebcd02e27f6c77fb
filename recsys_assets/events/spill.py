"""Working on a day bigger than memory: time buckets spilled to disk, distinct counts kept
compact, and canonical events written to one Parquet file as the sorted buckets come.

A day's events are routed, block by block as they are parsed, into buckets of equal time
spans; with more than one bucket, a bucket's rows go to an Arrow IPC file under a spill
folder whenever the rows held reach a budget. The buckets are then read back earliest
first, so that sorting the day by time is sorting one bucket at a time, and the sorted
buckets are written one after the other into a single Parquet file. With one bucket (a day
that fits, the usual case) nothing is spilled and the code path is the same.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source

DAY_US = 86_400_000_000
# Rows held in memory across buckets before they are written to the spill folder.
SPILL_BUDGET_BYTES = 1 << 30
# Rows of every row group of a canonical Parquet file, whatever the buckets: the bytes of a
# day do not depend on how it was cut.
ROW_GROUP_ROWS = 1 << 19


def bucket_count(size_bytes: int | None, bucket_bytes: int) -> int:
    """How many pieces of at most `bucket_bytes` a day of `size_bytes` needs (1 when
    unknown): canonical's time buckets (raw bytes), daily_aggregates' shards (events)."""
    if not size_bytes or size_bytes <= bucket_bytes:
        return 1
    return math.ceil(size_bytes / bucket_bytes)


class TimeBuckets:
    """A day's rows by time bucket (`count` equal spans of the day from `start_us`); with
    more than one, held rows beyond `budget_bytes` are spilled to files under `folder`."""

    def __init__(
        self,
        start_us: int,
        count: int,
        folder: str | os.PathLike[str] | None = None,
        budget_bytes: int | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"bucket count must be >= 1, got {count}")
        self.start_us = start_us
        self.count = count
        self.budget_bytes = SPILL_BUDGET_BYTES if budget_bytes is None else budget_bytes
        self._folder = folder
        self._spill: Path | None = None
        self._pieces: list[list[pl.DataFrame]] = [[] for _ in range(count)]
        self._files: list[list[Path]] = [[] for _ in range(count)]
        self._held = 0
        self.spilled_bytes = 0

    def add(self, rows: pl.DataFrame) -> None:
        """Route rows (with a `ts` column in the day) to their buckets."""
        if rows.height == 0:
            return
        if self.count == 1:
            self._pieces[0].append(rows)
            return
        offset = pl.col("ts").dt.epoch("us") - self.start_us
        bucket = (offset * self.count // DAY_US).clip(0, self.count - 1).cast(pl.Int32)
        parts = rows.with_columns(_bucket=bucket).partition_by(
            "_bucket", as_dict=True, include_key=False
        )
        for (index,), part in parts.items():
            self._pieces[index].append(part)
        self._held += rows.estimated_size()
        if self._held >= self.budget_bytes:
            self._write_held()

    def _write_held(self) -> None:
        if self._spill is None:
            self._spill = Path(tempfile.mkdtemp(prefix="recsys-spill-", dir=self._folder))
        for index, pieces in enumerate(self._pieces):
            if not pieces:
                continue
            path = self._spill / f"{index:05d}-{len(self._files[index]):05d}.arrow"
            pl.concat(pieces).write_ipc(path)
            self.spilled_bytes += path.stat().st_size
            self._files[index].append(path)
            pieces.clear()
        self._held = 0

    def take(self, index: int) -> pl.DataFrame | None:
        """Bucket `index`'s rows (None when it has none), read back and no longer held here:
        once the caller lets go of them, so does the process. Its files are deleted."""
        frames = [pl.read_ipc(path) for path in self._files[index]]
        for path in self._files[index]:
            path.unlink()
        self._files[index] = []
        frames += self._pieces[index]
        self._pieces[index] = []
        if not frames:
            return None
        return pl.concat(frames) if len(frames) > 1 else frames.pop()

    def close(self) -> None:
        """Forget the held rows and remove the spill folder."""
        self._pieces = [[] for _ in range(self.count)]
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None


class Distinct:
    """The distinct values of a column seen block by block, merged whenever the blocks'
    values (each block's already distinct) outnumber the merged ones: memory stays near the
    distinct count, not the blocks' sum."""

    MIN_PENDING = 1_000_000

    def __init__(self) -> None:
        self._seen: pl.Series | None = None
        self._pending: list[pl.Series] = []
        self._pending_len = 0

    def add(self, values: pl.Series) -> None:
        self._pending.append(values)
        self._pending_len += values.len()
        seen = 0 if self._seen is None else self._seen.len()
        if self._pending_len >= max(self.MIN_PENDING, seen):
            self._merge()

    def _merge(self) -> None:
        parts = ([] if self._seen is None else [self._seen]) + self._pending
        if parts:
            self._seen = pl.concat(parts).unique()
        self._pending, self._pending_len = [], 0

    def count(self) -> int:
        self._merge()
        return 0 if self._seen is None else self._seen.len()


def write_parquet(
    frames: Iterator[pl.DataFrame], schema: dict[str, pl.DataType], path: Path | None = None
) -> bytes | Path:
    """Frames of `schema`, made one at a time, written as one Parquet file at `path` (or into
    memory: its bytes) in row groups of `ROW_GROUP_ROWS` rows whatever the frames' sizes, so
    that the bytes depend on the rows alone. polars' streaming sink pulls the frames from
    the iterator as it writes, so only the frame being written is held."""

    def source(with_columns, predicate, n_rows, batch_size):  # noqa: ARG001 (none are pushed)
        for frame in frames:
            yield frame if with_columns is None else frame.select(with_columns)

    target = io.BytesIO() if path is None else path
    register_io_source(io_source=source, schema=schema).sink_parquet(
        target,
        compression="zstd",
        compression_level=3,
        statistics=True,
        row_group_size=ROW_GROUP_ROWS,
    )
    return target.getvalue() if path is None else path


def sha256_of(data: bytes | Path) -> str:
    """The SHA-256 of bytes, or of a file read as it goes."""
    if isinstance(data, bytes | bytearray | memoryview):
        return hashlib.sha256(data).hexdigest()
    with open(data, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
