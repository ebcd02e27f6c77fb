"""Wall time and peak memory of benchmark stages.

    results = []
    with stage("canonical", results) as s:
        rows = build()
        s.extra["rows"] = rows
    report(results, "out/bench.json")

The kernel's ru_maxrss is a high-water mark for the whole process lifetime, so it cannot say
which stage peaked; a background thread samples the RSS every 50 ms to give a per-stage peak
(of this process, and of this process plus its children, for stages that run subprocesses).
When ru_maxrss rose during a stage, the stage reached it, so the peak is at least that: this
catches spikes shorter than the interval or made while the GIL was held.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil

MB = 1024 * 1024
# ru_maxrss is in kilobytes on Linux and in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


@dataclass
class StageResult:
    """One measured stage; sizes in MiB. Set `extra` inside the block for row counts etc."""

    name: str
    seconds: float = 0.0
    # CPU time of this process in the stage (all its threads; children not included).
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    peak_rss_mb: float = 0.0
    peak_tree_rss_mb: float = 0.0
    maxrss_mb: float = 0.0
    children_maxrss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss * _MAXRSS_UNIT / MB


class _Sampler(threading.Thread):
    """Keeps the highest RSS seen, of this process alone and with its descendants."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak = 0
        self.peak_tree = 0
        self.stopped = threading.Event()

    def sample(self) -> None:
        own = self.process.memory_info().rss
        tree = own
        for child in self.process.children(recursive=True):
            try:
                tree += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak = max(self.peak, own)
        self.peak_tree = max(self.peak_tree, tree)

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.sample()


@contextmanager
def stage(
    name: str, results: list[StageResult] | None = None, *, interval_s: float = 0.05
) -> Iterator[StageResult]:
    """Measure the block; the result is filled in on exit (also when the block raises) and
    appended to `results` when given.

    `maxrss_mb` and `children_maxrss_mb` are the lifetime high-water marks at the end of the
    stage (children: the largest waited-for child). On Linux a child's figure can include
    the parent's size when it forked, so `peak_tree_rss_mb` is the better figure for a
    subprocess.
    """
    result = StageResult(name)
    sampler = _Sampler(interval_s)
    sampler.sample()
    result.rss_start_mb = sampler.peak / MB
    maxrss_before = _maxrss_mb(resource.RUSAGE_SELF)
    sampler.start()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - started
        now = resource.getrusage(resource.RUSAGE_SELF)
        result.cpu_user_s = round(now.ru_utime - cpu.ru_utime, 2)
        result.cpu_sys_s = round(now.ru_stime - cpu.ru_stime, 2)
        sampler.stop()
        result.rss_end_mb = sampler.process.memory_info().rss / MB
        result.maxrss_mb = _maxrss_mb(resource.RUSAGE_SELF)
        reached = result.maxrss_mb if result.maxrss_mb > maxrss_before else 0.0
        result.peak_rss_mb = max(sampler.peak / MB, reached)
        result.peak_tree_rss_mb = max(sampler.peak_tree / MB, result.peak_rss_mb)
        result.children_maxrss_mb = _maxrss_mb(resource.RUSAGE_CHILDREN)
        if results is not None:
            results.append(result)


def host() -> dict[str, Any]:
    """The machine the figures were taken on."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_mb": round(psutil.virtual_memory().total / MB),
    }


def report(
    results: list[StageResult],
    json_path: str | Path | None = None,
    *,
    summary: dict[str, Any] | None = None,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Print a table of the stages (and the `summary` line, when given) and write them, with
    the host, as JSON to `json_path`."""
    header = (
        "stage",
        "seconds",
        "cpu user+sys",
        "peak MiB",
        "tree MiB",
        "maxrss MiB",
        "child maxrss",
        "extra",
    )
    rows = [
        (
            r.name,
            f"{r.seconds:.2f}",
            f"{r.cpu_user_s:.2f}+{r.cpu_sys_s:.2f}",
            f"{r.peak_rss_mb:.0f}",
            f"{r.peak_tree_rss_mb:.0f}",
            f"{r.maxrss_mb:.0f}",
            f"{r.children_maxrss_mb:.0f}",
            " ".join(f"{key}={value}" for key, value in r.extra.items()),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [
            cell.ljust(width) if i in (0, len(header) - 1) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)
    document = {"host": host(), "stages": [asdict(r) for r in results]}
    if summary is not None:
        print(" ".join(f"{key}={value}" for key, value in summary.items()), file=out)
        document["summary"] = summary
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return document
