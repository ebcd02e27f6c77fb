"""Raw event sources on S3 and PostgreSQL (SPEC §2), behind the `RawEventSource` interface."""

from __future__ import annotations

import datetime as dt
import io
import os
import re
from collections.abc import Iterable
from contextlib import closing
from typing import Any

import orjson
import psycopg
from botocore.exceptions import ClientError
from psycopg import sql

from recsys_assets.config import S3Connection
from recsys_assets.events.canonical import Partition
from recsys_assets.events.sources import DAY_FILE, FLAT_FILE, RawEventSource, RawInput
from recsys_assets.locations import S3Settings
from recsys_assets.postgres import (
    DbError,
    connect,
    db_message,
    require_columns,
    resolve_tenant,
    table_identifier,
)
from recsys_assets.storage import error_code, s3_client

# Bytes of the flat object read at a time: memory for the scan is about twice this.
CHUNK_BYTES = 8 * 1024 * 1024


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
            if error_code(exc) == "NoSuchKey":  # not NoSuchBucket: that is a config error
                return None
            raise

    def read(self, partition: Partition) -> RawInput:
        connection = self.s3.connection() if self.s3 else S3Connection()
        client = s3_client(connection, os.getpid())
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
    before, after = (
        (partition.day + dt.timedelta(days=offset)).isoformat().encode() for offset in (-1, 1)
    )

    def kept(block: bytes) -> list[bytes]:
        near = (before in block or after in block) and not _all_utc(block)
        # Most blocks of a many-day file hold none of the days: skip them unsplit.
        if not (day in block or near or b"\\" in block):
            return []
        lines = [
            line
            for line in block.split(b"\n")
            if (
                tenant in line
                and surface in line
                and (day in line or (near and (before in line or after in line)))
            )
            or b"\\" in line
        ]
        if not near:
            return lines
        return [line for line in lines if day in line or _may_be_day(line, day)]

    out = io.BytesIO()
    carry = b""
    for chunk in chunks:
        block = carry + chunk if carry else chunk
        cut = block.rfind(b"\n")
        if cut < 0:
            carry = block
            continue
        carry = block[cut + 1 :]
        lines = kept(block[:cut])
        if lines:
            out.write(b"\n".join(lines))
            out.write(b"\n")
    lines = kept(carry) if carry else []
    if lines:
        out.write(lines[0])
        out.write(b"\n")
    return out.getvalue()


# Each match holds one `"ts"`, so as many matches as `"ts"` means every one of them is
# `"ts":"...Z"`.
_UTC_TS = re.compile(rb'"ts":"[^"\n]*[Zz]"')


def _all_utc(block: bytes) -> bool:
    """Whether every `ts` in the block is written in UTC (`Z`), so that its written date is
    its UTC day. A backslash can fake or hide a quote, but lines with one are kept anyway."""
    return block.count(b'"ts"') == len(_UTC_TS.findall(block))


def _may_be_day(line: bytes, day: bytes) -> bool:
    """False only when the line's `ts` is provably on another UTC day than `day`."""
    if b"\\" in line:  # an escape can hide a key or a quote from the byte checks below
        return True
    # Without backslashes every `"` is JSON structure, so a sole `"ts":"` is the top-level
    # ts (or a nested one, and then the line has no ts and belongs nowhere); a `Z` time's
    # UTC day is its written date.
    at = line.find(b'"ts":"')
    if at >= 0 and line.count(b'"ts"') == 1:
        end = line.find(b'"', at + 6)
        if end > 0 and line[end - 1 : end] in (b"Z", b"z"):
            return line[at + 6 : at + 16] == day
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
    return when.tzinfo is None or when.astimezone(dt.UTC).date().isoformat().encode() == day


class SourceReadError(DbError):
    """Reading exposure events from PostgreSQL failed."""


