"""Partitions of SPEC §3: UTC days × tenant/surface, keys like `2026-01-01|demo__home`."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from recsys_assets.config import AppConfig, check_name
from recsys_assets.events.canonical import Partition

DATE_DIM = "date"
TENANT_SURFACE_DIM = "tenant_surface"


def tenant_surface_partitions(config: AppConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([entry.key for entry in config.tenants])


def daily_partitions(config: AppConfig) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {
            DATE_DIM: dg.DailyPartitionsDefinition(
                start_date=config.start_date.isoformat(), timezone="UTC"
            ),
            TENANT_SURFACE_DIM: tenant_surface_partitions(config),
        }
    )


def partition_key(day: dt.date, tenant: str, surface: str) -> str:
    return str(Partition(tenant, surface, day))


def parse_partition_key(key: str | dg.MultiPartitionKey) -> Partition:
    """A partition key back to its day, tenant and surface; unsafe names are refused."""
    if isinstance(key, dg.MultiPartitionKey):
        day_text = key.keys_by_dimension[DATE_DIM]
        tenant_surface = key.keys_by_dimension[TENANT_SURFACE_DIM]
    else:
        day_text, _, tenant_surface = str(key).partition("|")
    tenant, sep, surface = tenant_surface.partition("__")
    if not sep:
        raise ValueError(f"partition key {key!r} has no tenant__surface part")
    return Partition(
        tenant=check_name("tenant", tenant),
        surface=check_name("surface", surface),
        day=dt.date.fromisoformat(day_text),
    )
