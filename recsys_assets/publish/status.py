"""What is current per type for a tenant/surface, how old its window is, and whether pinned."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from recsys_assets.publish.manifest import parse_rfc3339, version_of_uri
from recsys_assets.publish.registry import Registry


@dataclass(frozen=True)
class TypeStatus:
    artifact_type: str
    version: str
    uri: str
    window_start: str | None
    window_end: str | None
    age_hours: float | None
    pinned: bool
    pin: dict[str, Any] | None
    stale: bool


def status(
    registry: Registry, *, tenant: str, surface: str, now: dt.datetime, freshness_hours: float
) -> list[TypeStatus]:
    """One entry per type in the manifest, sorted by type.

    Age is `now` minus the end of the current window (from its record); a pointer without a
    record has no known age and counts as stale.
    """
    manifest = registry.manifest(tenant, surface)
    if manifest is None:
        return []
    pins = registry.pins(tenant, surface)
    out = []
    for artifact_type, uri in sorted(manifest["current"].items()):
        version = version_of_uri(uri)
        record = registry.record(tenant, surface, artifact_type, version)
        window = record["window"] if record else {}
        age = None
        if record:
            age = (now - parse_rfc3339(window["end"])).total_seconds() / 3600
        out.append(
            TypeStatus(
                artifact_type=artifact_type,
                version=version,
                uri=uri,
                window_start=window.get("start"),
                window_end=window.get("end"),
                age_hours=age,
                pinned=artifact_type in pins,
                pin=pins.get(artifact_type),
                stale=age is None or age > freshness_hours,
            )
        )
    return out
