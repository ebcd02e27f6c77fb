"""Reading an artifact's window: the daily aggregates of its days, summed (SPEC §3, §4).

Every day of a tenant/surface is coded in one id space (`ids`), so a pair kind's window is a
plain sparse sum. A 28-day cooc window at 1M events a day holds tens of millions of pairs,
so each window's sum is kept as a *window state* and the next day's is

    state(D) = state(D - 1) + day(D) - day(D - N)

(`_WindowStates.window`). A state is its CSR arrays as `.npy` files (mapped, not copied,
when read from a local disk) and a JSON marker:

    <tenant>/<surface>/windows/<kind>/<N>d-<params digest>/<last day>.{indptr,indices,data}.npy
    <tenant>/<surface>/windows/<kind>/<N>d-<params digest>/<last day>.json

The marker lists the (day, content hash) of every daily file in the sum and the id space it
is coded against; any difference from the wanted days (a late day, a day re-aggregated) is
added or taken out the same way while the old file is still there, and otherwise the window
is summed afresh. Sums are exact integers, so the result is identical either way: a state
is only a cache, checked by hash (xxh3) before use. It is written in the background while
the caller builds (`WindowData.wait_saved`), and states more than a day older than the
newest are deleted; an earlier day re-run after a later one writes none.

`user_activity`, each user's total exposures (the row totals of user_item_counts), is a
state of its own: all session_seq reads of user_item_counts, for a fraction of the cost.
The builders get every sum in id order (`coded.in_id_order`): codes carry no meaning.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import orjson
import polars as pl
import scipy.sparse as sp
import xxhash

from recsys_assets.aggregates.coded import Coded, grown, in_id_order
from recsys_assets.aggregates.daily import PAIR_KINDS, Aggregate, merge_aggregates
from recsys_assets.aggregates.ids import IdIndex
from recsys_assets.aggregates.store import (
    PAIR_SPACES,
    aggregate_partition,
    coded_against_current,
    encode_days,
    in_id_space,
    indexes,
    read_day,
)
from recsys_assets.config import AppConfig, TenantSurface, scratch_dir
from recsys_assets.events.canonical import Partition
from recsys_assets.events.store import CanonicalStore, PartitionNotReady, day_range
from recsys_assets.storage import Store

# Window sums derived from a pair kind (kind -> source kind): session_seq ranks users by
# their exposures, the row totals of user_item_counts.
DERIVED_KINDS = {"user_activity": "user_item_counts"}
SPACES = {**PAIR_SPACES, "user_activity": ("users", None)}
# Kinds handed over in the tenant's codes as summed: their builder (cooc) maps ids to the
# items' id order itself, and putting a 28-day cooc sum of ~50M pairs in id order would be
# a good part of the next day's cost. Every other kind comes in id order (`in_id_order`).
ANY_ORDER = frozenset({"cooc_pairs"})
# Beyond this many days to add or take out, summing the window afresh is as cheap.
_MAX_STATE_CHANGES = 4
_TOTAL = pl.Series([""], dtype=pl.String)  # the one column of a derived kind


def aggregate_params(config: AppConfig, entry: TenantSurface) -> dict[str, int]:
    """The config values a day's aggregates depend on; stored in their marker."""
    return {
        "max_items_per_session": config.limits.max_items_per_session,
        "transition_window": config.artifact_settings(entry, "session_seq").window,
    }


@dataclass(frozen=True)
class WindowData:
    start: dt.date
    end: dt.date  # exclusive
    frames: dict[str, Aggregate | pl.DataFrame]  # kind -> merged aggregate (or the catalog)
    days_present: list[dt.date]
    days_missing: list[dt.date]
    days_recomputed: list[dt.date]
    source_hash: str
    # pair kind -> how its sum was obtained: reused, updated (+a -b days) or summed
    merge: dict[str, str] = field(default_factory=dict)
    # Window states being written behind the caller (see `wait_saved`).
    saving: tuple[Future, ...] = ()

    def wait_saved(self) -> None:
        """Wait until the window states of this load are written; raises a write's error."""
        for future in self.saving:
            future.result()


def window_bounds(day: dt.date, window_days: int) -> tuple[dt.date, dt.date]:
    """The nominal window: `window_days` days ending with `day`, end exclusive."""
    return day - dt.timedelta(days=window_days - 1), day + dt.timedelta(days=1)


