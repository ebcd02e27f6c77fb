"""The `canonical_exposures` asset: thin wiring of source → parse → canonical store → guards."""

import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import dagster as dg
import polars as pl

from recsys_assets.config import AppConfig, scratch_dir
from recsys_assets.events import canonical as canon
from recsys_assets.events.checks import CANONICAL_CHECKS, canonical_guards
from recsys_assets.events.sources import RawEventSource, RawInput
from recsys_assets.events.spill import bucket_count
from recsys_assets.events.store import CanonicalStore, exposures_key, rejects_key
from recsys_assets.metadata import markdown_table
from recsys_assets.partitions import parse_partition_key
from recsys_assets.runbooks import runbook, with_runbook

CANONICAL = dg.AssetKey("canonical_exposures")


def build_canonical_partition(
    raw_layout: str,
    data: bytes | BinaryIO,
    partition: canon.Partition,
    config: AppConfig,
    *,
    buckets: int = 1,
    destination: Path | None = None,
) -> tuple[canon.CanonicalPartition, bytes | None]:
    """The canonical partition from a source's bytes (or stream), a per-day file sorted in
    `buckets` time buckets, written to `destination` (or to memory), plus a flat file's
    unattributed lines."""
    if raw_layout != "flat":
        result = canon.canonical_from_day_file(
            data,
            partition,
            dedup_exact=config.dedup_exact,
            buckets=buckets,
            destination=destination,
            spill_dir=scratch_dir(config),
        )
        return result, None
    known = {(t.tenant, t.surface) for t in config.tenants}
    attributed = canon.attribute(data, known)
    result = canon.canonical_from_flat_file(
        attributed, partition, dedup_exact=config.dedup_exact, destination=destination
    )
    return result, canon.ndjson_bytes(canon.unattributed(attributed))


def canonical_asset(
    config: AppConfig, partitions_def: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        key=CANONICAL,
        partitions_def=partitions_def,
        group_name="events",
        kinds={"polars", "parquet"},
        description="Valid, normalized, de-duplicated exposure events of one UTC day "
        "and tenant/surface, with their rejects (SPEC §3).",
    )
    def canonical_exposures(
        context: dg.AssetExecutionContext,
        raw_source: RawEventSource,
        canonical_store: CanonicalStore,
    ) -> dg.MaterializeResult:
        partition = parse_partition_key(context.partition_key)
        started = time.perf_counter()
        raw = raw_source.read(partition)
        context.log.info(
            f"{partition.tenant}/{partition.surface} {partition.day}: "
            f"reading {raw.size:,} bytes ({raw.layout}) from {raw.name}"
        )
        buckets = 1 if raw.layout == "flat" else bucket_count(raw.size, config.scale.bucket_bytes)
        if buckets > 1:
            context.log.info(
                f"{partition}: sorting the day in {buckets} time buckets "
                f"(scale.bucket_bytes {config.scale.bucket_bytes:,}), spilled under "
                f"{config.scale.spill_dir or tempfile.gettempdir()}"
            )
        with tempfile.TemporaryDirectory(
            prefix="recsys-canonical-", dir=scratch_dir(config)
        ) as scratch:
            with raw.open() as stream:
                result, orphans = build_canonical_partition(
                    raw.layout,
                    stream,
                    partition,
                    config,
                    buckets=buckets,
                    destination=Path(scratch) / "exposures.parquet",
                )
            result = canon.with_source_rejects(result, raw.source_rejects)
            metadata, missing, marker = _store(
                context, canonical_store, raw, partition, result, orphans
            )
        seconds = time.perf_counter() - started
        context.log.info(
            f"{partition.tenant}/{partition.surface} {partition.day}: "
            f"{result.counts['rows']:,} events, {result.counts['rejects']:,} rejects, "
            f"{result.counts['duplicates']:,} duplicates in {seconds:.2f}s"
        )
        return dg.MaterializeResult(
            # What a user reads first comes first: the preview, then the figures plotted over
            # days (plain numbers, one per reject reason), then where the files are.
            metadata={
                "preview": dg.MetadataValue.md(_preview(result)),
                **{k: dg.MetadataValue.int(v) for k, v in result.counts.items()},
                **{
                    f"rejects.{r}": dg.MetadataValue.int(n)
                    for r, n in sorted(result.rejects_by_reason.items())
                },
                "content_hash": marker["content_hash"],
                "path": dg.MetadataValue.path(canonical_store.uri(exposures_key(partition))),
                "rejects_path": dg.MetadataValue.path(canonical_store.uri(rejects_key(partition))),
                "source": raw.name,
                "source_missing": missing,
                "buckets": result.buckets,
                "spilled_bytes": result.spilled_bytes,
                "seconds": dg.MetadataValue.float(round(seconds, 3)),
                **metadata,
            },
        )

    return canonical_exposures


