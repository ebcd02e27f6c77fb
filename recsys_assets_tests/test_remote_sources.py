"""S3 and PostgreSQL event sources give the partition the same canonical events as the
filesystem source does for the same data."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import polars as pl
import psycopg
import pytest
from psycopg.types.json import Jsonb

from recsys_assets.config import S3Connection
from recsys_assets.events.canonical import (
    CanonicalPartition,
    Partition,
    attribute,
    canonical_from_day_file,
    canonical_from_flat_file,
)
from recsys_assets.events.remote_sources import (
    PostgresEventSource,
    S3EventSource,
    SourceReadError,
    partition_lines,
)
from recsys_assets.events.sources import FilesystemEventSource, RawInput
from recsys_assets.locations import S3Settings
from recsys_assets.postgres import SchemaMismatch, UnknownTenant, migrate, resolve_tenant
from recsys_assets.storage import open_store
from recsys_assets_tests.conftest import event, lines
from recsys_assets_tests.pg_fixtures import pg_conn, pg_db_dsn, pg_dsn  # noqa: F401
from recsys_assets_tests.s3_fixtures import s3_connection, s3_server  # noqa: F401

JAN1 = Partition("demo", "home", dt.date(2026, 1, 1))


def canonical(raw: RawInput, partition: Partition) -> CanonicalPartition:
    with raw.open() as stream:
        if raw.layout == "day":
            return canonical_from_day_file(stream, partition)
        known = {(partition.tenant, partition.surface)}
        return canonical_from_flat_file(attribute(stream, known), partition)


def assert_same_partition(got: CanonicalPartition, expected: CanonicalPartition) -> None:
    assert got.events.equals(expected.events)
    # Line numbers differ when only some lines of a flat file were read.
    columns = ["reason", "detail", "raw"]
    assert got.rejects.select(columns).equals(expected.rejects.select(columns))


def s3_source(connection: S3Connection, prefix: str = "") -> S3EventSource:
    return S3EventSource(
        bucket=connection.bucket,
        prefix=prefix,
        s3=S3Settings(
            endpoint=connection.endpoint,
            access_key=connection.access_key,
            secret_key=connection.secret_key,
            use_ssl=False,
        ),
    )


def put(connection: S3Connection, prefix: str, key: str, data: bytes) -> None:
    open_store(f"s3://{connection.bucket}/{prefix}", connection).write_bytes(key, data)


def put_fs(root: Path, key: str, data: bytes) -> None:
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    (root / key).write_bytes(data)


def flat_file() -> bytes:
    """Lines of several partitions, with every way a line can hide which one it is."""
    return (
        lines(
            event(time="08:00:00", item_id="A"),
            event(time="08:00:01", item_id="B", user_id="u1", request_id="r1", rank=1),
            event(day="2026-01-02", item_id="C"),
            event(day="2025-12-31", time="23:59:59", item_id="D"),
            event(tenant="demo2", item_id="E"),
            event(surface="search", item_id="F"),
            event(tenant="other", surface="search", item_id="G"),
            # Local dates that are another UTC day.
            {**event(item_id="H"), "ts": "2026-01-01T22:00:00-05:00"},  # 2026-01-02 03:00Z
            {**event(item_id="I"), "ts": "2026-01-02T01:00:00+03:00"},  # 2026-01-01 22:00Z
            {**event(item_id="J"), "ts": "2025-12-31T23:30:00-01:00"},  # 2026-01-01 00:30Z
            {**event(item_id="K"), "ts": "2026-01-02t00:30:00+01:00"},  # 2026-01-01 23:30Z
            '{"v":1,"ts":"2026-01-01T09:00:00Z","tenant":"d\\u0065mo","surface":"home",'
            '"session_id":"s9","item_id":"L"}',
            '{"v":1,"ts":"2026\\u002d01\\u002d01T09:00:00Z","tenant":"demo","surface":"home",'
            '"session_id":"s9","item_id":"L2"}',
            event(tenant=" demo ", item_id="M"),
            event(item_id="N", session_id=""),  # a reject of JAN1
            event(day="2026-01-02", item_id="O", v=2),  # a reject of 2026-01-02
            '{"v":1,"ts":"2026-01-01T10:00:00Z","tenant":"demo","surf',  # cannot be attributed
            "",
            "   ",
            json.dumps(event(item_id="P")) + "\r",
        )
        + json.dumps(event(time="23:59:59.999999", item_id="Q")).encode()
    )  # no final newline


PARTITIONS = [
    JAN1,
    Partition("demo", "home", dt.date(2026, 1, 2)),
    Partition("demo", "home", dt.date(2025, 12, 31)),
    Partition("demo", "search", dt.date(2026, 1, 1)),
    Partition("other", "search", dt.date(2026, 1, 1)),
    Partition("demo2", "home", dt.date(2026, 1, 1)),
]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_partition_lines_keep_every_line_that_can_belong(chunk: int):
    data = flat_file()
    known = {(p.tenant, p.surface) for p in PARTITIONS}
    attributed = attribute(data, known)
    for partition in PARTITIONS:
        chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        kept = partition_lines(chunks, partition)
        assert len(kept) < len(data)
        got = canonical_from_flat_file(attribute(kept, known), partition)
        expected = canonical_from_flat_file(attributed, partition)
        assert got.events.height > 0
        assert_same_partition(got, expected)


def test_partition_lines_drop_other_days_with_utc_timestamps():
    data = lines(*(event(day=f"2026-01-{d:02}", item_id=f"I{d}") for d in range(1, 29)))
    kept = partition_lines([data], Partition("demo", "home", dt.date(2026, 1, 15)))
    assert kept == lines(event(day="2026-01-15", item_id="I15"))


def test_s3_per_day_object_is_read_like_the_file(s3_connection: S3Connection, tmp_path: Path):  # noqa: F811
    day_key = "demo/home/exposure.2026-01-01.jsonl"
    data = lines(event(item_id="A"), event(item_id="B", day="2026-01-02"), "not json", "")
    put(s3_connection, "raw/events", day_key, data)
    put(s3_connection, "raw/events", "exposure.jsonl", lines(event(item_id="Z")))
    put_fs(tmp_path, day_key, data)

    got = s3_source(s3_connection, "/raw/events/").read(JAN1)
    expected = FilesystemEventSource(dir=str(tmp_path)).read(JAN1)
    assert got == RawInput("day", data, f"s3://{s3_connection.bucket}/raw/events/{day_key}")
    assert_same_partition(canonical(got, JAN1), canonical(expected, JAN1))
    assert canonical(got, JAN1).rejects_by_reason == {
        "malformed_json": 1,
        "outside_window": 1,
    }


def test_s3_flat_object_gives_each_partition_what_the_file_gives(
    s3_connection: S3Connection,  # noqa: F811
    tmp_path: Path,
):
    data = flat_file()
    put(s3_connection, "", "exposure.jsonl", data)
    put_fs(tmp_path, "exposure.jsonl", data)
    source = s3_source(s3_connection)
    for partition in PARTITIONS:
        got = source.read(partition)
        assert (got.layout, got.name) == ("flat", f"s3://{s3_connection.bucket}/exposure.jsonl")
        expected = FilesystemEventSource(dir=str(tmp_path)).read(partition)
        assert_same_partition(canonical(got, partition), canonical(expected, partition))


def test_s3_without_objects_is_an_empty_input(s3_connection: S3Connection):  # noqa: F811
    got = s3_source(s3_connection, "nothing").read(JAN1)
    bucket = s3_connection.bucket
    assert got == RawInput(
        "none", b"", f"s3://{bucket}/nothing/demo/home/exposure.2026-01-01.jsonl"
    )
    assert got.missing(0)  # the source_present guard fails such a day


def test_s3_missing_bucket_is_an_error(s3_connection: S3Connection):  # noqa: F811
    source = s3_source(s3_connection).model_copy(update={"bucket": "no-such-bucket-here"})
    with pytest.raises(Exception, match="NoSuchBucket"):
        source.read(JAN1)


# Postgres source ---------------------------------------------------------------------------

REQUEST = uuid.UUID("5f0c6c1e-0000-4000-8000-000000000001")


@pytest.fixture
def exposures(pg_conn: psycopg.Connection) -> psycopg.Connection:  # noqa: F811
    """The online service's tables with tenants demo and other."""
    migrate(pg_conn)
    resolve_tenant(pg_conn, "demo", auto_create=True)
    resolve_tenant(pg_conn, "other", auto_create=True)
    return pg_conn


