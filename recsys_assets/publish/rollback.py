"""Operator actions on a published type (SPEC §5): rollback (which pins) and unpin, audited."""

from __future__ import annotations

import datetime as dt
import getpass
import re
import socket
from dataclasses import dataclass
from typing import Any

from recsys_assets.publish.errors import (
    BlobInvalid,
    CasConflict,
    NotPinned,
    RollbackRefused,
)
from recsys_assets.publish.manifest import build_manifest, rfc3339, version_of_uri
from recsys_assets.publish.protocol import verified_document
from recsys_assets.publish.registry import Registry, blob_key, io_step
from recsys_assets.storage import Store

VERSION_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def default_actor() -> str:
    """`user@host`, the audit actor when none is given."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True)
class RollbackResult:
    artifact_type: str
    from_version: str | None
    to_version: str
    uri: str
    manifest: dict[str, Any]
    pin: dict[str, Any]
    audit: dict[str, Any]


@dataclass(frozen=True)
class UnpinResult:
    artifact_type: str
    removed_pin: dict[str, Any]
    audit: dict[str, Any]


def rollback(
    registry: Registry,
    object_store: Store,
    *,
    tenant: str,
    surface: str,
    artifact_type: str,
    version: str | None,
    previous: bool,
    actor: str,
    reason: str,
    now: dt.datetime,
    cas_retries: int,
) -> RollbackResult:
    """Point a type at a recorded version (`version`, or with `previous` the one recorded before
    the current one), pin it there and audit the change.

    The target blob is re-verified first. The pin is written before the manifest swap, so a
    publisher that sees the swapped manifest also sees the pin; if the swap fails the pin is
    put back as it was.
    """
    if (version is None) == (not previous):
        raise ValueError("rollback needs exactly one of a version or previous=True")
    if version is not None and not VERSION_PATTERN.match(version):
        raise ValueError(f"version must be 64 lower-case hex digits, got {version!r}")
    target = version or _previous_version(registry, tenant, surface, artifact_type)
    record = registry.record(tenant, surface, artifact_type, target)
    if record is None:
        known = [r["version"] for r in registry.records(tenant, surface, artifact_type)]
        raise RollbackRefused(
            f"{tenant}/{surface} {artifact_type} has no recorded version {target} "
            f"(recorded: {', '.join(known) or 'none'})"
        )

    key = blob_key(tenant, surface, artifact_type, target)
    uri = object_store.uri(key)
    with io_step(f"reading blob {uri}"):
        blob = object_store.read_bytes(key)
    if blob is None:
        raise RollbackRefused(f"blob of version {target} is missing from the object store: {uri}")
    expected = {"artifact_type": artifact_type, "tenant": tenant, "surface": surface}
    _, recomputed = verified_document(blob, {**expected, "window": record["window"]})
    if recomputed != target:
        raise BlobInvalid(f"{uri} holds version {recomputed}, not {target}")

    at = rfc3339(now)
    pin = {"version": target, "pinned_at": at, "actor": actor, "reason": reason}
    earlier_pin: dict[str, Any] | None = None

    def set_pin(pins: dict[str, Any]) -> dict[str, Any]:
        nonlocal earlier_pin
        earlier_pin = pins.get(artifact_type)
        return {**pins, artifact_type: pin}

    registry.update_pins(tenant, surface, set_pin, retries=cas_retries)

    replaced: str | None = None

    def swap(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
        nonlocal replaced
        current = dict(manifest["current"]) if manifest else {}
        pointer = current.get(artifact_type)
        replaced = None if pointer is None else version_of_uri(pointer)
        if replaced == target:
            return None
        current[artifact_type] = uri
        return build_manifest(tenant, surface, current, at)

    try:
        manifest = registry.update_manifest(tenant, surface, swap, retries=cas_retries)
    except CasConflict:
        registry.update_pins(
            tenant,
            surface,
            lambda pins: _restore_pin(pins, artifact_type, pin, earlier_pin),
            retries=cas_retries,
        )
        raise
    assert manifest is not None  # the swap wrote one, or one already pointed at the target
    entry = _audit_entry(actor, at, "rollback", artifact_type, replaced, target, reason)
    registry.append_audit(tenant, surface, entry, retries=cas_retries)
    return RollbackResult(artifact_type, replaced, target, uri, manifest, pin, entry)


def unpin(
    registry: Registry,
    *,
    tenant: str,
    surface: str,
    artifact_type: str,
    actor: str,
    reason: str,
    now: dt.datetime,
    cas_retries: int = 5,
) -> UnpinResult:
    """Remove a type's pin so publishing moves its pointer again; raises NotPinned if none."""
    removed: dict[str, Any] | None = None

    def drop(pins: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal removed
        removed = pins.get(artifact_type)
        if removed is None:
            return None
        return {name: value for name, value in pins.items() if name != artifact_type}

    registry.update_pins(tenant, surface, drop, retries=cas_retries)
    if removed is None:
        raise NotPinned(f"{tenant}/{surface} {artifact_type} is not pinned")
    entry = _audit_entry(
        actor, rfc3339(now), "unpin", artifact_type, removed["version"], None, reason
    )
    registry.append_audit(tenant, surface, entry, retries=cas_retries)
    return UnpinResult(artifact_type, removed, entry)


def _previous_version(registry: Registry, tenant: str, surface: str, artifact_type: str) -> str:
    manifest = registry.manifest(tenant, surface)
    pointer = (manifest or {}).get("current", {}).get(artifact_type)
    if pointer is None:
        raise RollbackRefused(f"{tenant}/{surface} has no current {artifact_type} to roll back")
    current = version_of_uri(pointer)
    versions = [r["version"] for r in registry.records(tenant, surface, artifact_type)]
    if current not in versions:
        raise RollbackRefused(
            f"current {artifact_type} version {current} of {tenant}/{surface} has no record, "
            "so no previous version is known; roll back to an explicit version"
        )
    index = versions.index(current)
    if index == 0:
        raise RollbackRefused(
            f"{tenant}/{surface} {artifact_type} has no version recorded before {current}"
        )
    return versions[index - 1]


def _restore_pin(
    pins: dict[str, Any], artifact_type: str, ours: dict[str, Any], earlier: dict[str, Any] | None
) -> dict[str, Any] | None:
    if pins.get(artifact_type) != ours:
        return None  # someone pinned since; theirs stands
    rest = {name: value for name, value in pins.items() if name != artifact_type}
    return rest if earlier is None else {**rest, artifact_type: earlier}


def _audit_entry(
    actor: str,
    at: str,
    action: str,
    artifact_type: str,
    from_version: str | None,
    to_version: str | None,
    reason: str,
) -> dict[str, Any]:
    return {
        "actor": actor,
        "at": at,
        "action": action,
        "artifact_type": artifact_type,
        "from": from_version,
        "to": to_version,
        "reason": reason,
    }
