"""Synthetic exposure events (SPEC §2) at benchmark scale, with an optional mix of bad lines.

Every column is drawn as a numpy array for a whole day (~40 bytes per event), then the
JSON lines are assembled by polars string concatenation a chunk at a time and each chunk is
written in one call, so 5M events take seconds and the string memory stays bounded by the
chunk. Same arguments and seed give the same bytes.

Usage: python benchmarks/generate.py --events 5000000 --out /tmp/bench [--bad-fraction 0.02]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import polars as pl

DAY_MS = 86_400_000
MAX_SESSION_EVENTS = 80
SESSION_LENGTH_SIGMA = 0.9
SLATE_SIZES = (3, 12)
# Milliseconds between exposures, (to a new request, within a slate) for each of: the
# floor, the mean of the exponential on top of it, the cap.
_GAPS_MS = ((1_000, 300), (14_000, 1_200), (300_000, 60_000))
ITEM_ZIPF_EXPONENT = 1.0
USER_ACTIVITY_EXPONENT = 0.5
SESSIONS_PER_EVENT = 0.12
SESSIONS_PER_USER = 3
CHUNK_EVENTS = 1_000_000

# Tenant/surface names are pasted into the JSON unescaped, so they must be the SPEC §3 shape.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")

BAD_KINDS = (
    "malformed_json",
    "not_object",
    "v_2",
    "v_string",
    "missing_item_id",
    "empty_session_id",
    "item_id_number",
    "negative_rank",
    "unparseable_ts",
    "ts_outside_day",
    "wrong_tenant",
    "blank_line",
    "duplicate",
)
# Injected lines that a reader does not reject: skipped, de-duplicated, or (flat layout only)
# valid events of another partition.
_NOT_REJECTED = {"blank_line", "duplicate"}
_OTHER_PARTITION_WHEN_FLAT = {"ts_outside_day", "wrong_tenant"}

Layout = Literal["per-day", "flat"]
Draw = Callable[[np.random.Generator, int], np.ndarray]


def _power_law_sampler(n: int, exponent: float, rng: np.random.Generator) -> Draw:
    """Draw indices 0..n-1 with P(rank r) ∝ (r+1)^-exponent, ranks shuffled onto indices."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    index_of_rank = rng.permutation(n).astype(np.int32)

    def draw(rng: np.random.Generator, size: int) -> np.ndarray:
        ranks = np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n - 1)
        return index_of_rank[ranks]

    return draw


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _session_lengths(n_events: int, n_sessions: int, rng: np.random.Generator) -> np.ndarray:
    """Lognormal lengths clipped to 1..MAX_SESSION_EVENTS, nudged to sum to n_events exactly."""
    mean = n_events / n_sessions
    mu = np.log(mean) - SESSION_LENGTH_SIGMA**2 / 2
    raw = rng.lognormal(mu, SESSION_LENGTH_SIGMA, n_sessions)
    lengths = np.clip(np.rint(raw), 1, MAX_SESSION_EVENTS).astype(np.int64)
    while (diff := n_events - int(lengths.sum())) != 0:
        room = np.flatnonzero(lengths < MAX_SESSION_EVENTS if diff > 0 else lengths > 1)
        pick = rng.choice(room, size=min(abs(diff), room.size), replace=False)
        lengths[pick] += 1 if diff > 0 else -1
    return lengths


def _distinct_items_per_request(
    request: np.ndarray, item: np.ndarray, n_items: int, draw: Draw, rng: np.random.Generator
) -> None:
    """Redraw items repeated within a request: a slate never shows an item twice."""
    check = np.arange(request.size)
    while check.size:
        key = request[check].astype(np.int64) * n_items + item[check]
        order = np.argsort(key, kind="stable")
        repeated = check[order[1:][key[order[1:]] == key[order[:-1]]]]
        if repeated.size == 0:
            return
        item[repeated] = draw(rng, repeated.size)
        check = np.flatnonzero(np.isin(request, np.unique(request[repeated])))


