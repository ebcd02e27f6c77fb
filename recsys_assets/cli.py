"""`recsys-assets`: the reference system's binaries as subcommands over the same Dagster graph.

Exit codes (SPEC §8): 0 success, 1 a pipeline step or blocking check failed, 2 usage or
config error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Sequence

import orjson

from recsys_assets import __version__
from recsys_assets.config import AppConfig, ConfigError, TenantSurface, load_config, parse_day

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# subcommand -> (job, help); `run` builds every enabled asset of each day.
STEP_COMMANDS = {
    "run": ("recsys_daily", "build every asset of each day (canonical, checks, artifacts)"),
    "ingest": ("ingest", "build canonical exposures for each day and check them"),
    "validate": ("validate", "re-evaluate the canonical guards of each day"),
}


class UsageError(Exception):
    """Bad flags; exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on its own; keep the message
        raise UsageError(message)


def _day(value: str) -> dt.date:
    try:
        return parse_day(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recsys-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("version", help="print the version")
    for name, (_, help_text) in STEP_COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "--config", help="config JSON (default: $RECSYS_CONFIG or configs/env/local.json)"
        )
        cmd.add_argument("--tenant", help="tenant (default: every configured tenant)")
        cmd.add_argument("--surface", help="surface (default: every surface of the tenant)")
        cmd.add_argument("--start", type=_day, help="first day, YYYY-MM-DD")
        cmd.add_argument("--end", type=_day, help="last day, inclusive (default: --start)")
        if name == "run":
            cmd.add_argument(
                "--incremental",
                action="store_true",
                help="continue after the last successful day of the checkpoint",
            )
    return parser


def _targets(config: AppConfig, tenant: str | None, surface: str | None) -> list[TenantSurface]:
    if surface and not tenant:
        raise UsageError("--surface needs --tenant")
    if tenant and surface:
        return [config.tenant(tenant, surface)]
    chosen = [t for t in config.tenants if tenant is None or t.tenant == tenant]
    if not chosen:
        raise ConfigError(f"tenant {tenant} is not configured")
    return chosen


def _checkpoint_key(entry: TenantSurface) -> str:
    return f"{entry.tenant}/{entry.surface}.json"


def _days(args: argparse.Namespace, config: AppConfig, entry: TenantSurface) -> list[dt.date]:
    from recsys_assets.storage import open_store

    start, end = args.start, args.end
    if getattr(args, "incremental", False):
        if end is None:
            raise UsageError("--incremental needs --end")
        data = open_store(config.checkpoint_location).read_bytes(_checkpoint_key(entry))
        if data is not None:
            start = parse_day(orjson.loads(data)["last_success_day"]) + dt.timedelta(days=1)
        elif start is None:
            raise UsageError(
                f"--incremental: no checkpoint for {entry.tenant}/{entry.surface} and no --start"
            )
        if start > end:
            return []
    if start is None:
        raise UsageError("--start is required")
    end = end or start
    if end < start:
        raise UsageError(f"--end {end} is before --start {start}")
    if start < config.start_date:
        raise UsageError(f"--start {start} is before the config's start_date {config.start_date}")
    count = (end - start).days + 1
    if count > config.limits.max_days_backfill:
        raise UsageError(
            f"{count} days from {start} to {end} exceed limits.max_days_backfill "
            f"{config.limits.max_days_backfill}"
        )
    return [start + dt.timedelta(days=i) for i in range(count)]


def _write_checkpoint(config: AppConfig, entry: TenantSurface, day: dt.date) -> None:
    from recsys_assets.storage import open_store

    document = {"tenant": entry.tenant, "surface": entry.surface, "last_success_day": str(day)}
    open_store(config.checkpoint_location).write_bytes(
        _checkpoint_key(entry), orjson.dumps(document, option=orjson.OPT_INDENT_2)
    )


def run_steps(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    targets = _targets(config, args.tenant, args.surface)
    plan = [(entry, _days(args, config, entry)) for entry in targets]

    from recsys_assets.graph import build_definitions
    from recsys_assets.partitions import partition_key
    from recsys_assets.runner import default_instance, execute

    defs = build_definitions(config)
    instance = default_instance()
    job_name = STEP_COMMANDS[args.command][0]
    status = EXIT_OK
    for entry, days in plan:
        if not days:
            print(f"{entry.tenant}/{entry.surface}: nothing to do (checkpoint is up to date)")
        for day in days:
            started = time.perf_counter()
            key = partition_key(day, entry.tenant, entry.surface)
            outcome = execute(defs, job_name, key, instance)
            seconds = time.perf_counter() - started
            if outcome.success:
                print(
                    f"{day} {entry.tenant}/{entry.surface} {args.command}: ok "
                    f"({len(outcome.materialized)} assets, {seconds:.1f}s)",
                    flush=True,
                )
                if args.command == "run":
                    _write_checkpoint(config, entry, day)
                continue
            status = EXIT_FAILED
            what = (
                "blocking check failed: " + "; ".join(outcome.failed_checks)
                if outcome.failed_checks
                else "step failed: " + ", ".join(outcome.failed_steps)
            )
            print(
                f"{day} {entry.tenant}/{entry.surface} {args.command}: FAILED, {what}",
                file=sys.stderr,
                flush=True,
            )
            for message in outcome.messages:
                print(f"  {message}", file=sys.stderr)
            break
    if status == EXIT_OK:
        print(f"outputs under {config.out_dir}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "version":
            print(f"recsys-assets {__version__}")
            return EXIT_OK
        return run_steps(args)
    except UsageError as exc:
        print(f"recsys-assets: usage error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"recsys-assets: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
