"""ManifestV1 (SPEC §5): per tenant/surface, the URI of each type's current artifact blob.

`{"v":1,"tenant","surface","current":{"<type>":"<uri>"},"updated_at":"<RFC3339>"}` and
nothing else; `schemas/artifacts/manifest.v1.json` is checked before every write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import cache
from typing import Any

import jsonschema
import orjson

from recsys_assets.config import REPO_ROOT
from recsys_assets.publish.errors import RegistryCorrupt

SCHEMA_PATH = REPO_ROOT / "schemas" / "artifacts" / "manifest.v1.json"


def rfc3339(moment: dt.datetime) -> str:
    """`moment` in UTC to the second, as `YYYY-MM-DDTHH:MM:SSZ`; refuses a naive datetime."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"timestamps must be timezone-aware (UTC), got naive {moment!r}")
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))


def build_manifest(
    tenant: str, surface: str, current: Mapping[str, str], updated_at: str
) -> dict[str, Any]:
    """A ManifestV1 with `current` sorted by type."""
    return {
        "v": 1,
        "tenant": tenant,
        "surface": surface,
        "current": dict(sorted(current.items())),
        "updated_at": updated_at,
    }


def version_of_uri(uri: str) -> str:
    """The version a blob URI points at: its file name is `<version>.json`."""
    return uri.rsplit("/", 1)[-1].removesuffix(".json")


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(orjson.loads(SCHEMA_PATH.read_bytes()))


def manifest_problems(manifest: Any) -> list[str]:
    """What keeps `manifest` from being a ManifestV1 (empty when it is one)."""
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(_validator().iter_errors(manifest), key=lambda e: list(e.path))
    ]


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    problems = manifest_problems(manifest)
    if problems:
        raise ValueError(f"refusing to write a manifest that is not ManifestV1: {problems}")
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RegistryCorrupt(f"manifest {where} is not valid JSON: {exc}") from None
    problems = manifest_problems(manifest)
    if problems:
        raise RegistryCorrupt(f"manifest {where} is not a ManifestV1: {'; '.join(problems)}")
    return manifest
