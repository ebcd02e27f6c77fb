"""The `publish` asset, the sensor that starts it, and the freshness of "current" (SPEC §5)."""

import datetime as dt
import time

import dagster as dg
import orjson
from dagster import DagsterEventType

from recsys_assets.artifacts.assets import (
    artifact_window,
    caps_for,
    check_names,
    disabled_reason,
    disabled_reasons,
    expected_for,
)
from recsys_assets.artifacts.envelope import window_json
from recsys_assets.artifacts.staging import ArtifactStore
from recsys_assets.artifacts.validate import check_blob
from recsys_assets.config import ARTIFACT_TYPES, AppConfig
from recsys_assets.metadata import markdown_table
from recsys_assets.partitions import parse_partition_key
from recsys_assets.publish import protocol
from recsys_assets.publish.errors import PublishError
from recsys_assets.publish.manifest import version_of_uri
from recsys_assets.publish.resources import PublishTargets
from recsys_assets.publish.status import status
from recsys_assets.quality.assets import QUALITY, quality_check_keys
from recsys_assets.runbooks import with_runbook

PUBLISH = dg.AssetKey("publish")
FRESHNESS = dg.AssetKey("manifest_freshness")
SENSOR_OVERLAP = 200  # storage ids re-read each tick: commits can land out of order


def check_keys(artifact_type: str) -> list[dg.AssetCheckKey]:
    return [
        dg.AssetCheckKey(dg.AssetKey(artifact_type), name) for name in check_names(artifact_type)
    ]


def gate_keys(artifact_type: str) -> list[dg.AssetCheckKey]:
    """Every blocking check a type's publishing waits for: its own and its quality checks."""
    return check_keys(artifact_type) + quality_check_keys(artifact_type)


# What the sensor watches: a new materialization of any of these may make a partition ready.
WATCHED = [dg.AssetKey(t) for t in ARTIFACT_TYPES] + [QUALITY]


def enabled_types(config: AppConfig, tenant_surface: str) -> list[str]:
    reasons = disabled_reasons(config, config.tenant_by_key(tenant_surface))
    return [t for t, reason in reasons.items() if reason is None]


def readiness(
    instance: dg.DagsterInstance, config: AppConfig, partition_keys: list[str]
) -> dict[str, str]:
    """Per partition: "ready", "waiting" (not built or checked yet) or "failed" (a check failed).

    Ready means every enabled artifact type is materialized and each of its blocking checks'
    latest result passed and targets the latest materialization, its quality checks (on
    `artifact_quality` of the same day) included. Disabled types don't count.
    """
    wanted = {key: enabled_types(config, key.split("|", 1)[1]) for key in partition_keys}
    keys = sorted({k for types in wanted.values() for t in types for k in gate_keys(t)})
    infos = instance.event_log_storage.get_asset_check_partition_info(
        keys, partition_keys=partition_keys
    )
    by_key = {(info.check_key, info.partition_key): info for info in infos}
    out = {}
    for partition_key, types in wanted.items():
        state = "ready"
        for check_key in (k for t in types for k in gate_keys(t)):
            info = by_key.get((check_key, partition_key))
            if info is None or info.latest_materialization_storage_id is None:
                state = "waiting"
                continue
            status_value = info.latest_execution_status.value
            if not info.is_current or status_value in ("PLANNED", "SKIPPED"):
                state = "waiting"
            elif status_value != "SUCCEEDED":
                state = "failed"
                break
        out[partition_key] = state
    return out


def failed_checks(instance: dg.DagsterInstance, config: AppConfig, key: str) -> list[str]:
    """The blocking checks of a partition whose result on the latest materialization failed
    (a check not run yet is not a failure: publishing a type staged alone stays possible)."""
    types = enabled_types(config, key.split("|", 1)[1])
    keys = [k for t in types for k in gate_keys(t)]
    infos = instance.event_log_storage.get_asset_check_partition_info(keys, partition_keys=[key])
    return sorted(
        f"{info.check_key.asset_key.to_user_string()}:{info.check_key.name}"
        for info in infos
        if info.is_current and info.latest_execution_status.value == "FAILED"
    )


