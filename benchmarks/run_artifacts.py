"""Benchmark of the artifacts: seconds and peak RSS per stage.

    python benchmarks/run_artifacts.py one-day  [--events 5000000]
    python benchmarks/run_artifacts.py window   [--events-per-day 1000000 --days 28]
                                                [--repeat 5] [--no-implicit]

`one-day`: one partition (50k items, 200k users, ~600k sessions by default): daily
aggregation, then popularity, cooc, content_sim (a synthetic 50k-item catalog) and
session_seq built, versioned and serialized; implicit (factors 64, 15 iterations, 50 items
per user, 100k users) reported separately. `window`: `--days` days of aggregates exist; the
next day costs one day of aggregation plus the merge of the window, compared with the same
artifacts over one day; the stage ends when the window states written in the background
are on disk. `--repeat N` runs the 1-day and the next day N times, alternately (this VM's
timings vary by a fifth from run to run), and prints the ratio of their medians. implicit on
the window merges its own kind (user_item_counts), as its asset does. Data is generated
once under benchmarks/.data/ (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from benchmarks.generate import generate  # noqa: E402
from benchmarks.measure import report, stage  # noqa: E402
from benchmarks.run_canonical import DATA  # noqa: E402
from benchmarks.run_canonical import LIMITS as CANONICAL_LIMITS  # noqa: E402
from recsys_assets.aggregates.daily import daily_aggregates  # noqa: E402
from recsys_assets.aggregates.store import write_aggregates  # noqa: E402
from recsys_assets.aggregates.window import aggregate_params, load_window  # noqa: E402
from recsys_assets.artifacts.assets import SPECS  # noqa: E402
from recsys_assets.artifacts.content_sim import content_sim_payload  # noqa: E402
from recsys_assets.artifacts.cooc import cooc_payload  # noqa: E402
from recsys_assets.artifacts.envelope import build_document, serialized_parts  # noqa: E402
from recsys_assets.artifacts.implicit_als import implicit_payload  # noqa: E402
from recsys_assets.artifacts.popularity import popularity_payload  # noqa: E402
from recsys_assets.artifacts.session_seq import session_seq_payload  # noqa: E402
from recsys_assets.config import AppConfig, parse_config  # noqa: E402
from recsys_assets.events.assets import build_canonical_partition  # noqa: E402
from recsys_assets.events.canonical import Partition  # noqa: E402
from recsys_assets.events.store import CanonicalStore  # noqa: E402

DAY0 = dt.date(2026, 1, 1)
SOURCE = "0" * 64
LIMITS = {**CANONICAL_LIMITS, "max_excluded_event_ratio": 1.0}
WINDOW_TYPES = ("popularity", "cooc", "session_seq")


def bench_config(out_dir: Path, raw_dir: Path) -> AppConfig:
    """The one tenant/surface of the benchmarks, writing under `out_dir`."""
    return parse_config(
        {
            "start_date": DAY0.isoformat(),
            "tenants": [{"tenant": "demo", "surface": "home"}],
            "out_dir": str(out_dir),
            "raw_source": {"dir": str(raw_dir)},
            "limits": LIMITS,
        }
    )


def canonical_days(events_per_day: int, days: int) -> CanonicalStore:
    """Canonical partitions of `days` days, built once and cached."""
    root = DATA / f"canonical-{events_per_day}x{days}"
    raw = DATA / f"raw-{events_per_day}x{days}"
    store = CanonicalStore(location=str(root))
    last = Partition("demo", "home", DAY0 + dt.timedelta(days=days - 1))
    if store.marker(last) is not None:
        return store
    if not (raw / "summary.json").exists():
        generate(raw, events=events_per_day * days, days=days, day=DAY0)
    config = bench_config(root, raw)
    for offset in range(days):
        partition = Partition("demo", "home", DAY0 + dt.timedelta(days=offset))
        path = raw / f"demo/home/exposure.{partition.day}.jsonl"
        canonical, _ = build_canonical_partition("day", path.read_bytes(), partition, config)
        store.write(partition, canonical, path.name)
    return store


def catalog(items: pl.Series, seed: int = 3) -> pl.DataFrame:
    """A synthetic catalog: 1-5 tags per item from a Zipf-like vocabulary of 2,000 tags."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, items.len())
    vocabulary = np.array([f"tag{i:04d}" for i in range(2000)])
    weights = 1 / np.arange(1, 2001) ** 0.8
    tags = rng.choice(vocabulary, size=int(counts.sum()), p=weights / weights.sum())
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return pl.DataFrame(
        {
            "item_id": items,
            "tags": [tags[offsets[i] : offsets[i + 1]].tolist() for i in range(items.len())],
            "namespace": pl.Series([None] * items.len(), dtype=pl.String),
            "price": pl.Series([None] * items.len(), dtype=pl.Float64),
            "created_at": pl.Series([None] * items.len(), dtype=pl.Datetime("us", "UTC")),
        }
    )


