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
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Ratio = Annotated[float, Field(ge=0, le=1)]


class Limits(_Model):
    max_days_backfill: PositiveInt = 365
    max_events_per_run: PositiveInt = 1_000_000
    min_events_per_run: NonNegativeInt = 0
    max_sessions_per_run: PositiveInt = 1_000_000
    max_distinct_items_per_run: PositiveInt = 2_000_000
    max_users_per_run: PositiveInt = 1_000_000
    max_bad_row_ratio: Ratio = 0.01
    max_items_per_session: PositiveInt = 200
    max_excluded_event_ratio: Ratio = 0.05
    max_neighbors_per_item: PositiveInt = 50
    max_items_per_artifact: PositiveInt = 1000
    max_items_per_user: PositiveInt = 50
    min_cooc_support: PositiveInt = 1
    # A day whose source has no input fails `source_present` unless this is true.
    allow_missing_source: bool = False

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
    window_days: Annotated[int, Field(gt=0, le=366)] = 1


class ImplicitSettings(ArtifactSettings):
    factors: PositiveInt = 64
    regularization: Annotated[float, Field(ge=0)] = 0.05
    alpha: Annotated[float, Field(gt=0)] = 1.0
    iterations: PositiveInt = 15
    random_state: NonNegativeInt = 42
    max_users: PositiveInt = 100_000
    # ALS confidence from the counts: "none" (alpha x count), "bm25" or "log" (see
    # artifacts.implicit_als.weighted); chosen by benchmarks/run_quality.py.
    weighting: Literal["none", "bm25", "log"] = "bm25"


class ContentSimSettings(ArtifactSettings):
    min_similarity: Ratio = 0.1
    max_items: PositiveInt = 100_000


class SessionSeqSettings(ArtifactSettings):
    window: PositiveInt = 3
    max_users: PositiveInt = 100_000


class Artifacts(_Model):
    popularity: ArtifactSettings = ArtifactSettings()
    cooc: ArtifactSettings = ArtifactSettings()
    implicit: ImplicitSettings = ImplicitSettings()
    content_sim: ContentSimSettings = ContentSimSettings()
    session_seq: SessionSeqSettings = SessionSeqSettings()

    def settings(self, artifact_type: str) -> ArtifactSettings:
        return getattr(self, artifact_type)


class S3Connection(_Model):
    endpoint: str | None = None
    bucket: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    prefix: str = ""
    use_ssl: bool = True
    create_bucket: bool = False


class PostgresSource(_Model):
    dsn: str | None = None
    tenant_table: str = "tenants"
    exposure_table: str = "exposure_events"


class RawSource(_Model):
    type: Literal["fs", "s3", "postgres"] = "fs"
    dir: Path = Path("testdata/events/tiny")
    s3: S3Connection | None = None
    postgres: PostgresSource = PostgresSource()

    @field_validator("type", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return {"file": "fs", "minio": "s3"}.get(value, value)


class ObjectStore(_Model):
    type: Literal["fs", "s3"] = "fs"
    dir: Path | None = None
    s3: S3Connection | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return {"file": "fs", "minio": "s3"}.get(value, value)


class Db(_Model):
    dsn: str | None = None
    auto_create_tenant: bool = True
    auto_migrate: bool = False
    statement_timeout_s: PositiveInt = 30


class Catalog(_Model):
    path: Path


class Publish(_Model):
    freshness_hours: Annotated[float, Field(gt=0)] = 36
    cas_retries: NonNegativeInt = 5
    # no_collapse: each list of an artifact keeps at least this share of the live rows.
    min_row_ratio: Ratio = 0.5


class QualityCheck(_Model):
    """The quality checks of one artifact type (see recsys_assets/quality)."""

    beats_baseline: bool = True
    min_lift_over_popularity: Annotated[float, Field(ge=0)] = 1.0
    no_regression: bool = True


class QualityTypes(_Model):
    # popularity is the baseline itself; content_sim ranks by tags, not by behaviour, so
    # it is not held to beating popularity unless a tenant asks for it.
    popularity: QualityCheck = QualityCheck(beats_baseline=False)
    cooc: QualityCheck = QualityCheck()
    implicit: QualityCheck = QualityCheck()
    content_sim: QualityCheck = QualityCheck(beats_baseline=False)
    session_seq: QualityCheck = QualityCheck()


class Quality(_Model):
    """Offline evaluation on the held-out day and the checks that gate publishing."""

    enabled: bool = True
    # Below this many cases a task's figures are noise: the checks pass as skipped.
    min_cases: PositiveInt = 200
    max_relative_drop: Ratio = 0.2
    # Cases evaluated at most (whole sessions / users, chosen by a seeded hash of their id).
    max_cases: PositiveInt = 200_000
    max_users: PositiveInt = 20_000
    types: QualityTypes = QualityTypes()


class TenantSurface(_Model):
    tenant: str
    surface: str
    segment: str = ""
    catalog: Catalog | None = None
    artifacts: dict[str, dict[str, Any]] = {}
    quality: dict[str, Any] = {}

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


class AppConfig(_Model):
    start_date: dt.date
    tenants: Annotated[list[TenantSurface], Field(min_length=1)]
    out_dir: Path = Path(".out")
    raw_source: RawSource = RawSource()
    canonical_dir: str | None = None
    artifacts_dir: str | None = None
    checkpoint_dir: str | None = None
    object_store: ObjectStore = ObjectStore()
    registry_dir: str | None = None
    db: Db = Db()
    catalog: Catalog | None = None
    dedup_exact: bool = True
    limits: Limits = Limits()
    artifacts: Artifacts = Artifacts()
    publish: Publish = Publish()
    quality: Quality = Quality()

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
