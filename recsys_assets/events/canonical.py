"""Canonical exposures (SPEC §3): the valid, normalized, de-duplicated events of one partition.

Pure: decoded lines in, frames and counts out. Every line ends in exactly one place: the
events, the partition's rejects (with a reason), the unattributed quarantine of a flat file,
another partition, or the duplicate count.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import dataclass, field

import orjson
import polars as pl

from recsys_assets.events.parse import ID_FIELDS, REQUIRED_FIELDS, RFC3339, DecodedLines

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

    @property
    def window(self) -> tuple[dt.datetime, dt.datetime]:
        start = dt.datetime.combine(self.day, dt.time(), tzinfo=dt.UTC)
        return start, start + dt.timedelta(days=1)


@dataclass(frozen=True)
class CanonicalPartition:
    events: pl.DataFrame
    rejects: pl.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    rejects_by_reason: dict[str, int] = field(default_factory=dict)


def _parse_ts(frame: pl.DataFrame) -> pl.Series:
    """RFC 3339 `ts` strings to UTC microseconds; null where not RFC 3339 or not a real time.

    The common `...Z` form parses directly; only the other rows pay for normalization.
    """
    column = pl.col("ts")
    fast = frame.select(
        pl.when(column.str.contains(RFC3339)).then(
            column.str.to_datetime(
                "%Y-%m-%dT%H:%M:%S%.fZ", time_unit="us", time_zone="UTC", strict=False
            )
        )
    ).to_series()
    rest = frame.select(pl.int_range(pl.len()).alias("i"), "ts").filter(
        fast.is_null() & pl.col("ts").str.contains(RFC3339)
    )
    if rest.height == 0:
        return fast
    normalized = (
        column.str.to_uppercase()
        .str.replace(" ", "T", literal=True)
        .str.replace(r"Z$", "+00:00")
        .str.replace(r"(\.\d{6})\d+", "$1")
        .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", time_unit="us", time_zone="UTC", strict=False)
    )
    slow = rest.select("i", ts=normalized)
    return fast.scatter(slow["i"], slow["ts"])


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
    (`_rejects`), since formatting a message per row would cost as much as the parse.
    """
    rules = rules if rules is not None else _field_rules()
    padded = decoded.frame.select(
        [pl.col(name).str.contains(r"^\s|\s$").any() for name in ID_FIELDS]
    ).row(0)
    frame = (
        decoded.frame.with_columns(
            [pl.col(n).str.strip_chars() for n, pad in zip(ID_FIELDS, padded, strict=True) if pad],
            ts_raw=pl.col("ts"),
        )
        .with_columns(
            [
                pl.when(pl.col(name) == "").then(None).otherwise(pl.col(name)).alias(name)
                for name in ("user_id", "request_id")
            ],
        )
        .with_columns(ts=_parse_ts(decoded.frame))
    )
    # First-listed wins: each `when` wraps the later ones; a JSON-level reason is kept.
    reason = pl.col("reason")
    rule = pl.lit(None, pl.Int32)
    for index, (name, condition, _) in reversed(list(enumerate(rules))):
        broken = pl.col("reason").is_null() & condition
        reason = pl.when(broken).then(pl.lit(name)).otherwise(reason)
        rule = pl.when(broken).then(pl.lit(index, pl.Int32)).otherwise(rule)
    return frame.with_columns(reason=reason, rule=rule)


def _rejects(frame: pl.DataFrame, decoded: DecodedLines, rules: list[Rule]) -> pl.DataFrame:
    """Rejected rows with the detail of the rule they broke and their raw line, by line."""
    detail = pl.col("detail")
    for index, (_, _, message) in enumerate(rules):
        detail = pl.when(pl.col("rule") == index).then(message).otherwise(detail)
    rejects = frame.with_columns(detail=detail).select(
        line=pl.col("line_no"), reason="reason", detail="detail"
    )
    rejects = rejects.sort("line")
    raw = pl.Series("raw", decoded.raw_lines(rejects["line"].to_list()), dtype=pl.String)
    return rejects.with_columns(raw)