def _store(
    context: dg.AssetExecutionContext,
    canonical_store: CanonicalStore,
    raw: RawInput,
    partition: canon.Partition,
    result: canon.CanonicalPartition,
    orphans: bytes | None,
) -> tuple[dict[str, object], bool, dict]:
    """Write the partition (and a flat file's unattributed lines); the extra metadata,
    whether the source had no input, and the marker."""
    metadata: dict[str, object] = {}
    if orphans:
        name = f"{raw.sha256_hex()}.jsonl"
        metadata["unattributed_path"] = canonical_store.write_unattributed(name, orphans)
        metadata["unattributed_lines"] = orphans.count(b"\n")
    missing = raw.missing(result.counts["attributed_lines"])
    if missing:
        context.log.warning(
            f"{partition.tenant}/{partition.surface} {partition.day}: source {raw.name} "
            "has no input for the partition"
        )
    marker = canonical_store.write(partition, result, raw.name, source_missing=missing)
    return metadata, missing, marker


def _preview(result: canon.CanonicalPartition) -> str:
    """The day's most exposed items and its rejects by reason, as the asset page shows them."""
    text = "**most exposed items**\n\n" + markdown_table(
        ["item_id", "exposures", "users"], result.top_items.rows()
    )
    if result.rejects_by_reason:
        rejects = sorted(result.rejects_by_reason.items(), key=lambda r: (-r[1], r[0]))
        text += "\n\n**rejects by reason**\n\n" + markdown_table(["reason", "lines"], rejects)
    return text


def canonical_checks(
    config: AppConfig, partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    """The blocking guards of SPEC §6, evaluated per partition from the marker and the events."""
    specs = [
        dg.AssetCheckSpec(
            name,
            asset=CANONICAL,
            description=with_runbook(text, name),
            blocking=True,
            partitions_def=partitions_def,
        )
        for name, text in CANONICAL_CHECKS.items()
    ]

    @dg.multi_asset_check(specs=specs, name="canonical_guards", can_subset=True)
    def canonical_guards_check(
        context: dg.AssetCheckExecutionContext, canonical_store: CanonicalStore
    ):
        partition = parse_partition_key(context.partition_key)
        events, marker = canonical_store.read_events(partition, columns=["ts"])
        start, end = partition.window
        outside = events.filter((pl.col("ts") < start) | (pl.col("ts") >= end)).height
        selected = {key.name for key in context.selected_asset_check_keys}
        for guard in canonical_guards(marker, config.limits, outside):
            if guard.name not in selected:
                continue
            if not guard.passed:
                context.log.error(f"{partition}: check {guard.name} failed: {guard.message}")
            yield dg.AssetCheckResult(
                asset_key=CANONICAL,
                check_name=guard.name,
                passed=guard.passed,
                description=(
                    guard.message if guard.passed else with_runbook(guard.message, guard.name)
                ),
                metadata={**guard.metadata, "runbook": dg.MetadataValue.path(runbook(guard.name))},
            )

    return canonical_guards_check