# One COPY row per exposure row: its items' event lines joined by RS (\x1e), which COPY's
# text format passes through and JSON never holds raw. A line that is not an event is a
# reject: "!" and a JSON array [id, request_id, reason, detail] (an event starts with "{").
# The parts of a line shared by a row's items (`head`, `tail`) are built once per row: the
# inner `OFFSET 0` keeps the planner from inlining them into the per-item expression.
_LINES = sql.SQL(
    """
    COPY (
        SELECT CASE
            WHEN r.session_id IS NULL THEN concat('!', json_build_array(
                r.id, r.request_id, 'missing_field', 'session_id is null'))
            WHEN jsonb_typeof(r.response -> 'items') IS DISTINCT FROM 'array'
                THEN concat('!', json_build_array(r.id, r.request_id, 'bad_response',
                    CASE WHEN jsonb_typeof(r.response) IS DISTINCT FROM 'object'
                        THEN 'response is ' || coalesce(jsonb_typeof(r.response), 'null')
                            || ', expected an object with an items array'
                        ELSE 'response.items is '
                            || coalesce(jsonb_typeof(r.response -> 'items'), 'missing')
                            || ', expected an array' END))
            ELSE (
                SELECT string_agg(CASE
                    WHEN jsonb_typeof(it.item -> 'item_id') IS NOT DISTINCT FROM 'string'
                        AND CASE coalesce(jsonb_typeof(it.item -> 'rank'), 'null')
                            WHEN 'null' THEN true
                            WHEN 'number' THEN (it.item ->> 'rank') ~ '^-?[0-9]{{1,18}}$'
                            ELSE false END
                    THEN concat(r.head,
                        ',"item_id":', (it.item -> 'item_id')::text,
                        ',"rank":', CASE WHEN jsonb_typeof(it.item -> 'rank') = 'number'
                            THEN it.item ->> 'rank' ELSE (it.pos - 1)::text END,
                        r.tail)
                    ELSE concat('!', json_build_array(r.id, r.request_id, 'bad_item',
                        CASE WHEN jsonb_typeof(it.item) <> 'object'
                            THEN format('response.items[%s] is a %s, expected an object',
                                it.pos - 1, jsonb_typeof(it.item))
                        WHEN jsonb_typeof(it.item -> 'item_id') IS NULL
                            OR jsonb_typeof(it.item -> 'item_id') = 'null'
                            THEN format('response.items[%s] has no item_id', it.pos - 1)
                        WHEN jsonb_typeof(it.item -> 'item_id') <> 'string'
                            THEN format('response.items[%s].item_id is a %s, expected a string',
                                it.pos - 1, jsonb_typeof(it.item -> 'item_id'))
                        ELSE format('response.items[%s].rank %s is not an integer',
                            it.pos - 1, it.item -> 'rank') END))
                    END, chr(30) ORDER BY it.pos)
                FROM jsonb_array_elements(r.response -> 'items') WITH ORDINALITY AS it (item, pos))
            END
        FROM (
            SELECT e.id, e.request_id, e.session_id, e.response,
                concat('{{"v":1,"ts":"',
                    to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                    '","tenant":', to_json({tenant}::text), ',"surface":', to_json({surface}::text),
                    ',"session_id":', to_json(e.session_id)) AS head,
                concat(
                    CASE WHEN e.request_id IS NOT NULL
                        THEN concat(',"request_id":"', e.request_id, '"') END,
                    CASE WHEN e.user_key IS NOT NULL
                        THEN concat(',"user_id":"', encode(e.user_key, 'hex'), '"') END,
                    '}}') AS tail
            FROM {table} e
            WHERE e.tenant_id = {tenant_id} AND e.surface = {surface}
                AND e.occurred_at >= {start} AND e.occurred_at < {end}
                AND e.response -> 'items' IS DISTINCT FROM '[]'
            ORDER BY e.id
            OFFSET 0
        ) r
        ORDER BY r.id
    ) TO STDOUT
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
    day, each response item as one event line (parsed as a per-day file: layout "table").

    The tenant is the tenants row whose `external_id` or `id::text` is the partition's
    tenant. An item without `rank` gets its 0-based position in the response; a row whose
    `items` is empty gives nothing. The server builds the lines, in row id then item order,
    and streams them with one `COPY ... TO STDOUT`, so events and rejects come from one
    snapshot. What cannot give an event is returned in `source_rejects`, in the same order:
    a row with a null `session_id` or a response that is not an object with an `items` array
    (one entry per row), and each item that is not an object with a string `item_id` and an
    integer or absent `rank` (one entry per item; the row's other items still count).
    """

    dsn: str
    tenant_table: str = "tenants"
    exposure_table: str = "exposure_events"
    statement_timeout_s: int = 30

    def read(self, partition: Partition) -> RawInput:
        table = table_identifier(self.exposure_table)
        table_identifier(self.tenant_table)  # refused before connecting, like the other
        with connect(self.dsn, self.statement_timeout_s) as conn:
            require_columns(conn, self.exposure_table, _COLUMNS)
            tenant_id = resolve_tenant(
                conn, partition.tenant, auto_create=False, table=self.tenant_table
            )
            start, end = partition.window
            lines = _LINES.format(
                table=table,
                tenant=sql.Literal(partition.tenant),
                surface=sql.Literal(partition.surface),
                tenant_id=sql.Literal(tenant_id),
                start=sql.Literal(start),
                end=sql.Literal(end),
            )
            buffer = io.BytesIO()
            try:
                with conn.cursor() as cur, cur.copy(lines) as copy:
                    for block in copy:
                        buffer.write(block)
                conn.commit()
            except psycopg.Error as exc:
                raise SourceReadError(
                    f"reading table {self.exposure_table} for {partition.tenant}/"
                    f"{partition.surface} {partition.day} failed: {db_message(exc)}"
                ) from exc
        data = buffer.getvalue()
        del buffer
        if b"\\" in data:
            # COPY's text format doubles backslashes; the lines hold no other character it
            # escapes (JSON has already escaped control characters, tabs and newlines).
            data = data.replace(b"\\\\", b"\\")
        data, rejects = _split_rejects(data.replace(b"\x1e", b"\n"))
        return RawInput("table", data, f"postgres:{self.exposure_table}", source_rejects=rejects)


def _split_rejects(data: bytes) -> tuple[bytes, list[dict[str, Any]]]:
    """Event lines and the reject lines ("!" + [id, request_id, reason, detail]) apart."""
    starts = [0] if data.startswith(b"!") else []
    found = data.find(b"\n!")
    while found >= 0:
        starts.append(found + 1)
        found = data.find(b"\n!", found + 1)
    if not starts:
        return data, []
    view = memoryview(data)
    events = io.BytesIO()
    rejects = []
    done = 0
    for start in starts:
        end = data.index(b"\n", start)
        events.write(view[done:start])
        row_id, request_id, reason, detail = orjson.loads(view[start + 1 : end])
        rejects.append({"id": row_id, "request_id": request_id, "reason": reason, "detail": detail})
        done = end + 1
    events.write(view[done:])
    return events.getvalue(), rejects
