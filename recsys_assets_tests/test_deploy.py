"""The deployment files load and agree with each other: deploy/dagster.yaml, deploy/celery.yaml,
deploy/Dockerfile and the Helm values (no cluster here: the files, not a release)."""

from __future__ import annotations

import re
import shlex
import tomllib

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from recsys_assets.config import ConfigError
from recsys_assets.executors import celery_config, run_executor
from recsys_assets_tests.conftest import REPO

DOCKERFILE = (REPO / "deploy/Dockerfile").read_text()
VALUES = yaml.safe_load((REPO / "deploy/helm/values.yaml").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def dockerfile(instruction: str) -> list[str]:
    """The arguments of each line of an instruction (continuations joined)."""
    text = DOCKERFILE.replace("\\\n", " ")
    return [
        m.group(1).strip()
        for m in re.finditer(rf"^{instruction}\s+(.*)$", text, flags=re.MULTILINE)
    ]


def pinned(package: str) -> str:
    for requirement in PYPROJECT["project"]["dependencies"]:
        name, _, version = requirement.partition("==")
        if name == package:
            return version
    raise AssertionError(f"{package} is not pinned in pyproject.toml")


def test_instance_yaml_is_a_valid_dagster_instance_config(tmp_path):
    (tmp_path / "dagster.yaml").write_text((REPO / "deploy/dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # raises on an unknown or bad key
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    assert coordinator["config"]["tag_concurrency_limits"] == [
        {
            "key": "dagster/partition/tenant_surface",
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 1,
        }
    ]


def test_celery_yaml_is_what_the_workers_and_the_executor_accept(monkeypatch):
    from dagster_celery.cli import get_validated_config

    monkeypatch.setenv("RECSYS_CELERY_BROKER", "redis://broker:6379/0")
    monkeypatch.setenv("RECSYS_CELERY_BACKEND", "redis://broker:6379/1")
    worker = get_validated_config(str(REPO / "deploy/celery.yaml"))  # `-y` of the workers
    assert worker["broker"] == "redis://broker:6379/0"
    assert worker["config_source"]["task_acks_late"] is True

    executor = run_executor({"RECSYS_EXECUTOR": "celery"})
    assert executor.name == "celery"
    assert celery_config("deploy/celery.yaml")["broker"] == {"env": "RECSYS_CELERY_BROKER"}


def test_executor_choice():
    assert run_executor({}) is dg.in_process_executor
    with pytest.raises(ConfigError, match="RECSYS_EXECUTOR must be one of"):
        run_executor({"RECSYS_EXECUTOR": "threads"})
    with pytest.raises(ConfigError, match="no such file"):
        run_executor({"RECSYS_EXECUTOR": "celery", "RECSYS_CELERY_CONFIG": "deploy/none.yaml"})
    try:
        import dagster_k8s  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs dagster-k8s"):
            run_executor({"RECSYS_EXECUTOR": "k8s"})
    else:
        assert run_executor({"RECSYS_EXECUTOR": "k8s"}).name == "k8s"


def test_dockerfile_builds_the_code_location_with_the_pinned_set():
    (base,) = dockerfile("FROM")
    python = PYPROJECT["project"]["requires-python"]
    assert base.startswith("python:3.11") and ">=3.11" in python
    for line in dockerfile("COPY"):
        *sources, _ = shlex.split(line)
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, not in the repo"
    (install,) = [line for line in dockerfile("RUN") if "pip install" in line]
    assert f"dagster-k8s=={pinned('dagster-postgres')}" in install.split()
    (cmd,) = dockerfile("CMD")
    assert yaml.safe_load(cmd)[:3] == ["dagster", "api", "grpc"]
    env = " ".join(dockerfile("ENV"))
    assert "RECSYS_EXECUTOR=k8s" in env


def test_helm_values_use_the_dockerfile_image_and_the_k8s_job_executor():
    deployments = VALUES["dagster-user-deployments"]["deployments"]
    assert VALUES["dagster-user-deployments"]["enabled"] is True
    (deployment,) = deployments
    image = deployment["image"]
    # The tag the Dockerfile's build line gives, the project's version.
    built = re.search(r"docker build .* -t (\S+):(\S+)", DOCKERFILE)
    assert built, "deploy/Dockerfile names no `docker build ... -t image:tag` line"
    assert (image["repository"], image["tag"]) == built.groups()
    assert image["tag"] == PYPROJECT["project"]["version"]
    assert f'org.opencontainers.image.title="{image["repository"]}"' in DOCKERFILE

    (cmd,) = dockerfile("CMD")
    command = yaml.safe_load(cmd)
    assert deployment["dagsterApiGrpcArgs"] == command[command.index("-m") :]
    assert deployment["port"] == int(command[command.index("-p") + 1])
    assert dockerfile("EXPOSE") == [str(deployment["port"])]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert env["RECSYS_EXECUTOR"] == "k8s"
    assert env["RECSYS_CONFIG"].startswith(deployment["volumeMounts"][0]["mountPath"] + "/")

    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    coordinator = VALUES["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    limits = coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    instance = yaml.safe_load((REPO / "deploy/dagster.yaml").read_text())
    assert limits == instance["run_coordinator"]["config"]["tag_concurrency_limits"]
    # the same retries and monitoring as the Celery deployment's instance
    retries, monitoring = (
        VALUES["dagsterDaemon"]["runRetries"],
        VALUES["dagsterDaemon"]["runMonitoring"],
    )
    assert retries["maxRetries"] == instance["run_retries"]["max_retries"]
    assert (
        retries["retryOnAssetOrOpFailure"]
        is instance["run_retries"]["retry_on_asset_or_op_failure"]
    )
    assert monitoring["enabled"] is instance["run_monitoring"]["enabled"]
    assert monitoring["maxRuntimeSeconds"] == instance["run_monitoring"]["max_runtime_seconds"]
    postgres = VALUES["postgresql"]
    assert postgres["enabled"] is False
    assert {"postgresqlHost", "postgresqlUsername", "postgresqlDatabase"} <= set(postgres)
    assert VALUES["computeLogManager"]["type"] == "S3ComputeLogManager"
