"""The production instance config (deploy/dagster.yaml) runs real materializations."""

import dagster as dg
import psycopg
import yaml

from recsys_assets.graph import build_definitions
from recsys_assets.runner import execute
from recsys_assets_tests.conftest import REPO
from recsys_assets_tests.pg_fixtures import pg_db_dsn, pg_dsn  # noqa: F401


def sqlalchemy_url(dsn: str) -> str:
    """A libpq DSN as the postgresql+psycopg2 URL Dagster's storage needs."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    auth = info.get("user", "")
    if info.get("password"):
        auth += f":{info['password']}"
    host = info.get("host", "")
    port = f":{info['port']}" if info.get("port") else ""
    if host.startswith("/"):  # a unix socket folder
        return f"postgresql+psycopg2://{auth}@{port}/{info['dbname']}?host={host}"
    return f"postgresql+psycopg2://{auth}@{host}{port}/{info['dbname']}"


def test_materialization_with_the_instance_on_postgres(
    pg_db_dsn,  # noqa: F811
    make_config,
    write_day,
    monkeypatch,
):
    monkeypatch.setenv("DAGSTER_PG_URL", sqlalchemy_url(pg_db_dsn))
    storage = yaml.safe_load((REPO / "deploy/dagster.yaml").read_text())["storage"]
    write_day((REPO / "testdata/events/tiny/exposure.jsonl").read_bytes())
    config = make_config()
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        outcome = execute(
            build_definitions(config), "recsys_daily", "2026-01-01|demo__home", instance
        )
        assert outcome.success, outcome.messages
        record = instance.get_latest_materialization_event(dg.AssetKey("popularity"))
        assert record.asset_materialization.partition == "2026-01-01|demo__home"
        infos = instance.event_log_storage.get_asset_check_partition_info(
            [dg.AssetCheckKey(dg.AssetKey("cooc"), "valid")],
            partition_keys=["2026-01-01|demo__home"],
        )
        assert infos[0].latest_execution_status.value == "SUCCEEDED"