def insert(
    conn: psycopg.Connection,
    occurred_at: str,
    response: object,
    *,
    tenant: str = "demo",
    surface: str = "home",
    session_id: str | None = "s1",
    request_id: uuid.UUID | None = None,
    user_key: bytes | None = None,
    segment: str | None = None,
) -> int:
    row = conn.execute(
        "INSERT INTO exposure_events (tenant_id, occurred_at, request_id, surface, segment,"
        " session_id, user_key, response)"
        " SELECT id, %s, %s, %s, %s, %s, %s, %s FROM tenants WHERE external_id = %s"
        " RETURNING id",
        [occurred_at, request_id, surface, segment, session_id, user_key, Jsonb(response), tenant],
    ).fetchone()
    conn.commit()
    return row[0]


def test_postgres_rows_become_the_events_of_the_equivalent_jsonl(
    exposures: psycopg.Connection,
    pg_db_dsn: str,  # noqa: F811
    tmp_path: Path,
):
    odd_id = 'quote " backslash \\ newline \n tab \t é ☃'
    items = [{"item_id": "A", "rank": 0}, {"item_id": odd_id, "rank": 1}, {"item_id": "C"}]
    insert(
        exposures,
        "2026-01-01 08:00:00.123456+00",
        {"items": items, "model": "x"},
        request_id=REQUEST,
        user_key=b"\xab\x01\xff",
        segment="vip",
    )
    insert(exposures, "2026-01-01 23:59:59.999999+00", {"items": [{"item_id": "D"}]})
    insert(exposures, "2026-01-01 01:00:00+02", {"items": [{"item_id": "prev day"}]})
    insert(exposures, "2026-01-02 00:00:00+00", {"items": [{"item_id": "next day"}]})
    insert(exposures, "2026-01-01 09:00:00+00", {"items": [{"item_id": "s"}]}, surface="search")
    insert(exposures, "2026-01-01 09:00:00+00", {"items": [{"item_id": "o"}]}, tenant="other")
    insert(exposures, "2026-01-01 10:00:00+00", {"items": []})

    got = PostgresEventSource(dsn=pg_db_dsn).read(JAN1)

    expected_lines = lines(
        event(
            time="08:00:00.123456",
            item_id="A",
            rank=0,
            request_id=str(REQUEST),
            user_id="ab01ff",
        ),
        event(
            time="08:00:00.123456",
            item_id=odd_id,
            rank=1,
            request_id=str(REQUEST),
            user_id="ab01ff",
        ),
        event(
            time="08:00:00.123456", item_id="C", rank=2, request_id=str(REQUEST), user_id="ab01ff"
        ),
        event(time="23:59:59.999999", item_id="D", rank=0),
    )
    assert type(got) is RawInput
    assert (got.layout, got.name, got.source_rejects) == ("table", "postgres:exposure_events", [])
    assert [json.loads(line) for line in got.data.splitlines()] == [
        json.loads(line) for line in expected_lines.splitlines()
    ]
    put_fs(tmp_path, "demo/home/exposure.2026-01-01.jsonl", expected_lines)
    from_file = FilesystemEventSource(dir=str(tmp_path)).read(JAN1)
    from_db = canonical(got, JAN1)
    assert_same_partition(from_db, canonical(from_file, JAN1))
    assert from_db.events.height == 4 and from_db.rejects.height == 0


