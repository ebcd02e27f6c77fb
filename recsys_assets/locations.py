"""A storage location as a Dagster resource: a local path or `s3://bucket/prefix` with the
connection settings of `object_store.s3` (SPEC §9: the S3 connection every `s3://` uses)."""

from __future__ import annotations

import dagster as dg

from recsys_assets.config import AppConfig, S3Connection
from recsys_assets.storage import Store, open_store


class S3Settings(dg.Config):
    """The `object_store.s3` connection keys (secrets may come from `${ENV_VAR}`)."""

    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    use_ssl: bool = True
    create_bucket: bool = False

    def connection(self) -> S3Connection:
        return S3Connection(
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            use_ssl=self.use_ssl,
            create_bucket=self.create_bucket,
        )


class LocationResource(dg.ConfigurableResource):
    """A storage location (local path or `s3://bucket/prefix`) with its S3 connection."""

    location: str
    s3: S3Settings | None = None

    def store(self) -> Store:
        return open_store(self.location, self.s3.connection() if self.s3 else None)


def s3_settings(config: AppConfig) -> S3Settings | None:
    """The connection every `s3://` location uses: `object_store.s3`."""
    return s3_settings_of(config.object_store.s3) if config.object_store.s3 else None


def s3_settings_of(s3: S3Connection) -> S3Settings:
    return S3Settings(
        endpoint=s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        region=s3.region,
        use_ssl=s3.use_ssl,
        create_bucket=s3.create_bucket,
    )
