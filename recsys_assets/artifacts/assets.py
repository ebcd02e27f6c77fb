"""The artifact assets and their checks: thin wiring over the pure builders."""

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import orjson

from recsys_assets.aggregates.assets import AGGREGATES, aggregates_asset
from recsys_assets.aggregates.window import (
    WindowData,
    load_window,
    window_bounds,
)
from recsys_assets.artifacts.content_sim import content_sim_payload, parse_catalog
from recsys_assets.artifacts.cooc import cooc_payload
from recsys_assets.artifacts.envelope import build_document
from recsys_assets.artifacts.implicit_als import implicit_payload
from recsys_assets.artifacts.popularity import popularity_payload
from recsys_assets.artifacts.session_seq import session_seq_payload
from recsys_assets.artifacts.staging import ArtifactStore, ArtifactWindow
from recsys_assets.artifacts.validate import Caps, Expected, validate_blob
from recsys_assets.config import (
    ARTIFACT_TYPES,
    AppConfig,
    ArtifactSettings,
    ContentSimSettings,
    ImplicitSettings,
    SessionSeqSettings,
    TenantSurface,
)
from recsys_assets.events.store import CanonicalStore
from recsys_assets.metadata import rows_preview
from recsys_assets.partitions import DATE_DIM, TENANT_SURFACE_DIM, parse_partition_key
from recsys_assets.publish import collapse
from recsys_assets.publish.collapse import ROW_LISTS
from recsys_assets.publish.resources import PublishTargets
from recsys_assets.publish.rollback import default_actor
from recsys_assets.quality.live import difference_from_live, live_blob, live_versions
from recsys_assets.runbooks import runbook, with_runbook

CATALOG = dg.AssetKey("item_catalog")

Builder = Callable[[WindowData, AppConfig, TenantSurface, Any], tuple[dict, dict]]


@dataclass(frozen=True)
class ArtifactSpec:
    """How one artifact type is built: what it reads (the window's merged aggregates of
    `kinds`, or the item catalog), its payload builder, and its own blocking checks beside
    those of every type (name -> description)."""

    artifact_type: str
    kinds: tuple[str, ...]
    build: Builder
    description: str
    reads_catalog: bool = False
    checks: dict[str, str] = field(default_factory=dict)


def _popularity(window: WindowData, config: AppConfig, entry, settings) -> tuple[dict, dict]:
    return popularity_payload(
        window.frames["item_counts"],
        max_items_per_artifact=config.limits.max_items_per_artifact,
    )


def _cooc(window: WindowData, config: AppConfig, entry, settings) -> tuple[dict, dict]:
    limits = config.limits
    return cooc_payload(
        window.frames["cooc_pairs"],
        window.frames["cooc_stats"],
        window.frames["item_counts"],
        min_cooc_support=limits.min_cooc_support,
        max_neighbors_per_item=limits.max_neighbors_per_item,
        max_items_per_artifact=limits.max_items_per_artifact,
    )


def _implicit(window: WindowData, config: AppConfig, entry, settings) -> tuple[dict, dict]:
    return implicit_payload(
        window.frames["user_item_counts"],
        factors=settings.factors,
        regularization=settings.regularization,
        alpha=settings.alpha,
        iterations=settings.iterations,
        random_state=settings.random_state,
        max_users=settings.max_users,
        max_items_per_user=config.limits.max_items_per_user,
        weighting=settings.weighting,
    )


def _session_seq(window: WindowData, config: AppConfig, entry, settings) -> tuple[dict, dict]:
    limits = config.limits
    return session_seq_payload(
        window.frames["user_transitions"],
        window.frames["user_activity"],  # user_item_counts' row totals: all it reads of it
        window.frames["item_transitions"],
        max_users=settings.max_users,
        max_items_per_user=limits.max_items_per_user,
        max_neighbors_per_item=limits.max_neighbors_per_item,
        max_items_per_artifact=limits.max_items_per_artifact,
    )


def _content_sim(window: WindowData, config: AppConfig, entry, settings) -> tuple[dict, dict]:
    return content_sim_payload(
        window.frames["catalog"],
        surface=entry.surface,
        max_neighbors_per_item=config.limits.max_neighbors_per_item,
        min_similarity=settings.min_similarity,
        max_items=settings.max_items,
    )


