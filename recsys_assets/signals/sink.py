"""Writes to the online service's signal tables (SPEC §7), one transaction per call.

Frames go to the server as CSV bytes written by polars (`COPY ... FROM STDIN`) into
temporary tables that drop at commit, then one statement per table moves them into place.
Any failure (a constraint, a statement timeout, a lost connection) rolls the whole call
back and raises `SignalWriteError`: the tables stay as they were.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import polars as pl
import psycopg
from psycopg import sql

from recsys_assets.postgres import DbError, db_message, rollback_quietly

POPULARITY_TABLE = "item_popularity_daily"
COVISIT_TABLE = "item_covisit_daily"
TAGS_TABLE = "item_tags"
# numeric(18,6) holds up to 10^12 - 1 before the decimal point.
MAX_SCORE = 10**12


class SignalWriteError(DbError):
    """A signal write failed and was rolled back."""


@dataclass
class _Step:
    table: str = ""


@contextmanager
def _transaction(conn: psycopg.Connection, what: str) -> Iterator[tuple[psycopg.Cursor, _Step]]:
    """One transaction; a DB error becomes `SignalWriteError` naming `what` and the table."""
    step = _Step()
    try:
        with conn.cursor() as cur:
            yield cur, step
        conn.commit()
    except psycopg.Error as exc:
        rollback_quietly(conn)
        raise SignalWriteError(
            f"{what} failed at table {step.table or '(before any table)'}: {db_message(exc)} "
            "(rolled back: the tables are unchanged)"
        ) from exc
    except BaseException:
        rollback_quietly(conn)
        raise


def _lock(cur: psycopg.Cursor, *key: object) -> None:
    """Serialize writers of the same rows, so a concurrent re-run waits instead of failing
    on the primary key."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ["/".join(map(str, key))])


def _copy_csv(cur: psycopg.Cursor, temp: str, columns: str, frame: pl.DataFrame) -> None:
    cur.execute(
        sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            sql.Identifier(temp), sql.SQL(columns)
        )
    )
    if frame.height == 0:
        return
    with cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT csv)").format(sql.Identifier(temp))) as copy:
        copy.write(frame.write_csv(include_header=False).encode())


def _checked(frame: pl.DataFrame, what: str, ids: list[str], value: str | None) -> pl.DataFrame:
    """The columns `ids` (+ `value`) of `frame`, refused with a clear message when they are
    missing, null, duplicated or out of range."""
    columns = [*ids, *([value] if value else [])]
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame lacks column(s) {', '.join(missing)}, got {frame.columns}")
    frame = frame.select(columns)
    for name in ids:
        if frame[name].null_count():
            raise ValueError(f"{what} frame has null {name} values")
    duplicated = frame.filter(frame.select(ids).is_duplicated())
    if duplicated.height:
        first = duplicated.row(0, named=True)
        raise ValueError(f"{what} frame lists {first} more than once")
    if value:
        if not frame[value].dtype.is_numeric():
            raise ValueError(f"{what} {value} must be numeric, got {frame[value].dtype}")
        score = pl.col(value).cast(pl.Float64)
        out_of_range = frame.filter(
            score.is_null() | score.is_nan() | (score < 0) | (score >= MAX_SCORE)
        )
        if out_of_range.height:
            raise ValueError(
                f"{what} {value} must be >= 0 and < {MAX_SCORE}, got "
                f"{out_of_range.row(0, named=True)}"
            )
    return frame


def write_day_signals(
    conn: psycopg.Connection,
    tenant_id: uuid.UUID,
    namespace: str,
    day: dt.date,
    popularity: pl.DataFrame,
    covisit: pl.DataFrame,
) -> dict[str, int]:
    """Replace one day's `item_popularity_daily` and `item_covisit_daily` rows of a tenant and
    namespace with `popularity` (item_id, count) and `covisit` (item_id, neighbor_id, count).

    score = count. Re-running a day leaves exactly that day's rows. Returns the rows written
    and the rows they replaced per table.
    """
    popularity = _checked(popularity, "popularity", ["item_id"], "count")
    covisit = _checked(covisit, "covisit", ["item_id", "neighbor_id"], "count")
    what = f"replacing the signals of {day} for tenant {tenant_id} namespace {namespace!r}"
    key = [tenant_id, namespace, day]
    counts: dict[str, int] = {}
    with _transaction(conn, what) as (cur, step):
        _lock(cur, "signals", *key)
        step.table = POPULARITY_TABLE
        _copy_csv(cur, "recsys_popularity", "item_id text, score numeric(18,6)", popularity)
        cur.execute(
            "DELETE FROM item_popularity_daily"
            " WHERE tenant_id = %s AND namespace = %s AND day = %s",
            key,
        )
        counts["popularity_replaced"] = cur.rowcount
        cur.execute(
            "INSERT INTO item_popularity_daily"
            " (tenant_id, namespace, item_id, day, score, updated_at)"
            " SELECT %s, %s, item_id, %s, score, now() FROM recsys_popularity",
            key,
        )
        counts["popularity_rows"] = cur.rowcount
        step.table = COVISIT_TABLE
        _copy_csv(
            cur,
            "recsys_covisit",
            "item_id text, neighbor_id text, score numeric(18,6)",
            covisit,
        )
        cur.execute(
            "DELETE FROM item_covisit_daily WHERE tenant_id = %s AND namespace = %s AND day = %s",
            key,
        )
        counts["covisit_replaced"] = cur.rowcount
        cur.execute(
            "INSERT INTO item_covisit_daily"
            " (tenant_id, namespace, item_id, neighbor_id, day, score, updated_at)"
            " SELECT %s, %s, item_id, neighbor_id, %s, score, now() FROM recsys_covisit",
            key,
        )
        counts["covisit_rows"] = cur.rowcount
    return counts


