"""The production instance config (deploy/dagster.postgres.yaml) runs real materializations."""

from urllib.parse import parse_qs, urlparse

import dagster as dg
import psycopg
import yaml

from recsys_assets.graph import build_definitions
from recsys_assets.runner import execute
from recsys_assets_tests.conftest import REPO
from recsys_assets_tests.pg_fixtures import pg_dsn  # noqa: F401


def sqlalchemy_url(dsn: str, database: str) -> str:
    """A libpq URI as the postgresql+psycopg2 URL Dagster's storage needs."""
    parsed = urlparse(dsn)
    query = parse_qs(parsed.query)
    netloc = parsed.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    host = netloc[-1]
    url = f"postgresql+psycopg2://{auth}{host}/{database}"
    return url + (f"?host={query['host'][0]}" if "host" in query else "")


def test_materialization_with_the_instance_on_postgres(pg_dsn, make_config, write_day, tmp_path, monkeypatch):  # noqa: F811, E501
    database = f"dagster_{tmp_path.name.replace('-', '_')[-40:]}".lower()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    monkeypatch.setenv("DAGSTER_PG_URL", sqlalchemy_url(pg_dsn, database))
    storage = yaml.safe_load((REPO / "deploy/dagster.postgres.yaml").read_text())["storage"]
    write_day((REPO / "testdata/events/tiny/exposure.jsonl").read_bytes())
    config = make_config()
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        outcome = execute(build_definitions(config), "recsys_daily", "2026-01-01|demo__home", instance)
        assert outcome.success, outcome.messages
        record = instance.get_latest_materialization_event(dg.AssetKey("popularity"))
        assert record.asset_materialization.partition == "2026-01-01|demo__home"
        infos = instance.event_log_storage.get_asset_check_partition_info(
            [dg.AssetCheckKey(dg.AssetKey("cooc"), "valid")], partition_keys=["2026-01-01|demo__home"]
        )
        assert infos[0].latest_execution_status.value == "SUCCEEDED"
