"""Benchmark of canonical exposures: seconds and peak RSS per stage for one partition.

    python benchmarks/run_canonical.py --events 5000000 [--bad-fraction 0.02]

Generates the data once under benchmarks/.data/ (git-ignored), then times the pure stages
(read, decode, canonical, write) and the whole `canonical_exposures` materialization, with
the limits raised to fit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.generate import generate  # noqa: E402
from benchmarks.measure import report, stage  # noqa: E402
from recsys_assets.config import parse_config  # noqa: E402
from recsys_assets.events.assets import build_canonical_partition  # noqa: E402
from recsys_assets.events.canonical import Partition  # noqa: E402
from recsys_assets.events.store import CanonicalStore  # noqa: E402

DATA = Path(__file__).resolve().parent / ".data"
LIMITS = {
    "max_events_per_run": 100_000_000,
    "max_sessions_per_run": 100_000_000,
    "max_distinct_items_per_run": 100_000_000,
    "max_users_per_run": 100_000_000,
    "max_bad_row_ratio": 0.5,
}


def dataset(events: int, bad_fraction: float) -> Path:
    out = DATA / f"events-{events}-bad{bad_fraction}"
    if not (out / "summary.json").exists():
        generate(out, events=events, bad_fraction=bad_fraction)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--bad-fraction", type=float, default=0.0)
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args(argv)

    raw_dir = dataset(args.events, args.bad_fraction)
    # Removed afterwards: each run writes a partition (and a Dagster run) of its own.
    with tempfile.TemporaryDirectory(prefix="bench-canonical-") as tmp:
        out = Path(tmp)
        config = parse_config(
            {
                "start_date": "2026-01-01",
                "tenants": [{"tenant": "demo", "surface": "home"}],
                "out_dir": str(out),
                "raw_source": {"type": "fs", "dir": str(raw_dir)},
                "limits": LIMITS,
            }
        )
        partition = Partition("demo", "home", dt.date(2026, 1, 1))
        path = raw_dir / "demo/home/exposure.2026-01-01.jsonl"
        results: list = []
        with stage("read", results) as s:
            data = path.read_bytes()
            s.extra["bytes"] = len(data)
        with stage("decode+canonical", results) as s:
            canonical, _ = build_canonical_partition("day", data, partition, config)
            s.extra |= {k: canonical.counts[k] for k in ("rows", "rejects", "duplicates")}
        with stage("write", results):
            store = CanonicalStore(location=config.canonical_location)
            store.write(partition, canonical, path.name)
        del data, canonical

        import dagster as dg

        from recsys_assets.graph import build_definitions
        from recsys_assets.runner import execute

        defs = build_definitions(config)
        with dg.instance_for_test() as instance, stage("asset end-to-end", results) as s:
            outcome = execute(defs, "ingest_job", "2026-01-01|demo__home", instance)
            s.extra["success"] = outcome.success
    report(results, args.json)
    return 0 if outcome.success else 1


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
