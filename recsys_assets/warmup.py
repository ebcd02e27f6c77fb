"""Compile the numba loops once per environment: `python -m recsys_assets.warmup`.

numba compiles each loop of `artifacts.kernels` (and a few elsewhere) the first time it is
called with a combination of argument types, and keeps the machine code in the package's
`__pycache__` (`cache=True`). On a fresh machine that is 20-30 s of a user's first real run;
`make demo` and `make test` run this first instead, so they do not pay it.

It runs the daily job and publish in process on two small synthetic days, on a temporary
folder and Dagster instance, for two tenant/surfaces: one with the one-day windows of the
defaults and one with two-day windows, so that both a day's build and a window state's
sum are compiled. The ids are many enough for the codes' narrow types of real catalogs
(more than 256 items). A type combination met only at another scale is compiled on first
use, once, and cached as well.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

DAYS = 2
START = dt.date(2026, 1, 1)


def write_days(root: Path, events_per_day: int = 6000, seed: int = 5) -> None:
    """Per-day files of short sessions over 1,500 items and 600 users, for each tenant."""
    rng = np.random.default_rng(seed)
    for surface in ("day", "window"):
        for offset in range(DAYS):
            day = START + dt.timedelta(days=offset)
            midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
            folder = root / "warmup" / surface
            folder.mkdir(parents=True, exist_ok=True)
            lines, session = [], 0
            while len(lines) < events_per_day:
                session += 1
                user = int(rng.integers(600))
                start = float(rng.uniform(0, 80_000))
                items = rng.zipf(1.3, size=int(rng.integers(2, 12))) % 1500
                for rank, item in enumerate(items.tolist()):
                    ts = midnight + dt.timedelta(seconds=start + 3 * rank)
                    event = {
                        "v": 1,
                        "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                        "tenant": "warmup",
                        "surface": surface,
                        "session_id": f"s{offset}-{session}",
                        "item_id": f"i{item:05d}",
                        "rank": rank,
                    }
                    if user % 4:
                        event["user_id"] = f"u{user:04d}"
                    lines.append(orjson.dumps(event))
            (folder / f"exposure.{day}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with (root / "catalog.csv").open("w") as out:
        out.write("item_id,tags\n")
        for item in range(1500):
            out.write(f"i{item:05d},t{item % 40}|u{item % 7}\n")


def warm_up() -> float:
    """Run the graph on the synthetic days; returns the seconds it took."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import dagster as dg

    from recsys_assets.config import parse_config
    from recsys_assets.graph import build_definitions
    from recsys_assets.runner import execute

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recsys-warmup-") as tmp:
        root = Path(tmp)
        write_days(root / "raw")
        windowed = {t: {"window_days": DAYS} for t in ("popularity", "cooc", "implicit")}
        windowed["session_seq"] = {"window_days": DAYS}
        config = parse_config(
            {
                "start_date": START.isoformat(),
                "tenants": [
                    {"tenant": "warmup", "surface": "day"},
                    {"tenant": "warmup", "surface": "window", "artifacts": windowed},
                ],
                "out_dir": str(root / "out"),
                "raw_source": {"type": "fs", "dir": str(root / "raw")},
                "catalog": {"path": str(root / "raw" / "catalog.csv")},
                "artifacts": {"implicit": {"iterations": 2, "factors": 8}},
                # its checks would judge made-up data; what it compiles, implicit does too
                "quality": {"enabled": False},
            },
            root=root,
        )
        defs = build_definitions(config)
        with dg.DagsterInstance.ephemeral() as instance:
            for entry in config.tenants:
                execute(defs, "catalog_job", entry.key, instance)
                for offset in range(DAYS):
                    key = f"{START + dt.timedelta(days=offset)}|{entry.key}"
                    outcome = execute(defs, "recsys_daily", key, instance)
                    if not outcome.success:
                        raise SystemExit(f"warm-up run {key} failed: {outcome.reason}")
                    execute(defs, "publish_job", key, instance)
    return time.perf_counter() - started


def main() -> int:
    seconds = warm_up()
    print(f"numba loops compiled and cached ({seconds:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