def write_item_tags(
    conn: psycopg.Connection,
    tenant_id: uuid.UUID,
    namespace: str,
    catalog: pl.DataFrame,
) -> dict[str, int]:
    """Make the `item_tags` rows of a tenant and namespace equal to `catalog` (item_id,
    tags list[str], and optionally price, created_at).

    Items no longer in the catalog are deleted; unchanged rows keep their `updated_at`. The
    catalog must hold this namespace's rows only, one per item (its `namespace` column, if
    any, is not read). Naive `created_at` values are taken as UTC. Returns the catalog rows
    and the rows inserted, updated and deleted.
    """
    rows = _checked(catalog, "catalog", ["item_id"], None)
    if "tags" not in catalog.columns or not isinstance(catalog["tags"].dtype, pl.List):
        dtype = catalog["tags"].dtype if "tags" in catalog.columns else "no column"
        raise ValueError(f"catalog tags must be a list of strings, got {dtype}")
    created_at = (
        catalog["created_at"]
        if "created_at" in catalog.columns
        else pl.Series([None] * rows.height)
    )
    if isinstance(created_at.dtype, pl.Datetime) and created_at.dtype.time_zone:
        created_at = created_at.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    frame = pl.DataFrame(
        {
            "item_id": rows["item_id"],
            # CSV has no arrays: tags travel as JSON and are unpacked in SQL.
            "tags": catalog.select(pl.struct("tags").struct.json_encode()).to_series(),
            "price": catalog["price"] if "price" in catalog.columns else [None] * rows.height,
            "created_at": created_at,
        }
    )
    what = f"replacing the item tags of tenant {tenant_id} namespace {namespace!r}"
    key = [tenant_id, namespace]
    with _transaction(conn, what) as (cur, step):
        step.table = TAGS_TABLE
        _lock(cur, "tags", *key)
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        _copy_csv(
            cur,
            "recsys_tags",
            "item_id text, tags jsonb, price numeric(18,6), created_at timestamptz",
            frame,
        )
        cur.execute(
            "DELETE FROM item_tags t WHERE t.tenant_id = %s AND t.namespace = %s"
            " AND NOT EXISTS (SELECT 1 FROM recsys_tags s WHERE s.item_id = t.item_id)",
            key,
        )
        deleted = cur.rowcount
        cur.execute(
            """
            WITH upserted AS (
                INSERT INTO item_tags AS t
                    (tenant_id, namespace, item_id, tags, price, created_at, updated_at)
                SELECT %s, %s, item_id,
                    CASE WHEN jsonb_typeof(tags -> 'tags') = 'array' THEN ARRAY(
                        SELECT tag FROM jsonb_array_elements_text(tags -> 'tags')
                            WITH ORDINALITY AS e (tag, position)
                        ORDER BY position
                    ) END,
                    price, created_at, now()
                FROM recsys_tags
                ON CONFLICT (tenant_id, namespace, item_id) DO UPDATE
                    SET tags = excluded.tags, price = excluded.price,
                        created_at = excluded.created_at, updated_at = now()
                    WHERE (t.tags, t.price, t.created_at)
                        IS DISTINCT FROM (excluded.tags, excluded.price, excluded.created_at)
                RETURNING xmax = 0 AS inserted
            )
            SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)
            FROM upserted
            """,
            key,
        )
        inserted, updated = cur.fetchone()
    return {"rows": rows.height, "inserted": inserted, "updated": updated, "deleted": deleted}
