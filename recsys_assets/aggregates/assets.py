"""The `daily_aggregates` asset: one day's partial aggregates, from its canonical partition."""

import time

import dagster as dg

from recsys_assets.aggregates.store import aggregate_partition, write_aggregates
from recsys_assets.aggregates.window import aggregate_params
from recsys_assets.config import AppConfig, scratch_dir
from recsys_assets.events.assets import CANONICAL
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
        day = aggregate_partition(
            canonical_store,
            partition,
            params,
            config.scale.shard_events,
            scratch_dir(config),
            log=context.log.info,
        )
        source_hash, events = day.canonical["content_hash"], day.canonical["counts"]["rows"]
        written = write_aggregates(canonical_store, partition, day.aggregates, params, source_hash)
        seconds = time.perf_counter() - started
        stats = day.aggregates["cooc_stats"].row(0, named=True)
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
                "shards": day.shards,
                "ids": dg.MetadataValue.json(
                    {space: segments for space, (segments, _) in written["ids"].items()}
                ),
                "source_hash": source_hash,
                "seconds": dg.MetadataValue.float(round(seconds, 3)),
            }
        )

    return daily_aggregates_asset
