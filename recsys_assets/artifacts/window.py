"""Reading an artifact's window: the daily aggregates of its days, merged (SPEC §3, §4).

cooc_stats is one row and summed from every day of the window. The pair kinds are large (a
28-day cooc window at 1M events a day holds ~50M pairs from ~100M daily rows), so each
window's sum is kept as a *window state* next to the aggregates (item_counts too, coded as
one column: reading its every day costs more than its state):

    <tenant>/<surface>/windows/<kind>/<N>d-<params digest>/<last day>.bin  (+ .json)

The state's marker lists the (day, content hash) of every daily file in the sum. The next
day's window is yesterday's state + the new day - the day that left the window: one day of
aggregation plus a merge, whatever N is. Any other difference (a day re-aggregated, a late
day) is handled the same way when the old file is still there to subtract, and by summing
every day afresh otherwise. Sums are exact integers in canonical form (see `coded`), so the
result is identical either way; the state is only a cache, checked by hash before use, and
the states more than a day older than the newest written are deleted; an earlier day
re-run after a later one writes no state.

A state is read mapped (not copied), its checksum (xxh3) checked while it is summed
(`coded.updated`, block by block), and written in the background while the caller builds
its artifact (`WindowData.wait_saved`), without a disk flush: a damaged or missing state only
costs a sum afresh. `user_activity`, each user's total exposures (the row totals of
user_item_counts), is a state of its own: all session_seq reads of user_item_counts, for a
fraction of the cost of the whole matrix's state (which implicit keeps).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl
import xxhash

from recsys_assets.artifacts.aggregate_store import (
    AGGREGATES_FORMAT,
    aggregates_marker,
    read_aggregate,
)
from recsys_assets.artifacts.aggregates import (
    AGGREGATE_SCHEMAS,
    EVENT_COLUMNS,
    PAIR_KINDS,
    Aggregate,
    as_coded,
    daily_aggregates,
    merge_aggregates,
)
from recsys_assets.artifacts.coded import (
    Coded,
    Stored,
    coded_from_ids,
    combine,
    raw_chunks,
    read_stored,
    updated,
)
from recsys_assets.config import AppConfig, TenantSurface
from recsys_assets.events.canonical import Partition
from recsys_assets.events.store import CanonicalStore, PartitionNotReady, day_range

# 3: states checked by xxh3_128 rather than SHA-256.
STATE_FORMAT = 3
# Window sums derived from a pair kind, kept as states of their own (kind -> source kind):
# session_seq ranks users by their exposures, the row totals of user_item_counts, and a state
# of ~1M totals is updated for a small part of the cost of the ~17M-entry matrix's.
DERIVED_KINDS = {"user_activity": "user_item_counts"}
# Frame kinds kept as window states too, coded as one column (id ""): item_counts is read from
# every day of a window by popularity and cooc, a few ms a day.
CODED_FRAME_KINDS = ("item_counts",)
# Beyond this many days to add or take out, summing the window afresh is as cheap.
_MAX_STATE_CHANGES = 4


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
        """Wait until the window states of this load are written; raises a write's error.

        They are written in the background, while the caller builds from the sums, since
        writing a 28-day state is a good part of a day's merge. Call it before reporting
        the work done.
        """
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
    """Merge the window's daily aggregates; a missing day is listed, never an error.

    A day aggregated under other parameters (e.g. a changed `max_items_per_session`) or in
    an older storage format is re-aggregated from its canonical partition in memory, so an
    artifact never mixes rules; such a window is summed afresh and not kept as a state.
    """
    start, end = window_bounds(day, window_days)
    params = aggregate_params(config, entry)
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
            marker.get("v") != AGGREGATES_FORMAT or marker["params"] != params
        ):
            try:
                events, canonical = store.read_events(partition, columns=EVENT_COLUMNS)
            except PartitionNotReady:
                marker = None
            else:
                recomputed[current] = daily_aggregates(events, **params)
                source_hash = canonical["content_hash"]
        if marker is None:
            missing.append(current)
            continue
        markers[current] = marker
        sources.append([current.isoformat(), source_hash])

    def day_aggregate(current: dt.date, kind: str) -> Aggregate:
        if kind in DERIVED_KINDS:
            return _derived(kind, day_aggregate(current, DERIVED_KINDS[kind]))
        if current in recomputed:
            return recomputed[current][kind]
        partition = Partition(entry.tenant, entry.surface, current)
        return read_aggregate(store, partition, kind, markers[current])

    saving: list[Future] = []

    def merged(kind: str) -> tuple[Aggregate, str | None]:
        summed = kind in PAIR_KINDS or kind in DERIVED_KINDS
        if (summed or kind in CODED_FRAME_KINDS) and not recomputed and window_days > 1:
            states = _WindowStates(store, entry, kind, window_days, params, saving)
            total, how = states.window(day, markers, day_aggregate)
            return (_item_frame(total) if kind in CODED_FRAME_KINDS else total), how
        if summed:
            return combine([(day_aggregate(d, kind), 1) for d in markers], kind), "summed"
        return merge_aggregates(kind, [day_aggregate(d, kind) for d in markers]), None

    # Kinds are independent; their reads, hashes and sparse sums release the GIL.
    with ThreadPoolExecutor(max_workers=min(len(kinds), 2) or 1) as pool:
        results = dict(zip(kinds, pool.map(merged, kinds), strict=True))
    frames = {kind: aggregate for kind, (aggregate, _) in results.items()}
    merge = {kind: how for kind, (_, how) in results.items() if how is not None}
    return WindowData(
        start=start,
        end=end,
        frames=frames,
        days_present=list(markers),
        days_missing=missing,
        days_recomputed=list(recomputed),
        source_hash=hashlib.sha256(orjson.dumps(sources)).hexdigest(),
        merge=merge,
        saving=tuple(saving),
    )


def _pool(role: str, workers: int) -> ThreadPoolExecutor:
    """The process's pool for `role`: "write" (states are written in the order their sums
    were made) or "check" (hashes of the states being summed, two kinds at a time)."""
    return _pools(role, workers, os.getpid())


@functools.cache
def _pools(role: str, workers: int, pid: int) -> ThreadPoolExecutor:
    # One per process id: a forked child must not inherit a pool whose threads stayed in the
    # parent.
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"window-{role}-{pid}")


def _derived(kind: str, aggregate: Aggregate) -> Aggregate:
    """A day's aggregate of `kind` from the day's aggregate of its source kind (itself for
    a daily kind; see DERIVED_KINDS), or a frame kind's coded form (CODED_FRAME_KINDS)."""
    if kind in CODED_FRAME_KINDS:
        frame = aggregate
        column = pl.Series([""] * frame.height, dtype=pl.String)
        return coded_from_ids(frame["item_id"], column, frame["count"].to_numpy(), kind)
    if kind not in DERIVED_KINDS:
        return aggregate
    return as_coded(DERIVED_KINDS[kind], aggregate).totals()


