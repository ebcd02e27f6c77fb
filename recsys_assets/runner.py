"""Runs the graph's jobs in process for one partition, as the CLI and tests do.

Each step's end is reported as it happens (`on_step`), through a Dagster logger of the
code location (`progress_logger`) that only the CLI configures: a day of millions of
events takes minutes, and a user wants to see where it is. Dagster's own log stays in the
instance (and on the console only when asked, `verbose`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from recsys_assets.config import REPO_ROOT
from recsys_assets.partitions import DATE_DIM, TENANT_SURFACE_DIM
from recsys_assets.publish.collapse import ROW_LISTS

_LISTS = sorted({name for names in ROW_LISTS.values() for name in names})


@dataclass(frozen=True)
class StepReport:
    """One step that ended: its key, time, whether it succeeded and what it made."""

    step: str
    seconds: float
    succeeded: bool
    summary: str


@dataclass(frozen=True)
class Outcome:
    success: bool
    failed_steps: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    materialized: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    steps: list[StepReport] = field(default_factory=list)
    # (what, why) of each failed check, then of each failed step
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """What failed and why, on one line: the failed checks, else the failed steps'
        errors, else the steps that were skipped."""
        if self.failed_checks:
            return "blocking check failed: " + "; ".join(self.failed_checks)
        errors = [m for m in self.messages if not m.endswith(": skipped")]
        if errors:
            return "; ".join(errors)
        if self.failed_steps:
            return "step failed: " + ", ".join(self.failed_steps)
        return "; ".join(self.messages) or "failed"


def default_instance() -> dg.DagsterInstance:
    """The instance under `$DAGSTER_HOME`, defaulting to the repo's git-ignored `.dagster/`."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        home = str(REPO_ROOT / ".dagster")
        os.environ["DAGSTER_HOME"] = home
    os.makedirs(home, exist_ok=True)
    instance_yaml = os.path.join(home, "dagster.yaml")
    if not os.path.exists(instance_yaml) and (REPO_ROOT / "dagster.yaml").exists():
        shutil.copyfile(REPO_ROOT / "dagster.yaml", instance_yaml)
    return dg.DagsterInstance.get()


def partition_tags(key: str) -> dict[str, str]:
    if "|" not in key:  # a tenant_surface-only partition (the catalog, freshness)
        return {"dagster/partition": key}
    day, _, tenant_surface = key.partition("|")
    return {
        "dagster/partition": key,
        f"dagster/partition/{DATE_DIM}": day,
        f"dagster/partition/{TENANT_SURFACE_DIM}": tenant_surface,
    }


# Where the progress logger sends events: set by `execute` for the run it executes (runs are
# in process, one at a time), None otherwise.
_sink: Callable[[dg.DagsterEvent], None] | None = None


class _EventHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "dagster_event", None)
        if event is not None and _sink is not None:
            _sink(event)


@dg.logger(description="Reports each step's end to the in-process runner (the CLI's progress).")
def progress_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("recsys_assets.progress", level=logging.DEBUG)
    logger.addHandler(_EventHandler())
    return logger


LOGGERS = {"console": dg.colored_console_logger, "progress": progress_logger}


def _first_line(text: str) -> str:
    return " ".join(text.strip().split("\n", 1)[0].split())


def step_error(event: dg.DagsterEvent) -> str:
    """A failed step's error on one line: the user code's exception when Dagster wraps one."""
    error = event.step_failure_data.error
    if error is None:
        return "failed"
    cause = error.cause or error
    while cause.cause is not None and cause.cls_name in ("DagsterExecutionStepExecutionError",):
        cause = cause.cause
    text = _first_line(cause.message)
    if cause.cls_name == "Failure":
        text = text.removeprefix("dagster._core.definitions.events.Failure: ")
    return text


def _int(value: Any) -> int | None:
    raw = getattr(value, "value", value)
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else None


def materialization_summary(metadata: dict[str, Any]) -> str:
    """What a materialization made, in a few words: rows, rejects, size, version."""
    get = {name: getattr(value, "value", value) for name, value in metadata.items()}
    if get.get("enabled") is False:
        return f"disabled ({get.get('reason', '')})"
    parts = []
    if _int(get.get("rows")) is not None:
        parts.append(f"{get['rows']:,} rows")
    if _int(get.get("rejects")) is not None:
        parts.append(f"{get['rejects']:,} rejects")
    if isinstance(get.get("version"), str):  # an artifact: the rows of each of its lists
        parts.extend(f"{get[f'rows_{name}']:,} {name}" for name in _LISTS if f"rows_{name}" in get)
    if _int(get.get("bytes")) is not None:
        parts.append(f"{get['bytes'] / 1e6:.1f} MB")
    if isinstance(get.get("version"), str):
        parts.append(f"version {get['version'][:12]}")
    if isinstance(get.get("outcomes"), dict):
        actions = [f"{t} {o.get('action')}" for t, o in get["outcomes"].items()]
        parts.append(", ".join(actions))
    return ", ".join(parts)


