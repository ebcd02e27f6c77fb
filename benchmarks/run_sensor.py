"""Benchmark of one tick of `publish_sensor` over a year of history: seconds, peak RSS, and
whether the run requests are the right ones.

    .venv/bin/python benchmarks/run_sensor.py [--tenants 1000] [--days 365] [--json out.json]

The history (built once, cached under benchmarks/.data/sensor-<N>x<D>/, git-ignored; 26
events and about 200 KB a partition: 1000 x 365 is 9.5M events, 73.6 GB, built in about
17 minutes on 2 cores; the script checks the free disk first and stops, saying how much it
needs, when it is short) is a Dagster instance configured like
the repository's dagster.yaml (SQLite storage, run-sharded event log) whose index shard
holds, for each of N tenant/surfaces x D days from 2025-01-01, what a `recsys_daily` run
leaves there for the assets the sensor watches: one materialization per artifact type and
of artifact_quality (with their indexed tags), and the blocking check evaluations of each
(every type's `valid` and `no_collapse`, cooc's `excluded_event_ratio`, and the quality
checks `<type>_beats_baseline` / `<type>_no_regression` on artifact_quality), each
targeting that materialization. Then the next day arrives for all N as runs write it
(planned materializations and checks, then materializations and evaluations); in each
block of `--every` tenant/surfaces one is each of:

    failed     a blocking check failed                               no request, not pending
    unchecked  all five materialized, checks planned but not run     pending
    partial    run in progress: three types built, two checked       pending
    stale      fresh day ready; an older day re-materialized without its checks, whose
               last results target the old materialization          pending (older day)
    backfill   fresh day ready; an older day re-materialized and checked    both requested

and the rest are ready. The config has an item catalog so that content_sim counts.

How it is built fast: the events are real serialized `EventLogEntry` objects, built with
Dagster's classes once per kind and type with placeholders, then filled in per partition by
string substitution and written straight into the index shard's tables (event_logs,
asset_event_tags, asset_check_executions, asset_keys) with executemany, with the indexes
dropped during the load and re-created from their own SQL after. The run shards (one SQLite
file per run) are not written: the sensor never reads them. Planned events are written for
the fresh day only (in the history they would only make the file bigger: the sensor's
queries filter them out by index). Before anything else, a small instance (6 x 5) is built
both ways, in bulk and event by event through `SqliteEventLogStorage.store_event`, and
compared row by row and through the read APIs the sensor uses; the real sensor is ticked on
both, then the missing checks land through `store_event` and it is ticked again.

Ticks measured (each in this process, after `build_definitions`; figures are the process's
RSS, which includes Dagster and the definitions; each is judged against the expected run
requests, partition and run key, and the expected pending map of the cursor it returns):

    seed              no cursor: the sensor seeds it
    fresh day         cursor {"after": last history id, "seen": the materialization ids of the
                      overlap an earlier tick took}: the fresh day's run requests
    fresh day again   the same, warm
    next              the cursor the fresh-day tick returned: nothing new, its pending rechecked
    idle              that cursor without pending: nothing new at all
    all pending       no new materializations, every fresh-day partition pending
    seen=[]           the fresh day from a cursor without `seen` (an older cursor format)
    catch-up K days   (--catchup-days K) cursor K days back, as after an outage or a backfill

The exit status is 1 unless every tick was right.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg  # noqa: E402
from dagster._core.definitions.asset_checks.asset_check_evaluation import (  # noqa: E402
    AssetCheckEvaluation,
    AssetCheckEvaluationPlanned,
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.definitions.dependency import NodeHandle  # noqa: E402
from dagster._core.definitions.partitions.subset.default import (  # noqa: E402
    DefaultPartitionsSubset,
)
from dagster._core.event_api import EventLogRecord  # noqa: E402
from dagster._core.events import (  # noqa: E402
    AssetMaterializationPlannedData,
    DagsterEvent,
    DagsterEventType,
    StepMaterializationData,
)
from dagster._core.events.log import EventLogEntry  # noqa: E402
from dagster._core.execution.plan.handle import StepHandle  # noqa: E402
from dagster._serdes import deserialize_value, serialize_value  # noqa: E402

from benchmarks.measure import report, stage  # noqa: E402
from recsys_assets.config import ARTIFACT_TYPES, REPO_ROOT, parse_config  # noqa: E402
from recsys_assets.graph import DAILY_JOB, build_definitions  # noqa: E402
from recsys_assets.publish.assets import SENSOR_OVERLAP, check_keys  # noqa: E402
from recsys_assets.quality.assets import quality_check_names  # noqa: E402

QUALITY = "artifact_quality"

DATA = Path(__file__).resolve().parent / ".data"
START = dt.date(2025, 1, 1)
BYTES_PER_PARTITION = 200_000  # on disk, as built: 1000 x 365 is 73.6 GB
SURFACE = "home"
CATALOG = REPO_ROOT / "testdata/catalog/sample.csv"
SPECIAL = ("failed", "unchecked", "partial", "stale", "backfill")
# What a recsys_daily run leaves for the sensor: the five types, each with its checks, and
# artifact_quality with every type's quality checks (publishing waits for both).
ASSETS = (*ARTIFACT_TYPES, QUALITY)


def _check_names(asset: str) -> list[str]:
    if asset == QUALITY:
        return [name for t in ARTIFACT_TYPES for name in quality_check_names(t)]
    return [key.name for key in check_keys(asset)]


CHECKS = [(asset, name) for asset in ASSETS for name in _check_names(asset)]
FLUSH_EVENTS = 20_000

# Placeholders in the templates; numbers where the serialized field is a number.
_TS, _MAT_TS, _MAT_ID = 1111111111.5, 2222222222.5, 987654321987
_TOKEN = re.compile(r"@@([A-Z]+)@@|(1111111111\.5)|(2222222222\.5)|(987654321987)")
_NUMBER_TOKENS = {2: "T", 3: "MT", 4: "MID"}

_TYPE_STATS: dict[str, dict[str, int | float]] = {
    "popularity": {"items": 41_233, "items_written": 1000, "events": 1_204_551},
    "cooc": {
        "sessions": 143_881,
        "events": 1_204_551,
        "excluded_sessions": 12,
        "excluded_events": 3_410,
        "excluded_event_ratio": 0.00283,
        "pairs": 2_210_873,
        "rows_written": 1000,
        "neighbors_written": 50_000,
    },
    "implicit": {
        "users": 61_027,
        "items": 41_233,
        "interactions": 803_118,
        "users_kept": 61_027,
        "users_written": 61_027,
    },
    "content_sim": {
        "catalog_rows": 52_000,
        "other_namespace_rows": 1_200,
        "items_without_tags": 310,
        "items": 50_490,
        "items_written": 1000,
        "tags": 2_114,
        "similar_written": 50_000,
    },
    "session_seq": {
        "users": 61_027,
        "users_written": 61_027,
        "transition_items": 38_554,
        "transition_rows_written": 1000,
    },
    QUALITY: {"next_item_cases": 20_000, "user_cases": 20_000, "types": 5, "seconds": 0.612},
}


# --------------------------------------------------------------------------- templates


class Template:
    """A serialized EventLogEntry split at its placeholders, filled in by concatenation."""

    def __init__(self, entry: EventLogEntry) -> None:
        text = serialize_value(entry)
        self.parts: list[str] = []
        self.names: list[str] = []
        position = 0
        for match in _TOKEN.finditer(text):
            self.parts.append(text[position : match.start()])
            self.names.append(match.group(1) or _NUMBER_TOKENS[match.lastindex or 0])
            position = match.end()
        self.parts.append(text[position:])

    def render(self, values: dict[str, str]) -> str:
        out = [self.parts[0]]
        for name, part in zip(self.names, self.parts[1:], strict=True):
            out.append(values[name])
            out.append(part)
        return "".join(out)


def _entry(event: DagsterEvent, step: str, user_message: str = "") -> EventLogEntry:
    return EventLogEntry(
        error_info=None,
        level=10,
        user_message=user_message,
        run_id="@@RUN@@",
        timestamp=_TS,
        step_key=step,
        job_name=DAILY_JOB,
        dagster_event=event,
    )


def _step_event(kind: DagsterEventType, step: str, data: Any, message: str) -> DagsterEvent:
    handle = NodeHandle(step, None)
    return DagsterEvent(
        event_type_value=kind.value,
        job_name=DAILY_JOB,
        step_handle=StepHandle(handle, step),
        node_handle=handle,
        step_kind_value="COMPUTE",
        logging_tags={
            "job_name": DAILY_JOB,
            "op_name": step,
            "resource_fn_name": "None",
            "resource_name": "None",
            "run_id": "@@RUN@@",
            "step_key": step,
        },
        event_specific_data=data,
        message=message,
        pid=4242,
        step_key=step,
    )


def _planned_event(kind: DagsterEventType, step: str, data: Any, message: str) -> DagsterEvent:
    return DagsterEvent(
        event_type_value=kind.value,
        job_name=DAILY_JOB,
        step_handle=None,
        node_handle=None,
        step_kind_value=None,
        logging_tags={},
        event_specific_data=data,
        message=message,
        pid=None,
        step_key=step,
    )


def materialization_template(artifact_type: str) -> Template:
    """Shaped like the artifact asset's MaterializeResult as a run stores it."""
    upstream = {"content_sim": "item_catalog", QUALITY: "popularity"}.get(
        artifact_type, "daily_aggregates"
    )
    metadata = {
        "enabled": True,
        "version": "@@VER@@",
        "path": dg.MetadataValue.path(
            f"file:///srv/recsys/artifacts/@@TENANT@@/@@SURFACE@@/{artifact_type}/"
            "@@DAY@@_@@NEXT@@/@@VER@@.json"
        ),
        "new_version": True,
        "bytes": 412_337,
        "window_start": "@@DAY@@",
        "window_end": "@@NEXT@@",
        "days_present": dg.MetadataValue.json(["@@DAY@@"]),
        "days_missing": dg.MetadataValue.json([]),
        "days_reaggregated": 0,
        "source_hash": "@@SRC@@",
        **_TYPE_STATS[artifact_type],
        "seconds": dg.MetadataValue.float(3.417),
    }
    tags = {
        "dagster/code_version": "@@RUN@@",
        "dagster/data_version": "@@DV@@",
        f"dagster/input_data_version/{upstream}": "@@SRC@@",
        f"dagster/input_event_pointer/{upstream}": "@@PTR@@",
        "dagster/partition/date": "@@DAY@@",
        "dagster/partition/tenant_surface": "@@TSK@@",
    }
    materialization = dg.AssetMaterialization(
        asset_key=dg.AssetKey(artifact_type), partition="@@PK@@", metadata=metadata, tags=tags
    )
    message = f"Materialized value {artifact_type}."
    event = _step_event(
        DagsterEventType.ASSET_MATERIALIZATION,
        artifact_type,
        StepMaterializationData(materialization),
        message,
    )
    return Template(_entry(event, artifact_type, message))


