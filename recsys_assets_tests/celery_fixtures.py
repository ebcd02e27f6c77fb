"""A Redis broker, Celery worker processes and runs through the Celery executor, for the
distributed test and benchmarks/run_distributed.py.

Import the fixture into a test module:
`from recsys_assets_tests.celery_fixtures import redis_url  # noqa: F401`.

Debian's `redis-server` (`make test` installs it when apt-get can); without it the tests
that need a broker skip, saying so.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.reconstruct import ReconstructableRepository

from recsys_assets.config import REPO_ROOT
from recsys_assets.runner import partition_tags

VENV_BIN = Path(sys.executable).parent
DEFINITIONS = "recsys_assets.definitions"
# Dagster's log on the console only for errors: the event log in Postgres has it all.
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}, "progress": {}}}


def find_redis_server() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)),
        None,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A Redis server on a free local port with its files in `folder`; yields its URL."""
    binary = find_redis_server()
    if binary is None:
        raise FileNotFoundError("redis-server")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    args += ["--save", "", "--appendonly", "no", "--logfile", str(folder / "redis.log")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log = (folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on port {port}: {log}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis server for the session (databases 0 and 1 are free)."""
    if find_redis_server() is None:
        pytest.skip(
            "Debian's redis-server is not installed and could not be (`make test` runs "
            "`apt-get install redis-server` when apt-get is there): no Celery broker"
        )
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


class Worker:
    """A `dagster-celery worker start` process (and its Celery pool) in its own folder."""

    def __init__(
        self, name: str, folder: Path, env: Mapping[str, str], config: str, celery_yaml: Path
    ):
        self.name = name
        self.folder = folder
        home = folder / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / "deploy/dagster.yaml", home / "dagster.yaml")
        (folder / "config.json").write_text(config)
        self.log = folder / "worker.log"
        args = [str(VENV_BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
        args += ["-y", str(celery_yaml), "-n", name, "--loglevel", "INFO", "--"]
        args += ["--concurrency=1", "--without-gossip", "--without-mingle"]
        worker_env = {
            **env,
            "DAGSTER_HOME": str(home),
            "RECSYS_CONFIG": str(folder / "config.json"),
            "RECSYS_EXECUTOR": "celery",
            "RECSYS_CELERY_CONFIG": str(celery_yaml),
            "OPENBLAS_NUM_THREADS": "1",
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                args,
                cwd=folder,
                env=worker_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group: the worker and its pool
            )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} did not start: {self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL the worker and its pool at once, as when its machine is lost."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@contextmanager
def workers(
    names: Sequence[str], root: Path, env: Mapping[str, str], config: str, celery_yaml: Path
) -> Iterator[dict[str, Worker]]:
    """Celery workers named `names`, each in `root/<name>` with its copy of the config
    (JSON text) and deploy/dagster.yaml, stopped on exit."""
    started: dict[str, Worker] = {}
    # A SIGTERM (a CI timeout) ends this process through the `finally` below, not around
    # it, so that no worker outlives it.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for name in names:
            started[name] = Worker(name, root / name, env, config, celery_yaml)
        for worker in started.values():
            worker.wait_ready()
        yield started
    finally:
        for worker in started.values():
            worker.stop()
        signal.signal(signal.SIGTERM, previous)


def reconstructable_job(job_name: str) -> dg._core.definitions.reconstruct.ReconstructableJob:
    """The code location's job as workers load it: `recsys_assets.definitions`, imported
    afresh so that it reads this process's `$RECSYS_CONFIG` and `$RECSYS_EXECUTOR`."""
    sys.modules.pop(DEFINITIONS, None)
    repository = ReconstructableRepository.for_module(
        DEFINITIONS, "defs", working_directory=str(REPO_ROOT)
    )
    return repository.get_reconstructable_job(job_name)


@dataclass(frozen=True)
class RunResult:
    job: str
    key: str
    run_id: str
    success: bool


def _run_chain(home: str, runs: Sequence[tuple[str, str]], tags: Mapping[str, str]) -> list:
    """Executes `runs` (job, partition key) one after the other, in this process."""
    from celery.exceptions import DuplicateTaskNameWarning

    # dagster-celery defines its step task anew for each step it submits; Celery warns each time.
    warnings.filterwarnings("ignore", category=DuplicateTaskNameWarning)
    results = []
    with dg.DagsterInstance.from_config(home) as instance:
        for name, key in runs:
            result = dg.execute_job(
                reconstructable_job(name),
                instance=instance,
                run_config=QUIET,
                tags=partition_tags(key) | dict(tags),
            )
            results.append(RunResult(name, key, result.run_id, result.success))
    return results


def run_backfill(
    jobs: Sequence[str],
    keys: Sequence[str],
    dagster_home: Path,
    *,
    first: Sequence[str] = ("catalog_job",),
    parallel: int = 3,
    tags: Mapping[str, str] | None = None,
) -> list[RunResult]:
    """Execute `jobs` in order for each partition key through the job's executor, as the
    deployment's queue does: one run at a time per tenant/surface, in date order, up to
    `parallel` tenant/surfaces at once; `first` once per tenant/surface before its days.

    Each run is orchestrated by a process of its own (spawned, with this environment, on
    the instance of `dagster_home`): Dagster configures `logging` at each run's start, which
    deadlocks against another run logging in a thread of the same process.
    """
    chains: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(keys):
        tenant_surface = key.partition("|")[2]
        if tenant_surface not in chains:
            chains[tenant_surface] = [(name, tenant_surface) for name in first]
        chains[tenant_surface] += [(name, key) for name in jobs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
        futures = [
            pool.submit(_run_chain, str(dagster_home), runs, dict(tags or {}))
            for runs in chains.values()
        ]
        return [result for future in futures for result in future.result()]
