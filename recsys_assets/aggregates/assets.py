"""The `daily_aggregates` asset: one day's partial aggregates, from its canonical partition."""

import time

import dagster as dg
import polars as pl

from recsys_assets.aggregates.daily import EVENT_COLUMNS, daily_aggregates
from recsys_assets.aggregates.store import write_aggregates
from recsys_assets.aggregates.window import aggregate_params
from recsys_assets.config import AppConfig, scratch_dir
from recsys_assets.events.assets import CANONICAL
from recsys_assets.events.spill import bucket_count
from recsys_assets.events.store import CanonicalStore
from recsys_assets.partitions import parse_partition_key

AGGREGATES = dg.AssetKey("daily_aggregates")


def aggregates_asset(config: AppConfig, partitions_def: dg.PartitionsDefinition):
    @dg.asset(
        key=AGGREGATES,
        partitions_def=partitions_def,
        deps=[CANONICAL],
        group_name="aggregates",
        kinds={"polars", "parquet", "scipy"},
        description="One day's partial aggregates (item counts, session co-counts, user-item "
        "counts, transitions), computed once from the canonical partition and coded in the "
        "tenant/surface's id space; artifact windows sum them.",
    )
    def daily_aggregates_asset(
        context: dg.AssetExecutionContext, canonical_store: CanonicalStore
    ) -> dg.MaterializeResult:
        partition = parse_partition_key(context.partition_key)
        entry = config.tenant(partition.tenant, partition.surface)
        started = time.perf_counter()
        params = aggregate_params(config, entry)
        with canonical_store.events_file(partition, scratch_dir(config)) as (path, marker):
            events = marker["counts"]["rows"]
            shards = bucket_count(events, config.scale.shard_events)
            if shards > 1:
                context.log.info(
                    f"{partition}: aggregating {events:,} events in {shards} shards of "
                    f"sessions and of users (scale.shard_events {config.scale.shard_events:,})"
                )
            frames = daily_aggregates(
                pl.scan_parquet(path).select(EVENT_COLUMNS), **params, shards=shards
            )
        written = write_aggregates(
            canonical_store, partition, frames, params, marker["content_hash"]
        )
        seconds = time.perf_counter() - started
        stats = frames["cooc_stats"].row(0, named=True)
        context.log.info(
            f"{partition.tenant}/{partition.surface} {partition.day}: aggregated "
            f"{events:,} events in {seconds:.2f}s"
        )
        return dg.MaterializeResult(
            metadata={
                "rows": sum(written["rows"].values()),
                **{f"rows_{kind}": dg.MetadataValue.int(n) for kind, n in written["rows"].items()},
                **{f"cooc_{k}": dg.MetadataValue.int(int(v)) for k, v in stats.items()},
                "params": dg.MetadataValue.json(params),
                "shards": shards,
                "ids": dg.MetadataValue.json(
                    {space: segments for space, (segments, _) in written["ids"].items()}
                ),
                "source_hash": marker["content_hash"],
                "seconds": dg.MetadataValue.float(round(seconds, 3)),
            }
        )

    return daily_aggregates_asset
