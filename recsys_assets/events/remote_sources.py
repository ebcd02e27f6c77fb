"""Raw event sources on S3 and PostgreSQL (SPEC §2), behind the `RawEventSource` interface."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from botocore.exceptions import ClientError
from psycopg import sql

from recsys_assets.config import S3Connection
from recsys_assets.events.canonical import Partition
from recsys_assets.events.sources import DAY_FILE, FLAT_FILE, RawEventSource, RawInput
from recsys_assets.locations import S3Settings
from recsys_assets.signals.db import (
    DbError,
    connect,
    db_message,
    require_columns,
    resolve_tenant,
    table_identifier,
)
from recsys_assets.storage import _error_code, _s3_client

# Bytes of the flat object read at a time: memory for the scan is about twice this.
CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class SourceInput(RawInput):
    """A source's input with the rows it could not turn into events (`id`, `request_id`,
    `reason`, `detail`), to be merged into the partition's rejects."""

    source_rejects: list[dict[str, Any]] = field(default_factory=list)


class S3EventSource(RawEventSource):
    """`s3://<bucket>/<prefix>/<tenant>/<surface>/exposure.YYYY-MM-DD.jsonl`, else the flat
    `s3://<bucket>/<prefix>/exposure.jsonl`; the per-day object wins.

    The flat object is streamed and only the lines that can belong to the partition are
    kept (see `partition_lines`), so memory grows with the partition, not the object. The
    unattributed quarantine and the line counts of a flat object read from S3 therefore
    cover the kept lines only, and reject line numbers count within them.
    """

    bucket: str
    prefix: str = ""
    s3: S3Settings | None = None

    def _key(self, relative: str) -> str:
        prefix = self.prefix.strip("/")
        return f"{prefix}/{relative}" if prefix else relative

    def _get(self, client: Any, key: str) -> dict[str, Any] | None:
        try:
            return client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) == "NoSuchKey":  # not NoSuchBucket: that is a config error
                return None
            raise

    def read(self, partition: Partition) -> RawInput:
        connection = self.s3.connection() if self.s3 else S3Connection()
        client = _s3_client(connection, os.getpid())
        day_key = self._key(
            f"{partition.tenant}/{partition.surface}/{DAY_FILE.format(day=partition.day)}"
        )
        response = self._get(client, day_key)
        if response is not None:
            with closing(response["Body"]) as body:
                return RawInput("day", body.read(), f"s3://{self.bucket}/{day_key}")
        flat_key = self._key(FLAT_FILE)
        response = self._get(client, flat_key)
        if response is None:
            return RawInput("none", b"", f"s3://{self.bucket}/{day_key}")
        # `closing`, not the body's own context manager: that one yields the raw stream,
        # without `iter_chunks` and without boto's check that every byte arrived.
        with closing(response["Body"]) as body:
            data = partition_lines(body.iter_chunks(CHUNK_BYTES), partition)
        return RawInput("flat", data, f"s3://{self.bucket}/{flat_key}")


def partition_lines(chunks: Iterable[bytes], partition: Partition) -> bytes:
    """The lines of a flat JSON Lines stream that can belong to `partition`, in order, each
    ending in a newline.

    Conservative, never dropping a line the canonical code could attribute here: a line is
    kept when it holds the tenant, the surface and the day as bytes; or the tenant, the
    surface and the day before or after with a `ts` that is not provably another UTC day (an
    offset moves a local date by less than a day); or any backslash (a JSON escape can spell
    a name without its bytes). Blank lines and lines of other partitions are dropped.
    """
    tenant = partition.tenant.encode()
    surface = partition.surface.encode()
    day = partition.day.isoformat().encode()
    near = tuple(
        (partition.day + dt.timedelta(days=offset)).isoformat().encode() for offset in (-1, 1)
    )

    def keep(line: bytes) -> bool:
        if b"\\" in line:
            return True
        if tenant not in line or surface not in line:
            return False
        if day in line:
            return True
        return any(other in line for other in near) and _may_be_day(line, partition.day)

    out = io.BytesIO()
    carry = b""
    for chunk in chunks:
        block = carry + chunk if carry else chunk
        cut = block.rfind(b"\n")
        if cut < 0:
            carry = block
            continue
        carry = block[cut + 1 :]
        kept = [line for line in block[:cut].split(b"\n") if keep(line)]
        if kept:
            out.write(b"\n".join(kept))
            out.write(b"\n")
    if carry and keep(carry):
        out.write(carry)
        out.write(b"\n")
    return out.getvalue()


