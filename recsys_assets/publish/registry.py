"""The registry (SPEC §5): version records, current manifests, pins and audit logs in a Store.

Records are append-only (first writer wins). The manifest, pins and audit log are shared by
concurrent writers, so each change is a compare-and-swap read-modify-write, retried on
conflict with a short random back-off.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson

from recsys_assets.publish.errors import CasConflict, PublishError, RegistryCorrupt, StoreFailed
from recsys_assets.publish.manifest import manifest_bytes, parse_manifest
from recsys_assets.storage import Store

_BACKOFF_S = 0.005


def blob_key(tenant: str, surface: str, artifact_type: str, version: str) -> str:
    """Where a published blob lives in the object store."""
    return f"{tenant}/{surface}/{artifact_type}/{version}.json"


@contextmanager
def io_step(description: str) -> Iterator[None]:
    """Re-raise a store failure as StoreFailed naming the step; PublishErrors pass through."""
    try:
        yield
    except PublishError:
        raise
    except Exception as exc:
        raise StoreFailed(f"{description} failed: {type(exc).__name__}: {exc}") from exc


class Registry:
    """The registry at one location, e.g. `<out_dir>/registry` or `s3://bucket/prefix/_registry`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record_key(self, tenant: str, surface: str, artifact_type: str, version: str) -> str:
        return f"records/{tenant}/{surface}/{artifact_type}/{version}.json"

    def manifest_key(self, tenant: str, surface: str) -> str:
        return f"current/{tenant}/{surface}/manifest.json"

    def pins_key(self, tenant: str, surface: str) -> str:
        return f"pins/{tenant}/{surface}.json"

    def audit_key(self, tenant: str, surface: str) -> str:
        return f"audit/{tenant}/{surface}.jsonl"

    def manifest(self, tenant: str, surface: str) -> dict[str, Any] | None:
        key = self.manifest_key(tenant, surface)
        with io_step(f"reading manifest {self.store.uri(key)}"):
            data = self.store.read_bytes(key)
        return None if data is None else self._checked_manifest(data, tenant, surface)

    def update_manifest(
        self,
        tenant: str,
        surface: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        *,
        retries: int,
    ) -> dict[str, Any] | None:
        """Apply `change` to the current manifest by CAS; it returns the new one or None to keep.

        `change` runs again on the re-read manifest after each conflict, so it must decide
        from what it is given (and what it reads itself), not from an earlier call.
        Returns the manifest now current.
        """

        def apply(data: bytes | None) -> bytes | None:
            manifest = None if data is None else self._checked_manifest(data, tenant, surface)
            changed = change(manifest)
            return None if changed is None else manifest_bytes(changed)

        data = self._compare_and_swap(self.manifest_key(tenant, surface), apply, retries)
        return None if data is None else orjson.loads(data)

    def record(
        self, tenant: str, surface: str, artifact_type: str, version: str
    ) -> dict[str, Any] | None:
        key = self.record_key(tenant, surface, artifact_type, version)
        with io_step(f"reading record {self.store.uri(key)}"):
            data = self.store.read_bytes(key)
        return None if data is None else _json_object(data, f"record {self.store.uri(key)}")

    def add_record(self, record: Mapping[str, Any]) -> bool:
        """Write a version record unless one exists (records are never rewritten)."""
        key = self.record_key(
            record["tenant"], record["surface"], record["artifact_type"], record["version"]
        )
        with io_step(f"writing record {self.store.uri(key)}"):
            return self.store.write_if_absent(key, orjson.dumps(record, option=orjson.OPT_INDENT_2))

    def records(self, tenant: str, surface: str, artifact_type: str) -> list[dict[str, Any]]:
        """Every recorded version of a type, oldest first (by published_at, then version)."""
        prefix = f"records/{tenant}/{surface}/{artifact_type}"
        with io_step(f"listing records {self.store.uri(prefix)}"):
            keys = [k for k in self.store.list_keys(prefix) if k.endswith(".json")]
        found = []
        for key in keys:
            with io_step(f"reading record {self.store.uri(key)}"):
                data = self.store.read_bytes(key)
            if data is not None:
                found.append(_json_object(data, f"record {self.store.uri(key)}"))
        return sorted(found, key=lambda r: (r["published_at"], r["version"]))

    def pins(self, tenant: str, surface: str) -> dict[str, Any]:
        """`{"<type>": {"version", "pinned_at", "actor", "reason"}}`; empty when none."""
        key = self.pins_key(tenant, surface)
        with io_step(f"reading pins {self.store.uri(key)}"):
            data = self.store.read_bytes(key)
        return {} if data is None else _json_object(data, f"pins {self.store.uri(key)}")

    def update_pins(
        self,
        tenant: str,
        surface: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        *,
        retries: int,
    ) -> dict[str, Any]:
        """Apply `change` to the pins by CAS (None keeps them); returns the pins now in force."""
        key = self.pins_key(tenant, surface)

        def apply(data: bytes | None) -> bytes | None:
            pins = {} if data is None else _json_object(data, f"pins {self.store.uri(key)}")
            changed = change(pins)
            if changed is None:
                return None
            return orjson.dumps(changed, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

        data = self._compare_and_swap(key, apply, retries)
        return {} if data is None else orjson.loads(data)

    def append_audit(
        self, tenant: str, surface: str, entry: Mapping[str, Any], *, retries: int
    ) -> None:
        """Append one JSON line; a CAS read-modify-write, so concurrent appends all land."""
        line = orjson.dumps(entry) + b"\n"
        self._compare_and_swap(
            self.audit_key(tenant, surface), lambda data: (data or b"") + line, retries
        )

    def audit(self, tenant: str, surface: str) -> list[dict[str, Any]]:
        key = self.audit_key(tenant, surface)
        with io_step(f"reading audit log {self.store.uri(key)}"):
            data = self.store.read_bytes(key)
        return [orjson.loads(line) for line in (data or b"").splitlines() if line.strip()]

    def _checked_manifest(self, data: bytes, tenant: str, surface: str) -> dict[str, Any]:
        where = self.store.uri(self.manifest_key(tenant, surface))
        manifest = parse_manifest(data, where)
        if (manifest["tenant"], manifest["surface"]) != (tenant, surface):
            raise RegistryCorrupt(
                f"manifest {where} names {manifest['tenant']}/{manifest['surface']}, "
                f"expected {tenant}/{surface}"
            )
        return manifest

    def _compare_and_swap(
        self, key: str, change: Callable[[bytes | None], bytes | None], retries: int
    ) -> bytes | None:
        """Read-modify-write `key` until a write lands or `change` keeps it; returns its bytes."""
        uri = self.store.uri(key)
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(random.uniform(0, _BACKOFF_S * 2 ** min(attempt, 6)))
            with io_step(f"reading {uri}"):
                data, token = self.store.read_with_token(key)
            changed = change(data)
            if changed is None:
                return data
            with io_step(f"compare-and-swap of {uri}"):
                if self.store.write_if_token(key, changed, token):
                    return changed
        raise CasConflict(
            f"{uri} kept changing under {retries + 1} compare-and-swap attempts; "
            "try again, or raise publish.cas_retries"
        )


def _json_object(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RegistryCorrupt(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RegistryCorrupt(f"{where} must hold a JSON object, got {type(value).__name__}")
    return value
