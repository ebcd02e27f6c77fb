"""Assembles the code location: assets, checks, resources, jobs and schedules."""

from __future__ import annotations

import warnings

import dagster as dg
from dagster._utils.warnings import PreviewWarning

from recsys_assets.config import AppConfig, load_config
from recsys_assets.events.assets import canonical_asset
from recsys_assets.events.sources import FilesystemEventSource
from recsys_assets.events.store import CanonicalStore
from recsys_assets.partitions import daily_partitions

DAILY_JOB = "recsys_daily"

# Per-partition asset checks are a preview feature in Dagster 1.13; we rely on it knowingly.
warnings.filterwarnings("ignore", category=PreviewWarning)


def build_resources(config: AppConfig) -> dict[str, object]:
    if config.raw_source.type != "fs":
        raise NotImplementedError(f"raw_source.type {config.raw_source.type!r} is not built yet")
    return {
        "raw_source": FilesystemEventSource(dir=str(config.raw_source.dir)),
        "canonical_store": CanonicalStore(location=config.canonical_location),
    }


def build_assets(config: AppConfig) -> list[dg.AssetsDefinition]:
    partitions_def = daily_partitions(config)
    return [canonical_asset(config, partitions_def)]


def build_definitions(config: AppConfig) -> dg.Definitions:
    assets = build_assets(config)
    daily_job = dg.define_asset_job(
        DAILY_JOB,
        selection=dg.AssetSelection.assets(*assets),
        partitions_def=daily_partitions(config),
        description="Every asset of one UTC day for one tenant/surface.",
    )
    schedule = dg.build_schedule_from_partitioned_job(
        daily_job,
        hour_of_day=1,
        minute_of_hour=0,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        name="recsys_daily_schedule",
    )
    return dg.Definitions(
        assets=assets,
        jobs=[daily_job],
        schedules=[schedule],
        resources=build_resources(config),
    )


defs = build_definitions(load_config())