def test_postgres_rows_that_cannot_give_events_are_rejects(
    exposures: psycopg.Connection,
    pg_db_dsn: str,  # noqa: F811
):
    at = "2026-01-01 12:00:00+00"
    no_session = insert(exposures, at, {"items": [{"item_id": "A"}]}, session_id=None)
    not_object = insert(exposures, at, ["A"], request_id=REQUEST)
    no_items = insert(exposures, at, {"item_ids": ["A"]})
    null_response = insert(exposures, at, None)
    mixed = insert(
        exposures,
        at,
        {
            "items": [
                {"item_id": "ok", "rank": 3},
                {"rank": 1},
                "B",
                {"item_id": 7},
                {"item_id": "C", "rank": "2"},
                {"item_id": "D", "rank": 1.5},
            ]
        },
    )
    got = PostgresEventSource(dsn=pg_db_dsn).read(JAN1)
    assert [json.loads(line)["item_id"] for line in got.data.splitlines()] == ["ok"]

    def reject(row: int, reason: str, detail: str, request: uuid.UUID | None = None) -> dict:
        request_id = str(request) if request else None
        return {"id": row, "request_id": request_id, "reason": reason, "detail": detail}

    assert got.source_rejects == [
        reject(no_session, "missing_field", "session_id is null"),
        reject(
            not_object,
            "bad_response",
            "response is array, expected an object with an items array",
            REQUEST,
        ),
        reject(no_items, "bad_response", "response.items is missing, expected an array"),
        reject(
            null_response,
            "bad_response",
            "response is null, expected an object with an items array",
        ),
        reject(mixed, "bad_item", "response.items[1] has no item_id"),
        reject(mixed, "bad_item", "response.items[2] is a string, expected an object"),
        reject(mixed, "bad_item", "response.items[3].item_id is a number, expected a string"),
        reject(mixed, "bad_item", 'response.items[4].rank "2" is not an integer'),
        reject(mixed, "bad_item", "response.items[5].rank 1.5 is not an integer"),
    ]


