"""A backfill on Dagster's Celery executor: two worker processes, each in its own folder,
sharing only a Redis broker, the Dagster instance on PostgreSQL (deploy/dagster.yaml) and an
S3 bucket (moto) holding every data location; one worker is killed mid-backfill."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import dagster as dg
import orjson
import pytest
import yaml
from dagster._core.events import DagsterEventType

from recsys_assets.artifacts.validate import validate_manifest
from recsys_assets.config import ARTIFACT_TYPES, S3Connection, parse_config
from recsys_assets.graph import build_definitions
from recsys_assets.publish.resources import publish_targets
from recsys_assets.runner import execute
from recsys_assets.storage import open_store
from recsys_assets_tests.celery_fixtures import (  # noqa: F401
    RunResult,
    redis_url,
    run_backfill,
    workers,
)
from recsys_assets_tests.conftest import REPO
from recsys_assets_tests.pg_fixtures import pg_db_dsn, pg_dsn  # noqa: F401
from recsys_assets_tests.s3_fixtures import ACCESS_KEY, SECRET_KEY, s3_connection, s3_server  # noqa: F401
from recsys_assets_tests.test_postgres_instance import sqlalchemy_url

# Engine events (which worker took a step) have no other reader in Dagster 1.13.
pytestmark = pytest.mark.filterwarnings("ignore:Function `EventMethods.get_event_records`")

SAMPLE = REPO / "testdata/events/sample"
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
TENANTS = [("demo", "home"), ("demo", "pdp"), ("acme", "home")]
KEYS = [f"{day}|{t}__{s}" for day in DAYS for t, s in TENANTS]
DAILY_ASSETS = ["canonical_exposures", "daily_aggregates", *ARTIFACT_TYPES, "artifact_quality"]
# What configs/env/sample.json builds, but db signals.
SETTINGS = {
    "start_date": DAYS[0],
    "tenants": [{"tenant": t, "surface": s} for t, s in TENANTS],
    "limits": {"max_bad_row_ratio": 0.1},
    "catalog": {"path": str(REPO / "testdata/catalog/sample.csv")},
    "artifacts": {
        "cooc": {"window_days": 3},
        "popularity": {"window_days": 3},
        "implicit": {"factors": 8, "iterations": 5},
    },
}
# About half of the backfill's steps (16 a partition, 2 a tenant/surface's catalog).
KILL_AFTER_STEPS = 60
LONG_STEPS = {"publish", "artifact_quality", "implicit"}
# A task taken by a killed worker is handed out again after this many seconds.
VISIBILITY_TIMEOUT = 12


def s3_settings(connection: S3Connection) -> dict:
    return {
        "endpoint": connection.endpoint,
        "bucket": connection.bucket,
        "access_key": connection.access_key,
        "secret_key": connection.secret_key,
        "region": connection.region,
        "use_ssl": False,
    }


def s3_config(connection: S3Connection) -> dict:
    """Every location in the bucket: raw events, canonical, artifacts, checkpoints, objects
    and the registry."""
    bucket = f"s3://{connection.bucket}"
    return SETTINGS | {
        "raw_source": {"type": "s3", "s3": {"bucket": connection.bucket, "prefix": "raw"}},
        "canonical_dir": f"{bucket}/canonical",
        "artifacts_dir": f"{bucket}/artifacts",
        "checkpoint_dir": f"{bucket}/checkpoints",
        "object_store": {"type": "s3", "s3": s3_settings(connection) | {"prefix": "objects"}},
    }


def versions(instance: dg.DagsterInstance) -> dict[tuple[str, str], str]:
    """(type, partition) -> version of the latest materialization of each artifact."""
    found = {}
    for artifact_type in ARTIFACT_TYPES:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(artifact_type)), limit=1000
        ).records
        for record in reversed(records):  # oldest first: the latest wins
            materialization = record.asset_materialization
            found[(artifact_type, materialization.partition)] = materialization.metadata[
                "version"
            ].value
    return found


def step_workers(instance: dg.DagsterInstance) -> list[tuple[str, str, str, float]]:
    """(run id, step key, Celery worker, time) of each step a worker took, from the event
    log: the engine event the dagster-celery task writes before it executes a step."""
    records = instance.get_event_records(
        dg.EventRecordsFilter(event_type=DagsterEventType.ENGINE_EVENT), limit=100000
    )
    taken = []
    for record in records:
        entry = record.event_log_entry
        data = entry.dagster_event.event_specific_data
        worker = data.metadata.get("Celery worker") if data and data.metadata else None
        if worker is not None:
            taken.append((entry.run_id, entry.step_key, worker.value, entry.timestamp))
    return taken


def step_ends(instance: dg.DagsterInstance) -> set[tuple[str, str]]:
    ended = set()
    for event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
        for record in instance.get_event_records(
            dg.EventRecordsFilter(event_type=event_type), limit=100000
        ):
            ended.add((record.event_log_entry.run_id, record.event_log_entry.step_key))
    return ended


def test_backfill_on_two_celery_workers_survives_a_killed_worker(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    pg_db_dsn: str,  # noqa: F811
    s3_connection: S3Connection,  # noqa: F811
    instance: dg.DagsterInstance,
    monkeypatch,
):
    # The reference: the same days in process, from the files, on the local disk.
    local = parse_config(
        SETTINGS
        | {"out_dir": str(tmp_path / "local"), "raw_source": {"type": "fs", "dir": str(SAMPLE)}},
        "local",
        root=tmp_path,
    )
    local_defs = build_definitions(local)
    for tenant, surface in TENANTS:
        assert execute(local_defs, "catalog_job", f"{tenant}__{surface}", instance).success
    for key in sorted(KEYS):  # in date order, as the in-process `run` does
        assert execute(local_defs, "recsys_daily", key, instance).success, key
    expected = versions(instance)
    assert len(expected) == len(KEYS) * len(ARTIFACT_TYPES)

    raw = open_store(f"s3://{s3_connection.bucket}/raw", s3_connection)
    for path in sorted(SAMPLE.rglob("*.jsonl")):
        raw.write_bytes(str(path.relative_to(SAMPLE)), path.read_bytes())
    config_json = json.dumps(s3_config(s3_connection))

    celery = yaml.safe_load((REPO / "deploy/celery.yaml").read_text())
    transport = celery["execution"]["config"]["config_source"]["broker_transport_options"]
    transport |= {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
    celery_yaml = tmp_path / "celery.yaml"
    celery_yaml.write_text(yaml.safe_dump(celery))

    env = {
        "DAGSTER_PG_URL": sqlalchemy_url(pg_db_dsn),
        "RECSYS_CELERY_BROKER": f"{redis_url}/0",
        "RECSYS_CELERY_BACKEND": f"{redis_url}/1",
        "DAGSTER_COMPUTE_LOGS_BUCKET": s3_connection.bucket,
        "DAGSTER_S3_ENDPOINT_URL": s3_connection.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": s3_connection.region,
    }
    home = tmp_path / "orchestrator" / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / "deploy/dagster.yaml").read_text())
    (home.parent / "config.json").write_text(config_json)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RECSYS_CONFIG", str(home.parent / "config.json"))
    monkeypatch.setenv("RECSYS_EXECUTOR", "celery")
    monkeypatch.setenv("RECSYS_CELERY_CONFIG", str(celery_yaml))
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    with (
        workers(["w1", "w2"], tmp_path / "workers", os.environ, config_json, celery_yaml) as pool,
        dg.DagsterInstance.from_config(str(home)) as shared,
    ):
        results: list[RunResult] = []
        backfill = threading.Thread(
            target=lambda: results.extend(run_backfill(["recsys_daily", "publish_job"], KEYS, home))
        )
        backfill.start()
        # Mid-backfill, once both workers have finished steps, kill w2 in the middle of one.
        killed, killed_at = None, 0.0
        deadline = time.monotonic() + 240
        while killed is None and backfill.is_alive() and time.monotonic() < deadline:
            taken, ended = step_workers(shared), step_ends(shared)
            done = {
                w: sum((r, s) in ended for r, s, x, _ in taken if x.startswith(w)) for w in pool
            }
            # A long step (publish, quality, implicit: a second or more) that w2 took less than
            # 0.5 s ago is still running when the kill lands.
            in_flight = [
                (r, s)
                for r, s, w, t in taken
                if w.startswith("w2@")
                and s in LONG_STEPS
                and (r, s) not in ended
                and time.time() - t < 0.5
            ]
            if sum(done.values()) >= KILL_AFTER_STEPS and min(done.values()) >= 3 and in_flight:
                pool["w2"].kill()
                killed, killed_at = in_flight[0], time.time()
            time.sleep(0.1)
        backfill.join(timeout=240)
        assert not backfill.is_alive(), "the backfill did not end"
        assert killed is not None, "w2 was never caught in a step"
        assert len(results) == 2 * len(KEYS) + len(TENANTS)
        assert all(r.success for r in results), [r.run_id for r in results if not r.success]

        taken = step_workers(shared)
        by_worker = {w.split("@")[0] for _, _, w, _ in taken}
        assert by_worker == {"w1", "w2"}
        # The step w2 was in was taken again, by w1, once the broker handed it out again.
        again = [w for r, s, w, t in taken if (r, s) == killed and t > killed_at]
        assert again and all(w.startswith("w1@") for w in again), (killed, again)

        for asset in [*DAILY_ASSETS, "publish"]:
            assert shared.get_materialized_partitions(dg.AssetKey(asset)) == set(KEYS), asset
        assert versions(shared) == expected

        config = parse_config(orjson.loads(config_json), "s3", root=tmp_path)
        object_store, registry = publish_targets(config).stores()
        published: dict[tuple[str, str, str], list[str]] = {}
        for record in shared.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("publish")), limit=1000
        ).records:
            tenant_surface = record.asset_materialization.partition.split("|")[1]
            for artifact_type, outcome in record.asset_materialization.metadata[
                "outcomes"
            ].value.items():
                if outcome["action"] == "published":
                    key = (tenant_surface, artifact_type, outcome["version"])
                    published.setdefault(key, []).append(record.run_id)
        assert all(len(runs) == 1 for runs in published.values()), published
        for tenant, surface in TENANTS:
            manifest = registry.manifest(tenant, surface)
            assert validate_manifest(manifest) == []
            assert sorted(manifest["current"]) == sorted(ARTIFACT_TYPES)
            for artifact_type, uri in manifest["current"].items():
                key = uri.split(f"s3://{s3_connection.bucket}/objects/", 1)[1]
                blob = object_store.read_bytes(key)
                assert blob is not None, uri
                version = orjson.loads(blob)["build"]["version"]
                assert version == expected[(artifact_type, f"{DAYS[-1]}|{tenant}__{surface}")]
                # One record per version, whatever ran twice.
                recorded = [r["version"] for r in registry.records(tenant, surface, artifact_type)]
                days = {expected[(artifact_type, f"{d}|{tenant}__{surface}")] for d in DAYS}
                assert sorted(recorded) == sorted(days)
