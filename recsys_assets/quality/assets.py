"""The `artifact_quality` asset and its blocking checks: thin wiring over `evaluate`.

For day D it scores the artifacts whose window ends with D-1 (the held-out day is D, which
none of them has seen) and, for `no_regression`, the version the manifest points at now, on
the same cases. It is a backtest of the build: publishing day D's artifacts, built by the
same code and config from one more day, waits for it. Its checks run in the daily job, so
a failure stops the run's publish, and the publish sensor waits for them like the others.
"""

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import dagster as dg
import numpy as np
import orjson
import polars as pl

from recsys_assets.aggregates.window import load_window
from recsys_assets.artifacts.assets import artifact_window, disabled_reasons
from recsys_assets.artifacts.staging import ArtifactStore
from recsys_assets.config import ARTIFACT_TYPES, AppConfig, Quality, TenantSurface, scratch_dir
from recsys_assets.events.assets import CANONICAL
from recsys_assets.events.canonical import EVENT_SCHEMA
from recsys_assets.events.spill import bucket_count
from recsys_assets.events.store import CanonicalStore
from recsys_assets.metadata import markdown_table
from recsys_assets.partitions import DATE_DIM, TENANT_SURFACE_DIM, parse_partition_key
from recsys_assets.publish.resources import PublishTargets
from recsys_assets.quality import evaluate as ev
from recsys_assets.quality.live import live_blob, live_versions, seen_by_live
from recsys_assets.runbooks import runbook, with_runbook

QUALITY = dg.AssetKey("artifact_quality")
CHECKS = {
    "beats_baseline": "HR@10 on the type's task >= min_lift_over_popularity x popularity's",
    "no_regression": "HR@10 >= (1 - max_relative_drop) x the live version's, same held-out day",
}


def quality_check_names(artifact_type: str) -> list[str]:
    names = ["no_regression"] if artifact_type == "popularity" else list(CHECKS)
    return [f"{artifact_type}_{name}" for name in names]


def quality_check_keys(artifact_type: str) -> list[dg.AssetCheckKey]:
    return [dg.AssetCheckKey(QUALITY, name) for name in quality_check_names(artifact_type)]


def _previous_day() -> dg.PartitionMapping:
    """Day D's quality reads the artifacts of day D-1 (same tenant/surface)."""
    return dg.MultiPartitionMapping(
        {
            DATE_DIM: dg.DimensionPartitionMapping(
                DATE_DIM, dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
            ),
            TENANT_SURFACE_DIM: dg.DimensionPartitionMapping(
                TENANT_SURFACE_DIM, dg.IdentityPartitionMapping()
            ),
        }
    )


def _history(
    store: CanonicalStore, config: AppConfig, entry: TenantSurface, day: dt.date, days: int
) -> Callable[[int, int], pl.DataFrame]:
    """(user, item) seen in the window of `days` days ending with `day`, by part of the
    users (see `evaluate.hash_part`): only a part's pairs become strings."""
    window = load_window(store, config, entry, day, days, ["user_item_counts"])
    window.wait_saved()
    coded = window.frames["user_item_counts"]

    def part_of(parts: int, part: int) -> pl.DataFrame:
        matrix, rows = coded.matrix, np.arange(coded.rows.len())
        if parts > 1:
            users = pl.DataFrame({"user": coded.rows})
            chosen = users.select(ev.hash_part(pl.col("user"), parts, part)).to_series()
            rows = np.flatnonzero(chosen.to_numpy())
            matrix = matrix[rows]
        return pl.DataFrame(
            {
                "user": coded.rows.gather(pl.Series(np.repeat(rows, np.diff(matrix.indptr)))),
                "item": coded.columns.gather(pl.Series(matrix.indices)),
            }
        )

    return part_of


class _Verdict:
    def __init__(self, passed: bool, message: str, **metadata: Any) -> None:
        self.passed, self.message, self.metadata = passed, message, metadata


