"""Postgres and S3 through the graph: signals, the Postgres source, everything on S3."""

import psycopg
from psycopg.types.json import Jsonb

from recsys_assets.graph import build_definitions
from recsys_assets.postgres import migrate, resolve_tenant
from recsys_assets.runner import execute
from recsys_assets_tests.conftest import REPO
from recsys_assets_tests.pg_fixtures import pg_conn, pg_db_dsn, pg_dsn  # noqa: F401
from recsys_assets_tests.s3_fixtures import s3_connection, s3_server  # noqa: F401

TINY = (REPO / "testdata/events/tiny/exposure.jsonl").read_bytes()
KEY = "2026-01-01|demo__home"


def rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def test_signals_hold_exactly_the_day_after_two_runs(pg_db_dsn, make_config, write_day, instance):  # noqa: F811
    write_day(TINY)
    config = make_config(db={"dsn": pg_db_dsn, "auto_migrate": True})
    defs = build_definitions(config)
    for _ in range(2):
        outcome = execute(defs, "recsys_daily", KEY, instance)
        assert outcome.success, outcome.messages
    popularity = rows(
        pg_db_dsn,
        "SELECT t.external_id, p.namespace, p.item_id, p.day::text, p.score::float"
        " FROM item_popularity_daily p JOIN tenants t ON t.id = p.tenant_id ORDER BY item_id",
    )
    assert popularity == [
        ("demo", "home", "A", "2026-01-01", 2.0),
        ("demo", "home", "B", "2026-01-01", 1.0),
        ("demo", "home", "C", "2026-01-01", 1.0),
        ("demo", "home", "D", "2026-01-01", 1.0),
    ]
    covisit = rows(
        pg_db_dsn,
        "SELECT item_id, neighbor_id, score::float FROM item_covisit_daily ORDER BY 1, 2",
    )
    assert covisit == [("A", "B", 1.0), ("A", "C", 1.0), ("B", "A", 1.0), ("C", "A", 1.0)]


def test_without_a_database_signals_are_disabled_markers(make_config, write_day, instance):
    write_day(TINY)
    config = make_config()
    outcome = execute(build_definitions(config), "recsys_daily", KEY, instance)
    assert outcome.success and "db_signals" in outcome.materialized
    record = instance.get_latest_materialization_event(__import__("dagster").AssetKey("db_signals"))
    assert record.asset_materialization.metadata["enabled"].value is False


def test_catalog_lands_in_item_tags(pg_db_dsn, make_config, tmp_path, instance):  # noqa: F811
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(
        "ItemID,Tag_List,price,namespace\nA,Red;Shoes,9.5,\nB,blue|shoes,,home\nC,x,,pdp\n"
    )
    config = make_config(
        db={"dsn": pg_db_dsn, "auto_migrate": True}, catalog={"path": str(catalog)}
    )
    outcome = execute(build_definitions(config), "catalog_job", "demo__home", instance)
    assert outcome.success, outcome.messages
    tags = rows(pg_db_dsn, "SELECT namespace, item_id, tags FROM item_tags ORDER BY item_id")
    assert [(n, i) for n, i, _ in tags] == [("home", "A"), ("home", "B")]


def test_postgres_source_through_the_graph(pg_db_dsn, pg_conn, make_config, write_day, instance):  # noqa: F811
    migrate(pg_conn)
    tenant_id = resolve_tenant(pg_conn, "demo", auto_create=True)
    for session, items, at in [
        ("s1", ["A", "B"], "08:00:00"),
        ("s2", ["A", "C"], "09:00:00"),
        ("s3", ["D"], "10:00:00"),
        (None, ["Z"], "11:00:00"),
    ]:
        pg_conn.execute(
            "INSERT INTO exposure_events (tenant_id, occurred_at, request_id, surface,"
            " session_id, response) VALUES (%s, %s, gen_random_uuid(), 'home', %s, %s)",
            [
                tenant_id,
                f"2026-01-01T{at}Z",
                session,
                Jsonb({"items": [{"item_id": i, "rank": r + 1} for r, i in enumerate(items)]}),
            ],
        )
    pg_conn.commit()
    config = make_config(
        raw_source={"type": "postgres", "postgres": {"dsn": pg_db_dsn}},
        limits={"max_bad_row_ratio": 0.5},
    )
    outcome = execute(build_definitions(config), "recsys_daily", KEY, instance)
    assert outcome.success, outcome.messages
    import json

    popularity_dir = config.out_dir / "artifacts/demo/home/popularity/2026-01-01_2026-01-02"
    version = (popularity_dir / "current.version").read_text().strip()
    document = json.loads((popularity_dir / f"{version}.json").read_text())
    assert document["items"][0] == {"item_id": "A", "count": 2}
    rejects = (config.out_dir / "canonical/demo/home/rejects/2026-01-01.jsonl").read_text()
    assert '"line":null' in rejects and "session_id" in rejects


def test_everything_on_s3(s3_connection, make_config, write_day, instance):  # noqa: F811
    write_day(TINY)
    bucket = s3_connection.bucket
    config = make_config(
        canonical_dir=f"s3://{bucket}/canonical",
        artifacts_dir=f"s3://{bucket}/artifacts",
        checkpoint_dir=f"s3://{bucket}/checkpoints",
        object_store={
            "type": "s3",
            "s3": {
                "endpoint": s3_connection.endpoint,
                "bucket": bucket,
                "access_key": s3_connection.access_key,
                "secret_key": s3_connection.secret_key,
                "prefix": "published",
                "use_ssl": False,
            },
        },
    )
    defs = build_definitions(config)
    assert execute(defs, "recsys_daily", KEY, instance).success
    assert execute(defs, "publish_job", KEY, instance).success
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_connection.endpoint,
        aws_access_key_id=s3_connection.access_key,
        aws_secret_access_key=s3_connection.secret_key,
        region_name="us-east-1",
    )
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "canonical/demo/home/exposures/2026-01-01.parquet" in keys
    assert "canonical/demo/home/markers/exposures/2026-01-01.json" in keys
    assert "canonical/demo/home/aggregates/item_counts/2026-01-01.parquet" in keys
    assert any(k.startswith("artifacts/demo/home/popularity/2026-01-01_2026-01-02/") for k in keys)
    assert "published/_registry/current/demo/home/manifest.json" in keys
    assert not (config.out_dir / "canonical").exists()


def test_a_table_without_a_needed_column_is_refused_by_name(
    pg_db_dsn,  # noqa: F811
    make_config,
    write_day,
    instance,
):
    write_day(TINY)
    config = make_config(db={"dsn": pg_db_dsn, "auto_migrate": True})
    defs = build_definitions(config)
    assert execute(defs, "recsys_daily", KEY, instance).success
    with psycopg.connect(pg_db_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE item_covisit_daily DROP COLUMN neighbor_id")
    outcome = execute(defs, "db_signals_job", KEY, instance)
    assert not outcome.success
    assert any("item_covisit_daily" in m and "neighbor_id" in m for m in outcome.messages)
