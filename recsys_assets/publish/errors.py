"""Why a publish, rollback or unpin refused; each leaves the current manifest untouched."""

from __future__ import annotations


class PublishError(Exception):
    """A publishing operation refused or failed before changing what is current."""


class BlobInvalid(PublishError):
    """The blob is not the artifact it claims to be (version, envelope or validation)."""


class BlobMismatch(PublishError):
    """The object store holds other bytes than the blob being published."""


class RegistryCorrupt(PublishError):
    """A registry file (manifest, pins, record) cannot be read as what it should be."""


class StoreFailed(PublishError):
    """A read or write of the object store or registry raised; the cause is chained."""


class CasConflict(PublishError):
    """Other writers kept changing a registry file through every compare-and-swap retry."""


class RollbackRefused(PublishError):
    """The rollback target cannot be chosen: no such record, no current or previous version."""


class NotPinned(PublishError):
    """`unpin` of a type that has no pin."""