def evaluation_template(artifact_type: str, check_name: str, passed: bool) -> Template:
    if check_name == "valid":
        description = (
            "artifact is valid"
            if passed
            else "items[17].score is not finite; items[18].score is not finite"
        )
        metadata: dict[str, Any] = {"bytes": 412_337, "problems": 0 if passed else 2}
        metadata["version"] = "@@VER@@"
    elif artifact_type == QUALITY:
        hr = 0.3101 if passed else 0.0412
        description = f"HR@10 {hr:.4f} vs the popularity baseline 0.1203 on 20000 cases"
        metadata = {"hr_at_10": hr, "baseline_hr_at_10": 0.1203, "cases": 20_000}
    else:
        ratio = 0.00283 if passed else 0.0712
        description = (
            f"excluded-event ratio {ratio:.6f} (3410 events in 12 sessions over "
            "max_items_per_session 200 / 1204551 events) vs max_excluded_event_ratio 0.05"
        )
        metadata = {"ratio": ratio, "excluded_sessions": 12}
    evaluation = AssetCheckEvaluation(
        asset_key=dg.AssetKey(artifact_type),
        check_name=check_name,
        passed=passed,
        metadata=metadata,
        target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
            run_id="@@RUN@@", storage_id=_MAT_ID, timestamp=_MAT_TS
        ),
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        blocking=True,
        partition="@@PK@@",
    )
    step = f"{artifact_type}_checks"
    message = (
        f"Asset check '{check_name}' on '{artifact_type}' {'passed' if passed else 'failed'}. "
        f"Description: '{description}'"
    )
    event = _step_event(DagsterEventType.ASSET_CHECK_EVALUATION, step, evaluation, message)
    return Template(_entry(event, step, message))


