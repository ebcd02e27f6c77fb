"""Canonical exposures (SPEC §3): the valid, normalized, de-duplicated events of one partition.

Pure but for the local files it is told to use: JSON Lines bytes (or a stream) in; the
events' Parquet bytes (or a file at a given path), the rejects and counts out; a big day is
sorted in time buckets spilled to a scratch folder (`spill`). Every line ends in exactly one
place: the events, the partition's rejects (with a reason), the unattributed quarantine of
a flat file, another partition, or the duplicate count.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import orjson
import polars as pl

from recsys_assets.config import RFC3339
from recsys_assets.events.parse import (
    BLOCK_BYTES,
    ID_FIELDS,
    REQUIRED_FIELDS,
    DecodedLines,
    iter_blocks,
    map_blocks,
)
from recsys_assets.events.spill import Distinct, TimeBuckets, sha256_of, write_parquet
from recsys_assets.metadata import PREVIEW_ROWS

EVENT_SCHEMA = {
    "ts": pl.Datetime("us", "UTC"),
    "tenant": pl.String,
    "surface": pl.String,
    "session_id": pl.String,
    "item_id": pl.String,
    "user_id": pl.String,
    "request_id": pl.String,
    "rank": pl.Int64,
}
SORT_KEYS = ["ts", "session_id", "rank", "item_id", "user_id", "request_id"]
REJECT_SCHEMA = {"line": pl.Int64, "reason": pl.String, "detail": pl.String, "raw": pl.String}


@dataclass(frozen=True)
class Partition:
    tenant: str
    surface: str
    day: dt.date

    def __str__(self) -> str:
        """The partition key, as the UI and `--partition` write it."""
        return f"{self.day.isoformat()}|{self.tenant}__{self.surface}"

    @property
    def window(self) -> tuple[dt.datetime, dt.datetime]:
        start = dt.datetime.combine(self.day, dt.time(), tzinfo=dt.UTC)
        return start, start + dt.timedelta(days=1)


@dataclass(frozen=True)
class CanonicalPartition:
    """A partition's events as written (`parquet`: the Parquet bytes, or the local file
    they were written to) with their hash, its rejects, counts and most exposed items."""

    parquet: bytes | Path
    content_hash: str
    rejects: pl.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    # item_id, exposures, users: the most exposed items, most first (ties by id)
    top_items: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=TOP_SCHEMA))
    # How the day was sorted: time buckets, and the bytes of events spilled to disk.
    buckets: int = 1
    spilled_bytes: int = 0

    @functools.cached_property
    def events(self) -> pl.DataFrame:
        """The events, read back (a big day's are not meant to be held: see `parquet`)."""
        data = io.BytesIO(self.parquet) if isinstance(self.parquet, bytes) else self.parquet
        return pl.read_parquet(data).cast(EVENT_SCHEMA)


TOP_SCHEMA = {"item_id": pl.String, "exposures": pl.UInt32, "users": pl.UInt32}


# The common form, UTC with at most microseconds, which chrono's RFC 3339 parser (`%+`) reads
# twice as fast as an explicit format.
_PLAIN_TS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?Z$"


def _parse_ts(frame: pl.DataFrame) -> pl.Series:
    """RFC 3339 `ts` strings to UTC microseconds; null where not RFC 3339 or not a real time.

    The common `...Z` forms parse directly; only the other rows pay for normalization.
    """
    column = pl.col("ts")
    fast = frame.select(
        pl.when(column.str.contains(_PLAIN_TS)).then(
            column.str.to_datetime("%+", time_unit="us", time_zone="UTC", strict=False)
        )
    ).to_series()
    rest = frame.select(pl.int_range(pl.len()).alias("i"), "ts").filter(
        fast.is_null() & column.is_not_null()
    )
    if rest.height == 0:
        return fast
    slow = rest.select("i", ts=_parse_any_ts())
    return fast.scatter(slow["i"], slow["ts"])


def _parse_any_ts() -> pl.Expr:
    """Any RFC 3339 `ts`: the `...Z` form read directly, the others normalized first."""
    column = pl.col("ts")
    rfc3339 = column.str.contains(RFC3339)
    direct = column.str.to_datetime(
        "%Y-%m-%dT%H:%M:%S%.fZ", time_unit="us", time_zone="UTC", strict=False
    )
    normalized = (
        column.str.to_uppercase()
        .str.replace(" ", "T", literal=True)
        .str.replace(r"Z$", "+00:00")
        .str.replace(r"(\.\d{6})\d+", "$1")
        .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", time_unit="us", time_zone="UTC", strict=False)
    )
    return pl.when(rfc3339).then(pl.coalesce(direct, normalized))


Rule = tuple[str, pl.Expr, pl.Expr]  # reason, condition, detail message


def _field_rules() -> list[Rule]:
    rules: list[Rule] = [
        ("missing_field", pl.col("v").is_null(), pl.lit("v is missing")),
        ("unsupported_version", pl.col("v") != 1, pl.format("v must be 1, got {}", "v")),
    ]
    for name in REQUIRED_FIELDS[1:]:
        column = pl.col("ts_raw" if name == "ts" else name)
        # ids are trimmed already; ts is not, so blank means only white space
        empty = column.str.contains(r"^\s*$") if name == "ts" else column == ""
        rules.append(("missing_field", column.is_null(), pl.lit(f"{name} is missing")))
        rules.append(("empty_field", empty, pl.lit(f"{name} is empty")))
    return rules + [
        ("negative_rank", pl.col("rank") < 0, pl.format("rank must be >= 0, got {}", "rank")),
        (
            "bad_timestamp",
            pl.col("ts").is_null(),
            pl.format("ts is not an RFC 3339 timestamp: {}", "ts_raw"),
        ),
    ]


def _partition_rules(partition: Partition) -> list[Rule]:
    """What a per-day file adds: its lines must fall on its day and name its tenant/surface."""
    start, end = partition.window
    foreign = (pl.col("tenant") != partition.tenant) | (pl.col("surface") != partition.surface)
    return [
        (
            "outside_window",
            (pl.col("ts") < start) | (pl.col("ts") >= end),
            pl.format("ts {} is outside {}", "ts_raw", pl.lit(partition.day.isoformat())),
        ),
        (
            "wrong_partition",
            foreign,
            pl.format(
                "event of {}/{} in the file of {}/{}",
                "tenant",
                "surface",
                pl.lit(partition.tenant),
                pl.lit(partition.surface),
            ),
        ),
    ]


def validate(decoded: DecodedLines, rules: list[Rule] | None = None) -> pl.DataFrame:
    """Normalize fields and give each row the first rule it breaks (`reason`, `rule`).

    Only the reason is computed for every row; `detail` is written for rejects alone
    (`_rule_detail`), since formatting a message per row would cost as much as the parse.
    """
    rules = rules if rules is not None else _field_rules()
    frame = decoded.frame
    if decoded.plain:  # the only white space plain lines can hold is a space
        padded = [pl.col(n).str.starts_with(" ") | pl.col(n).str.ends_with(" ") for n in ID_FIELDS]
    else:
        padded = [pl.col(n).str.contains(r"^\s|\s$") for n in ID_FIELDS]
    padded = frame.select([p.any() for p in padded]).row(0)
    frame = frame.with_columns(
        [pl.col(n).str.strip_chars() for n, pad in zip(ID_FIELDS, padded, strict=True) if pad],
        ts_raw=pl.col("ts"),
    )
    optional = ("user_id", "request_id")
    empty = frame.select([(pl.col(n) == "").any() for n in optional]).row(0)
    frame = frame.with_columns(
        [
            pl.when(pl.col(n) == "").then(None).otherwise(pl.col(n)).alias(n)
            for n, blank in zip(optional, empty, strict=True)
            if blank
        ],
        ts=_parse_ts(decoded.frame),
    )
    # The first rule broken wins; a JSON-level reason is kept.
    first = pl.when(rules[0][1]).then(pl.lit(0, pl.Int32))
    for index, (_, condition, _) in enumerate(rules[1:], start=1):
        first = first.when(condition).then(pl.lit(index, pl.Int32))
    frame = frame.with_columns(
        rule=pl.when(pl.col("reason").is_null()).then(first.otherwise(pl.lit(None, pl.Int32)))
    )
    names = pl.col("rule").replace_strict(
        list(range(len(rules))), [name for name, _, _ in rules], return_dtype=pl.String
    )
    return frame.with_columns(reason=pl.coalesce("reason", names))


def _rule_detail(rules: list[Rule]) -> pl.Expr:
    """The message of the rule a row broke (null for rows that broke none)."""
    detail = pl.lit(None, pl.String)
    for index, (_, _, message) in enumerate(rules):
        detail = pl.when(pl.col("rule") == index).then(message).otherwise(detail)
    return detail


_DETAIL = pl.when(pl.col("rule").is_not_null()).then("rule_detail").otherwise("detail")


# A partition's events all name its tenant and surface: those columns are added once sorted.
_VARYING = {
    name: dtype for name, dtype in EVENT_SCHEMA.items() if name not in ("tenant", "surface")
}


def _events(frame: pl.DataFrame) -> pl.DataFrame:
    """The valid rows of a partition, without the columns that are the partition's."""
    return frame.select([pl.col(n).cast(t) for n, t in _VARYING.items()])


# The ids whose distinct values a partition counts (the cardinality guard), by count name.
_DISTINCT = {
    "distinct_sessions": "session_id",
    "distinct_items": "item_id",
    "distinct_users": "user_id",
}


class _Checked(NamedTuple):
    """What a block of lines leaves: typed events and the distinct values of their ids, the
    other rows, and its line counts."""

    events: pl.DataFrame
    distinct: dict[str, pl.Series]
    others: pl.DataFrame
    lines: int
    blank_lines: int


def _distinct(events: pl.DataFrame) -> dict[str, pl.Series]:
    """The distinct values of each counted id (nulls aside): counting them per block keeps
    the hashing of every row in the blocks' parallel work."""
    return {
        count: events.get_column(name).drop_nulls().unique() for count, name in _DISTINCT.items()
    }


def _finish(
    partition: Partition,
    buckets: TimeBuckets,
    distinct: dict[str, Distinct],
    rejects: pl.DataFrame,
    counts: dict[str, int],
    dedup_exact: bool,
    destination: Path | None,
) -> CanonicalPartition:
    """Sort and de-duplicate the events a time bucket at a time, adding their tenant and
    surface (the partition's), and write them in that order: to `destination`, or to memory
    without one.

    Exact duplicates share their `ts`, so they fall in one bucket; and buckets are spans of
    time, so the buckets sorted one after the other are the day sorted.
    """
    written = {"before": 0, "rows": 0}
    exposures: list[pl.DataFrame] = []

    def sorted_buckets() -> Iterator[pl.DataFrame]:
        for index in range(buckets.count):
            events = buckets.take(index)
            if events is None:
                continue
            written["before"] += events.height
            order = _order(events, dedup_exact)
            columns = events.get_columns()
            del events  # the columns alone hold the unsorted events, let go of once sorted
            events = _gathered(columns, order).select(
                [
                    pl.lit(getattr(partition, name), dtype).alias(name)
                    if name in ("tenant", "surface")
                    else pl.col(name)
                    for name, dtype in EVENT_SCHEMA.items()
                ]
            )
            written["rows"] += events.height
            exposures.append(events.group_by("item_id").len("exposures"))
            yield events
            del events

    parquet = write_parquet(sorted_buckets(), EVENT_SCHEMA, destination)
    reasons = rejects.group_by("reason").len().sort("reason")
    counts = counts | {
        "rows": written["rows"],
        "rejects": rejects.height,
        "duplicates": written["before"] - written["rows"],
        **{count: values.count() for count, values in distinct.items()},
    }
    return CanonicalPartition(
        parquet=parquet,
        content_hash=sha256_of(parquet),
        rejects=rejects,
        counts=counts,
        rejects_by_reason=dict(zip(reasons["reason"], reasons["len"], strict=True)),
        top_items=_top_items(parquet, exposures),
        buckets=buckets.count,
        spilled_bytes=buckets.spilled_bytes,
    )


def _top_items(written: bytes | Path, exposures: list[pl.DataFrame]) -> pl.DataFrame:
    """The most exposed items of the day with their distinct users: the exposures summed
    over the buckets, then one pass over the written events for the users of those items."""
    if not exposures:
        return pl.DataFrame(schema=TOP_SCHEMA)
    top = (
        pl.concat(exposures)
        .group_by("item_id")
        .agg(pl.col("exposures").sum())
        .sort(["exposures", "item_id"], descending=[True, False])
        .head(PREVIEW_ROWS)
    )
    source = io.BytesIO(written) if isinstance(written, bytes) else written
    users = (
        pl.scan_parquet(source)
        .select("item_id", "user_id")
        .filter(pl.col("item_id").is_in(top["item_id"].implode()))
        .group_by("item_id")
        .agg(pl.col("user_id").drop_nulls().n_unique().alias("users"))
        .collect()
    )
    return (
        top.join(users, on="item_id", how="left", maintain_order="left")
        .select("item_id", "exposures", pl.col("users").fill_null(0))
        .cast(TOP_SCHEMA)
    )


def _order(events: pl.DataFrame, dedup_exact: bool) -> pl.Series:
    """Positions of the events by `SORT_KEYS` (nulls last), less exact duplicates.

    Rows that tie on every key are identical (tenant and surface are the partition's), so
    any sort on the keys gives the same frame, and exact duplicates are neighbours. `ts`
    alone orders almost every row: only rows that share their `ts` are sorted on all the
    keys, and only they can be duplicates, which is much cheaper than sorting every row on
    six columns.
    """
    order = events.select(pl.col("ts").arg_sort(nulls_last=True)).to_series()
    ts = events.get_column("ts").gather(order)
    tied = (ts.eq_missing(ts.shift(1)) | ts.eq_missing(ts.shift(-1))).arg_true()
    if tied.len() == 0:
        return order
    rows = order.gather(tied)
    keys = events.select(SORT_KEYS)[rows]
    within = keys.select(pl.arg_sort_by(SORT_KEYS, nulls_last=True)).to_series()
    order = order.scatter(tied, rows.gather(within))
    if not dedup_exact:
        return order
    keys = keys[within]
    repeat = keys.select(
        pl.all_horizontal([pl.col(c).eq_missing(pl.col(c).shift(1)) for c in SORT_KEYS])
    ).to_series()
    if not repeat.any():
        return order
    keep = np.ones(order.len(), dtype=bool)
    keep[tied.filter(repeat).to_numpy()] = False
    return order.filter(pl.Series(keep))


def _gathered(columns: list[pl.Series], rows: pl.Series) -> pl.DataFrame:
    """The columns' values at `rows`, as a frame. The list is emptied a column at a time, so
    that (when nothing else holds them) only one column is held twice."""
    gathered = []
    while columns:
        gathered.append(columns.pop(0).rechunk().gather(rows))
    return pl.DataFrame(gathered)


def canonical_from_day_file(
    data: bytes | BinaryIO,
    partition: Partition,
    *,
    dedup_exact: bool = True,
    block_bytes: int = BLOCK_BYTES,
    buckets: int = 1,
    destination: Path | None = None,
    spill_dir: str | None = None,
) -> CanonicalPartition:
    """A per-day file (bytes, or a stream read as it goes) belongs to its partition line by
    line.

    Each block of lines is validated as soon as it is decoded; its typed events go to their
    time bucket (`buckets` of them: more than one spills them to `spill_dir`), its rejects
    and the distinct values of its ids are kept. The events are written to `destination`
    (a local file), or to memory without one.
    """
    rules = _field_rules() + _partition_rules(partition)
    start, _ = partition.window
    held = TimeBuckets(_epoch_us(start), buckets, spill_dir)
    distinct = {count: Distinct() for count in _DISTINCT}
    lines = blank = 0
    rejects = []
    try:
        check = functools.partial(_check_day_block, rules=rules)
        for block in iter_blocks(data, check, block_bytes=block_bytes):
            lines += block.lines
            blank += block.blank_lines
            rejects.append(block.others)
            for count, values in block.distinct.items():
                distinct[count].add(values)
            held.add(block.events)
            del block
        counts = {"lines": lines, "blank_lines": blank, "attributed_lines": lines - blank}
        rejected = _concat(rejects, REJECT_SCHEMA)
        return _finish(partition, held, distinct, rejected, counts, dedup_exact, destination)
    finally:
        held.close()


def _epoch_us(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


def _check_day_block(block: DecodedLines, rules: list[Rule]) -> _Checked:
    frame = validate(block, rules)
    bad = frame.filter(pl.col("reason").is_not_null())
    # with no reject the rows are the frame itself, not a copy
    valid = frame if bad.height == 0 else frame.filter(pl.col("reason").is_null())
    bad = bad.with_columns(rule_detail=_rule_detail(rules))
    bad = bad.select(line="line_no", reason="reason", detail=_DETAIL)
    events = _events(valid)
    others = _with_raw(bad, block)
    return _Checked(events, _distinct(events), others, block.total_lines, block.blank_lines)


def _concat(frames: list[pl.DataFrame], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _with_raw(rejects: pl.DataFrame, block: DecodedLines) -> pl.DataFrame:
    """Rejected lines of a block by line, with their raw text."""
    rejects = rejects.sort("line")
    raw = pl.Series("raw", block.raw_lines(rejects["line"].to_list()), dtype=pl.String)
    return rejects.with_columns(raw)


@dataclass(frozen=True)
class AttributedLines:
    """The lines of a flat file by the partition they name: the valid `events` of configured
    tenant/surfaces with their `day`, and the `others` (rejects, and lines that name no
    partition or one not configured) with their reason and raw text, by line."""

    events: pl.DataFrame
    others: pl.DataFrame
    total_lines: int
    blank_lines: int


_OTHERS_SCHEMA = {
    "tenant": pl.String,
    "surface": pl.String,
    "day": pl.Date,
    "known": pl.Boolean,
    "reason": pl.String,
    "detail": pl.String,
    "rule": pl.Int32,
    "line": pl.Int64,
    "rule_detail": pl.String,
    "raw": pl.String,
}


def attribute(
    data: bytes | BinaryIO, known_keys: set[tuple[str, str]], *, block_bytes: int = BLOCK_BYTES
) -> AttributedLines:
    """Validate the lines of a flat file and attribute each to the partition it names."""
    known = pl.DataFrame(
        {"tenant": [t for t, _ in known_keys], "surface": [s for _, s in known_keys]},
        schema={"tenant": pl.String, "surface": pl.String},
    ).with_columns(known=pl.lit(True))
    check = functools.partial(_attribute_block, rules=_field_rules(), known=known)
    blocks = map_blocks(data, check, block_bytes=block_bytes)
    return AttributedLines(
        _concat([block.events for block in blocks], {**EVENT_SCHEMA, "day": pl.Date}),
        _concat([block.others for block in blocks], _OTHERS_SCHEMA),
        sum(block.lines for block in blocks),
        sum(block.blank_lines for block in blocks),
    )


class _Attributed(NamedTuple):
    """What a block of a flat file leaves: valid events of configured tenant/surfaces with
    their day, the other rows, and its line counts."""

    events: pl.DataFrame
    others: pl.DataFrame
    lines: int
    blank_lines: int


def _attribute_block(block: DecodedLines, rules: list[Rule], known: pl.DataFrame) -> _Attributed:
    attributable = (
        pl.col("tenant").is_not_null()
        & (pl.col("tenant") != "")
        & pl.col("surface").is_not_null()
        & (pl.col("surface") != "")
        & pl.col("ts").is_not_null()
    )
    frame = (
        validate(block, rules)
        .with_columns(day=pl.when(attributable).then(pl.col("ts").dt.date()))
        .join(known, on=["tenant", "surface"], how="left", maintain_order="left")
        .with_columns(pl.col("known").fill_null(False))
    )
    event = pl.col("reason").is_null() & pl.col("day").is_not_null() & pl.col("known")
    others = frame.filter(~event).select(
        "tenant",
        "surface",
        "day",
        "known",
        "reason",
        "detail",
        "rule",
        line="line_no",
        rule_detail=_rule_detail(rules),
    )
    return _Attributed(
        frame.filter(event).select(*EVENT_SCHEMA, "day"),
        _with_raw(others, block),
        block.total_lines,
        block.blank_lines,
    )


def canonical_from_flat_file(
    attributed: AttributedLines,
    partition: Partition,
    *,
    dedup_exact: bool = True,
    destination: Path | None = None,
) -> CanonicalPartition:
    """The lines of a flat file that name this partition by tenant, surface and `ts`; the
    partition must be one of the tenant/surfaces the lines were attributed with."""
    mine = (
        (pl.col("tenant") == partition.tenant)
        & (pl.col("surface") == partition.surface)
        & (pl.col("day") == partition.day)
    )
    rows = attributed.events.filter(mine)
    rejects = attributed.others.filter(mine & pl.col("reason").is_not_null()).select(
        "line", "reason", detail=_DETAIL, raw="raw"
    )
    counts = {
        "lines": attributed.total_lines,
        "blank_lines": attributed.blank_lines,
        "attributed_lines": rows.height + rejects.height,
    }
    events = _events(rows)
    held = TimeBuckets(_epoch_us(partition.window[0]), 1)
    held.add(events)
    distinct = {count: Distinct() for count in _DISTINCT}
    for count, values in _distinct(events).items():
        distinct[count].add(values)
    del events, rows
    return _finish(partition, held, distinct, rejects, counts, dedup_exact, destination)


def unattributed(attributed: AttributedLines) -> pl.DataFrame:
    """Lines of a flat file that no configured partition can take, with their reason."""
    unattributable = pl.col("day").is_null()
    return (
        attributed.others.filter(unattributable | ~pl.col("known"))
        .with_columns(
            reason=pl.when(unattributable)
            .then(pl.col("reason").fill_null("unattributable"))
            .otherwise(pl.lit("unknown_tenant_surface")),
            detail=pl.when(unattributable)
            .then(pl.col("detail").fill_null("no tenant, surface or valid ts"))
            .otherwise(pl.format("{}/{} is not configured", "tenant", "surface")),
            rule=pl.when(unattributable).then("rule"),
        )
        .select("line", "reason", detail=_DETAIL, raw="raw")
    )


def parquet_bytes(events: pl.DataFrame) -> bytes:
    """Deterministic Parquet bytes of a canonical frame."""
    buffer = io.BytesIO()
    events.write_parquet(buffer, compression="zstd", compression_level=3, statistics=True)
    return buffer.getvalue()


def ndjson_bytes(frame: pl.DataFrame) -> bytes:
    if frame.height == 0:
        return b""
    buffer = io.BytesIO()
    frame.write_ndjson(buffer)
    return buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def with_source_rejects(result: CanonicalPartition, rejects: list[dict]) -> CanonicalPartition:
    """Add what a source could not turn into lines (a database row: `id`, `request_id`,
    `reason`, `detail`) to the partition's rejects; such a reject has no line number."""
    if not rejects:
        return result
    extra = pl.DataFrame(
        {
            "line": [None] * len(rejects),
            "reason": [r["reason"] for r in rejects],
            "detail": [r.get("detail") for r in rejects],
            "raw": [
                orjson.dumps({"id": r.get("id"), "request_id": r.get("request_id")}).decode()
                for r in rejects
            ],
        },
        schema=REJECT_SCHEMA,
    )
    combined = pl.concat([result.rejects, extra])
    reasons = combined.group_by("reason").len().sort("reason")
    counts = result.counts | {
        "rejects": combined.height,
        "attributed_lines": result.counts["attributed_lines"] + len(rejects),
        "source_rejects": len(rejects),
    }
    return dataclasses.replace(
        result,
        rejects=combined,
        counts=counts,
        rejects_by_reason=dict(zip(reasons["reason"], reasons["len"], strict=True)),
    )