def _day_events(
    n_events: int,
    n_sessions: int,
    *,
    anonymous_share: float,
    n_items: int,
    draw_item: Draw,
    draw_user: Draw,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """All events of one day as arrays, in time order."""
    lengths = _session_lengths(n_events, n_sessions, rng)
    low, high = (min(size, n_items) for size in SLATE_SIZES)
    slate = rng.integers(low, high + 1, n_sessions)
    anonymous = rng.random(n_sessions) < anonymous_share
    user = np.where(anonymous, -1, draw_user(rng, n_sessions)).astype(np.int32)

    session = np.repeat(np.arange(n_sessions), lengths)
    session_first = np.cumsum(lengths) - lengths
    position = np.arange(n_events) - session_first[session]
    rank = position % slate[session]
    n_requests = -(-lengths // slate)
    request = (np.cumsum(n_requests) - n_requests)[session] + position // slate[session]

    # A slate's exposures are logged as the user scrolls past them; the next request of the
    # session comes after a longer pause.
    new_request = rank == 0
    floor_ms, mean_ms, cap_ms = (np.where(new_request, r, s) for r, s in _GAPS_MS)
    gap = np.minimum(floor_ms + np.rint(rng.exponential(1.0, n_events) * mean_ms), cap_ms)
    gap[session_first] = 0
    offset = np.cumsum(gap, dtype=np.int64)
    offset -= offset[session_first][session]
    duration = offset[session_first + lengths - 1]
    start = np.floor(rng.random(n_sessions) * (DAY_MS - duration)).astype(np.int64)
    ts = start[session] + offset

    # Session and request numbers follow time, as a server's counters would.
    session_no = np.empty(n_sessions, dtype=np.int32)
    session_no[np.argsort(start, kind="stable")] = np.arange(n_sessions)
    request_start = ts[new_request]
    request_no = np.empty(request_start.size, dtype=np.int32)
    request_no[np.argsort(request_start, kind="stable")] = np.arange(request_start.size)

    item = draw_item(rng, n_events)
    _distinct_items_per_request(request, item, n_items, draw_item, rng)

    order = np.argsort(ts, kind="stable")
    return {
        "ts": ts[order].astype(np.int32),
        "session": session_no[session[order]],
        "item": item[order],
        "user": user[session[order]],
        "request": request_no[request[order]],
        "rank": rank[order].astype(np.int32),
    }


def _time_of_day(ms: pl.Expr) -> pl.Expr:
    parts = [ms // 3_600_000, ms // 60_000 % 60, ms // 1_000 % 60]
    hms = [p.cast(pl.String).str.zfill(2) for p in parts]
    return pl.concat_str(
        hms[0], pl.lit(":"), hms[1], pl.lit(":"), hms[2], pl.lit("."),
        (ms % 1_000).cast(pl.String).str.zfill(3),
    )  # fmt: skip


def _fragments(day: date, tenant: str, surface: str) -> dict[str, pl.Expr]:
    """One JSON member per entry (with its leading comma), in SPEC §2 field order."""
    compact = day.strftime("%Y%m%d")
    return {
        "v": pl.lit('{"v":1'),
        "ts": pl.concat_str(pl.lit(f',"ts":"{day.isoformat()}T'), pl.col("time"), pl.lit('Z"')),
        "tenant": pl.lit(f',"tenant":"{tenant}"'),
        "surface": pl.lit(f',"surface":"{surface}"'),
        "session_id": pl.concat_str(pl.lit(',"session_id":"'), pl.col("session_id"), pl.lit('"')),
        "item_id": pl.concat_str(pl.lit(',"item_id":"'), pl.col("item_id"), pl.lit('"')),
        "user_id": pl.when(pl.col("user_id").is_null())
        .then(pl.lit(""))
        .otherwise(pl.concat_str(pl.lit(',"user_id":"'), pl.col("user_id"), pl.lit('"'))),
        "request_id": pl.concat_str(
            pl.lit(f',"request_id":"r{compact}-'),
            pl.col("request").cast(pl.String).str.zfill(8),
            pl.lit('"'),
        ),
        "rank": pl.concat_str(pl.lit(',"rank":'), pl.col("rank").cast(pl.String)),
        "end": pl.lit("}"),
    }


def _line(fragments: dict[str, pl.Expr], **override: pl.Expr) -> pl.Expr:
    return pl.concat_str(list((fragments | override).values())).alias("line")


def _bad_line(kind: str, fragments: dict[str, pl.Expr], day: date, tenant: str) -> pl.Expr:
    """The injected line of `kind`, built from the fields of the event it sits after."""
    match kind:
        case "malformed_json":
            line = _line(fragments)
            return line.str.slice(0, line.str.len_chars() // 2).alias("line")
        case "not_object":
            return pl.concat_str(
                pl.lit('["'), pl.col("session_id"), pl.lit('","'), pl.col("item_id"),
                pl.lit('",'), pl.col("rank").cast(pl.String), pl.lit("]"),
            ).alias("line")  # fmt: skip
        case "v_2":
            return _line(fragments, v=pl.lit('{"v":2'))
        case "v_string":
            return _line(fragments, v=pl.lit('{"v":"1"'))
        case "missing_item_id":
            return _line(fragments, item_id=pl.lit(""))
        case "empty_session_id":
            return _line(fragments, session_id=pl.lit(',"session_id":"  "'))
        case "item_id_number":
            item_number = pl.col("item_id").str.slice(1).cast(pl.Int64).cast(pl.String)
            return _line(fragments, item_id=pl.concat_str(pl.lit(',"item_id":'), item_number))
        case "negative_rank":
            negative = (-1 - pl.col("rank")).cast(pl.String)
            return _line(fragments, rank=pl.concat_str(pl.lit(',"rank":'), negative))
        case "unparseable_ts":
            return _line(fragments, ts=pl.lit(',"ts":"yesterday"'))
        case "ts_outside_day":
            previous = (day - timedelta(days=1)).isoformat()
            ts = pl.concat_str(pl.lit(f',"ts":"{previous}T'), pl.col("time"), pl.lit('Z"'))
            return _line(fragments, ts=ts)
        case "wrong_tenant":
            return _line(fragments, tenant=pl.lit(f',"tenant":"not-{tenant}"'))
        case "blank_line":
            return pl.lit("").alias("line")
        case "duplicate":
            return _line(fragments)
        case _:
            raise ValueError(f"unknown bad line kind {kind!r}; known: {', '.join(BAD_KINDS)}")


def _columns(
    events: dict[str, np.ndarray], rows: np.ndarray, names: dict[str, pl.Series], day: date
) -> pl.DataFrame:
    """The string-ready columns of the events at `rows` (indices into the day's arrays).

    `names["user"]` ends with a null, the name given to the anonymous user (-1).
    """
    user = events["user"][rows]
    return pl.DataFrame(
        {
            "time": events["ts"][rows],
            "session_id": events["session"][rows],
            "item_id": names["item"].gather(events["item"][rows]),
            "user_id": names["user"].gather(np.where(user < 0, names["user"].len() - 1, user)),
            "request": events["request"][rows],
            "rank": events["rank"][rows],
        }
    ).with_columns(
        time=_time_of_day(pl.col("time")),
        session_id=pl.lit(f"s{day.strftime('%Y%m%d')}-")
        + pl.col("session_id").cast(pl.String).str.zfill(7),
    )


def _write_day(
    handle: BinaryIO,
    events: dict[str, np.ndarray],
    bad_base: np.ndarray,
    bad_kind: np.ndarray,
    *,
    day: date,
    tenant: str,
    surface: str,
    names: dict[str, pl.Series],
    chunk_events: int,
) -> None:
    """Write the day's lines in time order; each bad line goes right after its base event."""
    fragments = _fragments(day, tenant, surface)
    n_events = events["ts"].size
    for start in range(0, n_events, chunk_events):
        stop = min(start + chunk_events, n_events)
        rows = np.arange(start, stop)
        in_chunk = (bad_base >= start) & (bad_base < stop)
        base, kind = bad_base[in_chunk], bad_kind[in_chunk]
        frame = _columns(events, np.concatenate([rows, base]), names, day)
        valid = frame.head(rows.size).select(_line(fragments))
        bad = frame.tail(base.size).with_columns(kind=kind)
        parts = [valid]
        for k, name in enumerate(BAD_KINDS):
            of_kind = bad.filter(pl.col("kind") == k)
            line = _bad_line(name, fragments, day, tenant)
            parts.append(of_kind.with_columns(line).select("line"))
        lines = pl.concat(parts)
        # Valid rows sort at 2*row, a bad line at 2*base+1, ties kept in injection order.
        bad_by_kind = np.concatenate(
            [np.flatnonzero(kind == k) for k in range(len(BAD_KINDS))]
        ).astype(np.int64)
        key = np.concatenate([2 * rows, 2 * base[bad_by_kind] + 1])
        tie = np.concatenate([np.zeros(rows.size, dtype=np.int64), bad_by_kind])
        order = np.lexsort((tie, key))
        lines[order].write_csv(handle, include_header=False, quote_style="never")


def _id_table(prefix: str, n: int) -> pl.Series:
    digits = pl.Series(np.arange(n)).cast(pl.String).str.zfill(6)
    return (prefix + digits).rename(prefix)


@dataclass(frozen=True)
class _DayPlan:
    day: date
    index: int
    events: int
    sessions: int
    first_injected: int
    injected: int

    def kinds(self) -> np.ndarray:
        return (self.first_injected + np.arange(self.injected)) % len(BAD_KINDS)


@contextmanager
def _atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at `path` complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as handle:
            yield handle
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _validate(
    *,
    events: int,
    tenant: str,
    surface: str,
    days: int,
    items: int,
    users: int,
    sessions: int,
    anonymous_share: float,
    bad_fraction: float,
    seed: int,
    layout: str,
    chunk_events: int,
) -> None:
    for name, value in (("tenant", tenant), ("surface", surface)):
        if not _NAME.match(value) or "__" in value or ".." in value:
            raise ValueError(
                f"{name} must match {_NAME.pattern} without '__' or '..', got {value!r}"
            )
    for name, value, low in (
        ("events", events, 0),
        ("days", days, 1),
        ("items", items, 1),
        ("users", users, 1),
        ("sessions", sessions, 1),
        ("seed", seed, 0),
        ("chunk_events", chunk_events, 1),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    for name, value in (("anonymous_share", anonymous_share), ("bad_fraction", bad_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value}")
    if layout not in ("per-day", "flat"):
        raise ValueError(f"layout must be 'per-day' or 'flat', got {layout!r}")
    if events > sessions * MAX_SESSION_EVENTS:
        raise ValueError(
            f"{events} events in {sessions} sessions exceed {MAX_SESSION_EVENTS} events per"
            f" session; raise sessions to at least {-(-events // MAX_SESSION_EVENTS)}"
        )


def _expected(plans: list[_DayPlan], layout: str, injected: dict[str, int]) -> dict[str, int]:
    """What a reader of the generated days should count, given the layout."""
    rejected = {kind for kind in BAD_KINDS if kind not in _NOT_REJECTED}
    valid = sum(plan.events for plan in plans)
    elsewhere = 0
    if layout == "flat":
        rejected -= _OTHER_PARTITION_WHEN_FLAT
        # A line dated the day before belongs to that day, which was generated too unless
        # the line sits in the first day.
        outside = BAD_KINDS.index("ts_outside_day")
        earlier = sum(int(np.sum(p.kinds() == outside)) for p in plans if p.index > 0)
        valid += earlier
        elsewhere = sum(injected[kind] for kind in _OTHER_PARTITION_WHEN_FLAT) - earlier
    return {
        "valid_events": valid,
        "rejects": sum(injected[kind] for kind in rejected),
        "blank_lines": injected["blank_line"],
        "duplicate_lines": injected["duplicate"],
        "events_of_other_partitions": elsewhere,
    }


def generate(
    out: str | Path,
    *,
    events: int = 5_000_000,
    tenant: str = "demo",
    surface: str = "home",
    day: date | str = "2026-01-01",
    days: int = 1,
    items: int = 50_000,
    users: int | None = None,
    sessions: int | None = None,
    anonymous_share: float = 0.3,
    bad_fraction: float = 0.0,
    seed: int = 7,
    layout: Layout = "per-day",
    chunk_events: int = CHUNK_EVENTS,
) -> dict:
    """Write synthetic exposure JSON Lines under `out`; return the summary, also written to
    `<out>/summary.json`.

    `events` and `sessions` are totals over `days` consecutive days from `day`, split evenly;
    `sessions` defaults to events * 0.12 and `users` to sessions / 3. Each day gets
    round(its events * bad_fraction) injected lines on top of its valid events, cycling
    through BAD_KINDS. `chunk_events` bounds memory and does not change the bytes.
    """
    first_day = date.fromisoformat(day) if isinstance(day, str) else day
    sessions = max(1, round(events * SESSIONS_PER_EVENT)) if sessions is None else sessions
    users = max(1, sessions // SESSIONS_PER_USER) if users is None else users
    _validate(
        events=events,
        tenant=tenant,
        surface=surface,
        days=days,
        items=items,
        users=users,
        sessions=sessions,
        anonymous_share=anonymous_share,
        bad_fraction=bad_fraction,
        seed=seed,
        layout=layout,
        chunk_events=chunk_events,
    )
    out = Path(out)
    seeds = np.random.SeedSequence(seed).spawn(days + 1)
    catalog_rng = np.random.default_rng(seeds[0])
    draw_item = _power_law_sampler(items, ITEM_ZIPF_EXPONENT, catalog_rng)
    draw_user = _power_law_sampler(users, USER_ACTIVITY_EXPONENT, catalog_rng)
    anonymous = pl.Series([None], dtype=pl.String)
    names = {"item": _id_table("i", items), "user": _id_table("u", users).append(anonymous)}

    plans: list[_DayPlan] = []
    for index, (n_events, n_sessions) in enumerate(
        zip(_split(events, days), _split(sessions, days), strict=True)
    ):
        first = plans[-1].first_injected + plans[-1].injected if plans else 0
        plans.append(
            _DayPlan(
                day=first_day + timedelta(days=index),
                index=index,
                events=n_events,
                sessions=max(1, min(n_sessions, n_events)),
                first_injected=first,
                injected=round(n_events * bad_fraction),
            )
        )

    def write(handle: BinaryIO, plan: _DayPlan) -> None:
        if plan.events == 0:
            return
        rng = np.random.default_rng(seeds[plan.index + 1])
        day_events = _day_events(
            plan.events,
            plan.sessions,
            anonymous_share=anonymous_share,
            n_items=items,
            draw_item=draw_item,
            draw_user=draw_user,
            rng=rng,
        )
        bad_base = np.sort(rng.integers(0, plan.events, plan.injected))
        _write_day(
            handle,
            day_events,
            bad_base,
            plan.kinds(),
            day=plan.day,
            tenant=tenant,
            surface=surface,
            names=names,
            chunk_events=chunk_events,
        )

    files: dict[Path, list[_DayPlan]] = {}
    for plan in plans:
        if layout == "flat":
            path = out / "exposure.jsonl"
        else:
            path = out / tenant / surface / f"exposure.{plan.day.isoformat()}.jsonl"
        files.setdefault(path, []).append(plan)
    for path, in_file in files.items():
        with _atomic_writer(path) as handle:
            for plan in in_file:
                write(handle, plan)

    injected = dict.fromkeys(BAD_KINDS, 0)
    for plan in plans:
        for kind, count in enumerate(np.bincount(plan.kinds(), minlength=len(BAD_KINDS))):
            injected[BAD_KINDS[kind]] += int(count)
    summary = {
        "params": {
            "events": events,
            "tenant": tenant,
            "surface": surface,
            "day": first_day.isoformat(),
            "days": days,
            "items": items,
            "users": users,
            "sessions": sessions,
            "anonymous_share": anonymous_share,
            "bad_fraction": bad_fraction,
            "seed": seed,
            "layout": layout,
        },
        "files": [
            {
                "path": path.relative_to(out).as_posix(),
                "days": [plan.day.isoformat() for plan in in_file],
                "events": sum(plan.events for plan in in_file),
                "lines": sum(plan.events + plan.injected for plan in in_file),
                "bytes": path.stat().st_size,
            }
            for path, in_file in files.items()
        ],
        "lines": sum(plan.events + plan.injected for plan in plans),
        "bytes": sum(path.stat().st_size for path in files),
        "injected": injected,
        "expected": _expected(plans, layout, injected),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="total valid events")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--surface", default="home")
    parser.add_argument("--day", default="2026-01-01", help="first UTC day, YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=1, help="consecutive days")
    parser.add_argument("--items", type=int, default=50_000, help="catalog size")
    parser.add_argument("--users", type=int, help="user pool (default sessions / 3)")
    parser.add_argument("--sessions", type=int, help="total sessions (default events * 0.12)")
    parser.add_argument("--anonymous-share", type=float, default=0.3)
    parser.add_argument("--bad-fraction", type=float, default=0.0, help="injected lines per event")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--layout", choices=("per-day", "flat"), default="per-day")
    parser.add_argument("--chunk-events", type=int, default=CHUNK_EVENTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        summary = generate(
            args.out,
            events=args.events,
            tenant=args.tenant,
            surface=args.surface,
            day=args.day,
            days=args.days,
            items=args.items,
            users=args.users,
            sessions=args.sessions,
            anonymous_share=args.anonymous_share,
            bad_fraction=args.bad_fraction,
            seed=args.seed,
            layout=args.layout,
            chunk_events=args.chunk_events,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(summary, indent=2))
    print(f"generated in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
