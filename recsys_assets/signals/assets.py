"""`db_signals` and `item_tags` (SPEC §7): the online service's signal tables, thin wiring."""

import time
from contextlib import contextmanager

import dagster as dg
import polars as pl

from recsys_assets import postgres as db
from recsys_assets.aggregates.store import read_aggregates
from recsys_assets.aggregates.window import WindowData
from recsys_assets.artifacts.assets import AGGREGATES, CATALOG, SPECS
from recsys_assets.config import AppConfig
from recsys_assets.events.canonical import Partition
from recsys_assets.events.store import CanonicalStore, PartitionNotReady
from recsys_assets.partitions import parse_partition_key
from recsys_assets.signals.sink import write_day_signals, write_item_tags

DB_SIGNALS = dg.AssetKey("db_signals")
ITEM_TAGS = dg.AssetKey("item_tags")
DAY_KINDS = ["item_counts", "cooc_pairs", "cooc_stats"]
# What the sinks write (SPEC §7): a table without one of these is refused by name.
NEEDED_COLUMNS = {
    "item_popularity_daily": ("tenant_id", "namespace", "item_id", "day", "score", "updated_at"),
    "item_covisit_daily": (
        "tenant_id",
        "namespace",
        "item_id",
        "neighbor_id",
        "day",
        "score",
        "updated_at",
    ),
    "item_tags": ("tenant_id", "namespace", "item_id", "tags", "price", "created_at", "updated_at"),
}


class SignalDatabase(dg.ConfigurableResource):
    """The online service's PostgreSQL (`db` config); no DSN means signals are switched off."""

    dsn: str | None = None
    out_dir: str = ".out"
    auto_create_tenant: bool = True
    auto_migrate: bool = False
    statement_timeout_s: int = 30

    @property
    def enabled(self) -> bool:
        return bool(self.dsn)

    @contextmanager
    def connection(self, *tables: str):
        """A connection, the schema applied when `auto_migrate`, `tables` checked."""
        from pathlib import Path

        dsn = db.resolve_dsn(self.dsn or "", Path(self.out_dir))
        conn = db.connect(dsn, self.statement_timeout_s)
        try:
            if self.auto_migrate:
                db.migrate(conn)
            for table in tables:
                db.require_columns(conn, table, NEEDED_COLUMNS[table])
            yield conn
        finally:
            conn.close()

    def tenant_id(self, conn, tenant: str):
        return db.resolve_tenant(conn, tenant, auto_create=self.auto_create_tenant)


def signal_database(config: AppConfig) -> SignalDatabase:
    return SignalDatabase(
        dsn=config.db.dsn,
        out_dir=str(config.out_dir),
        auto_create_tenant=config.db.auto_create_tenant,
        auto_migrate=config.db.auto_migrate,
        statement_timeout_s=config.db.statement_timeout_s,
    )


def day_signal_frames(
    frames: dict[str, pl.DataFrame], config: AppConfig, partition: Partition
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The day's popularity and co-occurrence rows, capped like a 1-day artifact (the same
    builders as the artifacts, over that one day)."""
    entry = config.tenant(partition.tenant, partition.surface)
    day = WindowData(partition.day, partition.day, frames, [partition.day], [], [], "")
    built = {
        name: SPECS[name].build(day, config, entry, config.artifact_settings(entry, name))[0]
        for name in ("popularity", "cooc")
    }
    pop = pl.DataFrame(
        built["popularity"]["items"], schema={"item_id": pl.String, "count": pl.Int64}
    )
    pairs = pl.DataFrame(
        [
            {"item_id": row["item_id"], "neighbor_id": n["item_id"], "count": n["count"]}
            for row in built["cooc"]["neighbors"]
            for n in row["items"]
        ],
        schema={"item_id": pl.String, "neighbor_id": pl.String, "count": pl.Int64},
    )
    return pop, pairs


def db_signals_asset(config: AppConfig, partitions_def: dg.PartitionsDefinition):
    @dg.asset(
        key=DB_SIGNALS,
        partitions_def=partitions_def,
        deps=[AGGREGATES],
        group_name="signals",
        kinds={"postgres"},
        description="The day's own popularity counts and co-occurrence pairs in "
        "item_popularity_daily / item_covisit_daily (one transaction replacing the day).",
    )
    def db_signals(
        context: dg.AssetExecutionContext,
        canonical_store: CanonicalStore,
        signal_db: SignalDatabase,
    ) -> dg.MaterializeResult:
        if not signal_db.enabled:
            return dg.MaterializeResult(metadata={"enabled": False, "reason": "no db.dsn"})
        partition = parse_partition_key(context.partition_key)
        loaded = read_aggregates(canonical_store, partition, DAY_KINDS)
        if loaded is None:
            raise PartitionNotReady(f"no daily aggregates for {partition}")
        popularity, covisit = day_signal_frames(loaded[0], config, partition)
        started = time.perf_counter()
        with signal_db.connection("item_popularity_daily", "item_covisit_daily") as conn:
            tenant_id = signal_db.tenant_id(conn, partition.tenant)
            counts = write_day_signals(
                conn, tenant_id, partition.surface, partition.day, popularity, covisit
            )
        seconds = time.perf_counter() - started
        context.log.info(f"db_signals {partition}: {counts} in {seconds:.2f}s")
        return dg.MaterializeResult(
            metadata={
                "enabled": True,
                **{k: v for k, v in counts.items() if isinstance(v, int)},
                "tenant_id": str(tenant_id),
                "namespace": partition.surface,
                "seconds": dg.MetadataValue.float(round(seconds, 3)),
            }
        )

    return db_signals


def item_tags_asset(config: AppConfig, tenant_partitions: dg.PartitionsDefinition):
    @dg.asset(
        key=ITEM_TAGS,
        partitions_def=tenant_partitions,
        deps=[CATALOG],
        group_name="signals",
        kinds={"postgres"},
        description="The item catalog of a tenant/surface in item_tags (namespace: the row's, "
        "else the surface).",
    )
    def item_tags(
        context: dg.AssetExecutionContext,
        canonical_store: CanonicalStore,
        signal_db: SignalDatabase,
    ) -> dg.MaterializeResult:
        entry = config.tenant_by_key(context.partition_key)
        if not signal_db.enabled or config.catalog_for(entry) is None:
            reason = "no db.dsn" if not signal_db.enabled else "no catalog"
            return dg.MaterializeResult(metadata={"enabled": False, "reason": reason})
        catalog, _ = canonical_store.read_catalog(entry.tenant, entry.surface)
        rows = catalog.filter(
            pl.col("namespace").is_null() | (pl.col("namespace") == entry.surface)
        ).unique("item_id", keep="first", maintain_order=True)
        with signal_db.connection("item_tags") as conn:
            tenant_id = signal_db.tenant_id(conn, entry.tenant)
            counts = write_item_tags(conn, tenant_id, entry.surface, rows)
        return dg.MaterializeResult(
            metadata={"enabled": True, **{k: v for k, v in counts.items() if isinstance(v, int)}}
        )

    return item_tags