SPECS: dict[str, ArtifactSpec] = {
    "popularity": ArtifactSpec(
        "popularity", ("item_counts",), _popularity, "Exposures per item over the window."
    ),
    "cooc": ArtifactSpec(
        "cooc",
        ("cooc_pairs", "cooc_stats", "item_counts"),
        _cooc,
        "Items seen in the same session as each anchor, over the window.",
        checks={
            "excluded_event_ratio": (
                "share of events in over-long sessions <= limits.max_excluded_event_ratio"
            )
        },
    ),
    "implicit": ArtifactSpec(
        "implicit",
        ("user_item_counts",),
        _implicit,
        "Collaborative recommendations per user from ALS matrix factorization.",
    ),
    "content_sim": ArtifactSpec(
        "content_sim",
        (),
        _content_sim,
        "Items similar by TF-IDF cosine over their catalog tags.",
        reads_catalog=True,
    ),
    "session_seq": ArtifactSpec(
        "session_seq",
        ("user_transitions", "user_activity", "item_transitions"),
        _session_seq,
        "Next-item scores per user and 1/gap item transitions within sessions.",
    ),
}


def lookback(window_days: int) -> dg.PartitionMapping:
    """Each artifact partition depends on the `window_days` aggregate days ending with it."""
    return dg.MultiPartitionMapping(
        {
            DATE_DIM: dg.DimensionPartitionMapping(
                DATE_DIM, dg.TimeWindowPartitionMapping(start_offset=-(window_days - 1))
            ),
            TENANT_SURFACE_DIM: dg.DimensionPartitionMapping(
                TENANT_SURFACE_DIM, dg.IdentityPartitionMapping()
            ),
        }
    )


def disabled_reason(
    config: AppConfig, entry: TenantSurface, artifact_type: str, settings: ArtifactSettings
) -> str | None:
    if not settings.enabled:
        return f"artifacts.{artifact_type}.enabled is false"
    if SPECS[artifact_type].reads_catalog and config.catalog_for(entry) is None:
        return "no item catalog is configured"
    return None


def disabled_reasons(config: AppConfig, entry: TenantSurface) -> dict[str, str | None]:
    """Each artifact type's reason to be off for a tenant/surface (None: it is built)."""
    return {
        t: disabled_reason(config, entry, t, config.artifact_settings(entry, t))
        for t in ARTIFACT_TYPES
    }


