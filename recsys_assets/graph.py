"""Builds the graph for a config: assets, checks, resources, jobs, schedules and sensors."""

from __future__ import annotations

import warnings

import dagster as dg
from dagster._utils.warnings import BetaWarning, PreviewWarning

from recsys_assets.artifacts.assets import AGGREGATES, CATALOG, SPECS, build_artifact_assets
from recsys_assets.artifacts.staging import ArtifactStore
from recsys_assets.config import ARTIFACT_TYPES, AppConfig, ConfigError
from recsys_assets.events.assets import CANONICAL, canonical_asset, canonical_checks
from recsys_assets.events.remote_sources import PostgresEventSource, S3EventSource
from recsys_assets.events.sources import FilesystemEventSource, RawEventSource
from recsys_assets.events.store import CanonicalStore
from recsys_assets.locations import s3_settings, s3_settings_of
from recsys_assets.partitions import daily_partitions, tenant_surface_partitions
from recsys_assets.postgres import resolve_dsn
from recsys_assets.publish.assets import (
    FRESHNESS,
    PUBLISH,
    freshness_asset,
    freshness_schedule,
    publish_asset,
    publish_sensor,
)
from recsys_assets.publish.resources import publish_targets
from recsys_assets.quality.assets import QUALITY, quality_asset
from recsys_assets.runner import LOGGERS
from recsys_assets.signals.assets import (
    DB_SIGNALS,
    ITEM_TAGS,
    db_signals_asset,
    item_tags_asset,
    signal_database,
)

DAILY_JOB = "recsys_daily"

# Per-partition asset checks are a preview feature in Dagster 1.13; we rely on it knowingly.
warnings.filterwarnings("ignore", category=PreviewWarning)
warnings.filterwarnings("ignore", category=BetaWarning)


def raw_event_source(config: AppConfig) -> RawEventSource:
    """The backend `raw_source.type` names (SPEC §2)."""
    source = config.raw_source
    if source.type == "fs":
        return FilesystemEventSource(dir=str(source.dir))
    if source.type == "s3":
        connection = source.s3
        if connection is None or not connection.bucket:
            raise ConfigError("raw_source.type is s3 but raw_source.s3.bucket is not set")
        own = connection.endpoint or connection.access_key
        return S3EventSource(
            bucket=connection.bucket,
            prefix=connection.prefix,
            s3=s3_settings_of(connection) if own else s3_settings(config),
        )
    dsn = source.postgres.dsn
    if not dsn:
        raise ConfigError(
            "raw_source.type is postgres but neither raw_source.postgres.dsn nor db.dsn is set"
        )
    return PostgresEventSource(
        dsn=resolve_dsn(dsn, config.out_dir) if dsn == "embedded" else dsn,
        tenant_table=source.postgres.tenant_table,
        exposure_table=source.postgres.exposure_table,
        statement_timeout_s=config.db.statement_timeout_s,
    )


def build_resources(config: AppConfig) -> dict[str, object]:
    s3 = s3_settings(config)
    return {
        "raw_source": raw_event_source(config),
        "signal_db": signal_database(config),
        "canonical_store": CanonicalStore(location=config.canonical_location, s3=s3),
        "artifact_store": ArtifactStore(location=config.artifacts_location, s3=s3),
        "publish_targets": publish_targets(config),
    }


def build_assets(config: AppConfig) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """Every asset and asset check of the graph, for the config's partitions."""
    daily = daily_partitions(config)
    per_tenant = tenant_surface_partitions(config)
    return [
        canonical_asset(config, daily),
        canonical_checks(config, daily),
        *build_artifact_assets(config, daily, per_tenant),
        quality_asset(config, daily),
        publish_asset(config, daily),
        db_signals_asset(config, daily),
        item_tags_asset(config, per_tenant),
        freshness_asset(config, per_tenant),
    ]


