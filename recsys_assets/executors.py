"""The executor that runs the steps of a launched run: one process, Celery workers or pods.

`$RECSYS_EXECUTOR` chooses it for the code location (`definitions.py`):

- `in_process` (default): every step in the run's own process;
- `celery`: each step is a task on Dagster's Celery executor, configured by the YAML file
  `$RECSYS_CELERY_CONFIG` names (default `deploy/celery.yaml`), the same file every worker
  is started with (`dagster-celery worker start -y ...`), so the runs and the workers agree
  on the broker, the result backend and the delivery settings;
- `k8s`: each step is a Kubernetes Job (`dagster_k8s.k8s_job_executor`, installed in the
  image of `deploy/Dockerfile`, not in the development environment).

Runs started with `execute_in_process` (the CLI, most tests) ignore it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from recsys_assets.config import REPO_ROOT, ConfigError

EXECUTORS = ("in_process", "celery", "k8s")
DEFAULT_CELERY_CONFIG = "deploy/celery.yaml"


def celery_config(path: str | Path) -> dict[str, Any]:
    """The `execution.config` block of a Celery executor YAML (what `-y` gives a worker)."""
    path = Path(path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        raise ConfigError(f"RECSYS_CELERY_CONFIG: no such file, got {str(path)!r}")
    block = (yaml.safe_load(path.read_text()) or {}).get("execution", {}).get("config")
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: expected an execution.config mapping (the Celery executor's)")
    return block


def run_executor(environ: dict[str, str] | None = None) -> dg.ExecutorDefinition:
    """The executor `$RECSYS_EXECUTOR` names (see the module docstring)."""
    env = os.environ if environ is None else environ
    name = env.get("RECSYS_EXECUTOR", "in_process") or "in_process"
    if name == "in_process":
        return dg.in_process_executor
    if name == "celery":
        from dagster_celery import celery_executor

        path = env.get("RECSYS_CELERY_CONFIG") or DEFAULT_CELERY_CONFIG
        return celery_executor.configured(celery_config(path), name="celery")
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise ConfigError(
                "RECSYS_EXECUTOR=k8s needs dagster-k8s (installed in deploy/Dockerfile's image)"
            ) from exc
        return k8s_job_executor
    raise ConfigError(f"RECSYS_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {name!r}")