def artifact_window(entry: TenantSurface, artifact_type: str, day: dt.date, window_days: int):
    start, end = window_bounds(day, window_days)
    return ArtifactWindow(entry.tenant, entry.surface, entry.segment, artifact_type, start, end)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def artifact_asset(
    spec: ArtifactSpec, config: AppConfig, partitions_def: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    longest = max(
        config.artifact_settings(entry, spec.artifact_type).window_days for entry in config.tenants
    )
    deps: list[dg.AssetDep] = [dg.AssetDep(AGGREGATES, partition_mapping=lookback(longest))]
    if spec.reads_catalog:
        deps = [
            dg.AssetDep(
                CATALOG,
                partition_mapping=dg.MultiToSingleDimensionPartitionMapping(TENANT_SURFACE_DIM),
            )
        ]

    @dg.asset(
        key=spec.artifact_type,
        partitions_def=partitions_def,
        deps=deps,
        group_name="artifacts",
        kinds={"json"},
        description=f"{spec.description} Staged as a versioned JSON blob (SPEC §4).",
    )
    def artifact(
        context: dg.AssetExecutionContext,
        canonical_store: CanonicalStore,
        artifact_store: ArtifactStore,
        publish_targets: PublishTargets,
    ) -> dg.MaterializeResult:
        partition = parse_partition_key(context.partition_key)
        entry = config.tenant(partition.tenant, partition.surface)
        settings = config.artifact_settings(entry, spec.artifact_type)
        window = artifact_window(entry, spec.artifact_type, partition.day, settings.window_days)
        reason = disabled_reason(config, entry, spec.artifact_type, settings)
        if reason:
            context.log.info(f"{spec.artifact_type} for {partition}: disabled ({reason})")
            return dg.MaterializeResult(metadata={"enabled": False, "reason": reason})
        started = time.perf_counter()
        if not spec.reads_catalog:
            data = load_window(
                canonical_store,
                config,
                entry,
                partition.day,
                settings.window_days,
                list(spec.kinds),
            )
        else:
            catalog, marker = canonical_store.read_catalog(entry.tenant, entry.surface)
            data = WindowData(
                window.start, window.end, {"catalog": catalog}, [], [], [], marker["content_hash"]
            )
        payload, stats = spec.build(data, config, entry, settings)
        rows = {f"rows_{name}": len(payload[name]) for name in ROW_LISTS[spec.artifact_type]}
        document = build_document(
            spec.artifact_type,
            entry.tenant,
            entry.surface,
            entry.segment,
            window.start,
            window.end,
            payload,
            data.source_hash,
            _now(),
        )
        staged = artifact_store.stage(window, document)
        preview = "\n\n".join(
            f"**{name}**\n\n{rows_preview(payload[name])}" for name in ROW_LISTS[spec.artifact_type]
        )
        del document, payload
        # What would change for the online service (non-blocking): see quality.evaluate.
        difference = difference_from_live(
            publish_targets,
            entry,
            spec.artifact_type,
            staged.version,
            artifact_store.store().read_buffer(staged.key),
        )
        data.wait_saved()
        seconds = time.perf_counter() - started
        context.log.info(
            f"{spec.artifact_type} for {partition}: version {staged.version[:12]} "
            f"({'new' if staged.written else 'unchanged'}, {staged.size:,} bytes) "
            f"in {seconds:.2f}s"
        )
        return dg.MaterializeResult(
            metadata={
                "enabled": True,
                "version": staged.version,
                "path": dg.MetadataValue.path(staged.uri),
                "new_version": staged.written,
                "bytes": staged.size,
                "window_start": window.start.isoformat(),
                "window_end": window.end.isoformat(),
                "days_present": dg.MetadataValue.json([d.isoformat() for d in data.days_present]),
                "days_missing": dg.MetadataValue.json([d.isoformat() for d in data.days_missing]),
                "days_reaggregated": len(data.days_recomputed),
                # How each large aggregate's window sum was obtained (see aggregates.window).
                **({"window_merge": dg.MetadataValue.json(data.merge)} if data.merge else {}),
                "source_hash": data.source_hash,
                **rows,
                "preview": dg.MetadataValue.md(preview),
                **{f"live_difference.{k}": v for k, v in difference.items()},
                **{k: v for k, v in stats.items() if isinstance(v, int | float | str)},
                "seconds": dg.MetadataValue.float(round(seconds, 3)),
            }
        )

    return artifact


def check_names(artifact_type: str) -> dict[str, str]:
    """The blocking checks of an artifact type, name -> description; publishing waits for
    each of them."""
    names = {"valid": "schema, envelope, version, caps, ids, scores (SPEC §6)"}
    names |= SPECS[artifact_type].checks
    names["no_collapse"] = (
        "rows of each list >= publish.min_row_ratio of the live version's, and not zero "
        "when live has rows (forced with --allow-collapse, audited)"
    )
    return names


# Run tags by which an operator lets a collapse through for one run (`--allow-collapse`):
# the types ("all" or a comma list), who decided and why. The check audits each use.
ALLOW_COLLAPSE_TAG = "recsys/allow_collapse"
ACTOR_TAG = "recsys/actor"
REASON_TAG = "recsys/reason"


def artifact_checks(
    spec: ArtifactSpec, config: AppConfig, partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    """Blocking checks of SPEC §6 on the staged blob; cooc also guards its crawler share;
    every type guards against collapsing below the live version (`publish.collapse`)."""
    key = dg.AssetKey(spec.artifact_type)
    names = check_names(spec.artifact_type)
    specs = [
        dg.AssetCheckSpec(
            n,
            asset=key,
            description=with_runbook(d, n),
            blocking=True,
            partitions_def=partitions_def,
        )
        for n, d in names.items()
    ]

    @dg.multi_asset_check(specs=specs, name=f"{spec.artifact_type}_checks", can_subset=True)
    def checks(
        context: dg.AssetCheckExecutionContext,
        canonical_store: CanonicalStore,
        artifact_store: ArtifactStore,
        publish_targets: PublishTargets,
    ):
        partition = parse_partition_key(context.partition_key)
        entry = config.tenant(partition.tenant, partition.surface)
        settings = config.artifact_settings(entry, spec.artifact_type)
        selected = {k.name for k in context.selected_asset_check_keys}
        reason = disabled_reason(config, entry, spec.artifact_type, settings)
        results: dict[str, tuple[bool, str, dict]] = {}
        window = artifact_window(entry, spec.artifact_type, partition.day, settings.window_days)
        staged = None if reason else artifact_store.current(window)
        if reason:
            for name in names:
                results[name] = (True, f"skipped: {reason}", {"skipped": True})
        elif staged is None:
            for name in names:
                results[name] = (False, f"nothing staged under {window.prefix}", {})
        else:
            version, blob = staged
            caps = caps_for(config, spec.artifact_type, settings)
            problems = validate_blob(blob, expected_for(window), caps)
            results["valid"] = (
                not problems,
                "; ".join(problems[:5]) or "artifact is valid",
                {"version": version, "bytes": len(blob), "problems": len(problems)},
            )
            if "no_collapse" in selected:
                results["no_collapse"] = _no_collapse(
                    context, config, entry, spec.artifact_type, version, blob, publish_targets
                )
            del blob
            if "excluded_event_ratio" in names:
                data = load_window(
                    canonical_store,
                    config,
                    entry,
                    partition.day,
                    settings.window_days,
                    ["cooc_stats"],
                )
                stats = data.frames["cooc_stats"].row(0, named=True)
                ratio = stats["excluded_events"] / stats["events"] if stats["events"] else 0.0
                limit = config.limits.max_excluded_event_ratio
                results["excluded_event_ratio"] = (
                    ratio <= limit,
                    f"excluded-event ratio {ratio:.6f} ({stats['excluded_events']} events in "
                    f"{stats['excluded_sessions']} sessions over max_items_per_session "
                    f"{config.limits.max_items_per_session} / {stats['events']} events) vs "
                    f"max_excluded_event_ratio {limit}",
                    {
                        "ratio": round(ratio, 6),
                        "excluded_sessions": int(stats["excluded_sessions"]),
                    },
                )
        for name, (passed, message, metadata) in results.items():
            if name not in selected:
                continue
            if not passed:
                context.log.error(f"{spec.artifact_type} {partition}: {name} failed: {message}")
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=name,
                passed=passed,
                description=message if passed else with_runbook(message, name),
                metadata={**metadata, "runbook": dg.MetadataValue.path(runbook(name))},
            )

    return checks


def _no_collapse(
    context: dg.AssetCheckExecutionContext,
    config: AppConfig,
    entry: TenantSurface,
    artifact_type: str,
    version: str,
    blob: Any,
    publish_targets: PublishTargets,
) -> tuple[bool, str, dict]:
    """The `no_collapse` verdict on a staged blob against the live version of its type."""
    _, registry = publish_targets.stores()
    live_version = live_versions(publish_targets, entry).get(artifact_type)
    rows = collapse.row_counts(artifact_type, blob)
    live_rows = None
    if live_version == version:
        live_rows = rows
    elif live_version is not None:
        published = live_blob(publish_targets, entry, artifact_type, live_version)
        if published is None:
            return (
                True,
                f"{artifact_type}: live version {live_version} is missing from the object "
                "store; nothing to compare with",
                {"rows": dg.MetadataValue.json(rows), "live_version": live_version},
            )
        live_rows = collapse.row_counts(artifact_type, published)
    verdict = collapse.no_collapse(
        artifact_type, rows, live_rows, live_version, config.publish.min_row_ratio
    )
    metadata: dict[str, Any] = {
        **{f"rows_{name}": n for name, n in rows.items()},
        **{f"live_rows_{name}": n for name, n in (live_rows or {}).items()},
        "live_version": live_version or "",
    }
    allowed = context.run.tags.get(ALLOW_COLLAPSE_TAG, "")
    forced = allowed == "all" or artifact_type in allowed.split(",")
    if verdict.passed or not forced:
        return verdict.passed, verdict.message, metadata
    actor = context.run.tags.get(ACTOR_TAG) or default_actor()
    reason = context.run.tags.get(REASON_TAG, "")
    registry.append_audit(
        entry.tenant,
        entry.surface,
        {
            "actor": actor,
            "at": _now(),
            "action": "allow_collapse",
            "artifact_type": artifact_type,
            "from": live_version,
            "to": version,
            "reason": reason,
            "detail": verdict.message,
            "run_id": context.run.run_id,
        },
        retries=config.publish.cas_retries,
    )
    context.log.warning(f"{verdict.message}: allowed by {actor} ({reason or 'no reason given'})")
    return (
        True,
        f"forced by {actor} (--allow-collapse, audited): {verdict.message}",
        metadata | {"forced": True},
    )


def caps_for(config: AppConfig, artifact_type: str, settings: ArtifactSettings) -> Caps:
    """The caps and filters a type's builder applied, for its validation."""
    limits = config.limits
    extra: dict[str, Any] = {}
    if artifact_type == "cooc":
        extra["min_cooc_support"] = limits.min_cooc_support
    if isinstance(settings, ContentSimSettings):
        extra |= {"max_items": settings.max_items, "min_similarity": settings.min_similarity}
    if isinstance(settings, ImplicitSettings | SessionSeqSettings):
        extra["max_users"] = settings.max_users
    return Caps(
        max_items_per_artifact=limits.max_items_per_artifact,
        max_neighbors_per_item=limits.max_neighbors_per_item,
        max_items_per_user=limits.max_items_per_user,
        **extra,
    )


def expected_for(window: ArtifactWindow) -> Expected:
    return Expected(
        artifact_type=window.artifact_type,
        tenant=window.tenant,
        surface=window.surface,
        segment=window.segment,
        window_start=window.start,
        window_end_exclusive=window.end,
    )


def catalog_asset(config: AppConfig, partitions_def: dg.PartitionsDefinition):
    @dg.asset(
        key=CATALOG,
        partitions_def=partitions_def,
        group_name="catalog",
        kinds={"polars", "parquet"},
        description="The item catalog of a tenant/surface (CSV or JSONL, SPEC §4), parsed and "
        "stored with its rejects; feeds content_sim.",
    )
    def item_catalog(
        context: dg.AssetExecutionContext, canonical_store: CanonicalStore
    ) -> dg.MaterializeResult:
        entry = config.tenant_by_key(context.partition_key)
        catalog = config.catalog_for(entry)
        if catalog is None:
            return dg.MaterializeResult(metadata={"enabled": False, "reason": "no catalog"})
        data = catalog.path.read_bytes()
        fmt = "jsonl" if catalog.path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"
        frame, rejects = parse_catalog(data, fmt)
        rejects_bytes = b"".join(orjson.dumps(r) + b"\n" for r in rejects)
        marker = canonical_store.write_catalog(
            entry.tenant,
            entry.surface,
            frame,
            rejects_bytes,
            {"path": str(catalog.path), "sha256": hashlib.sha256(data).hexdigest()},
        )
        context.log.info(f"catalog {entry.key}: {frame.height} rows, {len(rejects)} rejects")
        return dg.MaterializeResult(
            metadata={
                "rows": frame.height,
                "rejects": len(rejects),
                "content_hash": marker["content_hash"],
                "source": str(catalog.path),
            }
        )

    return item_catalog


def build_artifact_assets(
    config: AppConfig, partitions_def: dg.PartitionsDefinition, tenant_partitions
) -> list:
    out: list = [aggregates_asset(config, partitions_def), catalog_asset(config, tenant_partitions)]
    for artifact_type in ARTIFACT_TYPES:
        spec = SPECS[artifact_type]
        out.append(artifact_asset(spec, config, partitions_def))
        out.append(artifact_checks(spec, config, partitions_def))
    return out