def _judge(
    artifact_type: str,
    quality: Quality,
    scores: dict[str, dict[str, dict[str, ev.Metrics]]],
    versions: dict[str, str],
    live_scores: dict[str, ev.Metrics],
    live: dict[str, str],
    unusable: dict[str, str],
) -> dict[str, _Verdict]:
    """Each quality check's verdict for one type, from the scores of every evaluated list."""
    out: dict[str, _Verdict] = {}
    settings = getattr(quality.types, artifact_type)
    name, task = ev.PRIMARY[artifact_type]
    mine = scores.get("candidate", {}).get(name, {}).get(task)
    if mine is None:
        skipped = _Verdict(
            True, f"skipped: no {artifact_type} artifact for the window", skipped=True
        )
        return {check: skipped for check in quality_check_names(artifact_type)}
    few = (
        f"{mine.cases} {task} cases < quality.min_cases {quality.min_cases}"
        if mine.cases < quality.min_cases
        else None
    )

    def skipped(why: str) -> _Verdict:
        return _Verdict(True, f"skipped: {why}", skipped=True, hr=mine.hr)

    if artifact_type != "popularity":
        check = f"{artifact_type}_beats_baseline"
        baseline = scores["candidate"].get("popularity", {}).get(task)
        if not settings.beats_baseline:
            out[check] = skipped(f"quality.types.{artifact_type}.beats_baseline is false")
        elif baseline is None:
            out[check] = skipped("no popularity artifact to compare with")
        elif few:
            out[check] = skipped(few)
        else:
            lift = settings.min_lift_over_popularity
            out[check] = _Verdict(
                mine.hr >= lift * baseline.hr,
                f"{artifact_type} HR@10 {mine.hr:.4f} on {task} ({mine.cases} cases) vs "
                f"popularity {baseline.hr:.4f} x min_lift_over_popularity {lift}",
                hr=mine.hr,
                baseline_hr=baseline.hr,
                cases=mine.cases,
            )
    check = f"{artifact_type}_no_regression"
    live_version = live.get(artifact_type)
    theirs = live_scores.get(artifact_type)
    version = versions[artifact_type]
    if not settings.no_regression:
        out[check] = skipped(f"quality.types.{artifact_type}.no_regression is false")
    elif live_version is None:
        out[check] = skipped("nothing live to compare with")
    elif live_version == version:
        out[check] = _Verdict(
            True,
            f"{artifact_type} {version[:12]} is the live version (HR@10 {mine.hr:.4f} on {task})",
            hr=mine.hr,
        )
    elif theirs is None:
        out[check] = skipped(
            unusable.get(artifact_type, f"live version {live_version} was not scored")
        )
    elif few:
        out[check] = skipped(few)
    else:
        drop = quality.max_relative_drop
        out[check] = _Verdict(
            mine.hr >= (1 - drop) * theirs.hr,
            f"{artifact_type} HR@10 {mine.hr:.4f} on {task} ({mine.cases} cases) vs live "
            f"version {live_version} {theirs.hr:.4f} x (1 - max_relative_drop {drop})",
            hr=mine.hr,
            live_hr=theirs.hr,
            live_version=live_version,
            cases=mine.cases,
        )
    return out


def _report(
    day: dt.date,
    versions: dict[str, str],
    scores: dict[str, dict[str, dict[str, ev.Metrics]]],
    cases: dict[str, int],
) -> dict[str, Any]:
    """The JSON report: what was evaluated, on which day, with every figure."""
    return {
        "v": 1,
        "held_out_day": day.isoformat(),
        "cases": cases,
        "versions": dict(sorted(versions.items())),
        "metrics": {
            role: {
                name: {task: metrics.as_dict() for task, metrics in tasks.items()}
                for name, tasks in sorted(lists.items())
            }
            for role, lists in sorted(scores.items())
        },
    }


