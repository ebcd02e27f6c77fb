"""Builds the graph for a config: assets, checks, resources, jobs and schedules."""

from __future__ import annotations

import warnings

import dagster as dg
from dagster._utils.warnings import PreviewWarning

from recsys_assets.config import AppConfig
from recsys_assets.events.assets import CANONICAL, canonical_asset, canonical_checks
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


def build_assets(config: AppConfig) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """Every asset and asset check of the graph, for the config's partitions."""
    partitions_def = daily_partitions(config)
    return [canonical_asset(config, partitions_def), canonical_checks(config, partitions_def)]


def step_selections() -> dict[str, tuple[dg.AssetSelection, str]]:
    """One job per CLI step (the reference system's `job_*` binaries)."""
    canonical = dg.AssetSelection.assets(CANONICAL)
    return {
        "ingest": (canonical, "Canonical exposures and their guards."),
        "validate": (
            dg.AssetSelection.checks_for_assets(CANONICAL),
            "Re-evaluate the canonical guards of existing partitions.",
        ),
    }


def build_definitions(config: AppConfig) -> dg.Definitions:
    assets = build_assets(config)
    daily_job = dg.define_asset_job(
        DAILY_JOB,
        selection=dg.AssetSelection.all(),
        description="Every asset of one UTC day for one tenant/surface.",
    )
    step_jobs = [
        dg.define_asset_job(name, selection=selection, description=description)
        for name, (selection, description) in step_selections().items()
    ]
    schedule = dg.build_schedule_from_partitioned_job(
        daily_job,
        hour_of_day=1,
        minute_of_hour=0,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        name="recsys_daily_schedule",
    )
    return dg.Definitions(
        assets=[a for a in assets if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[a for a in assets if isinstance(a, dg.AssetChecksDefinition)],
        executor=dg.in_process_executor,
        jobs=[daily_job, *step_jobs],
        schedules=[schedule],
        resources=build_resources(config),
    )
