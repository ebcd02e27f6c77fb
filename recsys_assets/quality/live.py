"""What is live: the versions the current manifest points at and their published blobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from recsys_assets.config import TenantSurface
from recsys_assets.publish.manifest import parse_rfc3339, version_of_uri
from recsys_assets.publish.registry import blob_key
from recsys_assets.publish.resources import PublishTargets
from recsys_assets.quality import evaluate as ev


def live_versions(publish_targets: PublishTargets, entry: TenantSurface) -> dict[str, str]:
    """Artifact type -> the version the manifest points at now (empty before any publish)."""
    _, registry = publish_targets.stores()
    manifest = registry.manifest(entry.tenant, entry.surface) or {"current": {}}
    return {t: version_of_uri(uri) for t, uri in manifest["current"].items()}


def live_blob(
    publish_targets: PublishTargets, entry: TenantSurface, artifact_type: str, version: str
) -> Any:
    """The published blob of a live version (a buffer), or None when it is not there."""
    object_store, _ = publish_targets.stores()
    return object_store.read_buffer(blob_key(entry.tenant, entry.surface, artifact_type, version))


def seen_by_live(
    publish_targets: PublishTargets,
    entry: TenantSurface,
    artifact_type: str,
    version: str,
    day: dt.date,
) -> bool:
    """Whether a live version's window reaches into `day` (by its record), so that the day
    is no held-out day for it: scoring it there would flatter it."""
    _, registry = publish_targets.stores()
    record = registry.record(entry.tenant, entry.surface, artifact_type, version)
    if record is None:
        return False
    end = parse_rfc3339(record["window"]["end"])
    return end > dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def difference_from_live(
    publish_targets: PublishTargets,
    entry: TenantSurface,
    artifact_type: str,
    version: str,
    blob: Any,
) -> dict[str, Any]:
    """`evaluate.difference` of a blob against the live version of its type, with the live
    version named; empty when nothing is live or the blob is the live version."""
    live = live_versions(publish_targets, entry).get(artifact_type)
    if live is None or live == version:
        return {}
    theirs = live_blob(publish_targets, entry, artifact_type, live)
    if theirs is None:
        return {}
    return {
        "live_version": live,
        **ev.difference(
            ev.ranked_lists(artifact_type, blob), ev.ranked_lists(artifact_type, theirs)
        ),
    }
