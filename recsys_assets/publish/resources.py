"""Resources for where published blobs and the registry live (SPEC §5, §9)."""

from __future__ import annotations

import dagster as dg

from recsys_assets.config import AppConfig
from recsys_assets.locations import LocationResource, s3_settings
from recsys_assets.publish.registry import Registry
from recsys_assets.storage import Store


class PublishTargets(dg.ConfigurableResource):
    """The object store published blobs go to and the registry beside it."""

    object_store: LocationResource
    registry: LocationResource

    def stores(self) -> tuple[Store, Registry]:
        return self.object_store.store(), Registry(self.registry.store())


def object_store_location(config: AppConfig) -> str:
    store = config.object_store
    if store.type == "fs":
        return str(store.dir)
    if store.s3 is None or not store.s3.bucket:
        raise ValueError("object_store.type is s3 but object_store.s3.bucket is not set")
    prefix = store.s3.prefix.strip("/")
    return f"s3://{store.s3.bucket}/{prefix}".rstrip("/")


def registry_location(config: AppConfig) -> str:
    if config.registry_dir:
        return config.registry_dir
    if config.object_store.type == "s3":
        return f"{object_store_location(config)}/_registry"
    return str(config.out_dir / "registry")


def publish_targets(config: AppConfig) -> PublishTargets:
    s3 = s3_settings(config)
    return PublishTargets(
        object_store=LocationResource(location=object_store_location(config), s3=s3),
        registry=LocationResource(location=registry_location(config), s3=s3),
    )