def load_window(
    store: CanonicalStore,
    config: AppConfig,
    entry: TenantSurface,
    day: dt.date,
    window_days: int,
    kinds: list[str],
) -> WindowData:
    """Sum the window's daily aggregates; a missing day is listed, never an error.

    A day aggregated under other parameters (e.g. a changed `max_items_per_session`) or
    coded against an id space that changed is re-aggregated from its canonical partition (a
    shard at a time, as the asset does), so an artifact never mixes rules; such a window is
    summed afresh and not kept.
    """
    start, end = window_bounds(day, window_days)
    params = aggregate_params(config, entry)
    spaces = indexes(store, entry.tenant, entry.surface)
    markers: dict[dt.date, dict] = {}
    recomputed: dict[dt.date, dict[str, Aggregate]] = {}
    missing, sources = [], []
    # The envelope keeps the nominal window (SPEC §4); days before start_date have no
    # partition, so they are neither read nor listed as missing.
    for current in day_range(max(start, config.start_date), end - dt.timedelta(days=1)):
        partition = Partition(entry.tenant, entry.surface, current)
        marker = store.marker(partition, "aggregates")
        source_hash = marker["source_hash"] if marker else None
        if marker is not None and (
            marker["params"] != params or not coded_against_current(marker, spaces)
        ):
            try:
                again = aggregate_partition(
                    store, partition, params, config.scale.shard_events, scratch_dir(config)
                )
            except PartitionNotReady:
                marker = None
            else:
                recomputed[current] = again.aggregates
                source_hash = again.canonical["content_hash"]
        if marker is None:
            missing.append(current)
            continue
        markers[current] = marker
        sources.append([current.isoformat(), source_hash])

    # Days re-aggregated here are coded first (that may add ids); then the id spaces are
    # read once, and every matrix of this load is at their size.
    pair_kinds = {DERIVED_KINDS.get(kind, kind) for kind in kinds} & set(PAIR_KINDS)
    encoded = encode_days(list(recomputed.values()), spaces) if recomputed else None
    recoded = {
        (current, kind): in_id_space(kind, aggregates[kind], spaces, encoded)
        for current, aggregates in recomputed.items()
        for kind in sorted(pair_kinds)
    }
    ids = _Snapshot.read(spaces)

    def day_matrix(current: dt.date, kind: str) -> sp.csr_matrix:
        """A day's aggregate of a pair or derived kind in the tenant's codes."""
        if kind in DERIVED_KINDS:
            return _row_totals(day_matrix(current, DERIVED_KINDS[kind]))
        if current in recomputed:
            matrix = recoded[current, kind]
            matrix.resize(ids.shape(kind))
            return matrix
        partition = Partition(entry.tenant, entry.surface, current)
        return read_day(store, partition, kind, markers[current], ids.shape(kind))

    saving: list[Future] = []

    def merged(kind: str) -> tuple[Aggregate, str | None]:
        if kind not in PAIR_KINDS and kind not in DERIVED_KINDS:
            frames = [
                recomputed[d][kind]
                if d in recomputed
                else read_day(store, Partition(entry.tenant, entry.surface, d), kind, markers[d])
                for d in markers
            ]
            return merge_aggregates(kind, frames), None
        if recomputed or window_days == 1:
            total = _sum([day_matrix(d, kind) for d in markers], ids.shape(kind))
            how = "summed" if window_days > 1 else None
        else:
            states = _WindowStates(store, entry, kind, window_days, params, ids, saving)
            total, how = states.window(day, markers, day_matrix)
        if kind in ANY_ORDER:
            return Coded(*ids.ids_of(kind), total), how
        return in_id_order(total, *ids.ids_of(kind)), how

    # Kinds are independent; their reads, hashes and sparse sums release the GIL.
    with ThreadPoolExecutor(max_workers=min(len(kinds), 2) or 1) as pool:
        results = dict(zip(kinds, pool.map(merged, kinds), strict=True))
    return WindowData(
        start=start,
        end=end,
        frames={kind: aggregate for kind, (aggregate, _) in results.items()},
        days_present=list(markers),
        days_missing=missing,
        days_recomputed=list(recomputed),
        source_hash=hashlib.sha256(orjson.dumps(sources)).hexdigest(),
        merge={kind: how for kind, (_, how) in results.items() if how is not None},
        saving=tuple(saving),
    )