def _finish(
    rows: pl.DataFrame,
    rejects: pl.DataFrame,
    counts: dict[str, int],
    dedup_exact: bool,
) -> CanonicalPartition:
    events = rows.select([pl.col(n).cast(t) for n, t in EVENT_SCHEMA.items()])
    before = events.height
    events = events.sort(SORT_KEYS, nulls_last=True)
    if dedup_exact:
        # Sorted on every column that varies within a partition, exact duplicates are
        # neighbours: cheaper than hashing whole rows.
        repeat = pl.all_horizontal([pl.col(c).eq_missing(pl.col(c).shift(1)) for c in SORT_KEYS])
        events = events.filter(~repeat)
    events = events.rechunk()
    reasons = rejects.group_by("reason").len().sort("reason")
    stats = events.select(
        sessions=pl.col("session_id").n_unique(),
        items=pl.col("item_id").n_unique(),
        users=pl.col("user_id").drop_nulls().n_unique(),
    ).row(0, named=True)
    counts = counts | {
        "rows": events.height,
        "rejects": rejects.height,
        "duplicates": before - events.height,
        "distinct_sessions": stats["sessions"],
        "distinct_items": stats["items"],
        "distinct_users": stats["users"],
    }
    return CanonicalPartition(
        events=events,
        rejects=rejects,
        counts=counts,
        rejects_by_reason=dict(zip(reasons["reason"], reasons["len"], strict=True)),
    )


def canonical_from_day_file(
    decoded: DecodedLines, partition: Partition, *, dedup_exact: bool = True
) -> CanonicalPartition:
    """A per-day file belongs to its partition line by line."""
    rules = _field_rules() + _partition_rules(partition)
    frame = validate(decoded, rules)
    counts = {
        "lines": decoded.total_lines,
        "blank_lines": decoded.blank_lines,
        "attributed_lines": decoded.total_lines - decoded.blank_lines,
    }
    return _finish(*_split_valid(frame, decoded, rules), counts, dedup_exact)


def _split_valid(
    frame: pl.DataFrame, decoded: DecodedLines, rules: list[Rule]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Valid rows and rejects; with no reject the rows are the frame itself, not a copy."""
    bad = frame.filter(pl.col("reason").is_not_null())
    rows = frame if bad.height == 0 else frame.filter(pl.col("reason").is_null())
    return rows, _rejects(bad, decoded, rules)


def attribute(decoded: DecodedLines) -> pl.DataFrame:
    """Validated rows of a flat file with the partition they belong to (`day`), if any."""
    frame = validate(decoded)
    attributable = (
        pl.col("tenant").is_not_null()
        & (pl.col("tenant") != "")
        & pl.col("surface").is_not_null()
        & (pl.col("surface") != "")
        & pl.col("ts").is_not_null()
    )
    return frame.with_columns(day=pl.when(attributable).then(pl.col("ts").dt.date()))


def canonical_from_flat_file(
    decoded: DecodedLines,
    attributed: pl.DataFrame,
    partition: Partition,
    *,
    dedup_exact: bool = True,
) -> CanonicalPartition:
    """The lines of a flat file that name this partition by tenant, surface and `ts`."""
    mine = attributed.filter(
        (pl.col("tenant") == partition.tenant)
        & (pl.col("surface") == partition.surface)
        & (pl.col("day") == partition.day)
    )
    counts = {
        "lines": decoded.total_lines,
        "blank_lines": decoded.blank_lines,
        "attributed_lines": mine.height,
    }
    return _finish(*_split_valid(mine, decoded, _field_rules()), counts, dedup_exact)


def unattributed(
    decoded: DecodedLines, attributed: pl.DataFrame, known_keys: set[tuple[str, str]]
) -> pl.DataFrame:
    """Lines of a flat file that no configured partition can take, with their reason."""
    known = pl.DataFrame(
        {"tenant": [t for t, _ in known_keys], "surface": [s for _, s in known_keys]},
        schema={"tenant": pl.String, "surface": pl.String},
    ).with_columns(known=pl.lit(True))
    frame = attributed.join(known, on=["tenant", "surface"], how="left", nulls_equal=False)
    orphan = pl.col("day").is_null() | pl.col("known").is_null()
    return (
        frame.filter(orphan)
        .with_columns(
            reason=pl.when(pl.col("day").is_null())
            .then(pl.col("reason").fill_null("unattributable"))
            .otherwise(pl.lit("unknown_tenant_surface")),
            detail=pl.when(pl.col("day").is_null())
            .then(pl.col("detail").fill_null("no tenant, surface or valid ts"))
            .otherwise(pl.format("{}/{} is not configured", "tenant", "surface")),
            rule=pl.when(pl.col("day").is_null()).then("rule"),
        )
        .pipe(_rejects, decoded, _field_rules())
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
    return CanonicalPartition(
        events=result.events,
        rejects=combined,
        counts=counts,
        rejects_by_reason=dict(zip(reasons["reason"], reasons["len"], strict=True)),
    )