def _new_materializations(
    instance: dg.DagsterInstance, after: int, seen: set[int]
) -> tuple[dict[str, int], int, set[int]]:
    """Partition key -> newest unseen materialization storage id, over every watched asset.

    The ids of the last SENSOR_OVERLAP are read again (a commit can land below `after`) and
    `seen` tells which of them an earlier tick already took; the new `seen` is returned.
    Only each partition's latest id is read, straight from the event log's index: a fresh
    day of 1000 tenant/surfaces is 7000 materializations, and deserializing their events
    (metadata and all) would be most of a tick.
    """
    touched: dict[str, int] = {}
    newest = after
    now_seen: set[int] = set()
    since = max(0, after - SENSOR_OVERLAP) or None
    for asset_key in WATCHED:
        latest = instance.event_log_storage.get_latest_storage_id_by_partition(
            asset_key, DagsterEventType.ASSET_MATERIALIZATION, after_cursor=since
        )
        for key, storage_id in latest.items():
            now_seen.add(storage_id)
            if storage_id in seen:
                continue
            touched[key] = max(touched.get(key, 0), storage_id)
            newest = max(newest, storage_id)
    return touched, newest, {i for i in now_seen if i > newest - SENSOR_OVERLAP}


def _latest_storage_id(instance: dg.DagsterInstance) -> int:
    newest = 0
    for asset_key in WATCHED:
        result = instance.fetch_materializations(asset_key, limit=1, ascending=False)
        if result.records:
            newest = max(newest, result.records[0].storage_id)
    return newest


def publish_sensor(config: AppConfig) -> dg.SensorDefinition:
    @dg.sensor(
        name="publish_sensor",
        asset_selection=[PUBLISH],
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Publishes a partition once every enabled artifact of it is materialized "
        "and its blocking checks passed. Reads only materializations newer than its cursor.",
    )
    def sensor(context: dg.SensorEvaluationContext):
        if not context.cursor:
            seed = _latest_storage_id(context.instance)
            # What is already there counts as seen, the overlap included: not re-requested.
            _, _, seen = _new_materializations(context.instance, seed, set())
            cursor = {"after": seed, "pending": {}, "seen": sorted(seen)}
            context.update_cursor(orjson.dumps(cursor).decode())
            return dg.SkipReason(f"cursor seeded at storage id {seed}")
        cursor = orjson.loads(context.cursor)
        touched, newest, seen = _new_materializations(
            context.instance, cursor["after"], set(cursor.get("seen", []))
        )
        configured = {entry.key for entry in config.tenants}
        candidates = {
            key: storage_id
            for key, storage_id in {**cursor["pending"], **touched}.items()
            if key.split("|", 1)[-1] in configured  # a tenant removed from the config: skip
        }
        if not candidates:
            context.update_cursor(
                orjson.dumps({"after": newest, "pending": {}, "seen": sorted(seen)}).decode()
            )
            return dg.SkipReason("no new artifact materializations")
        states = readiness(context.instance, config, sorted(candidates))
        requests, pending = [], {}
        for key in sorted(candidates):
            if states[key] == "ready":
                requests.append(
                    dg.RunRequest(
                        partition_key=key,
                        run_key=f"publish:{key}:{candidates[key]}",
                        asset_selection=[PUBLISH],
                    )
                )
            elif states[key] == "waiting":
                pending[key] = candidates[key]
        context.update_cursor(
            orjson.dumps({"after": newest, "pending": pending, "seen": sorted(seen)}).decode()
        )
        return requests or dg.SkipReason(f"{len(pending)} partitions waiting for checks")

    return sensor


def _check_summary(instance: dg.DagsterInstance, artifact_type: str, key: str) -> dict:
    infos = instance.event_log_storage.get_asset_check_partition_info(
        gate_keys(artifact_type), partition_keys=[key]
    )
    return {info.check_key.name: info.latest_execution_status.value.lower() for info in infos}