def quality_asset(config: AppConfig, partitions_def: dg.PartitionsDefinition):
    specs = [
        dg.AssetCheckSpec(
            name,
            asset=QUALITY,
            description=with_runbook(f"{t}: {CHECKS[name.removeprefix(f'{t}_')]}", name),
            blocking=True,
            partitions_def=partitions_def,
        )
        for t in ARTIFACT_TYPES
        for name in quality_check_names(t)
    ]

    @dg.asset(
        key=QUALITY,
        partitions_def=partitions_def,
        deps=[
            dg.AssetDep(CANONICAL),
            *(
                dg.AssetDep(dg.AssetKey(t), partition_mapping=_previous_day())
                for t in ARTIFACT_TYPES
            ),
        ],
        check_specs=specs,
        group_name="quality",
        kinds={"polars"},
        description="HR@10, NDCG@10, MRR@10 and coverage of the artifacts whose window ends "
        "the day before, on the partition's day (held out), next-item and user-level, with "
        "popularity as the baseline and the live version for no_regression.",
    )
    def artifact_quality(
        context: dg.AssetExecutionContext,
        canonical_store: CanonicalStore,
        artifact_store: ArtifactStore,
        publish_targets: PublishTargets,
    ):
        partition = parse_partition_key(context.partition_key)
        entry = config.tenant(partition.tenant, partition.surface)
        quality = config.quality_for(entry)
        started = time.perf_counter()
        previous = partition.day - dt.timedelta(days=1)
        off = disabled_reasons(config, entry)
        enabled = [t for t, reason in off.items() if reason is None]
        skip_reason = None
        if not quality.enabled:
            skip_reason = "quality.enabled is false"
        elif previous < config.start_date:
            skip_reason = f"no artifact ends before {partition.day}: it is the first day"
        if skip_reason:
            context.log.info(f"artifact_quality {partition}: skipped ({skip_reason})")
            yield dg.MaterializeResult(metadata={"enabled": False, "reason": skip_reason})
            for spec in specs:
                yield dg.AssetCheckResult(
                    check_name=spec.name,
                    passed=True,
                    description=f"skipped: {skip_reason}",
                    metadata={"skipped": True},
                )
            return
        live = live_versions(publish_targets, entry)
        versions: dict[str, str] = {}
        lists: dict[str, dict[str, ev.RankedList]] = {"candidate": {}, "live": {}}
        windows: dict[str, int] = {}
        unusable: dict[str, str] = {}  # type -> why its live version is not scored
        for artifact_type in enabled:
            settings = config.artifact_settings(entry, artifact_type)
            window = artifact_window(entry, artifact_type, previous, settings.window_days)
            staged = artifact_store.current(window)
            if staged is None:
                continue
            versions[artifact_type], blob = staged
            for name, ranked in ev.ranked_lists(artifact_type, blob).items():
                lists["candidate"][name] = ranked
                windows[name] = settings.window_days
            del blob
            theirs = live.get(artifact_type)
            if theirs is None or theirs == versions[artifact_type]:
                continue
            if seen_by_live(publish_targets, entry, artifact_type, theirs, partition.day):
                unusable[artifact_type] = (
                    f"live version {theirs} was built from {partition.day} (a re-run of an "
                    "earlier day): it is no held-out day for it"
                )
                continue
            published = live_blob(publish_targets, entry, artifact_type, theirs)
            if published is None:
                unusable[artifact_type] = (
                    f"the blob of live version {theirs} is not in the object store"
                )
                continue
            lists["live"] |= ev.ranked_lists(artifact_type, published)
        # The held-out day's cases, read from its file a part at a time once it has more
        # than scale.shard_events events (as daily_aggregates does): the same cases.
        with canonical_store.events_file(partition, scratch_dir(config)) as (path, marker):
            parts = bucket_count(marker["counts"]["rows"], config.scale.shard_events)
            if parts > 1:
                context.log.info(
                    f"{partition}: sampling {marker['counts']['rows']:,} held-out events in "
                    f"up to {parts} parts of sessions and of users "
                    f"(scale.shard_events {config.scale.shard_events:,})"
                )
            columns = ["ts", "session_id", "rank", "item_id", "user_id"]
            events = (
                pl.scan_parquet(path)
                .select(columns)
                .cast({name: EVENT_SCHEMA[name] for name in columns})
            )
            next_cases = ev.next_item_cases(events, quality.max_cases, parts)
            # Users with history in each window length, their targets on the held-out day.
            users: dict[int, tuple[pl.DataFrame, pl.DataFrame]] = {}
            for days in sorted(set(windows.values())):
                history = _history(canonical_store, config, entry, previous, days)
                users[days] = ev.user_cases(events, history, quality.max_users, parts)
                del history
        scores: dict[str, dict[str, dict[str, ev.Metrics]]] = {}
        cases = {"next_item": next_cases.height}
        for role, named in lists.items():
            scores[role] = {}
            for name, ranked in named.items():
                targets, seen = users[windows[name]]
                cases[f"user_{windows[name]}d"] = targets.select("user").n_unique()
                keyed_by = ev.LISTS[name][4]
                # Only the rows the cases look up are decoded.
                needed = {
                    "item": pl.concat([next_cases["current"], seen["item"]]),
                    "user": pl.concat([next_cases["user"], targets["user"]]),
                    "global": None,
                }[keyed_by]
                entries = ranked.entries(needed)
                scores[role][name] = {
                    "next_item": ev.evaluate_next_item(entries, keyed_by, next_cases),
                    "user": ev.evaluate_user(entries, keyed_by, targets, seen),
                }
        report = _report(partition.day, versions, scores, cases)
        prefix = "/".join(p for p in (entry.tenant, entry.surface, entry.segment) if p)
        store = artifact_store.store()
        report_key = f"{prefix}/quality/{partition.day.isoformat()}.json"
        store.write_bytes(report_key, orjson.dumps(report, option=orjson.OPT_INDENT_2))
        live_primary = {
            t: scores["live"][ev.PRIMARY[t][0]][ev.PRIMARY[t][1]]
            for t in enabled
            if ev.PRIMARY[t][0] in scores["live"]
        }
        seconds = time.perf_counter() - started
        metadata: dict[str, Any] = {
            f"{name}.{task}.{metric}": value
            for name, tasks in scores["candidate"].items()
            for task, m in tasks.items()
            for metric, value in m.as_dict().items()
        }
        table = [
            [name, task, *m.as_dict().values()]
            for name, tasks in scores["candidate"].items()
            for task, m in tasks.items()
        ]
        metrics = next(
            (list(m.as_dict()) for tasks in scores["candidate"].values() for m in tasks.values()),
            [],
        )
        metadata["preview"] = dg.MetadataValue.md(
            markdown_table(["artifact", "task", *metrics], table) if table else "(no scores)"
        )
        context.log.info(
            f"artifact_quality {partition}: {len(versions)} artifacts of {previous} on "
            f"{next_cases.height:,} next-item cases in {seconds:.2f}s"
        )
        yield dg.MaterializeResult(
            metadata={
                "enabled": True,
                "held_out_day": partition.day.isoformat(),
                "versions": dg.MetadataValue.json(versions),
                "report_path": dg.MetadataValue.path(store.uri(report_key)),
                **metadata,
                "seconds": dg.MetadataValue.float(round(seconds, 3)),
            }
        )
        verdicts: dict[str, _Verdict] = {}
        for artifact_type in ARTIFACT_TYPES:
            if off[artifact_type]:
                for name in quality_check_names(artifact_type):
                    verdicts[name] = _Verdict(True, f"skipped: {off[artifact_type]}", skipped=True)
                continue
            verdicts |= _judge(
                artifact_type, quality, scores, versions, live_primary, live, unusable
            )
        for spec in specs:
            verdict = verdicts[spec.name]
            if not verdict.passed:
                context.log.error(f"{partition}: check {spec.name} failed: {verdict.message}")
            yield dg.AssetCheckResult(
                check_name=spec.name,
                passed=verdict.passed,
                description=verdict.message
                if verdict.passed
                else with_runbook(verdict.message, spec.name),
                metadata={**verdict.metadata, "runbook": dg.MetadataValue.path(runbook(spec.name))},
            )

    return artifact_quality