def _storage_kinds(config: AppConfig) -> dict[str, set[str]]:
    """Per asset, the storage kinds its data lives in beyond its own (`s3`, `postgres`), so
    that the UI's kind tags say where to look."""
    canonical = config.canonical_location.startswith("s3://")
    staged = config.artifacts_location.startswith("s3://")
    published = config.object_store.type == "s3" or (config.registry_dir or "").startswith("s3://")
    raw = {"s3"} if config.raw_source.type == "s3" else set()
    raw |= {"postgres"} if config.raw_source.type == "postgres" else set()

    def on(*flags: bool) -> set[str]:
        return {"s3"} if any(flags) else set()

    return {
        CANONICAL.to_user_string(): raw | on(canonical),
        AGGREGATES.to_user_string(): on(canonical),
        CATALOG.to_user_string(): on(canonical),
        **{name: on(canonical, staged) for name in ARTIFACT_TYPES},
        QUALITY.to_user_string(): on(staged, published),
        PUBLISH.to_user_string(): on(staged, published),
        FRESHNESS.to_user_string(): on(published),
    }


def with_ui_facts(
    config: AppConfig, definitions: list[dg.AssetsDefinition | dg.AssetChecksDefinition]
) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """The assets with the config's owners and the kinds of where their data lives."""
    kinds = _storage_kinds(config)

    def facts(spec: dg.AssetSpec) -> dg.AssetSpec:
        extra = kinds.get(spec.key.to_user_string(), set())
        return spec.merge_attributes(owners=list(config.owners), kinds=extra)

    return [
        d if isinstance(d, dg.AssetChecksDefinition) else d.map_asset_specs(facts)
        for d in definitions
    ]


def step_selections() -> dict[str, tuple[dg.AssetSelection, str]]:
    """One job per CLI step (the reference system's `job_*` binaries)."""
    canonical = dg.AssetSelection.assets(CANONICAL)
    steps = {
        DAILY_JOB: (
            dg.AssetSelection.assets(CANONICAL, AGGREGATES, *ARTIFACT_TYPES, QUALITY, DB_SIGNALS),
            "Every asset of one UTC day for one tenant/surface, up to staged, checked "
            "artifacts; the publish sensor takes it from there.",
        ),
        "ingest": (canonical, "Canonical exposures and their guards."),
        "validate": (
            dg.AssetSelection.checks_for_assets(CANONICAL),
            "Re-evaluate the canonical guards of existing partitions.",
        ),
        **{
            name: (
                dg.AssetSelection.assets(AGGREGATES, dg.AssetKey(name)),
                f"The day's aggregates and the {name} artifact (staging only).",
            )
            for name in SPECS
        },
        "publish": (dg.AssetSelection.assets(PUBLISH), "Publish a day's staged artifacts."),
        "catalog": (
            dg.AssetSelection.assets(CATALOG, ITEM_TAGS),
            "Parse a tenant/surface's item catalog and write it to item_tags.",
        ),
        "db_signals": (
            dg.AssetSelection.assets(AGGREGATES, DB_SIGNALS),
            "Write a day's popularity and co-occurrence signals to PostgreSQL.",
        ),
        "freshness": (
            dg.AssetSelection.assets(FRESHNESS),
            "How old each current pointer of a tenant/surface is.",
        ),
    }
    # Job names must not clash with asset op names (`publish`, `cooc`, ...) in one repository.
    return {name if name == DAILY_JOB else f"{name}_job": step for name, step in steps.items()}


def build_definitions(
    config: AppConfig, executor: dg.ExecutorDefinition = dg.in_process_executor
) -> dg.Definitions:
    """The code location for a config; `executor` runs the steps of launched runs."""
    assets = with_ui_facts(config, build_assets(config))
    jobs = {
        name: dg.define_asset_job(name, selection=selection, description=description)
        for name, (selection, description) in step_selections().items()
    }
    daily_schedule = dg.build_schedule_from_partitioned_job(
        jobs[DAILY_JOB],
        hour_of_day=1,
        minute_of_hour=0,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        name="recsys_daily_schedule",
    )
    return dg.Definitions(
        assets=[a for a in assets if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[a for a in assets if isinstance(a, dg.AssetChecksDefinition)],
        executor=executor,
        jobs=list(jobs.values()),
        schedules=[daily_schedule, freshness_schedule(config, jobs["freshness_job"])],
        sensors=[publish_sensor(config)],
        resources=build_resources(config),
        loggers=LOGGERS,
    )