def _may_be_day(line: bytes, day: dt.date) -> bool:
    """False only when the line's `ts` is a timestamp with an offset on another UTC day."""
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError:
        return True
    ts = fields.get("ts") if isinstance(fields, dict) else None
    if not isinstance(ts, str):
        return True
    try:
        when = dt.datetime.fromisoformat(ts.upper())
    except ValueError:
        return True
    return when.tzinfo is None or when.astimezone(dt.UTC).date() == day


class SourceReadError(DbError):
    """Reading exposure events from PostgreSQL failed."""


# What a response item must be to give an event: an object with a string item_id and, if
# any, an integer rank (a bigint's worth of digits). Never null, so `NOT` of it is the rest.
_ITEM_OK = sql.SQL(
    "jsonb_typeof(it.item -> 'item_id') IS NOT DISTINCT FROM 'string'"
    " AND (jsonb_typeof(it.item -> 'rank') IS NULL"
    " OR jsonb_typeof(it.item -> 'rank') = 'null'"
    " OR (jsonb_typeof(it.item -> 'rank') = 'number'"
    " AND (it.item ->> 'rank') ~ '^-?[0-9]{1,18}$'))"
)
_ITEMS = sql.SQL(
    "jsonb_array_elements(CASE WHEN jsonb_typeof(e.response -> 'items') = 'array'"
    " THEN e.response -> 'items' ELSE '[]' END) WITH ORDINALITY AS it (item, pos)"
)
# Each valid item as one event line, built by the server; values are JSON-encoded there.
_EVENTS = sql.SQL(
    """
    COPY (
        SELECT concat(
            '{{"v":1,"ts":"',
            to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            '","tenant":', {tenant_json}, ',"surface":', {surface_json},
            ',"session_id":', to_json(e.session_id)::text,
            ',"item_id":', (it.item -> 'item_id')::text,
            ',"rank":', CASE WHEN jsonb_typeof(it.item -> 'rank') = 'number'
                THEN it.item ->> 'rank' ELSE (it.pos - 1)::text END,
            CASE WHEN e.request_id IS NOT NULL
                THEN concat(',"request_id":"', e.request_id::text, '"') END,
            CASE WHEN e.user_key IS NOT NULL
                THEN concat(',"user_id":"', encode(e.user_key, 'hex'), '"') END,
            '}}')
        FROM {table} e CROSS JOIN LATERAL {items}
        WHERE {partition} AND e.session_id IS NOT NULL AND {item_ok}
        ORDER BY e.id, it.pos
    ) TO STDOUT
    """
)
_REJECTS = sql.SQL(
    """
    SELECT e.id, e.request_id::text, r.reason, r.detail
    FROM {table} e CROSS JOIN LATERAL (
        SELECT 'missing_field', 'session_id is null', 0::bigint WHERE e.session_id IS NULL
        UNION ALL
        SELECT 'bad_response',
            CASE WHEN jsonb_typeof(e.response) IS DISTINCT FROM 'object'
                THEN 'response is ' || coalesce(jsonb_typeof(e.response), 'null')
                    || ', expected an object with an items array'
                ELSE 'response.items is ' || coalesce(jsonb_typeof(e.response -> 'items'),
                    'missing') || ', expected an array' END,
            0::bigint
        WHERE e.session_id IS NOT NULL
            AND jsonb_typeof(e.response -> 'items') IS DISTINCT FROM 'array'
        UNION ALL
        SELECT 'bad_item',
            CASE WHEN jsonb_typeof(it.item) <> 'object'
                THEN format('response.items[%s] is a %s, expected an object',
                    it.pos - 1, jsonb_typeof(it.item))
            WHEN NOT it.item ? 'item_id' OR jsonb_typeof(it.item -> 'item_id') = 'null'
                THEN format('response.items[%s] has no item_id', it.pos - 1)
            WHEN jsonb_typeof(it.item -> 'item_id') <> 'string'
                THEN format('response.items[%s].item_id is a %s, expected a string',
                    it.pos - 1, jsonb_typeof(it.item -> 'item_id'))
            ELSE format('response.items[%s].rank %s is not an integer',
                it.pos - 1, it.item -> 'rank') END,
            it.pos
        FROM {items}
        WHERE e.session_id IS NOT NULL AND NOT ({item_ok})
    ) r (reason, detail, pos)
    WHERE {partition}
    ORDER BY e.id, r.pos
    """
)
_COLUMNS = (
    "id",
    "tenant_id",
    "occurred_at",
    "request_id",
    "surface",
    "session_id",
    "user_key",
    "response",
)