class _Progress:
    """Collects each step's materializations and check results; reports the step at its end."""

    def __init__(self, on_step: Callable[[StepReport], None]) -> None:
        self.on_step = on_step
        self.made: dict[str, list[str]] = {}
        self.started: dict[str, float] = {}
        self.checks: dict[str, list[tuple[str, bool, str]]] = {}

    def __call__(self, event: dg.DagsterEvent) -> None:
        step = event.step_key
        if step is None:
            return
        if event.is_step_start:
            self.started[step] = time.perf_counter()
        elif event.is_step_materialization:
            metadata = event.event_specific_data.materialization.metadata
            self.made.setdefault(step, []).append(materialization_summary(metadata))
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            self.checks.setdefault(step, []).append(
                (evaluation.check_name, evaluation.passed, evaluation.description or "")
            )
        elif event.is_step_success or event.is_step_failure:
            self.on_step(self._report(event))

    def _report(self, event: dg.DagsterEvent) -> StepReport:
        step = event.step_key
        parts = [text for text in self.made.pop(step, []) if text]
        checks = self.checks.pop(step, [])
        failed = [f"FAILED {name}: {text}" for name, ok, text in checks if not ok]
        if checks and not failed:
            parts.append(f"{len(checks)} checks passed")
        parts.extend(failed)
        if event.is_step_failure and not failed:
            parts.append(f"FAILED: {step_error(event)}")
        seconds = time.perf_counter() - self.started.pop(step, time.perf_counter())
        return StepReport(step, seconds, event.is_step_success, "; ".join(parts))


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def return_freed_memory() -> bool:
    """Make glibc give freed memory back to the system, so that a step's peak is its own.

    Runs execute their steps one after the other in this process. By default glibc raises
    its mmap threshold to the size of the largest block freed so far (up to 32 MB), so the
    arrays of one step are served from the heap later and what the heap grew to stays
    resident: a 5M-event day carried about 400 MB from step to step. Fixed thresholds
    (blocks of 1 MiB and more mapped on their own, the heap trimmed above 4 MiB free) keep
    the resident size to what live objects use. False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 4 << 20)
        )
    except (OSError, AttributeError):
        return False


def execute(
    defs: dg.Definitions,
    job_name: str,
    key: str,
    instance: dg.DagsterInstance,
    *,
    tags: dict[str, str] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    verbose: bool = False,
) -> Outcome:
    """Execute a job for one partition key; failures are reported, never raised.

    `on_step` is called as each step ends; `verbose` shows Dagster's log on the console
    (it is in the instance either way).
    """
    global _sink
    return_freed_memory()
    job = defs.resolve_job_def(job_name)
    steps: list[StepReport] = []

    def report(step: StepReport) -> None:
        steps.append(step)
        if on_step is not None:
            on_step(step)

    run_config = {
        "loggers": {
            "console": {"config": {"log_level": "INFO" if verbose else "CRITICAL"}},
            "progress": {},
        }
    }
    _sink = _Progress(report)
    try:
        result = job.execute_in_process(
            instance=instance,
            tags=partition_tags(key) | (tags or {}),
            raise_on_error=False,
            run_config=run_config,
        )
    finally:
        _sink = None
    evaluations = result.get_asset_check_evaluations()
    failures, failed_steps, messages, checked = [], [], [], set()
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
                failures.append((name, evaluation.description or ""))
                checked.add(event.step_key)
    failed_checks = [f"{name} ({description})" for name, description in failures]
    for event in result.all_events:
        if event.is_step_failure and event.step_key:
            failed_steps.append(event.step_key)
            messages.append(f"{event.step_key}: {step_error(event)}")
            if event.step_key not in checked:  # a failed blocking check says it better
                failures.append((event.step_key, step_error(event)))
        elif event.is_step_skipped and event.step_key:
            messages.append(f"{event.step_key}: skipped")
    materialized = [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]
    return Outcome(
        success=result.success,
        failed_steps=failed_steps,
        failed_checks=failed_checks,
        messages=messages,
        materialized=materialized,
        checks={f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed for e in evaluations},
        steps=steps,
        failures=failures,
    )


def merge(first: Outcome, second: Outcome) -> Outcome:
    """Two jobs of one day as one outcome."""
    return Outcome(
        success=first.success and second.success,
        failed_steps=first.failed_steps + second.failed_steps,
        failed_checks=first.failed_checks + second.failed_checks,
        messages=first.messages + second.messages,
        materialized=first.materialized + second.materialized,
        checks=first.checks | second.checks,
        steps=first.steps + second.steps,
        failures=first.failures + second.failures,
    )
