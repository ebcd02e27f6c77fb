"""Publishing, rollback and the registry on both backends (SPEC §5).

Each story runs against a local folder and against S3 (moto): the manifest only ever moves
by compare-and-swap, last, and every refusal leaves it byte-identical.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from recsys_assets.artifacts.envelope import ARTIFACT_TYPES, build_document, serialize
from recsys_assets.artifacts.validate import Verdict
from recsys_assets.config import REPO_ROOT, S3Connection
from recsys_assets.publish import (
    BlobInvalid,
    BlobMismatch,
    CasConflict,
    NotPinned,
    PublishResult,
    Registry,
    RollbackRefused,
    StoreFailed,
    blob_key,
    build_manifest,
    default_actor,
    publish,
    rollback,
    status,
    unpin,
)
from recsys_assets.storage import Store, open_store
from recsys_assets_tests.s3_fixtures import s3_connection, s3_server  # noqa: F401

TENANT, SURFACE = "demo", "home"
NOW = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)
NOW_TEXT = "2026-01-10T12:00:00Z"
SCHEMA = orjson.loads((REPO_ROOT / "schemas/artifacts/manifest.v1.json").read_bytes())


@dataclass
class Backend:
    registry: Registry
    objects: Store

    def manifest_bytes(self) -> bytes | None:
        return self.registry.store.read_bytes(self.registry.manifest_key(TENANT, SURFACE))

    def manifest(self) -> dict[str, Any]:
        data = self.manifest_bytes()
        assert data is not None
        manifest = orjson.loads(data)
        jsonschema.validate(manifest, SCHEMA, cls=jsonschema.Draft202012Validator)
        assert list(manifest["current"]) == sorted(manifest["current"])
        return manifest


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend(Registry(open_store(tmp_path / "registry")), open_store(tmp_path / "obj"))
    connection: S3Connection = request.getfixturevalue("s3_connection")
    objects = f"s3://{connection.bucket}/objects"
    return Backend(
        Registry(open_store(f"{objects}/_registry", connection)), open_store(objects, connection)
    )


def artifact(
    artifact_type: str = "popularity", day: int = 1, days: int = 1, count: int = 2
) -> bytes:
    """A blob whose window ends at 2026-01-(day + days)."""
    start = dt.date(2026, 1, day)
    document = build_document(
        artifact_type,
        TENANT,
        SURFACE,
        "",
        start,
        start + dt.timedelta(days=days),
        {"items": [{"item_id": "A", "count": count}]},
        "a" * 64,
        "2026-01-02T00:00:00Z",
    )
    return serialize(document)


def expected_of(blob: bytes) -> dict[str, Any]:
    document = orjson.loads(blob)
    return {field: document[field] for field in ("artifact_type", "tenant", "surface", "window")}


def version(blob: bytes) -> str:
    return orjson.loads(blob)["build"]["version"]


def run_publish(
    backend: Backend,
    blob: bytes,
    *,
    now: dt.datetime = NOW,
    cas_retries: int = 5,
    registry: Registry | None = None,
    objects: Store | None = None,
    check: Callable[[bytes], Verdict] | None = None,
) -> PublishResult:
    return publish(
        registry or backend.registry,
        objects or backend.objects,
        blob,
        expected=expected_of(blob),
        checks={"schema": "passed"},
        now=now,
        cas_retries=cas_retries,
        check=check,
    )


def run_rollback(backend: Backend, **how: Any) -> Any:
    return rollback(
        backend.registry,
        backend.objects,
        tenant=TENANT,
        surface=SURFACE,
        artifact_type="popularity",
        actor="ops@box",
        reason="bad numbers",
        now=NOW + dt.timedelta(hours=1),
        cas_retries=5,
        **{"version": None, "previous": False, **how},
    )


def pointer(backend: Backend, artifact_type: str = "popularity") -> str | None:
    return backend.manifest()["current"].get(artifact_type)


# --- publish -------------------------------------------------------------------------------


def test_publish_writes_blob_record_then_manifest(backend: Backend) -> None:
    blob = artifact()
    result = run_publish(backend, blob)

    key = blob_key(TENANT, SURFACE, "popularity", version(blob))
    assert result.action == "published" and result.blob_written and result.record_written
    assert backend.objects.read_bytes(key) == blob
    assert result.uri == backend.objects.uri(key)
    manifest = backend.manifest()
    assert manifest == {
        "v": 1,
        "tenant": TENANT,
        "surface": SURFACE,
        "current": {"popularity": result.uri},
        "updated_at": NOW_TEXT,
    }
    assert result.manifest == manifest
    record = backend.registry.record(TENANT, SURFACE, "popularity", version(blob))
    assert record == {
        "version": version(blob),
        "artifact_type": "popularity",
        "tenant": TENANT,
        "surface": SURFACE,
        "segment": "",
        "window": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"},
        "source_hash": "a" * 64,
        "checks": {"schema": "passed"},
        "published_at": NOW_TEXT,
        "uri": result.uri,
    }
    assert result.record_key == f"records/demo/home/popularity/{version(blob)}.json"


def test_other_types_keep_their_pointers(backend: Backend) -> None:
    first = run_publish(backend, artifact("popularity"))
    second = run_publish(backend, artifact("cooc"))
    assert backend.manifest()["current"] == {"cooc": second.uri, "popularity": first.uri}


def test_a_version_already_current_changes_nothing(backend: Backend) -> None:
    blob = artifact()
    run_publish(backend, blob)
    before = backend.manifest_bytes()
    result = run_publish(backend, blob, now=NOW + dt.timedelta(days=1))
    assert result.action == "already_current"
    assert not result.blob_written and not result.record_written
    assert backend.manifest_bytes() == before


def test_an_older_window_is_recorded_but_not_made_current(backend: Backend) -> None:
    newer, older = artifact(day=5), artifact(day=3)
    current = run_publish(backend, newer)
    before = backend.manifest_bytes()

    result = run_publish(backend, older)
    assert result.action == "older_window_kept"
    assert backend.manifest_bytes() == before
    assert pointer(backend) == current.uri
    assert backend.registry.record(TENANT, SURFACE, "popularity", version(older)) is not None

    # Same window end, another build: it moves; a later window moves too.
    rebuilt = run_publish(backend, artifact(day=5, count=7))
    assert rebuilt.action == "published" and pointer(backend) == rebuilt.uri
    assert run_publish(backend, artifact(day=6)).action == "published"


def test_a_tampered_blob_is_refused(backend: Backend) -> None:
    run_publish(backend, artifact(day=1))
    before = backend.manifest_bytes()
    tampered = artifact(day=2).replace(b'"count":2', b'"count":3')
    with pytest.raises(BlobInvalid, match="does not match the recomputed version"):
        run_publish(backend, tampered)
    assert backend.manifest_bytes() == before
    assert len(backend.objects.list_keys(f"{TENANT}/{SURFACE}/popularity")) == 1


def test_a_blob_for_another_tenant_or_failing_validation_is_refused(backend: Backend) -> None:
    blob = artifact()
    with pytest.raises(BlobInvalid, match="tenant is 'demo', expected 'other'"):
        publish(
            backend.registry,
            backend.objects,
            blob,
            expected={**expected_of(blob), "tenant": "other"},
            checks={},
            now=NOW,
            cas_retries=5,
        )
    with pytest.raises(BlobInvalid, match="items must be sorted"):
        run_publish(
            backend, blob, check=lambda data: Verdict(version(data), ["items must be sorted"])
        )
    assert backend.manifest_bytes() is None
    assert backend.objects.list_keys("") == []


def test_other_bytes_under_the_same_version_are_refused(backend: Backend) -> None:
    blob = artifact()
    backend.objects.write_bytes(blob_key(TENANT, SURFACE, "popularity", version(blob)), b"{}")
    with pytest.raises(BlobMismatch, match="other bytes"):
        run_publish(backend, blob)
    assert backend.manifest_bytes() is None


# --- injected failures ---------------------------------------------------------------------


class Meddling(Store):
    """Delegates to `inner`, calling `before(method, key)` first (which may raise or meddle)."""

    def __init__(self, inner: Store, before: Callable[[str, str], None]) -> None:
        self.inner = inner
        self.before = before

    def read_bytes(self, key: str) -> bytes | None:
        self.before("read_bytes", key)
        return self.inner.read_bytes(key)

    def write_bytes(self, key: str, data: bytes) -> bool:
        self.before("write_bytes", key)
        return self.inner.write_bytes(key, data)

    def write_if_absent(self, key: str, data: bytes) -> bool:
        self.before("write_if_absent", key)
        return self.inner.write_if_absent(key, data)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list_keys(self, prefix: str) -> list[str]:
        return self.inner.list_keys(prefix)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def read_with_token(self, key: str) -> tuple[bytes | None, str | None]:
        self.before("read_with_token", key)
        return self.inner.read_with_token(key)

    def write_if_token(self, key: str, data: bytes, token: str | None) -> bool:
        self.before("write_if_token", key)
        return self.inner.write_if_token(key, data, token)


def ignore(method: str, key: str) -> None:
    """A `before` hook that lets every call through."""


def fail_on(method: str) -> Callable[[str, str], None]:
    def before(called: str, key: str) -> None:
        if called == method:
            raise OSError(f"injected failure in {method}({key})")

    return before


def test_a_failing_blob_write_leaves_the_manifest_alone(backend: Backend) -> None:
    run_publish(backend, artifact(day=1))
    before = backend.manifest_bytes()
    objects = Meddling(backend.objects, fail_on("write_if_absent"))
    with pytest.raises(StoreFailed, match="writing blob .* injected failure"):
        run_publish(backend, artifact(day=2), objects=objects)
    assert backend.manifest_bytes() == before


def test_a_failing_record_write_leaves_the_manifest_alone(backend: Backend) -> None:
    run_publish(backend, artifact(day=1))
    before = backend.manifest_bytes()
    registry = Registry(Meddling(backend.registry.store, fail_on("write_if_absent")))
    with pytest.raises(StoreFailed, match="writing record .* injected failure"):
        run_publish(backend, artifact(day=2), registry=registry)
    assert backend.manifest_bytes() == before


def test_a_blob_that_reads_back_differently_is_not_published(backend: Backend) -> None:
    class Corrupting(Meddling):
        def read_bytes(self, key: str) -> bytes | None:
            data = self.inner.read_bytes(key)
            return None if data is None else data.replace(b'"count":2', b'"count":9')

    run_publish(backend, artifact(day=1, count=5))
    before = backend.manifest_bytes()
    with pytest.raises(BlobMismatch):
        run_publish(backend, artifact(day=2), objects=Corrupting(backend.objects, ignore))
    assert backend.manifest_bytes() == before


def test_a_manifest_that_keeps_changing_defeats_the_swap(backend: Backend) -> None:
    run_publish(backend, artifact("cooc"))
    inner = backend.registry.store
    key = backend.registry.manifest_key(TENANT, SURFACE)
    base = backend.manifest()
    swaps: list[bytes] = []

    def other_writer(called: str, touched: str) -> None:
        # Between our read and our write, someone else swaps the manifest in.
        if called == "write_if_token" and touched == key:
            stamp = f"2026-02-01T00:00:{len(swaps):02d}Z"
            swaps.append(orjson.dumps({**base, "updated_at": stamp}))
            inner.write_bytes(key, swaps[-1])

    registry = Registry(Meddling(inner, other_writer))
    with pytest.raises(CasConflict, match="3 compare-and-swap attempts"):
        run_publish(backend, artifact("popularity"), registry=registry, cas_retries=2)
    assert len(swaps) == 3
    assert backend.manifest_bytes() == swaps[-1]  # the other writer's, untouched by us
    assert "popularity" not in backend.manifest()["current"]


def test_a_rollback_whose_swap_fails_takes_its_pin_back(backend: Backend) -> None:
    first = artifact(day=1)
    run_publish(backend, first)
    run_publish(backend, artifact(day=2))
    inner = backend.registry.store
    key = backend.registry.manifest_key(TENANT, SURFACE)
    stamps = iter(range(60))

    def other_writer(called: str, touched: str) -> None:
        if called == "write_if_token" and touched == key:
            manifest = orjson.loads(inner.read_bytes(key) or b"{}")
            manifest["updated_at"] = f"2026-02-01T00:00:{next(stamps):02d}Z"
            inner.write_bytes(key, orjson.dumps(manifest))

    meddled = Backend(Registry(Meddling(inner, other_writer)), backend.objects)
    with pytest.raises(CasConflict):
        run_rollback(meddled, version=version(first))
    assert backend.registry.pins(TENANT, SURFACE) == {}
    assert backend.registry.audit(TENANT, SURFACE) == []


# --- concurrency ---------------------------------------------------------------------------


def test_concurrent_publishers_of_different_types_lose_no_pointer(backend: Backend) -> None:
    blobs = [artifact(artifact_type) for artifact_type in ARTIFACT_TYPES]
    start = threading.Barrier(len(blobs))

    def publish_one(blob: bytes) -> PublishResult:
        start.wait()
        return run_publish(backend, blob, cas_retries=20)

    with ThreadPoolExecutor(len(blobs)) as pool:
        results = list(pool.map(publish_one, blobs))
    assert {r.action for r in results} == {"published"}
    assert backend.manifest()["current"] == {
        orjson.loads(b)["artifact_type"]: r.uri for b, r in zip(blobs, results, strict=True)
    }


def _publish_in_process(registry: Registry, objects: Store, blobs: list[bytes]) -> list[str]:
    return [
        publish(
            registry,
            objects,
            blob,
            expected=expected_of(blob),
            checks={},
            now=NOW,
            cas_retries=30,
        ).action
        for blob in blobs
    ]


def test_concurrent_processes_lose_no_pointer(backend: Backend) -> None:
    blobs = [artifact(artifact_type) for artifact_type in ARTIFACT_TYPES]
    shares = [blobs[0::2], blobs[1::2]]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        actions = list(
            pool.map(_publish_in_process, [backend.registry] * 2, [backend.objects] * 2, shares)
        )
    assert sum(actions, []) == ["published"] * len(blobs)
    assert sorted(backend.manifest()["current"]) == sorted(ARTIFACT_TYPES)


def test_concurrent_audit_appends_all_land(backend: Backend) -> None:
    def append(i: int) -> None:
        backend.registry.append_audit(TENANT, SURFACE, {"n": i}, retries=50)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(append, range(18)))
    assert sorted(entry["n"] for entry in backend.registry.audit(TENANT, SURFACE)) == list(
        range(18)
    )


# --- rollback, pins, unpin, status ----------------------------------------------------------


def test_rollback_to_a_version_pins_it_until_unpin(backend: Backend) -> None:
    v1, v2, v3 = artifact(day=1), artifact(day=2), artifact(day=3)
    first = run_publish(backend, v1)
    run_publish(backend, v2)
    run_publish(backend, artifact("cooc"))

    result = run_rollback(backend, version=version(v1))
    assert (result.from_version, result.to_version) == (version(v2), version(v1))
    assert pointer(backend) == first.uri
    assert pointer(backend, "cooc") is not None
    assert backend.manifest()["updated_at"] == "2026-01-10T13:00:00Z"
    pins = backend.registry.pins(TENANT, SURFACE)
    assert pins == {
        "popularity": {
            "version": version(v1),
            "pinned_at": "2026-01-10T13:00:00Z",
            "actor": "ops@box",
            "reason": "bad numbers",
        }
    }

    # Publishing records the new version but leaves the pinned pointer alone.
    before = backend.manifest_bytes()
    kept = run_publish(backend, v3)
    assert kept.action == "pinned_kept" and kept.record_written
    assert backend.manifest_bytes() == before

    unpinned = unpin(
        backend.registry,
        tenant=TENANT,
        surface=SURFACE,
        artifact_type="popularity",
        actor="ops@box",
        reason="fixed upstream",
        now=NOW + dt.timedelta(hours=2),
    )
    assert unpinned.removed_pin == pins["popularity"]
    assert backend.registry.pins(TENANT, SURFACE) == {}
    assert run_publish(backend, v3).action == "published"

    assert backend.registry.audit(TENANT, SURFACE) == [
        {
            "actor": "ops@box",
            "at": "2026-01-10T13:00:00Z",
            "action": "rollback",
            "artifact_type": "popularity",
            "from": version(v2),
            "to": version(v1),
            "reason": "bad numbers",
        },
        {
            "actor": "ops@box",
            "at": "2026-01-10T14:00:00Z",
            "action": "unpin",
            "artifact_type": "popularity",
            "from": version(v1),
            "to": None,
            "reason": "fixed upstream",
        },
    ]
    with pytest.raises(NotPinned):
        unpin(
            backend.registry,
            tenant=TENANT,
            surface=SURFACE,
            artifact_type="popularity",
            actor="ops@box",
            reason="again",
            now=NOW,
        )


def test_rollback_previous_takes_the_version_recorded_before_the_current(
    backend: Backend,
) -> None:
    blobs = [artifact(day=day) for day in (1, 2, 3)]
    for hour, blob in enumerate(blobs):
        run_publish(backend, blob, now=NOW + dt.timedelta(hours=hour))
    assert run_rollback(backend, previous=True).to_version == version(blobs[1])
    assert run_rollback(backend, previous=True).to_version == version(blobs[0])
    with pytest.raises(RollbackRefused, match="no version recorded before"):
        run_rollback(backend, previous=True)


def test_rollback_refuses_unknown_or_damaged_targets(backend: Backend) -> None:
    good, bad = artifact(day=1), artifact(day=2)
    run_publish(backend, good)
    run_publish(backend, bad)
    run_publish(backend, artifact(day=3))
    before = backend.manifest_bytes()

    with pytest.raises(RollbackRefused, match="no recorded version"):
        run_rollback(backend, version="f" * 64)
    key = blob_key(TENANT, SURFACE, "popularity", version(bad))
    backend.objects.write_bytes(key, bad.replace(b'"count":2', b'"count":4'))
    with pytest.raises(BlobInvalid):
        run_rollback(backend, version=version(bad))
    backend.objects.delete(key)
    with pytest.raises(RollbackRefused, match="missing from the object store"):
        run_rollback(backend, version=version(bad))
    with pytest.raises(ValueError, match="exactly one"):
        run_rollback(backend, version=version(good), previous=True)

    assert backend.manifest_bytes() == before
    assert backend.registry.pins(TENANT, SURFACE) == {}
    assert backend.registry.audit(TENANT, SURFACE) == []


def test_status_reports_age_staleness_and_pins(backend: Backend) -> None:
    run_publish(backend, artifact("popularity", day=9))  # window ends 2026-01-10T00:00Z
    run_publish(backend, artifact("cooc", day=7, days=2))  # ends 2026-01-09T00:00Z
    run_rollback(backend, version=version(artifact("popularity", day=9)))

    rows = status(backend.registry, tenant=TENANT, surface=SURFACE, now=NOW, freshness_hours=24)
    assert [(r.artifact_type, r.age_hours, r.stale, r.pinned) for r in rows] == [
        ("cooc", 36.0, True, False),
        ("popularity", 12.0, False, True),
    ]
    assert rows[0].window_start == "2026-01-07T00:00:00Z"
    assert rows[1].pin is not None and rows[1].pin["actor"] == "ops@box"
    assert (
        status(backend.registry, tenant="none", surface=SURFACE, now=NOW, freshness_hours=1) == []
    )


def test_the_schema_and_the_registry_refuse_other_manifest_fields(backend: Backend) -> None:
    manifest = build_manifest(TENANT, SURFACE, {"popularity": "s3://b/k.json"}, NOW_TEXT)
    jsonschema.validate(manifest, SCHEMA, cls=jsonschema.Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        jsonschema.validate({**manifest, "by": "me"}, SCHEMA, cls=jsonschema.Draft202012Validator)

    run_publish(backend, artifact())
    before = backend.manifest_bytes()
    with pytest.raises(ValueError, match="not ManifestV1"):
        backend.registry.update_manifest(
            TENANT, SURFACE, lambda current: {**current, "by": "me"}, retries=0
        )
    assert backend.manifest_bytes() == before


def test_default_actor_is_user_at_host() -> None:
    user, _, host = default_actor().partition("@")
    assert user and host