def _item_frame(coded: Coded | Stored) -> pl.DataFrame:
    """item_counts as a frame, by item id, from its window state's coded form."""
    return pl.DataFrame(
        {"item_id": coded.rows, "count": coded.row_sums()},
        schema=AGGREGATE_SCHEMAS["item_counts"],
    )


@dataclass(frozen=True)
class _WindowStates:
    """The stored sums of one pair kind over windows of one length and parameters."""

    store: CanonicalStore
    entry: TenantSurface
    kind: str
    window_days: int
    params: dict[str, int]
    saving: list[Future]  # writes started, for the caller to wait on

    @property
    def folder(self) -> str:
        digest = hashlib.sha256(orjson.dumps(self.params, option=orjson.OPT_SORT_KEYS))
        return (
            f"{self.entry.tenant}/{self.entry.surface}/windows/{self.kind}/"
            f"{self.window_days}d-{digest.hexdigest()[:12]}"
        )

    def window(
        self,
        day: dt.date,
        markers: dict[dt.date, dict],
        day_aggregate: Callable[[dt.date, str], Aggregate],
    ) -> tuple[Coded | Stored, str]:
        """The kind's sum over the days of `markers`, from a state when one is close
        (`day_aggregate` reads a day's aggregate of a kind; the state sums its source's,
        derived by `_day`)."""
        wanted = {d.isoformat(): markers[d]["content_hashes"][self.source] for d in markers}
        for last in (day, day - dt.timedelta(days=1)):
            state = self._read(last)
            if state is None:
                continue
            held, stored, intact = state
            add = [d for d in wanted if held.get(d) != wanted[d]]
            remove = [d for d in held if wanted.get(d) != held[d]]
            if len(add) + len(remove) > _MAX_STATE_CHANGES:
                break
            terms = [(self._day(dt.date.fromisoformat(d), day_aggregate), 1) for d in add]
            for expired in remove:
                old = self._old_aggregate(dt.date.fromisoformat(expired), held[expired])
                if old is None:
                    break
                terms.append((old, -1))
            else:
                if not add and not remove and last == day:
                    summed, how = stored, "reused"
                else:
                    try:
                        summed = updated(stored, terms, self.kind)
                    except ValueError:  # a damaged state's values can go negative
                        if intact.result():
                            raise
                        break
                    how = f"updated (+{len(add)} -{len(remove)} days)"
                if not intact.result():  # checked while the state was summed
                    break
                if how != "reused":
                    self._save(day, wanted, summed)
                return summed, how
            break
        summed = combine([(self._day(d, day_aggregate), 1) for d in markers], self.kind)
        self._save(day, wanted, summed)
        return summed, "summed"

    @property
    def source(self) -> str:
        """The daily aggregate kind this state sums (itself, or what it is derived from)."""
        return DERIVED_KINDS.get(self.kind, self.kind)

    def _day(self, day: dt.date, day_aggregate: Callable[[dt.date, str], Aggregate]) -> Coded:
        """A day's aggregate as the state sums it: its source kind's, derived (`_derived`)."""
        return _derived(self.kind, day_aggregate(day, self.source))

    def _old_aggregate(self, day: dt.date, content_hash: str) -> Coded | None:
        """A day's aggregate as a state summed it, if its file is still that one."""
        partition = Partition(self.entry.tenant, self.entry.surface, day)
        marker = aggregates_marker(self.store, partition)
        if marker is None or marker["content_hashes"].get(self.source) != content_hash:
            return None
        return _derived(self.kind, read_aggregate(self.store, partition, self.source, marker))

    def _read(self, last: dt.date) -> tuple[dict[str, str], Stored, Future[bool]] | None:
        """The state ending on `last` (its days, its arrays as stored) and whether its checksum
        is right, checked in the background while the caller sums: a damaged state is
        not used, and its sum is thrown away."""
        store = self.store.store()
        raw = store.read_bytes(f"{self.folder}/{last.isoformat()}.json")
        if raw is None:
            return None
        marker = orjson.loads(raw)
        if marker.get("v") != STATE_FORMAT or marker.get("params") != self.params:
            return None
        data = store.read_buffer(f"{self.folder}/{last.isoformat()}.bin")
        if data is None:
            return None
        try:
            stored = read_stored(data)
        except ValueError:
            return None
        intact = _pool("check", 2).submit(lambda: _checksum(data) == marker["checksum"])
        return marker["days"], stored, intact

    def _save(self, day: dt.date, days: dict[str, str], coded: Coded | Stored) -> None:
        """Write the state in the background (one writer thread for the process: states are
        written in the order their sums were made)."""
        self.saving.append(_pool("write", 1).submit(self._write, day, days, coded))

    def _write(self, day: dt.date, days: dict[str, str], coded: Coded | Stored) -> None:
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
        digest = xxhash.xxh3_128()

        def hashed(parts: Iterator[bytes | memoryview]) -> Iterator[bytes | memoryview]:
            for part in parts:
                digest.update(part)
                yield part

        # A state is a cache checked by hash before use: no disk flush of its data.
        data_key = f"{self.folder}/{day.isoformat()}.bin"
        store.write_parts(data_key, hashed(raw_chunks(coded)), durable=False)
        marker = {
            "v": STATE_FORMAT,
            "kind": self.kind,
            "window_days": self.window_days,
            "last_day": day.isoformat(),
            "params": self.params,
            "days": days,
            "entries": coded.nnz,
            "checksum": digest.hexdigest(),
        }
        store.write_bytes(
            f"{self.folder}/{day.isoformat()}.json",
            orjson.dumps(marker, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
        )
        keep = (day - dt.timedelta(days=1)).isoformat()
        for last in held:
            if last < keep:
                store.delete(f"{self.folder}/{last}.json")
                store.delete(f"{self.folder}/{last}.bin")


def _checksum(data: Any) -> str:
    """A window state's checksum: xxh3_128 of its bytes. A state is a cache, checked against
    damage, not an address of content (artifact versions are SHA-256); xxh3 reads it an
    order of magnitude faster, and it is read and written on every day's update."""
    return xxhash.xxh3_128_hexdigest(data)