def planned_materialization_template(artifact_type: str) -> Template:
    data = AssetMaterializationPlannedData(asset_key=dg.AssetKey(artifact_type), partition="@@PK@@")
    message = f'{DAILY_JOB} intends to materialize asset ["{artifact_type}"]'
    event = _planned_event(
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED, artifact_type, data, message
    )
    return Template(_entry(event, artifact_type))


def planned_check_template(artifact_type: str, check_name: str) -> Template:
    data = AssetCheckEvaluationPlanned(
        asset_key=dg.AssetKey(artifact_type),
        check_name=check_name,
        partitions_subset=DefaultPartitionsSubset({"@@PK@@"}),
    )
    message = (
        f'{DAILY_JOB} intends to execute asset check {check_name} on asset ["{artifact_type}"]'
    )
    step = f"{artifact_type}_checks"
    event = _planned_event(DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED, step, data, message)
    return Template(_entry(event, step))


# --------------------------------------------------------------------------- scenario


class Ev(NamedTuple):
    """One event of the index shard, serialized, with the columns the bulk writer needs."""

    kind: str  # mat | eval | mat_planned | check_planned
    storage_id: int
    json: str
    run_id: str
    ts: float
    step_key: str
    artifact_type: str
    partition: str
    check_name: str | None = None
    passed: bool | None = None
    mat_id: int | None = None
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Spec:
    tenants: int
    days: int
    every: int = 50

    @property
    def fresh_day(self) -> int:
        return self.days  # day index of the fresh day: the one after the history

    def tenant(self, i: int) -> str:
        return f"t{i:04d}"

    def key(self, day: int, i: int) -> str:
        return f"{(START + dt.timedelta(days=day)).isoformat()}|{self.tenant(i)}__{SURFACE}"

    def category(self, i: int) -> str:
        r = i % self.every
        return SPECIAL[r] if r < len(SPECIAL) else "ready"

    def older_day(self, i: int) -> int:
        """The older day a stale/backfill tenant re-materializes: within the last 30 days."""
        return self.days - 2 - (i // self.every) % min(self.days - 1, 30)

    def failing_check(self, i: int) -> tuple[str, str]:
        return CHECKS[(i // self.every) % len(CHECKS)]


_DB_KEYS = {t: dg.AssetKey(t).to_string() for t in ASSETS}


def _db_key(artifact_type: str) -> str:
    return _DB_KEYS[artifact_type]


@dataclass
class Scenario:
    """Generates the events in storage-id order and what the sensor should make of them."""

    spec: Spec
    next_id: int = 1
    templates: dict[tuple, Template] = field(default_factory=dict)
    history_end_id: int = 0
    # key -> newest materialization id written since the history, and the expected state
    fresh_ids: dict[str, int] = field(default_factory=dict)
    ready: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    # partition key -> (day, tenant index, attempt, types built, types checked) of the runs
    # left incomplete
    incomplete: dict[str, tuple[int, int, int, tuple[str, ...], tuple[str, ...]]] = field(
        default_factory=dict
    )
    # key -> type -> (materialization id, its timestamp, the artifact version)
    mat_log: dict[str, dict[str, tuple[int, float, str]]] = field(default_factory=dict)
    now: float = 0.0  # the clock: every event is 13 ms after the one before

    def _tick(self) -> float:
        self.now = round(self.now + 0.013, 3)
        return self.now

    def __post_init__(self) -> None:
        for t in ASSETS:
            self.templates["mat", t] = materialization_template(t)
            self.templates["mat_planned", t] = planned_materialization_template(t)
        for t, c in CHECKS:
            self.templates["check_planned", t, c] = planned_check_template(t, c)
            for passed in (True, False):
                self.templates["eval", t, c, passed] = evaluation_template(t, c, passed)

    # one run of recsys_daily for a partition (only its artifact-asset events)
    def run(
        self,
        day: int,
        i: int,
        attempt: int,
        t0: float,
        *,
        planned: bool,
        built: tuple[str, ...] = ASSETS,
        checked: tuple[str, ...] = ASSETS,
        failing: tuple[str, str] | None = None,
    ) -> Iterator[Ev]:
        spec = self.spec
        date = START + dt.timedelta(days=day)
        key = spec.key(day, i)
        run_id = _run_id(day, i, attempt)
        seed = hashlib.sha256(key.encode() + bytes([attempt])).hexdigest()
        values = {
            "RUN": run_id,
            "PK": key,
            "DAY": date.isoformat(),
            "NEXT": (date + dt.timedelta(days=1)).isoformat(),
            "TENANT": spec.tenant(i),
            "SURFACE": SURFACE,
            "TSK": f"{spec.tenant(i)}__{SURFACE}",
            "SRC": seed,
            "PTR": str(max(1, self.next_id - 7)),
        }
        self.now = t0

        def emit(kind: str, template_key: tuple, artifact_type: str, step: str, **extra) -> Ev:
            now = self._tick()
            values["T"] = repr(now)
            ev = Ev(
                kind,
                self.next_id,
                self.templates[template_key].render(values),
                run_id,
                now,
                step,
                artifact_type,
                key,
                **extra,
            )
            self.next_id += 1
            return ev

        if planned:
            for t in ASSETS:
                yield emit("mat_planned", ("mat_planned", t), t, t)
            for t, c in CHECKS:
                yield emit("check_planned", ("check_planned", t, c), t, f"{t}_checks", check_name=c)
        for t in ASSETS:
            if t in built:
                version = hashlib.sha256(f"{seed}{t}".encode()).hexdigest()
                values["VER"] = version
                values["DV"] = version[::-1]
                mat = emit(
                    "mat",
                    ("mat", t),
                    t,
                    t,
                    tags=(
                        ("dagster/data_version", values["DV"]),
                        ("dagster/partition/date", values["DAY"]),
                        ("dagster/partition/tenant_surface", values["TSK"]),
                    ),
                )
                self.mat_log.setdefault(key, {})[t] = (mat.storage_id, mat.ts, version)
                yield mat
            if t in checked:
                yield from self.evaluations(key, run_id, t, values, failing)

    def evaluations(
        self,
        key: str,
        run_id: str,
        t: str,
        values: dict[str, str],
        failing: tuple[str, str] | None = None,
    ) -> Iterator[Ev]:
        mat_id, mat_ts, version = self.mat_log[key][t]
        for c in _check_names(t):
            passed = failing != (t, c)
            now = self._tick()
            values.update(T=repr(now), MT=repr(mat_ts), MID=str(mat_id), VER=version)
            values.update(RUN=run_id, PK=key)
            yield Ev(
                "eval",
                self.next_id,
                self.templates["eval", t, c, passed].render(values),
                run_id,
                now,
                f"{t}_checks",
                t,
                key,
                check_name=c,
                passed=passed,
                mat_id=mat_id,
            )
            self.next_id += 1

    def history(self) -> Iterator[Ev]:
        spec = self.spec
        for day in range(spec.days):
            t0 = _day_start(day + 1) + 3600  # the daily schedule runs at 01:00 UTC
            for i in range(spec.tenants):
                yield from self.run(day, i, 0, t0 + i * 0.9, planned=False)
                del self.mat_log[spec.key(day, i)]
        self.history_end_id = self.next_id - 1

    def fresh(self) -> Iterator[Ev]:
        """The fresh day for every tenant/surface, and the older days some re-materialize."""
        spec = self.spec
        day = spec.fresh_day
        t0 = _day_start(day + 1) + 3600
        for i in range(spec.tenants):
            category = spec.category(i)
            key = spec.key(day, i)
            start = self.next_id
            ts = t0 + i * 0.9
            if category == "failed":
                yield from self.run(day, i, 0, ts, planned=True, failing=spec.failing_check(i))
                self.failed.add(key)
            elif category == "unchecked":
                yield from self.run(day, i, 0, ts, planned=True, checked=())
                self.incomplete[key] = (day, i, 0, ASSETS, ())
                self.waiting.add(key)
            elif category == "partial":
                built, checked = ASSETS[:3], ASSETS[:2]
                yield from self.run(day, i, 0, ts, planned=True, built=built, checked=checked)
                self.incomplete[key] = (day, i, 0, built, checked)
                self.waiting.add(key)
            else:
                yield from self.run(day, i, 0, ts, planned=True)
                self.ready.add(key)
            self._note_fresh(key, start)
            if category in ("stale", "backfill"):
                older = spec.older_day(i)
                old_key = spec.key(older, i)
                start = self.next_id
                if category == "stale":  # materialized again without its checks
                    yield from self.run(older, i, 1, ts + 0.5, planned=False, checked=())
                    self.waiting.add(old_key)
                else:
                    yield from self.run(older, i, 1, ts + 0.5, planned=True)
                    self.ready.add(old_key)
                self._note_fresh(old_key, start)

    def _note_fresh(self, key: str, start: int) -> None:
        newest = max((mat[0] for mat in self.mat_log.get(key, {}).values()), default=0)
        if newest >= start:
            self.fresh_ids[key] = newest

    def completion(self) -> Iterator[Ev]:
        """What the incomplete runs write when they finish (verification only)."""
        for key, (day, i, attempt, built, checked) in sorted(self.incomplete.items()):
            run_id = _run_id(day, i, attempt)
            ts = _day_start(day + 1) + 7200 + i
            values = {"RUN": run_id, "PK": key}
            for t in ASSETS:
                if t not in built:  # the same run goes on: one more type materialized
                    yield from self.run(day, i, attempt, ts, planned=False, built=(t,), checked=())
                    ts = self.now
                if t not in checked:
                    yield from self.evaluations(key, run_id, t, values)
                    ts = self.now
            self.fresh_ids[key] = max(mat[0] for mat in self.mat_log[key].values())

    # helpers for the expected outcomes

    def history_materializations(self, after: int, up_to: int) -> dict[str, int]:
        """Partition key -> newest artifact materialization id in (after, up_to] (history)."""
        per_run = len(ASSETS) + len(CHECKS)
        out: dict[str, int] = {}
        first = max(0, (after - 1) // per_run)
        last = min(self.spec.days * self.spec.tenants, (up_to - 1) // per_run + 1)
        for run in range(first, last):
            day, i = divmod(run, self.spec.tenants)
            key = self.spec.key(day, i)
            for offset in _mat_offsets():
                storage_id = 1 + run * per_run + offset
                if after < storage_id <= up_to:
                    out[key] = max(out.get(key, 0), storage_id)
        return out


def _run_id(day: int, i: int, attempt: int) -> str:
    return str(uuid.UUID(int=(attempt << 96) | (day << 48) | (i << 16) | 0x4000))


def _mat_offsets() -> list[int]:
    offsets, position = [], 0
    for t in ASSETS:
        offsets.append(position)
        position += 1 + len(_check_names(t))
    return offsets


def _day_start(day: int) -> float:
    return dt.datetime.combine(START + dt.timedelta(days=day), dt.time(), dt.UTC).timestamp()


# --------------------------------------------------------------------------- writing


_SECONDS: dict[int, str] = {}


def _db_time(ts: float) -> str:
    """As SQLAlchemy stores Dagster's naive-UTC datetimes in SQLite (`ts` in whole ms)."""
    ms = round(ts * 1000)
    second, rest = divmod(ms, 1000)
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        text = _SECONDS[second] = dt.datetime.fromtimestamp(second, dt.UTC).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
    return f"{text}.{rest * 1000:06d}"


_EVENT_TYPE = {
    "mat": DagsterEventType.ASSET_MATERIALIZATION.value,
    "eval": DagsterEventType.ASSET_CHECK_EVALUATION.value,
    "mat_planned": DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value,
    "check_planned": DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED.value,
}
_INDEXED_TABLES = ("event_logs", "asset_event_tags", "asset_check_executions")


def instance_dir(root: Path) -> Path:
    """Write a dagster.yaml like the repository's (SQLite storage) for `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dagster.yaml").write_text(
        f"storage:\n  sqlite:\n    base_dir: {json.dumps(str(root))}\n"
        "telemetry:\n  enabled: false\n"
    )
    return root


@contextmanager
def open_instance(root: Path) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(str(root)) as instance:
        yield instance


def index_db(root: Path) -> Path:
    return root / "history" / "runs" / "index.db"


class BulkWriter:
    """Writes events into the index shard as `SqliteEventLogStorage.store_event` would."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("PRAGMA cache_size=-262144")
        self.conn.execute("PRAGMA temp_store=MEMORY")  # index sorts: no temp files on disk
        self.indexes = self.conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL "
            f"AND tbl_name IN {_INDEXED_TABLES}"
        ).fetchall()
        for name, _ in self.indexes:
            self.conn.execute(f"DROP INDEX {name}")
        self.events: list[tuple] = []
        self.tags: list[tuple] = []
        self.checks: list[list] = []
        self.planned: dict[tuple, list] = {}
        self.flushed_planned: set[tuple] = set()
        self.assets: dict[str, dict[str, Any]] = {}  # in order of first appearance
        self.count = 0

    def add(self, ev: Ev) -> None:
        when = _db_time(ev.ts)
        asset_key = _db_key(ev.artifact_type)
        on_asset = ev.kind in ("mat", "mat_planned")
        self.events.append(
            (
                ev.storage_id,
                ev.run_id,
                ev.json,
                _EVENT_TYPE[ev.kind],
                when,
                ev.step_key,
                asset_key if on_asset else None,
                ev.partition if on_asset else None,
            )
        )
        if on_asset:
            entry = self.assets.setdefault(asset_key, {"created": when[:19]})
            entry["run_id"], entry["when"] = ev.run_id, when
            if ev.kind == "mat":
                entry["mat"] = (ev.storage_id, ev.json)
                self.tags.extend((ev.storage_id, asset_key, k, v, when) for k, v in ev.tags)
        check_id = (asset_key, ev.check_name, ev.run_id, ev.partition)
        if ev.kind == "check_planned":
            row = [asset_key, ev.check_name, ev.partition, ev.run_id, "PLANNED", ev.json, when]
            row += [ev.storage_id, None, when[:19]]
            self.checks.append(row)
            self.planned[check_id] = row
        elif ev.kind == "eval":
            status = "SUCCEEDED" if ev.passed else "FAILED"
            update = [status, ev.json, when, ev.storage_id, ev.mat_id]
            if check_id in self.planned:
                self.planned.pop(check_id)[4:9] = update
            elif check_id in self.flushed_planned:
                self.conn.execute(
                    "UPDATE asset_check_executions SET execution_status=?, evaluation_event=?, "
                    "evaluation_event_timestamp=?, evaluation_event_storage_id=?, "
                    "materialization_event_storage_id=? WHERE asset_key=? AND check_name=? "
                    "AND run_id=? AND partition=?",
                    (*update, *check_id),
                )
            else:
                row = [asset_key, ev.check_name, ev.partition, ev.run_id]
                self.checks.append(row + update + [when[:19]])
        self.count += 1
        if len(self.events) >= FLUSH_EVENTS:
            self.flush()

    def flush(self) -> None:
        self.conn.execute("BEGIN")
        self.conn.executemany(
            "INSERT INTO event_logs (id, run_id, event, dagster_event_type, timestamp, step_key, "
            "asset_key, partition) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            self.events,
        )
        self.conn.executemany(
            "INSERT INTO asset_event_tags (event_id, asset_key, key, value, event_timestamp) "
            "VALUES (?, ?, ?, ?, ?)",
            self.tags,
        )
        self.conn.executemany(
            "INSERT INTO asset_check_executions (asset_key, check_name, partition, run_id, "
            "execution_status, evaluation_event, evaluation_event_timestamp, "
            "evaluation_event_storage_id, materialization_event_storage_id, create_timestamp) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.checks,
        )
        self.conn.execute("COMMIT")
        self.flushed_planned.update(self.planned)
        self.events, self.tags, self.checks, self.planned = [], [], [], {}

    def close(self) -> None:
        """Flush, write the asset_keys rows, re-create the indexes, go back to WAL."""
        self.flush()
        self.conn.execute("BEGIN")
        for asset_key, entry in self.assets.items():
            storage_id, text = entry["mat"]
            record = serialize_value(
                EventLogRecord(
                    storage_id=storage_id,
                    event_log_entry=deserialize_value(text, EventLogEntry),
                )
            )
            values = (record, entry["run_id"], entry["when"], entry["created"], asset_key)
            exists = self.conn.execute(
                "SELECT 1 FROM asset_keys WHERE asset_key=?", (asset_key,)
            ).fetchone()
            if exists:
                self.conn.execute(
                    "UPDATE asset_keys SET last_materialization=?, last_run_id=?, "
                    "last_materialization_timestamp=? WHERE asset_key=?",
                    (*values[:3], asset_key),
                )
            else:
                self.conn.execute(
                    "INSERT INTO asset_keys (last_materialization, last_run_id, "
                    "last_materialization_timestamp, create_timestamp, asset_key) "
                    "VALUES (?, ?, ?, ?, ?)",
                    values,
                )
        self.conn.execute("COMMIT")
        for _, sql in self.indexes:
            self.conn.execute(sql)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.close()


def write_bulk(root: Path, events: Iterator[Ev]) -> int:
    with open_instance(instance_dir(root)):  # creates the databases as Dagster does
        pass
    writer = BulkWriter(index_db(root))
    for ev in events:
        writer.add(ev)
    writer.close()
    return writer.count


def write_one_by_one(instance: dg.DagsterInstance, events: Iterator[Ev]) -> int:
    count = 0
    for ev in events:
        before = instance.event_log_storage.get_maximum_record_id() or 0
        instance.event_log_storage.store_event(deserialize_value(ev.json, EventLogEntry))
        assert before + 1 == ev.storage_id, (before, ev)
        count += 1
    return count


# --------------------------------------------------------------------------- the sensor


def app_config(spec: Spec, out_dir: Path):
    return parse_config(
        {
            "start_date": START.isoformat(),
            "tenants": [
                {"tenant": spec.tenant(i), "surface": SURFACE} for i in range(spec.tenants)
            ],
            "out_dir": str(out_dir),
            "catalog": {"path": str(CATALOG)},  # so that content_sim is enabled and counts
        }
    )


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: dict | None):
    sensor = defs.resolve_sensor_def("publish_sensor")
    context = dg.build_sensor_context(
        instance=instance,
        cursor=None if cursor is None else json.dumps(cursor),
        definitions=defs,
    )
    result = sensor.evaluate_tick(context)
    requests = {r.partition_key: r.run_key for r in result.run_requests or []}
    return requests, json.loads(result.cursor) if result.cursor else None, result.skip_message


def expected_requests(ids: dict[str, int]) -> dict[str, str]:
    return {key: f"publish:{key}:{storage_id}" for key, storage_id in ids.items()}


def judge(
    requests: dict[str, str],
    cursor: dict | None,
    want_requests: dict[str, str],
    want_pending: dict[str, int] | None,
) -> dict[str, Any]:
    """Compare a tick's output with what it should be; returns the figures for the report."""
    pending = (cursor or {}).get("pending", {})
    missing = sorted(set(want_requests) - set(requests))
    extra = sorted(set(requests) - set(want_requests))
    wrong_key = sorted(
        k for k in set(requests) & set(want_requests) if requests[k] != want_requests[k]
    )
    ok = not missing and not extra and not wrong_key
    if want_pending is not None:
        ok = ok and pending == want_pending
    out: dict[str, Any] = {
        "requests": len(requests),
        "expected": len(want_requests),
        "pending": len(pending),
        "correct": ok,
    }
    if missing:
        out["missing"] = f"{len(missing)} e.g. {missing[:2]}"
    if extra:
        out["extra"] = f"{len(extra)} e.g. {extra[:2]}"
    if wrong_key:
        out["wrong_run_key"] = f"{len(wrong_key)} e.g. {wrong_key[:2]}"
    if want_pending is not None and pending != want_pending:
        out["pending_expected"] = len(want_pending)
    return out


def steady_cursor(scenario: Scenario, after: int) -> dict:
    """The cursor an earlier tick that read up to `after` would have left."""
    per_run, offsets = len(ASSETS) + len(CHECKS), _mat_offsets()

    def is_mat(storage_id: int) -> bool:
        return (storage_id - 1) % per_run in offsets and storage_id <= scenario.history_end_id

    newest = next((i for i in range(after, 0, -1) if is_mat(i)), after)
    seen = [i for i in range(max(1, newest - SENSOR_OVERLAP + 1), newest + 1) if is_mat(i)]
    return {"after": newest, "pending": {}, "seen": seen}


# --------------------------------------------------------------------------- verification


def _rows(path: Path, query: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


_COMPARED = {
    "event_logs": "SELECT * FROM event_logs ORDER BY id",
    "asset_event_tags": "SELECT * FROM asset_event_tags ORDER BY id",
    "asset_check_executions": "SELECT id, asset_key, check_name, partition, run_id, "
    "execution_status, evaluation_event, evaluation_event_timestamp, "
    "evaluation_event_storage_id, materialization_event_storage_id "
    "FROM asset_check_executions ORDER BY id",
    "asset_keys": "SELECT id, asset_key, last_materialization, last_run_id, asset_details, "
    "wipe_timestamp, last_materialization_timestamp, tags, cached_status_data "
    "FROM asset_keys ORDER BY id",
    "schema": "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name",
    "journal_mode": "PRAGMA journal_mode",
}


def compare_storages(
    ref: dg.DagsterInstance, bulk: dg.DagsterInstance, keys: list[str]
) -> list[str]:
    """Differences between the two instances, as the read APIs return them."""
    problems = []
    a, b = ref.event_log_storage, bulk.event_log_storage
    all_check_keys = [dg.AssetCheckKey(dg.AssetKey(a), c) for a, c in CHECKS]

    def same(label: str, x: Any, y: Any) -> None:
        if x != y:
            problems.append(f"{label} differs")

    for t in ASSETS:
        asset = dg.AssetKey(t)
        records = [
            [
                (r.storage_id, r.event_log_entry, r.partition_key)
                for r in s.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=asset), limit=10_000, ascending=True
                ).records
            ]
            for s in (a, b)
        ]
        same(f"fetch_materializations({t})", *records)
        after = records[0][len(records[0]) // 2][0]
        same(
            f"fetch_materializations({t}, after)",
            *[
                [
                    r.storage_id
                    for r in s.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=asset, after_storage_id=after),
                        limit=3,
                        ascending=True,
                    ).records
                ]
                for s in (a, b)
            ],
        )
        same(
            f"get_materialized_partitions({t})",
            *[s.get_materialized_partitions(asset) for s in (a, b)],
        )
        same(
            f"get_latest_storage_id_by_partition({t})",
            *[
                s.get_latest_storage_id_by_partition(asset, DagsterEventType.ASSET_MATERIALIZATION)
                for s in (a, b)
            ],
        )
    same(
        "get_asset_records",
        *[
            [r.asset_entry for r in s.get_asset_records([dg.AssetKey(t) for t in ASSETS])]
            for s in (a, b)
        ],
    )
    for partition_keys in (keys, keys[: len(keys) // 3], None):
        infos = [
            sorted(
                s.get_asset_check_partition_info(all_check_keys, partition_keys=partition_keys),
                key=lambda info: (info.check_key.to_user_string(), info.partition_key),
            )
            for s in (a, b)
        ]
        same(f"get_asset_check_partition_info({len(partition_keys or keys)} keys)", *infos)
        if infos[0] and len(infos[0]) != len(all_check_keys) * len(partition_keys or keys):
            problems.append(f"get_asset_check_partition_info: {len(infos[0])} infos")
    for check_key in all_check_keys:
        history = [
            [
                (r.id, r.run_id, r.status, r.event, r.partition)
                for r in s.get_asset_check_execution_history(check_key, limit=10_000)
            ]
            for s in (a, b)
        ]
        same(f"get_asset_check_execution_history({check_key.to_user_string()})", *history)
    return problems


def verify(workdir: Path, extra: dict[str, Any]) -> bool:
    """Build a small instance in bulk and one event at a time; compare; tick the sensor."""
    spec = Spec(tenants=6, days=5, every=6)
    ref_root, bulk_root = instance_dir(workdir / "ref"), workdir / "bulk"
    ref_scenario, bulk_scenario = Scenario(spec), Scenario(spec)
    with open_instance(ref_root) as ref:
        events = write_one_by_one(ref, ref_scenario.history())
        events += write_one_by_one(ref, ref_scenario.fresh())
    write_bulk(bulk_root, _chain(bulk_scenario.history(), bulk_scenario.fresh()))
    extra["events"] = events
    problems = []
    for table, query in _COMPARED.items():
        ref_rows, bulk_rows = (_rows(index_db(r), query) for r in (ref_root, bulk_root))
        if ref_rows != bulk_rows:
            diff = next(
                (i for i, (x, y) in enumerate(zip(ref_rows, bulk_rows, strict=False)) if x != y),
                min(len(ref_rows), len(bulk_rows)),
            )
            problems.append(f"{table}: rows differ from row {diff}")
    keys = sorted({spec.key(d, i) for d in range(spec.days + 1) for i in range(spec.tenants)})
    config = app_config(spec, workdir / "out")
    defs = build_definitions(config)
    scenario = bulk_scenario
    want = expected_requests({k: scenario.fresh_ids[k] for k in scenario.ready})
    want_pending = {k: scenario.fresh_ids[k] for k in scenario.waiting}
    with open_instance(ref_root) as ref, open_instance(bulk_root) as bulk:
        problems += compare_storages(ref, bulk, keys)
        cursor = steady_cursor(scenario, scenario.history_end_id)
        outcomes = [tick(defs, inst, cursor) for inst in (ref, bulk)]
        if outcomes[0][:2] != outcomes[1][:2]:
            problems.append("the sensor ticks differently on the two instances")
        verdict = judge(*outcomes[1][:2], want, want_pending)
        if not verdict["correct"]:
            problems.append(f"fresh-day tick: {verdict}")
        # the incomplete runs finish, through the real store_event, on both instances
        ref_done, bulk_done = Scenario(spec), Scenario(spec)
        for done in (ref_done, bulk_done):
            for _ in _chain(done.history(), done.fresh()):
                pass
        write_one_by_one(ref, ref_done.completion())
        write_one_by_one(bulk, bulk_done.completion())
        problems += compare_storages(ref, bulk, keys)
        ref_rows, bulk_rows = (
            _rows(index_db(r), _COMPARED["asset_check_executions"]) for r in (ref_root, bulk_root)
        )
        if ref_rows != bulk_rows:
            problems.append("asset_check_executions differ after the checks landed")
        after_cursor = outcomes[1][1]
        later = [tick(defs, inst, after_cursor) for inst in (ref, bulk)]
        if later[0][:2] != later[1][:2]:
            problems.append("the sensor ticks differently on the two instances after checks")
        finished = {k for k in bulk_done.incomplete}
        want_later = expected_requests({k: bulk_done.fresh_ids[k] for k in finished})
        want_later_pending = {k: want_pending[k] for k in want_pending if k not in finished}
        verdict_later = judge(*later[1][:2], want_later, want_later_pending)
        if not verdict_later["correct"]:
            problems.append(f"tick after the checks landed: {verdict_later}")
    extra["fresh_tick"] = f"{verdict['requests']}/{verdict['expected']}"
    extra["pending"] = verdict["pending"]
    extra["after_checks"] = f"{verdict_later['requests']}/{verdict_later['expected']}"
    for problem in problems:
        print(f"verify: {problem}", file=sys.stderr)
    extra["ok"] = not problems
    return not problems


def _chain(*iterators: Iterator[Ev]) -> Iterator[Ev]:
    for iterator in iterators:
        yield from iterator


# --------------------------------------------------------------------------- dataset


def dataset_dir(spec: Spec) -> Path:
    return DATA / f"sensor-{spec.tenants}x{spec.days}"


def room_for(spec: Spec) -> str | None:
    """Why the dataset cannot be built here (not enough free disk), or None."""
    need = spec.tenants * (spec.days + 1) * BYTES_PER_PARTITION
    old = dataset_dir(spec)  # a stale build of the same size is removed first
    free = shutil.disk_usage(DATA).free
    free += sum(p.stat().st_size for p in old.rglob("*") if p.is_file()) if old.exists() else 0
    if free >= need:
        return None
    return (
        f"{spec.tenants} x {spec.days} needs about {need / 1e9:.0f} GB under {DATA} "
        f"({BYTES_PER_PARTITION // 1000} KB a partition); {free / 1e9:.0f} GB are free"
    )


def build_dataset(spec: Spec) -> dict[str, Any]:
    """Write the instance and manifest.json (last, so that a complete dataset has one)."""
    root = dataset_dir(spec)
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    scenario = Scenario(spec)
    count = write_bulk(root, _chain(scenario.history(), scenario.fresh()))
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    manifest = {
        "tenants": spec.tenants,
        "days": spec.days,
        "every": spec.every,
        "events": count,
        "history_end_id": scenario.history_end_id,
        "newest_id": scenario.next_id - 1,
        "fresh_ids": scenario.fresh_ids,
        "ready": sorted(scenario.ready),
        "waiting": sorted(scenario.waiting),
        "failed": sorted(scenario.failed),
        "build_seconds": round(time.perf_counter() - started, 1),
        "bytes": size,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def load_manifest(spec: Spec) -> dict[str, Any] | None:
    path = dataset_dir(spec) / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("every") != spec.every:
        return None
    return manifest


# --------------------------------------------------------------------------- main


def measure_ticks(spec: Spec, manifest: dict, results: list, catchup_days: int) -> bool:
    scenario = Scenario(spec)  # for the layout arithmetic only: nothing is generated
    scenario.history_end_id = manifest["history_end_id"]
    fresh_ids: dict[str, int] = manifest["fresh_ids"]
    ready, waiting = set(manifest["ready"]), set(manifest["waiting"])
    want_fresh = expected_requests({k: fresh_ids[k] for k in ready})
    want_pending = {k: fresh_ids[k] for k in waiting}
    all_ok = True

    def measured(name: str, cursor, want, want_pend):
        cpu = time.process_time()
        with stage(name, results) as s:
            requests, new_cursor, skip = tick(defs, instance, cursor)
        return finish(s, cpu, requests, new_cursor, skip, want, want_pend)

    def finish(s, cpu, requests, new_cursor, skip, want, want_pend):
        nonlocal all_ok
        s.extra["cpu_s"] = round(time.process_time() - cpu, 2)  # wall time varies with load
        s.extra |= judge(requests, new_cursor, want, want_pend) if want is not None else {}
        if skip and not requests:
            s.extra["skip"] = repr(skip[:40])
        s.extra["rss_delta_mb"] = round(s.peak_rss_mb - s.rss_start_mb)
        all_ok = all_ok and s.extra.get("correct", True)
        return requests, new_cursor

    with tempfile.TemporaryDirectory(prefix="bench-sensor-") as tmp:
        with stage("definitions", results) as s:
            defs = build_definitions(app_config(spec, Path(tmp)))
            s.extra["tenants"] = spec.tenants
        with open_instance(dataset_dir(spec)) as instance:
            measured("tick seed (no cursor)", None, {}, {})
            steady = steady_cursor(scenario, manifest["history_end_id"])
            _, after_fresh = measured("tick fresh day", steady, want_fresh, want_pending)
            measured("tick fresh day again", steady, want_fresh, want_pending)
            measured("tick next (pending only)", after_fresh, {}, want_pending)
            idle = {**after_fresh, "pending": {}}
            measured("tick idle (nothing new)", idle, {}, {})
            fresh_keys = {k for k in fresh_ids if k.startswith(_day_text(spec.fresh_day))}
            all_pending = {**idle, "pending": {k: fresh_ids[k] for k in fresh_keys}}
            measured(
                f"tick all pending ({len(fresh_keys)})",
                all_pending,
                {k: v for k, v in want_fresh.items() if k in fresh_keys},
                {k: v for k, v in want_pending.items() if k in fresh_keys},
            )
            # a cursor without `seen` (written before the sensor recorded it): the overlap
            # before it is taken as new
            seed = manifest["history_end_id"]
            overlap = scenario.history_materializations(seed - SENSOR_OVERLAP, seed)
            measured(
                "tick fresh day, seen=[]",
                {"after": seed, "pending": {}, "seen": []},
                {**want_fresh, **expected_requests(overlap)},
                want_pending,
            )
            if catchup_days:
                day = spec.days - catchup_days
                after = day * spec.tenants * (len(ASSETS) + len(CHECKS))
                back = scenario.history_materializations(after, manifest["history_end_id"])
                want = expected_requests({k: v for k, v in back.items() if k not in waiting})
                want |= want_fresh
                measured(
                    f"tick catch-up {catchup_days} days",
                    steady_cursor(scenario, after),
                    want,
                    want_pending,
                )
    return all_ok


def _day_text(day: int) -> str:
    return (START + dt.timedelta(days=day)).isoformat()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365, help="days of history (>= 2)")
    parser.add_argument("--every", type=int, default=50, help="one of each special case per")
    parser.add_argument("--catchup-days", type=int, default=0, help="also tick K days back")
    parser.add_argument("--rebuild", action="store_true", help="ignore the cached instance")
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument("--json", default=None, help="write the results here too")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.days < 2 or args.every < len(SPECIAL) + 1:
        parser.error(f"--days must be >= 2 and --every >= {len(SPECIAL) + 1}")
    spec = Spec(args.tenants, args.days, args.every)
    if args.build_only:
        manifest = build_dataset(spec)
        print(f"{manifest['events']} events, {manifest['bytes'] / 1e9:.1f} GB")
        return 0

    results: list = []
    if not args.skip_verify:
        with (
            tempfile.TemporaryDirectory(prefix="bench-sensor-verify-") as tmp,
            stage("verify 6x5 (bulk == store_event)", results) as s,
        ):
            verified = verify(Path(tmp), s.extra)
        if not verified:
            report(results, args.json)
            print("verification failed: the bulk-written instance is not what Dagster writes")
            return 1

    manifest = None if args.rebuild else load_manifest(spec)
    name = f"build {spec.tenants}x{spec.days}"
    if manifest is None:
        DATA.mkdir(parents=True, exist_ok=True)
        if (why := room_for(spec)) is not None:
            report(results, args.json)
            print(f"not built: {why}")
            return 1
        with stage(name + " (subprocess)", results) as s:
            command = [sys.executable, __file__, "--build-only"]
            command += ["--tenants", str(spec.tenants), "--days", str(spec.days)]
            command += ["--every", str(spec.every)]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            manifest = load_manifest(spec)
            assert manifest is not None
    else:
        with stage(name + " (cached)", results) as s:
            pass
    s.extra |= {
        "events": manifest["events"],
        "GB": round(manifest["bytes"] / 1e9, 1),
        "built_in_s": manifest["build_seconds"],
    }
    correct = measure_ticks(spec, manifest, results, args.catchup_days)
    report(results, args.json)
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
