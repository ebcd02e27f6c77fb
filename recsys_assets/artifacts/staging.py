"""Staged artifacts (SPEC §5): `<artifacts_dir>/<t>/<s>/[<seg>/]<type>/<start>_<end>/`.

A folder per nominal window holds each `<version>.json` ever built for it (first writer
wins, never rewritten) and `current.version`, the version this window's asset built last.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from recsys_assets.artifacts.envelope import serialized_parts
from recsys_assets.locations import LocationResource


@dataclass(frozen=True)
class ArtifactWindow:
    tenant: str
    surface: str
    segment: str
    artifact_type: str
    start: dt.date
    end: dt.date  # exclusive

    @property
    def prefix(self) -> str:
        parts = [self.tenant, self.surface, self.segment, self.artifact_type]
        folder = f"{self.start.isoformat()}_{self.end.isoformat()}"
        return "/".join([p for p in parts if p] + [folder])


@dataclass(frozen=True)
class StagedArtifact:
    version: str
    key: str
    uri: str
    written: bool
    size: int


class ArtifactStore(LocationResource):
    """Where artifact blobs are staged before publishing (a local path or `s3://`)."""

    def stage(self, window: ArtifactWindow, document: dict[str, Any]) -> StagedArtifact:
        """Write the blob unless that version exists, then point `current.version` at it."""
        store = self.store()
        version = document["build"]["version"]
        key = f"{window.prefix}/{version}.json"
        parts = serialized_parts(document)
        written = store.write_parts_if_absent(key, parts)
        store.write_bytes(f"{window.prefix}/current.version", f"{version}\n".encode())
        return StagedArtifact(version, key, store.uri(key), written, sum(map(len, parts)))

    def current(self, window: ArtifactWindow) -> tuple[str, bytes] | None:
        """The window's current version and its blob, or None when nothing is staged."""
        store = self.store()
        pointer = store.read_bytes(f"{window.prefix}/current.version")
        if pointer is None:
            return None
        version = pointer.decode().strip()
        blob = store.read_bytes(f"{window.prefix}/{version}.json")
        if blob is None:
            raise FileNotFoundError(f"{window.prefix}/current.version names {version}, not staged")
        return version, blob

    def uri(self, key: str) -> str:
        return self.store().uri(key)
