"""What a user waits for: one day through `recsys-assets run`, as a subprocess.

    .venv/bin/python benchmarks/run_end_to_end.py --events 5000000
    .venv/bin/python benchmarks/run_end_to_end.py --events 5000000 --types popularity,cooc
    .venv/bin/python benchmarks/run_end_to_end.py --events 5000000 --cold   # fresh numba cache
    .venv/bin/python benchmarks/run_end_to_end.py --events 5000000 --days 2  # and the next day

The day (50k items, 200k users by default, a per-day file, no bad lines) and a synthetic
item catalog are generated once under `benchmarks/.data/`. Each repeat runs the CLI with a
fresh output folder and a fresh Dagster instance (a temp `DAGSTER_HOME`), samples the RSS of
the whole process tree every 50 ms, and reads the time of every step from the run's own
event log afterwards. The table has a row per step (checks run inside their asset's step),
then what lies between them: the process start up to the first run, the time between runs
and steps (Dagster's own work), and the rest. With `--days N` the run covers N consecutive
days of `--events` each, as a daily schedule meets them: from the second day on, the windows
merge the previous days' states and the regression checks compare with what was published;
each step is named with its day, and each day gets its own line. Figures go to `--json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.generate import generate  # noqa: E402
from benchmarks.measure import MB, host  # noqa: E402
from recsys_assets.config import ARTIFACT_TYPES  # noqa: E402

DATA = REPO_ROOT / "benchmarks" / ".data"
DAY = dt.date(2026, 1, 1)
CLI = Path(sys.executable).with_name("recsys-assets")


def day_data(events: int, items: int, users: int, days: int = 1) -> tuple[Path, Path]:
    """The generated days (`events` each) and their catalog (item_id,tags), made once per
    size."""
    root = DATA / (f"e2e-{events}-{items}-{users}" + (f"-{days}d" if days > 1 else ""))
    raw, catalog = root / "raw", root / "catalog.csv"
    if not (root / "done").exists():
        generate(raw, events=events * days, items=items, users=users, day=DAY, days=days)
        rng = np.random.default_rng(3)
        weights = 1 / np.arange(1, 2001) ** 0.8
        with catalog.open("w") as out:
            out.write("item_id,tags\n")
            for item in range(items):
                tags = rng.choice(2000, size=rng.integers(1, 6), p=weights / weights.sum())
                out.write(f"i{item:06d}," + "|".join(f"tag{t:04d}" for t in tags) + "\n")
        (root / "done").touch()
    return raw, catalog


def config_for(out_dir: Path, raw: Path, catalog: Path, events: int, types: list[str]) -> dict:
    """Every type with the SPEC defaults, limits raised to fit the day."""
    return {
        "start_date": DAY.isoformat(),
        "tenants": [{"tenant": "demo", "surface": "home"}],
        "out_dir": str(out_dir),
        "raw_source": {"type": "fs", "dir": str(raw)},
        # content_sim's input: without it, `run` has no catalog to refresh
        **({"catalog": {"path": str(catalog)}} if "content_sim" in types else {}),
        "limits": {
            "max_events_per_run": max(events, 1_000_000),
            "max_sessions_per_run": max(events, 1_000_000),
            "max_users_per_run": max(events, 1_000_000),
        },
        "artifacts": {t: {"enabled": t in types} for t in ARTIFACT_TYPES},
        # The synthetic days are random draws with no signal beyond popularity: from the
        # second day on the quality checks evaluate every artifact (their time counts) but
        # do not demand a lift over popularity, which no model has on this data.
        "quality": {"types": {t: {"min_lift_over_popularity": 0} for t in ARTIFACT_TYPES}},
    }


class TreeSampler:
    """The highest RSS of a process and all its descendants, sampled every `interval_s`."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self.samples: list[tuple[float, int]] = []  # (wall-clock time, tree RSS)

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for at, rss in self.samples if start <= at <= end), default=0)

    def sample(self) -> None:
        try:
            tree = [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for proc in tree:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak = max(self.peak, total)
        self.samples.append((time.time(), total))


def _echo(stream, lines: list[str], show: bool) -> None:
    for line in stream:
        lines.append(line)
        if show:
            print(line, end="", flush=True)


def run_once(args: argparse.Namespace, raw: Path, catalog: Path, cold: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="recsys-e2e-") as tmp:
        root = Path(tmp)
        config = root / "config.json"
        config.write_text(
            json.dumps(config_for(root / "out", raw, catalog, args.events, args.types))
        )
        env = os.environ | {"DAGSTER_HOME": str(root / "dagster"), "OPENBLAS_NUM_THREADS": "1"}
        if cold:
            env["NUMBA_CACHE_DIR"] = str(root / "numba-cache")
        command = [str(CLI), "run", "--config", str(config), "--tenant", "demo"]
        last = DAY + dt.timedelta(days=args.days - 1)
        command += ["--surface", "home", "--start", str(DAY), "--end", str(last)]
        started = time.time()
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO_ROOT,
        )
        sampler = TreeSampler(proc.pid)
        lines: list[str] = []
        reader = threading.Thread(target=_echo, args=(proc.stdout, lines, args.show), daemon=True)
        reader.start()
        while proc.poll() is None:
            sampler.sample()
            time.sleep(sampler.interval_s)
        ended = time.time()
        reader.join()
        if proc.returncode != 0:
            raise SystemExit(f"recsys-assets run exited {proc.returncode}:\n{''.join(lines)}")
        steps, runs = event_log_steps(root / "dagster", by_day=args.days > 1)
        cut = pieces(root / "dagster")
        versions = artifact_versions(root / "out")
    wall = ended - started
    days = {}
    for run in runs:
        if run["day"] is not None:
            span = days.setdefault(run["day"], [run["start"], run["end"]])
            span[:] = min(span[0], run["start"]), max(span[1], run["end"])
    for step in steps:
        step["peak_rss_mb"] = round(sampler.peak_between(step.pop("start"), step.pop("end")) / MB)
    first_run = min(r["start"] for r in runs)
    stepped = sum(s["seconds"] for s in steps)
    in_runs = sum(r["end"] - r["start"] for r in runs)
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(sampler.peak / MB),
        "steps": steps,
        "startup_s": round(first_run - started, 2),
        "between_steps_s": round(in_runs - stepped, 2),
        "between_runs_s": round(wall - (first_run - started) - in_runs, 2),
        "pieces": cut,
        "versions": versions,
        "days": {
            day: {
                "seconds": round(end - start, 2),
                "peak_rss_mb": round(sampler.peak_between(start, end) / MB),
            }
            for day, (start, end) in sorted(days.items())
        },
    }


