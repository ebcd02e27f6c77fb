"""Runs the graph's jobs in process for one partition, as the CLI and tests do."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import dagster as dg

from recsys_assets.config import REPO_ROOT
from recsys_assets.partitions import DATE_DIM, TENANT_SURFACE_DIM


@dataclass(frozen=True)
class Outcome:
    success: bool
    failed_steps: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    materialized: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)


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


def execute(defs: dg.Definitions, job_name: str, key: str, instance: dg.DagsterInstance) -> Outcome:
    """Execute a job for one partition key; failures are reported, never raised."""
    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(
        instance=instance,
        tags=partition_tags(key),
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    evaluations = result.get_asset_check_evaluations()
    failed_checks = [
        f"{e.asset_key.to_user_string()}:{e.check_name} ({e.description})"
        for e in evaluations
        if not e.passed
    ]
    failed_steps, messages = [], []
    for event in result.all_events:
        if event.is_step_failure and event.step_key:
            failed_steps.append(event.step_key)
            error = event.step_failure_data.error
            if error is not None:
                cause = error.cause.message if error.cause else ""
                messages.append(f"{event.step_key}: {error.message.strip()} {cause.strip()}")
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
    )
