"""Publishing (SPEC §5), without Dagster: blobs into the object store, version records,
the current manifest swapped by compare-and-swap, pins, rollback and its audit log.
"""

from recsys_assets.publish.errors import (
    BlobInvalid,
    BlobMismatch,
    CasConflict,
    NotPinned,
    PublishError,
    RegistryCorrupt,
    RollbackRefused,
    StoreFailed,
)
from recsys_assets.publish.manifest import build_manifest, manifest_problems, rfc3339
from recsys_assets.publish.protocol import PublishResult, publish, verified_document
from recsys_assets.publish.registry import Registry, blob_key
from recsys_assets.publish.rollback import (
    RollbackResult,
    UnpinResult,
    default_actor,
    rollback,
    unpin,
)
from recsys_assets.publish.status import TypeStatus, status

__all__ = [
    "BlobInvalid",
    "BlobMismatch",
    "CasConflict",
    "NotPinned",
    "PublishError",
    "PublishResult",
    "Registry",
    "RegistryCorrupt",
    "RollbackRefused",
    "RollbackResult",
    "StoreFailed",
    "TypeStatus",
    "UnpinResult",
    "blob_key",
    "build_manifest",
    "default_actor",
    "manifest_problems",
    "publish",
    "rfc3339",
    "rollback",
    "status",
    "unpin",
    "verified_document",
]