def versioned(artifact_type: str, payload: dict, day: dt.date, days: int = 1) -> int:
    document = build_document(
        artifact_type,
        "demo",
        "home",
        "",
        day - dt.timedelta(days=days - 1),
        day + dt.timedelta(days=1),
        payload,
        SOURCE,
        "2026-01-02T00:00:00Z",
    )
    return sum(map(len, serialized_parts(document)))  # what staging writes, part by part


def build(artifact_type: str, frames: dict[str, pl.DataFrame], day: dt.date, days: int) -> int:
    if artifact_type == "popularity":
        payload, _ = popularity_payload(frames["item_counts"], max_items_per_artifact=1000)
    elif artifact_type == "cooc":
        payload, _ = cooc_payload(frames["cooc_pairs"], frames["cooc_stats"], frames["item_counts"])
    elif artifact_type == "session_seq":
        payload, _ = session_seq_payload(
            frames["user_transitions"],
            # A window hands session_seq the users' totals only (see aggregates.window).
            frames["user_activity"] if "user_activity" in frames else frames["user_item_counts"],
            frames["item_transitions"],
        )
    else:
        raise ValueError(artifact_type)
    return versioned(artifact_type, payload, day, days)


def one_day(events: int, results: list) -> None:
    store = canonical_days(events, 1)
    frame, _ = store.read_events(Partition("demo", "home", DAY0))
    with stage("daily aggregates", results) as s:
        frames = daily_aggregates(frame)
        s.extra["events"] = frame.height
    for artifact_type in ("popularity", "cooc", "session_seq"):
        with stage(artifact_type, results) as s:
            s.extra["bytes"] = build(artifact_type, frames, DAY0, 1)
    items = frames["item_counts"]["item_id"]
    table = catalog(items)
    with stage("content_sim", results) as s:
        payload, stats = content_sim_payload(table, surface="home")
        s.extra |= {"bytes": versioned("content_sim", payload, DAY0), "items": stats["items"]}
    # implicit is its own asset step: nothing of the other artifacts is alive while it runs.
    user_item_counts = frames["user_item_counts"]
    del frame, frames, table, payload, stats
    gc.collect()
    with stage("implicit (separate)", results) as s:
        payload, stats = implicit_payload(user_item_counts)
        s.extra |= {"bytes": versioned("implicit", payload, DAY0), "users": stats["users_written"]}


def window(
    events_per_day: int, days: int, results: list, implicit: bool = True, repeat: int = 1
) -> dict:
    """`window_in` over aggregates and window states written in a temporary folder, removed
    afterwards (a 28-day run leaves ~2 GB)."""
    with tempfile.TemporaryDirectory(prefix="bench-window-") as tmp:
        return window_in(Path(tmp), events_per_day, days, results, implicit, repeat)