def test_postgres_tenant_by_id_text_and_unknown_tenant(
    exposures: psycopg.Connection,
    pg_db_dsn: str,  # noqa: F811
):
    insert(exposures, "2026-01-01 12:00:00+00", {"items": [{"item_id": "A"}]})
    tenant_id = resolve_tenant(exposures, "demo", auto_create=False)
    by_id = PostgresEventSource(dsn=pg_db_dsn).read(Partition(str(tenant_id), "home", JAN1.day))
    assert json.loads(by_id.data)["item_id"] == "A"
    assert not by_id.missing(1)
    # No row for a day: the source is missing for it, not a day without events.
    next_day = PostgresEventSource(dsn=pg_db_dsn).read(
        Partition("demo", "home", JAN1.day + dt.timedelta(days=1))
    )
    assert next_day.layout == "table" and next_day.data == b"" and next_day.missing(0)
    with pytest.raises(UnknownTenant, match="tenant 'acme' is not in table tenants"):
        PostgresEventSource(dsn=pg_db_dsn).read(Partition("acme", "home", JAN1.day))


def test_postgres_table_names_are_configurable_and_checked(
    exposures: psycopg.Connection,
    pg_db_dsn: str,  # noqa: F811
):
    exposures.execute("CREATE SCHEMA online")
    exposures.execute("CREATE TABLE online.accounts AS SELECT * FROM tenants")
    exposures.execute("CREATE TABLE online.shown AS SELECT * FROM exposure_events")
    exposures.execute("CREATE TABLE online.legacy AS SELECT id, tenant_id FROM exposure_events")
    exposures.commit()
    insert(exposures, "2026-01-01 12:00:00+00", {"items": [{"item_id": "A"}]})
    exposures.execute("INSERT INTO online.shown SELECT * FROM exposure_events")
    exposures.commit()
    source = PostgresEventSource(
        dsn=pg_db_dsn, tenant_table="online.accounts", exposure_table="online.shown"
    )
    got = source.read(JAN1)
    assert got.name == "postgres:online.shown"
    assert json.loads(got.data)["item_id"] == "A"
    with pytest.raises(SchemaMismatch, match="online.legacy lacks column.*occurred_at"):
        source.model_copy(update={"exposure_table": "online.legacy"}).read(JAN1)
    with pytest.raises(ValueError, match="table name 'shown; --' is not allowed"):
        source.model_copy(update={"exposure_table": "shown; --"}).read(JAN1)


def test_postgres_statement_timeout_applies(
    exposures: psycopg.Connection,
    pg_db_dsn: str,  # noqa: F811
):
    insert(exposures, "2026-01-01 12:00:00+00", {"items": [{"item_id": "A"}]})
    with psycopg.connect(pg_db_dsn) as blocker:
        blocker.execute("LOCK TABLE exposure_events IN ACCESS EXCLUSIVE MODE")
        source = PostgresEventSource(dsn=pg_db_dsn, statement_timeout_s=1)
        with pytest.raises(SourceReadError, match="statement timeout"):
            source.read(JAN1)


def test_events_frame_dtypes_match_the_filesystem_path(
    exposures: psycopg.Connection,
    pg_db_dsn: str,  # noqa: F811
):
    insert(exposures, "2026-01-01 12:00:00+00", {"items": [{"item_id": "A", "rank": 0}]})
    events = canonical(PostgresEventSource(dsn=pg_db_dsn).read(JAN1), JAN1).events
    assert events["ts"].to_list() == [dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)]
    assert events.schema["ts"] == pl.Datetime("us", "UTC")