def _live_difference(instance: dg.DagsterInstance, artifact_type: str, key: str) -> dict:
    """How the type's latest materialization of the partition differs from live, as the
    artifact recorded it (`live_difference.*`): publish does not parse the blobs again."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(artifact_type), asset_partitions=[key]),
        limit=1,
    ).records
    if not records:
        return {}
    metadata = records[0].asset_materialization.metadata
    prefix = "live_difference."
    return {
        name.removeprefix(prefix): getattr(value, "value", value)
        for name, value in metadata.items()
        if name.startswith(prefix)
    }


def publish_asset(config: AppConfig, partitions_def: dg.PartitionsDefinition):
    @dg.asset(
        key=PUBLISH,
        partitions_def=partitions_def,
        deps=[dg.AssetKey(t) for t in ARTIFACT_TYPES],
        group_name="publish",
        description="Publishes the partition's staged artifacts to the object store, records "
        "them in the registry and swaps the current manifest last, by compare-and-swap.",
    )
    def publish(
        context: dg.AssetExecutionContext,
        artifact_store: ArtifactStore,
        publish_targets: PublishTargets,
    ) -> dg.MaterializeResult:
        partition = parse_partition_key(context.partition_key)
        entry = config.tenant(partition.tenant, partition.surface)
        failed = failed_checks(context.instance, config, context.partition_key)
        if failed:
            raise dg.Failure(
                description=with_runbook(
                    "publish refused, current manifest unchanged: blocking checks "
                    f"failed: {', '.join(failed)}",
                    "publish",
                )
            )
        object_store, registry = publish_targets.stores()
        started = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        outcomes: dict[str, dict] = {}
        failures: list[str] = []
        prepared: list[protocol.Prepared] = []
        differences: dict[str, dict] = {}
        try:
            before = registry.manifest(entry.tenant, entry.surface)
        except PublishError as exc:
            raise dg.Failure(
                description=with_runbook(
                    f"publish failed, current manifest unchanged: {exc}", "publish"
                )
            ) from exc
        for artifact_type in ARTIFACT_TYPES:
            settings = config.artifact_settings(entry, artifact_type)
            reason = disabled_reason(config, entry, artifact_type, settings)
            if reason:
                outcomes[artifact_type] = {"action": "ignored", "reason": reason}
                continue
            window = artifact_window(entry, artifact_type, partition.day, settings.window_days)
            staged = artifact_store.current(window)
            if staged is None:
                failures.append(f"{artifact_type}: nothing staged under {window.prefix}")
                continue
            _, blob = staged
            differences[artifact_type] = _live_difference(
                context.instance, artifact_type, context.partition_key
            )
            expected = {
                "artifact_type": artifact_type,
                "tenant": entry.tenant,
                "surface": entry.surface,
                "window": window_json(window.start, window.end),
            }
            if entry.segment:
                expected["segment"] = entry.segment
            caps = caps_for(config, artifact_type, settings)
            try:
                prepared.append(
                    protocol.prepare(
                        registry,
                        object_store,
                        blob,
                        expected=expected,
                        checks=_check_summary(
                            context.instance, artifact_type, context.partition_key
                        ),
                        now=now,
                        check=lambda data, w=window, c=caps: check_blob(data, expected_for(w), c),
                    )
                )
            except PublishError as exc:
                failures.append(f"{artifact_type}: {exc}")
        if failures:  # all or nothing: "current" moves only when every type is good
            raise dg.Failure(
                description=with_runbook(
                    "publish failed, current manifest unchanged: " + "; ".join(failures),
                    "publish",
                ),
                metadata={"failures": dg.MetadataValue.json(failures)},
            )
        manifest = None
        if prepared:
            try:
                actions, manifest = protocol.swap(
                    registry, prepared, now=now, cas_retries=config.publish.cas_retries
                )
            except PublishError as exc:
                raise dg.Failure(
                    description=with_runbook(f"manifest swap failed: {exc}", "publish")
                ) from exc
            for item in prepared:
                action = actions[item.artifact_type]
                outcomes[item.artifact_type] = {"action": action, "version": item.version}
                context.log.info(
                    f"{item.artifact_type} {partition}: {action} {item.version[:12]} ({item.uri})"
                )
        preview = markdown_table(
            ["type", "action", "version", "before"],
            [
                [
                    t,
                    o["action"],
                    o.get("version", o.get("reason", "")),
                    version_of_uri((before or {}).get("current", {}).get(t, "")) or "(none)",
                ]
                for t, o in outcomes.items()
            ],
        )
        # The manifest first: what the online service reads now, and what it read before.
        return dg.MaterializeResult(
            metadata={
                "preview": dg.MetadataValue.md(preview),
                "manifest_uri": registry.store.uri(
                    registry.manifest_key(entry.tenant, entry.surface)
                ),
                "manifest": dg.MetadataValue.json(manifest or before or {}),
                "manifest_before": dg.MetadataValue.json(
                    before or {"note": "first publish: there was no manifest before"}
                ),
                "published": sum(o["action"] == "published" for o in outcomes.values()),
                "outcomes": dg.MetadataValue.json(outcomes),
                "live_difference": dg.MetadataValue.json(
                    {t: d for t, d in differences.items() if d}
                    or {"note": "no live version to compare with"}
                ),
                "seconds": dg.MetadataValue.float(round(time.perf_counter() - started, 3)),
            }
        )

    return publish


def freshness_asset(config: AppConfig, tenant_partitions: dg.PartitionsDefinition):
    spec = dg.AssetCheckSpec(
        "fresh",
        asset=FRESHNESS,
        description=with_runbook(
            "every current pointer's window ended within publish.freshness_hours", "fresh"
        ),
        partitions_def=tenant_partitions,
    )

    @dg.asset(
        key=FRESHNESS,
        partitions_def=tenant_partitions,
        check_specs=[spec],
        group_name="publish",
        description="What is current per type for a tenant/surface and how old it is; "
        "evaluated hourly.",
    )
    def manifest_freshness(
        context: dg.AssetExecutionContext, publish_targets: PublishTargets
    ) -> dg.MaterializeResult:
        entry = config.tenant_by_key(context.partition_key)
        _, registry = publish_targets.stores()
        rows = status(
            registry,
            tenant=entry.tenant,
            surface=entry.surface,
            now=dt.datetime.now(dt.UTC),
            freshness_hours=config.publish.freshness_hours,
        )
        stale = [r.artifact_type for r in rows if r.stale]
        table = {
            r.artifact_type: {
                "version": r.version,
                "window_end": r.window_end,
                "age_hours": None if r.age_hours is None else round(r.age_hours, 2),
                "pinned": r.pinned,
                "stale": r.stale,
            }
            for r in rows
        }
        message = (
            f"stale: {', '.join(stale)} (older than {config.publish.freshness_hours}h)"
            if stale
            else ("nothing published yet" if not rows else "all current windows are fresh")
        )
        return dg.MaterializeResult(
            metadata={
                "current": dg.MetadataValue.json(table),
                "preview": dg.MetadataValue.md(
                    markdown_table(
                        ["type", "version", "window_end", "age_hours", "pinned", "stale"],
                        [[t, *row.values()] for t, row in table.items()],
                    )
                ),
                "stale_types": len(stale),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="fresh",
                    passed=bool(rows) and not stale,
                    description=message if rows and not stale else with_runbook(message, "fresh"),
                    metadata={"stale_types": len(stale)},
                )
            ],
        )

    return manifest_freshness


def freshness_schedule(config: AppConfig, job) -> dg.ScheduleDefinition:
    @dg.schedule(
        job=job,
        cron_schedule="15 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        name="freshness_schedule",
    )
    def schedule(context: dg.ScheduleEvaluationContext):
        hour = context.scheduled_execution_time.strftime("%Y-%m-%dT%H")
        return [
            dg.RunRequest(partition_key=entry.key, run_key=f"freshness:{entry.key}:{hour}")
            for entry in config.tenants
        ]

    return schedule