def window_in(
    out: Path, events_per_day: int, days: int, results: list, implicit: bool, repeat: int
) -> dict:
    """The next day of a `days`-day window, as the assets run it: aggregate and store the
    day, then load the window (yesterday's window state + today - the day that left) and
    build. The previous day's window is loaded first, cold (summing every day), as that
    day's run would have done. The 1-day run and the next day are repeated `repeat` times;
    the summary has their medians."""
    store = canonical_days(events_per_day, days + 1)
    aggregates = CanonicalStore(location=str(out))
    config = bench_config(out, out)
    entry = config.tenants[0]
    params = aggregate_params(config, entry)
    kinds = sorted({kind for name in WINDOW_TYPES for kind in SPECS[name].kinds})
    for offset in range(days):  # the window's history: aggregated once, as the asset does
        partition = Partition("demo", "home", DAY0 + dt.timedelta(days=offset))
        frame, marker = store.read_events(partition)
        write_aggregates(
            aggregates, partition, daily_aggregates(frame, **params), params, marker["content_hash"]
        )
    today = Partition("demo", "home", DAY0 + dt.timedelta(days=days))
    frame, marker = store.read_events(today)

    def next_day(window_days: int, stats: dict) -> dict:
        """Run the day; `stats` gets each part's seconds and how each window was merged."""
        started = time.perf_counter()
        day = daily_aggregates(frame, **params)
        write_aggregates(aggregates, today, day, params, marker["content_hash"])
        stats["s aggregate"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        data = load_window(aggregates, config, entry, today.day, window_days, kinds)
        stats["s merge"] = round(time.perf_counter() - started, 2)
        stats |= {f"merge {kind}": how for kind, how in data.merge.items()}
        for artifact_type in WINDOW_TYPES:
            started = time.perf_counter()
            stats[artifact_type] = build(artifact_type, data.frames, today.day, window_days)
            stats[f"s {artifact_type}"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        data.wait_saved()  # window states are written while the artifacts are built
        stats["s wait for states"] = round(time.perf_counter() - started, 2)
        return data.frames

    one_day_name = "1-day: aggregate + popularity, cooc, session_seq"
    next_day_name = f"{days}-day window, next day: aggregate + merge + build"
    with stage(one_day_name, results) as s:
        next_day(1, s.extra)
    yesterday = today.day - dt.timedelta(days=1)
    with stage(f"{days}-day window of the day before, cold (sums {days} days)", results) as s:
        # implicit's step keeps a state of user_item_counts, as it would have yesterday.
        cold_kinds = [*kinds, "user_item_counts"] if implicit else kinds
        data = load_window(aggregates, config, entry, yesterday, days, cold_kinds)
        data.wait_saved()
        s.extra |= {f"merge {kind}": how for kind, how in data.merge.items()}
    del data
    with stage(next_day_name, results) as s:
        merged = next_day(days, s.extra)
    del merged
    for run in range(2, repeat + 1):  # alternately, so that both meet the same machine
        with stage(f"{one_day_name} (run {run})", results) as s:
            next_day(1, s.extra)
        for written in out.glob(f"demo/home/windows/*/{days}d-*/{today.day}.*"):
            written.unlink()  # today's states: the next day updates yesterday's again
        with stage(f"{next_day_name} (run {run})", results) as s:
            next_day(days, s.extra).clear()
    one = statistics.median(r.seconds for r in results if r.name.startswith(one_day_name))
    later = statistics.median(r.seconds for r in results if r.name.startswith(next_day_name))
    summary = {
        "runs": repeat,
        "1-day median s": round(one, 2),
        "next day median s": round(later, 2),
        "ratio of medians": round(later / one, 2),
    }
    if not implicit:
        return summary
    with stage(f"{days}-day window: implicit (its own merge)", results) as s:
        data = load_window(aggregates, config, entry, today.day, days, ["user_item_counts"])
        s.extra["merge"] = data.merge["user_item_counts"]
        payload, stats = implicit_payload(data.frames["user_item_counts"])
        data.wait_saved()
        s.extra["users"] = stats["users_written"]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["one-day", "window"])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--events-per-day", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-implicit", action="store_true", help="window: skip implicit")
    parser.add_argument(
        "--repeat", type=int, default=1, help="window: runs of the 1-day and the next day"
    )
    args = parser.parse_args(argv)
    results: list = []
    summary = None
    if args.mode == "one-day":
        one_day(args.events, results)
    else:
        summary = window(args.events_per_day, args.days, results, not args.no_implicit, args.repeat)
    report(results, args.json, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