def event_log_steps(home: Path, by_day: bool = False) -> tuple[list[dict], list[dict]]:
    """Each step's time from the instance's event log, in the order they ran, and each
    run's start, end (wall-clock seconds) and day (None for the catalog's run); `by_day`
    names each step with its day."""
    import dagster as dg

    from recsys_assets.partitions import parse_partition_key

    instance = dg.DagsterInstance.from_config(str(home))
    steps, runs = [], []
    for record in sorted(instance.get_run_records(), key=lambda r: r.create_timestamp):
        run = record.dagster_run
        key = run.tags.get("dagster/partition")
        day = None if run.job_name == "catalog_job" else str(parse_partition_key(key).day)
        runs.append(
            {"job": run.job_name, "day": day, "start": record.start_time, "end": record.end_time}
        )
        for stat in instance.get_run_step_stats(run.run_id):
            if stat.start_time is None or stat.end_time is None:
                continue
            name = stat.step_key if day is not None else f"catalog:{stat.step_key}"
            if by_day and day is not None:
                name = f"{day} {name}"
            steps.append(
                {
                    "step": name,
                    "start": stat.start_time,
                    "end": stat.end_time,
                    "seconds": round(stat.end_time - stat.start_time, 2),
                }
            )
    steps.sort(key=lambda s: s["start"])
    return steps, runs


