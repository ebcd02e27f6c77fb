"""One id space per tenant/surface: the codes of its items and of its users.

A daily aggregate is a sparse matrix over these codes, so a window is a plain sparse sum
(`state + new day - expired day`) with no dictionary union or re-coding, the way SAR keeps
its `item2index`. An id's code is its position in the index, which only grows:

    <tenant>/<surface>/ids/<space>/<segment:06d>.parquet   (space: items or users)

Each segment is a Parquet file of one `id` column: ids first seen after the segments
before it, sorted (so the codes a day adds do not depend on its rows' order). A segment is
created with a create-only write (`Store.write_if_absent`: O_EXCL-style locally,
`If-None-Match: *` on S3), so when two processes aggregate days of one tenant at once (a
backfill on several workers), exactly one of them writes segment N; the other reads it and
appends what is still new as segment N + 1. Codes are never reused or reassigned.

Failure modes, and what detects them:
- a process dies after writing a segment and before using it: its ids have codes nobody
  uses yet; a window drops ids without entries, so nothing shows;
- a segment is deleted or rewritten by hand: every aggregate records the index it was coded
  against as (segments, chain hash), the hash of every segment's bytes in order
  (`IdIndex.chain`); a day whose index no longer matches is re-aggregated from its
  canonical partition, never read with the wrong codes;
- an id in two segments (a broken writer) or a gap in the numbering: reading the index
  raises `IdIndexError` naming the segment.

Codes carry no meaning: artifacts order and break ties by id string (the window hands the
builders matrices in id order, `window.in_id_order`), so the same days give the same bytes
whatever order they were aggregated in.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import threading
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from recsys_assets.aggregates.coded import positions
from recsys_assets.storage import Store

SPACES = ("items", "users")
_GENESIS = "0" * 64


class IdIndexError(RuntimeError):
    """The index on storage is not one this module wrote."""


@dataclass
class IdIndex:
    """The id space `space` of one tenant/surface, read from `store` and grown by `encode`."""

    store: Store
    tenant: str
    surface: str
    space: str
    # What has been read so far: the ids in code order, and the chain hash after each segment.
    _ids: pl.Series = field(default_factory=lambda: pl.Series("id", [], dtype=pl.String))
    _chain: list[str] = field(default_factory=lambda: [_GENESIS])
    _ends: list[int] = field(default_factory=lambda: [0])  # ids after each segment
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sorted: tuple[pl.Series, np.ndarray] | None = None  # the ids sorted, and their codes

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"unknown id space {self.space!r}; known: {', '.join(SPACES)}")

    @property
    def folder(self) -> str:
        return f"{self.tenant}/{self.surface}/ids/{self.space}"

    def ids(self) -> pl.Series:
        """Every id, in code order (the code of `ids()[i]` is i), as the store has them now."""
        with self._lock:
            self._refresh()
            return self._ids

    def chain(self, segments: int) -> str | None:
        """The chain hash of the first `segments` segments; None when there are fewer."""
        with self._lock:
            if segments >= len(self._chain):
                self._refresh()
            return self._chain[segments] if segments < len(self._chain) else None

    def covering(self, codes: int) -> tuple[int, str]:
        """The position of the fewest segments that hold codes 0..codes-1: what a day
        coded with them records, the same whatever was appended since."""
        with self._lock:
            if codes > self._ends[-1]:
                raise ValueError(f"{self.folder}: code {codes - 1} is not in the index")
            segments = bisect.bisect_left(self._ends, codes)
            return segments, self._chain[segments]

    def snapshot(self) -> tuple[pl.Series, tuple[int, str]]:
        """The ids and the position, read together: what one window load works with while
        other processes may grow the index."""
        with self._lock:
            self._refresh()
            return self._ids, (len(self._chain) - 1, self._chain[-1])

    def encode(self, ids: pl.Series) -> np.ndarray:
        """The code of each of `ids` (int64), adding the ids not in the index yet."""
        with self._lock:
            self._refresh()
            while True:
                known = self._lookup(ids)
                missing = known < 0
                if not missing.any():
                    return known.astype(np.int64, copy=False)
                new = ids.filter(pl.Series(missing)).unique().sort()
                data = _segment_bytes(new)
                self._check_no_gap()
                if self.store.write_if_absent(self._key(len(self._chain) - 1), data):
                    self._append(data, new)
                else:  # another writer took this segment: read it, then add what is still new
                    self._refresh()

    def _lookup(self, ids: pl.Series) -> np.ndarray:
        """The code of each of `ids`, -1 where absent: a binary search in the index's ids
        sorted (kept until the index grows), where a join would hash every id each time."""
        if self._sorted is None:
            order = self._ids.arg_sort()
            self._sorted = (self._ids.gather(order), order.cast(pl.Int64).to_numpy())
        by_id, codes = self._sorted
        at = positions(ids.cast(pl.String), by_id)
        return np.where(at >= 0, codes[np.maximum(at, 0)] if codes.size else 0, -1)

    def _key(self, segment: int) -> str:
        return f"{self.folder}/{segment:06d}.parquet"

    def _refresh(self) -> None:
        """Read the segments written since the last read, in order."""
        first = len(self._chain) == 1
        read = []
        while (data := self.store.read_bytes(self._key(len(self._chain) - 1))) is not None:
            try:
                ids = pl.read_parquet(io.BytesIO(data)).get_column("id")
            except Exception as exc:
                raise IdIndexError(f"{self._key(len(self._chain) - 1)}: {exc}") from exc
            self._append(data, ids)
            read.append(ids)
        if first:
            self._check_no_gap()
        if read and self._ids.n_unique() != self._ids.len():
            raise IdIndexError(f"{self.folder}: an id is in two segments")

    def _check_no_gap(self) -> None:
        """A segment after the first missing one means the numbering has a hole: the codes
        after it would shift, so the index is refused rather than grown into the hole."""
        next_key = self._key(len(self._chain) - 1)
        later = [key for key in self.store.list_keys(self.folder) if key > next_key]
        # A writer creates segment N + 1 only after N exists: if N exists now, it came
        # while the folder was listed, and the next read takes it.
        if later and not self.store.exists(next_key):
            raise IdIndexError(f"{self.folder}: {next_key} is missing but {later[0]} exists")

    def _append(self, data: bytes, ids: pl.Series) -> None:
        self._ids = pl.concat([self._ids, ids.rename("id")], rechunk=False)
        self._ends.append(self._ids.len())
        self._sorted = None
        digest = hashlib.sha256(self._chain[-1].encode() + hashlib.sha256(data).digest())
        self._chain.append(digest.hexdigest())


def _segment_bytes(ids: pl.Series) -> bytes:
    buffer = io.BytesIO()
    pl.DataFrame({"id": ids}).write_parquet(buffer, statistics=False)
    return buffer.getvalue()


_INDEXES: dict[str, IdIndex] = {}
_INDEXES_LOCK = threading.Lock()


def id_index(store: Store, tenant: str, surface: str, space: str) -> IdIndex:
    """The process's index of (tenant, surface, space) in `store`: read once, then only the
    segments written since."""
    key = store.uri(f"{tenant}/{surface}/ids/{space}")
    with _INDEXES_LOCK:
        if key not in _INDEXES:
            _INDEXES[key] = IdIndex(store, tenant, surface, space)
        return _INDEXES[key]


def forget_indexes() -> None:
    """Drop what this process has read of every index: the next use reads them afresh, as a
    new process would."""
    with _INDEXES_LOCK:
        _INDEXES.clear()
