"""The publish protocol (SPEC §5): blob, read-back, record, then the manifest swap, last.

Every step before the swap may fail and leave "current" exactly as it was; the swap is a
compare-and-swap that keeps the other types' pointers and re-decides after each conflict.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from recsys_assets.artifacts.envelope import ARTIFACT_TYPES, verify_blob
from recsys_assets.artifacts.validate import Verdict
from recsys_assets.config import check_name
from recsys_assets.publish.errors import BlobInvalid, BlobMismatch
from recsys_assets.publish.manifest import (
    build_manifest,
    parse_rfc3339,
    rfc3339,
    version_of_uri,
)
from recsys_assets.publish.registry import Registry, blob_key, io_step
from recsys_assets.storage import Store

PublishAction = Literal["published", "already_current", "older_window_kept", "pinned_kept"]
EXPECTED_FIELDS = ("artifact_type", "tenant", "surface", "window")


@dataclass(frozen=True)
class PublishResult:
    """What a publish did; `manifest` is the one current afterwards (None if there is none)."""

    action: PublishAction
    version: str
    uri: str
    manifest: dict[str, Any] | None
    record_key: str
    blob_written: bool
    record_written: bool


@dataclass(frozen=True)
class Prepared:
    """An artifact whose blob and record are written and verified: ready for the swap."""

    artifact_type: str
    tenant: str
    surface: str
    version: str
    uri: str
    window_end: dt.datetime
    record_key: str
    blob_written: bool
    record_written: bool


def prepare(
    registry: Registry,
    object_store: Store,
    blob: bytes,
    *,
    expected: Mapping[str, Any],
    checks: Mapping[str, Any],
    now: dt.datetime,
    check: Callable[[bytes], Verdict] | None = None,
) -> Prepared:
    """Every step before the swap: verify, write the blob, read it back, write the record.

    `expected` holds envelope fields as the document has them (`artifact_type`, `tenant`,
    `surface`, `window` = {"start", "end"}, optionally `segment`); the blob must match them.
    `check` is the artifact's full verdict (`validate.check_blob`), when given. The blob read
    back must be the same bytes, so it carries the verdict of the bytes written.
    Raises a PublishError (BlobInvalid, BlobMismatch, StoreFailed, ...); "current" is untouched.
    """
    document, version = verified_document(blob, expected, check)
    artifact_type = document["artifact_type"]
    tenant, surface = document["tenant"], document["surface"]
    window = document["window"]

    key = blob_key(tenant, surface, artifact_type, version)
    uri = object_store.uri(key)
    with io_step(f"writing blob {uri}"):
        blob_written = object_store.write_if_absent(key, blob)
    with io_step(f"reading back blob {uri}"):
        stored = object_store.read_bytes(key)
    if stored != blob:
        raise BlobMismatch(
            f"{uri} holds {'nothing' if stored is None else 'other bytes'} after writing "
            f"version {version}; it was not published"
        )

    record = {
        "version": version,
        "artifact_type": artifact_type,
        "tenant": tenant,
        "surface": surface,
        "segment": document.get("segment", ""),
        "window": {"start": window["start"], "end": window["end"]},
        "source_hash": document["build"].get("source_hash"),
        "checks": dict(checks),
        "published_at": rfc3339(now),
        "uri": uri,
    }
    record_written = registry.add_record(record)
    return Prepared(
        artifact_type=artifact_type,
        tenant=tenant,
        surface=surface,
        version=version,
        uri=uri,
        window_end=parse_rfc3339(window["end"]),
        record_key=registry.record_key(tenant, surface, artifact_type, version),
        blob_written=blob_written,
        record_written=record_written,
    )


def swap(
    registry: Registry, prepared: list[Prepared], *, now: dt.datetime, cas_retries: int
) -> tuple[dict[str, PublishAction], dict[str, Any] | None]:
    """Point every prepared type of one tenant/surface at its version in ONE manifest swap.

    Per type, the no-op rules decide: already current, pinned, or an older window than the
    current one's. Returns the action per type and the manifest current afterwards.
    """
    if not prepared:
        raise ValueError("nothing to swap")
    tenant, surface = prepared[0].tenant, prepared[0].surface
    if any((p.tenant, p.surface) != (tenant, surface) for p in prepared):
        raise ValueError("one swap covers one tenant/surface")
    actions: dict[str, PublishAction] = {}

    def change(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
        current = dict(manifest["current"]) if manifest else {}
        # Read after the manifest: rollback pins before it swaps, so a manifest that already
        # shows a rollback always comes with its pin.
        pins = registry.pins(tenant, surface)
        for item in prepared:
            pointer = current.get(item.artifact_type)
            if pointer is not None and version_of_uri(pointer) == item.version:
                actions[item.artifact_type] = "already_current"
                continue
            if item.artifact_type in pins:
                actions[item.artifact_type] = "pinned_kept"
                continue
            if pointer is not None:
                held = registry.record(tenant, surface, item.artifact_type, version_of_uri(pointer))
                # A pointer without a record (a hand-edited manifest) has no window to keep.
                if held is not None and parse_rfc3339(held["window"]["end"]) > item.window_end:
                    actions[item.artifact_type] = "older_window_kept"
                    continue
            actions[item.artifact_type] = "published"
            current[item.artifact_type] = item.uri
        if all(action != "published" for action in actions.values()):
            return None
        return build_manifest(tenant, surface, current, rfc3339(now))

    manifest = registry.update_manifest(tenant, surface, change, retries=cas_retries)
    return actions, manifest


def publish(
    registry: Registry,
    object_store: Store,
    blob: bytes,
    *,
    expected: Mapping[str, Any],
    checks: Mapping[str, Any],
    now: dt.datetime,
    cas_retries: int,
    check: Callable[[bytes], Verdict] | None = None,
) -> PublishResult:
    """Publish one artifact blob and point its type's manifest entry at it, unless a rule
    says no (see `prepare` and `swap`). Raises a PublishError with "current" untouched."""
    item = prepare(
        registry, object_store, blob, expected=expected, checks=checks, now=now, check=check
    )
    actions, manifest = swap(registry, [item], now=now, cas_retries=cas_retries)
    return PublishResult(
        action=actions[item.artifact_type],
        version=item.version,
        uri=item.uri,
        manifest=manifest,
        record_key=item.record_key,
        blob_written=item.blob_written,
        record_written=item.record_written,
    )


def verified_document(
    blob: bytes,
    expected: Mapping[str, Any],
    check: Callable[[bytes], Verdict] | None = None,
) -> tuple[_Envelope, str]:
    """The blob's envelope and version, once its version recomputes and it is what is expected.

    With `check`, its verdict decides (and the payload is not parsed here); without, the
    version is recomputed. Raises BlobInvalid naming every problem found.
    """
    missing = [field for field in EXPECTED_FIELDS if field not in expected]
    if missing:
        raise ValueError(f"expected must name {', '.join(missing)}; got {sorted(expected)}")
    if check is None:
        ok, version, problems = verify_blob(blob)
    else:
        verdict = check(blob)
        ok, version, problems = not verdict.problems, verdict.version, verdict.problems
    if not ok or version is None:
        raise BlobInvalid(f"blob refused: {'; '.join(problems)}")
    document = _ENVELOPE.decode(blob)
    problems = [
        f"{field} is {document.get(field, '' if field == 'segment' else None)!r}, expected {want!r}"
        for field, want in expected.items()
        if document.get(field, "" if field == "segment" else None) != want
    ]
    if document.get("artifact_type") not in ARTIFACT_TYPES:
        problems.append(f"artifact_type {document.get('artifact_type')!r} is not a known type")
    for kind in ("tenant", "surface"):
        try:
            check_name(kind, document.get(kind))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise BlobInvalid(f"blob version {version} refused: {'; '.join(problems)}")
    return document, version


class _Envelope(msgspec.Struct):
    """The envelope members of a blob; the payload's bytes are skipped, not decoded."""

    artifact_type: Any = None
    tenant: Any = None
    surface: Any = None
    segment: Any = msgspec.UNSET
    window: Any = None
    build: Any = None

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self, name, default)
        return default if value is msgspec.UNSET else value

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


_ENVELOPE = msgspec.json.Decoder(_Envelope)