def pieces(home: Path) -> dict[str, int]:
    """How the day was cut (scale.*): canonical's time buckets and spilled bytes, and the
    shards of daily_aggregates, from their materializations."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    wanted = {"canonical_exposures": ("buckets", "spilled_bytes"), "daily_aggregates": ("shards",)}
    out = {}
    for asset, names in wanted.items():
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        metadata = event.asset_materialization.metadata if event else {}
        out.update({name: metadata[name].value for name in names if name in metadata})
    return out


def artifact_versions(out: Path) -> dict[str, str]:
    """The version of each staged artifact (from its envelope's file name)."""
    versions = {}
    for path in sorted((out / "artifacts").rglob("*.json")):
        parts = path.relative_to(out / "artifacts").parts
        if len(parts) >= 4 and parts[2] in ARTIFACT_TYPES:
            versions[parts[2]] = path.stem
    return versions


def table(result: dict) -> list[str]:
    rows = [(s["step"], s["seconds"], s["peak_rss_mb"]) for s in result["steps"]]
    rows += [
        ("(process start to first run)", result["startup_s"], None),
        ("(Dagster between steps)", result["between_steps_s"], None),
        ("(between runs, exit)", result["between_runs_s"], None),
    ]
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'step':<{width}}  seconds  peak RSS MiB"]
    lines += [
        f"{name:<{width}}  {seconds:7.2f}" + ("" if peak is None else f"  {peak:12d}")
        for name, seconds, peak in rows
    ]
    total = sum(seconds for _, seconds, _ in rows)
    steps = sum(s["seconds"] for s in result["steps"])
    lines.append(
        f"{'sum of steps':<{width}}  {steps:7.2f}  ({steps / result['wall_s']:.0%} of wall)"
    )
    lines.append(f"{'wall':<{width}}  {result['wall_s']:7.2f}  (rows above: {total:.2f})")
    lines.append(f"{'peak RSS, process tree':<{width}}  {result['peak_rss_mb']:5d} MiB")
    days = result.get("days", {})
    if len(days) > 1:
        lines += [
            f"{'day ' + day:<{width}}  {f['seconds']:7.2f}  (its runs; peak {f['peak_rss_mb']} MiB)"
            for day, f in days.items()
        ]
    cut = result.get("pieces", {})
    if cut:
        lines.append(
            f"{'cut in (scale.*)':<{width}}  " + ", ".join(f"{k} {v:,}" for k, v in cut.items())
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument(
        "--days", type=int, default=1, help="consecutive days of --events each, in one run"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--types",
        default=",".join(ARTIFACT_TYPES),
        help="artifact types enabled (the others: enabled false); default every type",
    )
    parser.add_argument("--cold", action="store_true", help="a fresh numba cache per repeat")
    parser.add_argument("--show", action="store_true", help="echo the CLI's output")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.types = [t for t in args.types.split(",") if t]
    unknown = sorted(set(args.types) - set(ARTIFACT_TYPES))
    if unknown:
        parser.error(f"--types: unknown {unknown}; expected some of {list(ARTIFACT_TYPES)}")
    if args.days < 1:
        parser.error(f"--days: expected an integer >= 1, got {args.days}")
    started = time.perf_counter()
    raw, catalog = day_data(args.events, args.items, args.users, args.days)
    print(f"data: {raw} ({time.perf_counter() - started:.1f}s)", flush=True)
    results = []
    for n in range(args.repeat):
        result = run_once(args, raw, catalog, args.cold)
        results.append(result)
        print(f"\nrepeat {n + 1}/{args.repeat}, types {','.join(args.types)}:")
        print("\n".join(table(result)), flush=True)
    walls = sorted(r["wall_s"] for r in results)
    peaks = sorted(r["peak_rss_mb"] for r in results)
    print(
        f"\nwall median {walls[len(walls) // 2]:.2f}s, peak RSS median {peaks[len(peaks) // 2]} MiB"
    )
    print("versions:", json.dumps(results[-1]["versions"], sort_keys=True))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {"host": host(), "args": {**vars(args), "json": str(args.json)}, "runs": results}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