class PostgresEventSource(RawEventSource):
    """The online service's `exposure_events` rows of the partition's tenant, surface and UTC
    day, each response item as one event line (a per-day input: layout "day").

    The tenant is the tenants row whose `external_id` or `id::text` is the partition's
    tenant. An item without `rank` gets its 0-based position in the response. The lines are
    built and ordered (by row id, then item position) by the server and streamed with
    `COPY ... TO STDOUT`. What cannot give an event is returned in `source_rejects`: a row
    with a null `session_id` or a response that is not an object with an `items` array (one
    entry per row), and each item that is not an object with a string `item_id` and an
    integer or absent `rank` (one entry per item; the row's other items still count).
    """

    dsn: str
    tenant_table: str = "tenants"
    exposure_table: str = "exposure_events"
    statement_timeout_s: int = 30

    def read(self, partition: Partition) -> SourceInput:
        table = table_identifier(self.exposure_table)
        table_identifier(self.tenant_table)
        with connect(self.dsn, self.statement_timeout_s) as conn:
            require_columns(conn, self.exposure_table, _COLUMNS)
            tenant_id = resolve_tenant(
                conn, partition.tenant, auto_create=False, table=self.tenant_table
            )
            start, end = partition.window
            where = sql.SQL(
                "e.tenant_id = {tenant} AND e.surface = {surface}"
                " AND e.occurred_at >= {start} AND e.occurred_at < {end}"
            ).format(
                tenant=sql.Literal(tenant_id),
                surface=sql.Literal(partition.surface),
                start=sql.Literal(start),
                end=sql.Literal(end),
            )
            parts = {"table": table, "items": _ITEMS, "partition": where, "item_ok": _ITEM_OK}
            events = _EVENTS.format(
                tenant_json=sql.Literal(json.dumps(partition.tenant)),
                surface_json=sql.Literal(json.dumps(partition.surface)),
                **parts,
            )
            # Both statements read one snapshot, so events and rejects agree.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            try:
                with conn.cursor() as cur:
                    buffer = io.BytesIO()
                    with cur.copy(events) as copy:
                        for block in copy:
                            buffer.write(block)
                    cur.execute(_REJECTS.format(**parts))
                    rejects = [
                        {"id": row[0], "request_id": row[1], "reason": row[2], "detail": row[3]}
                        for row in cur.fetchall()
                    ]
                conn.commit()
            except psycopg.Error as exc:
                raise SourceReadError(
                    f"reading table {self.exposure_table} for {partition.tenant}/"
                    f"{partition.surface} {partition.day} failed: {db_message(exc)}"
                ) from exc
        data = buffer.getvalue()
        if b"\\" in data:
            # COPY's text format doubles backslashes; the lines hold no other character it
            # escapes (JSON has already escaped control characters, tabs and newlines).
            data = data.replace(b"\\\\", b"\\")
        return SourceInput("day", data, f"postgres:{self.exposure_table}", source_rejects=rejects)