@dataclass(frozen=True)
class _Snapshot:
    """The id spaces as one window load sees them: ids and positions, read once."""

    spaces: dict[str, IdIndex]
    ids: dict[str, pl.Series]
    positions: dict[str, list]

    @classmethod
    def read(cls, spaces: dict[str, IdIndex]) -> _Snapshot:
        read = {space: index.snapshot() for space, index in sorted(spaces.items())}
        return cls(
            spaces,
            {space: ids for space, (ids, _) in read.items()},
            {space: list(position) for space, (_, position) in read.items()},
        )

    def ids_of(self, kind: str) -> tuple[pl.Series, pl.Series]:
        """The ids of the kind's rows and columns."""
        row_space, column_space = SPACES[kind]
        return self.ids[row_space], _TOTAL if column_space is None else self.ids[column_space]

    def shape(self, kind: str) -> tuple[int, int]:
        rows, columns = self.ids_of(kind)
        return rows.len(), columns.len()


def _row_totals(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Each row's sum as a one-column matrix (a derived kind's day)."""
    totals = np.asarray(matrix.sum(axis=1, dtype=np.int64)).ravel()
    return sp.csr_matrix(totals[:, None])


def _sum(matrices: list[sp.csr_matrix], shape: tuple[int, int]) -> sp.csr_matrix:
    """The sum of same-shaped matrices, pairwise in a tree on the threads (scipy releases
    the GIL): each step a linear merge of sorted rows, smallest first."""
    if not matrices:
        return sp.csr_matrix(shape, dtype=np.int64)
    with ThreadPoolExecutor(max_workers=max(1, pl.thread_pool_size())) as pool:
        while len(matrices) > 1:
            matrices = sorted(matrices, key=lambda matrix: matrix.nnz)
            pairs = [(matrices[i], matrices[i + 1]) for i in range(0, len(matrices) - 1, 2)]
            rest = matrices[-1:] if len(matrices) % 2 else []
            matrices = list(pool.map(lambda pair: pair[0] + pair[1], pairs)) + rest
    return matrices[0]


def _writer() -> ThreadPoolExecutor:
    """The process's writer of window states: one thread, so states are written in the
    order their sums were made."""
    return _writers(os.getpid())


@functools.cache
def _writers(pid: int) -> ThreadPoolExecutor:
    # One per process id: a forked child must not inherit a pool whose thread stayed in the
    # parent.
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"window-write-{pid}")


@dataclass(frozen=True)
class _WindowStates:
    """The stored sums of one kind over windows of one length and parameters."""

    store: CanonicalStore
    entry: TenantSurface
    kind: str
    window_days: int
    params: dict[str, int]
    ids: _Snapshot
    saving: list[Future]  # writes started, for the caller to wait on

    @property
    def folder(self) -> str:
        digest = hashlib.sha256(orjson.dumps(self.params, option=orjson.OPT_SORT_KEYS))
        return (
            f"{self.entry.tenant}/{self.entry.surface}/windows/{self.kind}/"
            f"{self.window_days}d-{digest.hexdigest()[:12]}"
        )

    @property
    def source(self) -> str:
        """The daily aggregate kind this state sums (itself, or what it is derived from)."""
        return DERIVED_KINDS.get(self.kind, self.kind)

    def window(
        self,
        day: dt.date,
        markers: dict[dt.date, dict],
        day_matrix: Callable[[dt.date, str], sp.csr_matrix],
    ) -> tuple[sp.csr_matrix, str]:
        """The kind's sum over the days of `markers`, from a state when one is close."""
        shape = self.ids.shape(self.kind)
        wanted = {d.isoformat(): markers[d]["content_hashes"][self.source] for d in markers}
        for last in (day, day - dt.timedelta(days=1)):
            state = self._read(last, shape)
            if state is None:
                continue
            held, total = state
            add = [d for d in wanted if held.get(d) != wanted[d]]
            remove = [d for d in held if wanted.get(d) != held[d]]
            if len(add) + len(remove) > _MAX_STATE_CHANGES:
                break
            if not add and not remove and last == day:
                return total, "reused"
            old = [self._old_day(dt.date.fromisoformat(d), held[d], shape) for d in remove]
            if any(matrix is None for matrix in old):
                break
            change = _sum([day_matrix(dt.date.fromisoformat(d), self.kind) for d in add], shape)
            if old:
                change = change - _sum(old, shape)
            total = total + change
            if total.nnz and total.data.min() < 0:  # the state was not the sum it claimed
                break
            self._save(day, wanted, total)
            return total, f"updated (+{len(add)} -{len(remove)} days)"
        total = _sum([day_matrix(d, self.kind) for d in markers], shape)
        self._save(day, wanted, total)
        return total, "summed"

    def _old_day(self, day: dt.date, content_hash: str, shape) -> sp.csr_matrix | None:
        """A day's aggregate as a state summed it, if its file is still that one."""
        partition = Partition(self.entry.tenant, self.entry.surface, day)
        marker = self.store.marker(partition, "aggregates")
        if (
            marker is None
            or marker["content_hashes"].get(self.source) != content_hash
            or not coded_against_current(marker, self.ids.spaces)
        ):
            return None
        matrix = read_day(self.store, partition, self.source, marker, self.ids.shape(self.source))
        return _row_totals(matrix) if self.kind in DERIVED_KINDS else matrix

    def _read(self, last: dt.date, shape) -> tuple[dict[str, str], sp.csr_matrix] | None:
        """The state ending on `last` (its days and its sum), if it is intact and coded
        against the id spaces as they are."""
        store = self.store.store()
        raw = store.read_bytes(f"{self.folder}/{last.isoformat()}.json")
        if raw is None:
            return None
        marker = orjson.loads(raw)
        if marker.get("params") != self.params:
            return None
        if not coded_against_current(marker, self.ids.spaces):
            return None
        matrix = read_matrix(store, f"{self.folder}/{last.isoformat()}", marker, shape)
        return None if matrix is None else (marker["days"], matrix)

    def _save(self, day: dt.date, days: dict[str, str], total: sp.csr_matrix) -> None:
        """Write the state in the background (see `_pool`)."""
        self.saving.append(_writer().submit(self._write, day, days, total))

    def _write(self, day: dt.date, days: dict[str, str], total: sp.csr_matrix) -> None:
        """Write the state for `day` (data, then marker), then delete older ones.

        A state is only kept at the head: a re-run or backfill of an earlier day writes
        none, so re-running days leaves the files as they were.
        """
        store = self.store.store()
        held = sorted(
            key.rsplit("/", 1)[-1].removesuffix(".json")
            for key in store.list_keys(self.folder)
            if key.endswith(".json")
        )
        if held and held[-1] > day.isoformat():
            return
        checksums = write_matrix(store, f"{self.folder}/{day.isoformat()}", total)
        marker = {
            "kind": self.kind,
            "window_days": self.window_days,
            "last_day": day.isoformat(),
            "params": self.params,
            "days": days,
            "ids": self.ids.positions,
            "shape": list(total.shape),
            "entries": int(total.nnz),
            "checksums": checksums,
        }
        store.write_bytes(
            f"{self.folder}/{day.isoformat()}.json",
            orjson.dumps(marker, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
        )
        keep = (day - dt.timedelta(days=1)).isoformat()
        for last in held:
            if last < keep:
                store.delete(f"{self.folder}/{last}.json")
                for name in _ARRAYS:
                    store.delete(f"{self.folder}/{last}.{name}.npy")


# A window state's matrix is three .npy files, read mapped (not copied) from a local disk.
_ARRAYS = ("indptr", "indices", "data")


def write_matrix(store: Store, prefix: str, matrix: sp.csr_matrix) -> dict[str, str]:
    """Write a CSR matrix as `<prefix>.<array>.npy`; returns each file's xxh3 checksum.

    A state is a cache checked by hash before use: no disk flush of its data.
    """
    checksums = {}
    for name in _ARRAYS:
        array = np.ascontiguousarray(getattr(matrix, name))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, np.lib.format.header_data_from_array_1_0(array)
        )
        parts = [header.getvalue(), memoryview(array).cast("B")]
        digest = xxhash.xxh3_128()
        for part in parts:
            digest.update(part)
        store.write_parts(f"{prefix}.{name}.npy", parts, durable=False)
        checksums[name] = digest.hexdigest()
    return checksums


def read_matrix(
    store: Store, prefix: str, marker: dict, shape: tuple[int, int]
) -> sp.csr_matrix | None:
    """The matrix `write_matrix` wrote, grown to `shape` (the id spaces only grow); None when
    a file is missing, damaged or not what `marker` describes."""
    arrays = {}
    for name in _ARRAYS:
        data = store.read_buffer(f"{prefix}.{name}.npy")
        if data is None or xxhash.xxh3_128_hexdigest(data) != marker["checksums"].get(name):
            return None
        header = io.BytesIO(memoryview(data)[:4096].tobytes())
        try:
            np.lib.format.read_magic(header)
            size, _, dtype = np.lib.format.read_array_header_1_0(header)
            arrays[name] = np.frombuffer(data, dtype, int(np.prod(size)), header.tell())
        except ValueError:
            return None
    rows, columns = marker["shape"]
    if arrays["indptr"].size != rows + 1 or rows > shape[0] or columns > shape[1]:
        return None
    stored = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), (rows, columns))
    return grown(stored, *shape)
