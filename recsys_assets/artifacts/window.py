"""Reading an artifact's window: the daily aggregates of its days, merged (SPEC §3, §4)."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import orjson
import polars as pl

from recsys_assets.artifacts.aggregates import daily_aggregates, merge_aggregates
from recsys_assets.config import AppConfig, TenantSurface
from recsys_assets.events.canonical import Partition
from recsys_assets.events.store import CanonicalStore, PartitionNotReady


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
    frames: dict[str, pl.DataFrame]
    days_present: list[dt.date]
    days_missing: list[dt.date]
    days_recomputed: list[dt.date]
    source_hash: str


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

    A day aggregated under other parameters (e.g. a changed `max_items_per_session`) is
    re-aggregated from its canonical partition in memory, so an artifact never mixes rules.
    """
    start, end = window_bounds(day, window_days)
    params = aggregate_params(config, entry)
    per_kind: dict[str, list[pl.DataFrame]] = {kind: [] for kind in kinds}
    present, missing, recomputed, sources = [], [], [], []
    current = start
    while current < end:
        partition = Partition(entry.tenant, entry.surface, current)
        loaded = store.read_aggregates(partition, kinds)
        if loaded is None:
            missing.append(current)
            current += dt.timedelta(days=1)
            continue
        frames, marker = loaded
        if marker["params"] != params:
            try:
                events, _ = store.read_events(partition)
            except PartitionNotReady:
                missing.append(current)
                current += dt.timedelta(days=1)
                continue
            frames = daily_aggregates(events, **params)
            recomputed.append(current)
        for kind in kinds:
            per_kind[kind].append(frames[kind])
        present.append(current)
        sources.append([current.isoformat(), marker["source_hash"]])
        current += dt.timedelta(days=1)
    source_hash = hashlib.sha256(orjson.dumps(sources)).hexdigest()
    return WindowData(
        start=start,
        end=end,
        frames={kind: merge_aggregates(kind, per_kind[kind]) for kind in kinds},
        days_present=present,
        days_missing=missing,
        days_recomputed=recomputed,
        source_hash=source_hash,
    )
