"""The reference pages of the docs site, generated from the code so that they cannot drift.

`docs/gen_reference.py` (a mkdocs-gen-files script) writes each page of `PAGES` under
`docs/reference/` at build time: the CLI from the argument parser, the config from the
pydantic model (its attribute docstrings are the meanings), the schemas from `schemas/`,
the exit codes from the CLI's constants, the output layout from the key functions of the
stores, and the assets and checks from the Definitions of the sample config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from recsys_assets.config import REPO_ROOT, AppConfig, TenantSurface
from recsys_assets.metadata import markdown_table

GENERATED = "_Generated from the code by `docs/gen_reference.py`; do not edit._"


# -- CLI ------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name, in the order they were added."""
    return dict(_subparsers(parser).choices.items())


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A parser's options, but `--help`."""
    return [
        a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)
    ]


def _flag_value(action: argparse.Action) -> str:
    from recsys_assets.cli import day_argument

    if action.nargs == 0:
        return "(switch)"
    if action.choices:
        return " | ".join(f"`{c}`" for c in action.choices)
    if action.type is day_argument:
        return "YYYY-MM-DD"
    return action.metavar or action.dest.upper()


def cli_page() -> str:
    from recsys_assets.cli import build_parser

    parser = build_parser()
    helps = {choice.dest: choice.help for choice in _subparsers(parser)._choices_actions}
    lines = [
        "# CLI reference",
        "",
        GENERATED,
        "",
        f"{parser.description} Every subcommand exits 0 on success, 1 when a "
        "step or blocking check failed and 2 on a usage or config error "
        "([exit codes](exit-codes.md)).",
        "",
        markdown_table(
            ["subcommand", "what it does"],
            [[f"[`{name}`](#{name})", helps.get(name, "")] for name in subcommands(parser)],
        ),
    ]
    for name, sub in subcommands(parser).items():
        lines += ["", f"## {name}", "", helps.get(name) or sub.description or "", ""]
        options = flags(sub)
        if not options:
            lines.append("No flags.")
            continue
        rows = []
        for action in options:
            default = action.default
            shown = "" if default in (None, False, "", argparse.SUPPRESS) else f"`{default}`"
            rows.append(
                [
                    ", ".join(f"`{o}`" for o in action.option_strings),
                    _flag_value(action),
                    "yes" if action.required else "",
                    shown,
                    (action.help or "").replace("\n", " "),
                ]
            )
        lines.append(markdown_table(["flag", "value", "required", "default", "meaning"], rows))
        groups = [g for g in sub._mutually_exclusive_groups if g.required]
        for group in groups:
            names = " / ".join(f"`{a.option_strings[0]}`" for a in group._group_actions)
            lines += ["", f"Exactly one of {names} is required."]
    return "\n".join(lines) + "\n"


# -- config ---------------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    if annotation is Path:
        return "path"
    if annotation is dt.date:
        return "date"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: Any) -> str:
    marks = []
    for meta in field.metadata:
        for name, sign in (
            ("gt", ">"),
            ("ge", ">="),
            ("lt", "<"),
            ("le", "<="),
            ("min_length", "length >="),
        ):
            value = getattr(meta, name, None)
            if value is not None:
                marks.append(f"{sign} {value}")
    return ", ".join(marks)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Annotated:
            candidate = typing.get_args(candidate)[0]
        if typing.get_origin(candidate) is list:
            candidate = typing.get_args(candidate)[0]
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def config_keys(model: type[BaseModel] = AppConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every key of the config as (dotted path, pydantic field); nested models are walked, a
    list of models is `name[]`."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path, field
        nested = _model_of(field.annotation)
        if nested is not None:
            many = typing.get_origin(field.annotation) is list or any(
                typing.get_origin(a) is list for a in typing.get_args(field.annotation)
            )
            yield from config_keys(nested, f"{path}[]." if many else f"{path}.")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(object)"
    if value is None:
        return "none"
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value)}`"


def config_page() -> str:
    lines = [
        "# Config reference",
        "",
        GENERATED,
        "",
        "One JSON file per environment (`configs/env/*.json`); `RECSYS_CONFIG` selects it for the "
        "Dagster code location, `--config` for the CLI (default `configs/env/local.json`). "
        "Unknown keys and bad values are refused at load, naming the key and the value "
        "(exit 2; [runbook](../runbooks/config-errors.md)). Any string may be `${ENV_VAR}`; "
        "relative paths resolve against the repo root. A tenant/surface's own `artifacts.<type>` "
        "and `quality` objects override the global ones key by key.",
        "",
    ]
    rows = []
    for path, field in config_keys():
        meaning = " ".join((field.description or "").split())
        bounds = _bounds(field)
        rows.append(
            [
                f"`{path}`",
                _type_name(field.annotation) + (f" ({bounds})" if bounds else ""),
                _default(field),
                meaning,
            ]
        )
    lines.append(markdown_table(["key", "type", "default", "meaning"], rows))
    lines += [
        "",
        "`tenants[].artifacts` takes, per type, any key of `artifacts.<type>`; "
        f"`tenants[].quality` any key of `quality`. Model classes: `{AppConfig.__name__}`, "
        f"`{TenantSurface.__name__}` in `recsys_assets/config.py`.",
    ]
    return "\n".join(lines) + "\n"


# -- schemas --------------------------------------------------------------------------------


def schema_files() -> list[Path]:
    return sorted((REPO_ROOT / "schemas").rglob("*.json"))


def _schema_rows(schema: dict[str, Any], prefix: str = "") -> Iterator[list[str]]:
    required = set(schema.get("required", []))
    for name, spec in schema.get("properties", {}).items():
        kind = spec.get("type") or spec.get("$ref", "").rsplit("/", 1)[-1] or "any"
        if "const" in spec:
            kind = f"{kind}, const `{spec['const']}`"
        if "enum" in spec:
            kind = f"{kind}, one of {', '.join(f'`{v}`' for v in spec['enum'])}"
        yield [
            f"`{prefix}{name}`",
            str(kind),
            "yes" if name in required else "",
            " ".join(spec.get("description", "").split()),
        ]
        if spec.get("type") == "object":
            yield from _schema_rows(spec, f"{prefix}{name}.")
        items = spec.get("items")
        if isinstance(items, dict) and items.get("type") == "object":
            yield from _schema_rows(items, f"{prefix}{name}[].")


def schemas_page() -> str:
    lines = [
        "# Schemas",
        "",
        GENERATED,
        "",
        "The JSON Schemas (draft 2020-12) under `schemas/`: the raw exposure event, each "
        "artifact type's blob, the disabled marker and the manifest. Each table lists the "
        "top-level and nested properties; the schema itself follows.",
    ]
    for path in schema_files():
        schema = json.loads(path.read_text())
        relative = path.relative_to(REPO_ROOT)
        lines += [
            "",
            f"## {schema.get('title', path.stem)}",
            "",
            f"`{relative}`: {' '.join(schema.get('description', '').split())}",
            "",
            markdown_table(["property", "type", "required", "meaning"], list(_schema_rows(schema))),
            "",
            f'??? note "{relative}"',
            "    ```json",
            *("    " + line for line in json.dumps(schema, indent=2).splitlines()),
            "    ```",
        ]
    return "\n".join(lines) + "\n"


# -- exit codes -----------------------------------------------------------------------------


def exit_codes_page() -> str:
    from recsys_assets import cli

    rows = [
        [f"`{cli.EXIT_OK}`", "success"],
        [
            f"`{cli.EXIT_FAILED}`",
            "a step or blocking check failed (the message names the asset and check, e.g. "
            "`canonical_exposures:bad_row_ratio`, and its runbook); `status`: a current "
            "pointer is stale",
        ],
        [
            f"`{cli.EXIT_USAGE}`",
            "usage or config error: a bad flag, an unknown config key or bad value (named), a "
            "missing catalog file, a version that is not 64 hex digits, a `--partition` key the "
            "graph does not have",
        ],
    ]
    return (
        "\n".join(
            [
                "# Exit codes",
                "",
                GENERATED,
                "",
                "The codes of `recsys_assets/cli.py` (`EXIT_OK`, `EXIT_FAILED`, `EXIT_USAGE`; "
                "SPEC §8):",
                "",
                markdown_table(["code", "meaning"], rows),
                "",
                "`run` goes on with the other days after a failure and exits 1 at the end; "
                "`--fail-fast` stops at the first. See [debugging a failed run]"
                "(../how-to/debug-failed-run.md).",
            ]
        )
        + "\n"
    )


# -- layout ---------------------------------------------------------------------------------

_DAY = dt.date(1999, 12, 31)


def layout_entries() -> list[tuple[str, str, str]]:
    """(location, key pattern, what) of every file the graph writes, from the stores' own key
    functions; placeholders: `<t>`, `<s>`, `<seg>/` (only with a segment), `YYYY-MM-DD`."""
    from recsys_assets.aggregates.daily import AGGREGATE_KINDS
    from recsys_assets.aggregates.store import aggregate_key
    from recsys_assets.artifacts.staging import ArtifactWindow
    from recsys_assets.events.canonical import Partition
    from recsys_assets.events.store import exposures_key, marker_key, rejects_key
    from recsys_assets.publish.registry import Registry, blob_key

    partition = Partition("<t>", "<s>", _DAY)
    window = ArtifactWindow("<t>", "<s>", "<seg>", "<type>", _DAY, _DAY + dt.timedelta(days=1))
    staged = window.prefix.replace(f"{_DAY}_{_DAY + dt.timedelta(days=1)}", "<start>_<end>")
    registry = Registry(store=None)  # type: ignore[arg-type]
    canonical, artifacts, store, reg = (
        "canonical_dir",
        "artifacts_dir",
        "object_store",
        "registry_dir",
    )
    entries = [
        (canonical, exposures_key(partition), "the day's valid, de-duplicated, sorted events"),
        (canonical, rejects_key(partition), "one `{line, reason, detail, raw}` per bad line"),
        (canonical, marker_key(partition), "written last: content hashes, counts, rejects"),
        (canonical, "_unattributed/<sha256>.jsonl", "flat-file lines no partition takes"),
        *(
            (canonical, aggregate_key(partition, kind), f"the day's `{kind}` aggregate")
            for kind in AGGREGATE_KINDS
        ),
        (canonical, marker_key(partition, "aggregates"), "written last: the day's aggregates"),
        (canonical, "<t>/<s>/ids/{items,users}/NNNNNN.parquet", "the id index, create-only"),
        (
            canonical,
            "<t>/<s>/windows/<kind>/<N>d-<digest>/YYYY-MM-DD.{json,indptr.npy,indices.npy,data.npy}",
            "window states (see [windows](../explanation/windows.md))",
        ),
        (canonical, "<t>/<s>/catalog/{items.parquet,rejects.jsonl}", "the parsed item catalog"),
        (canonical, "<t>/<s>/markers/catalog.json", "written last: the catalog's hash and counts"),
        (artifacts, f"{staged}/<version>.json", "a staged artifact blob (never rewritten)"),
        (artifacts, f"{staged}/current.version", "the version last staged for the window"),
        (artifacts, "<t>/<s>/<seg>/quality/YYYY-MM-DD.json", "the quality report of a day"),
        (store, blob_key("<t>", "<s>", "<type>", "<version>"), "a published blob"),
        (reg, registry.manifest_key("<t>", "<s>"), "the manifest the online service reads"),
        (
            reg,
            registry.record_key("<t>", "<s>", "<type>", "<version>"),
            "the record of a published version",
        ),
        (reg, "current/<t>/<s>/.manifest.json.lock", "local registry only: the swap's lock file"),
        (reg, registry.pins_key("<t>", "<s>"), "pinned versions per type"),
        (
            reg,
            registry.audit_key("<t>", "<s>"),
            "audit log: rollbacks, unpins, collapses let through",
        ),
        ("checkpoint_dir", "<t>/<s>.json", "`--incremental`: the last successful day"),
    ]
    return [(loc, key.replace(str(_DAY), "YYYY-MM-DD"), what) for loc, key, what in entries]


def layout_page() -> str:
    rows = [[f"`{loc}`", f"`{key}`", what] for loc, key, what in layout_entries()]
    return (
        "\n".join(
            [
                "# Output layout",
                "",
                GENERATED,
                "",
                "Where each file lives, under its location's root (a local path or an `s3://` "
                "URI; defaults under `out_dir`, see the [config](config.md)). `<seg>/` is there "
                "only for a tenant/surface with a segment. Markers are written last, and readers "
                "go through them, so a half-written day is never read.",
                "",
                markdown_table(["location", "key", "what"], rows),
            ]
        )
        + "\n"
    )


# -- assets and checks ----------------------------------------------------------------------


def assets_page() -> str:
    import dagster as dg

    from recsys_assets.config import load_config
    from recsys_assets.graph import build_definitions
    from recsys_assets.runbooks import runbook

    defs = build_definitions(load_config(REPO_ROOT / "configs/env/sample.json"))
    graph = defs.resolve_asset_graph()
    lines = [
        "# Assets and checks",
        "",
        GENERATED,
        "",
        "The asset graph as built for `configs/env/sample.json` (other configs change the "
        "partition keys and the kinds, not the graph). Partitions: `daily` is "
        "`YYYY-MM-DD|<tenant>__<surface>` (a day × a tenant/surface), `tenant_surface` is "
        "`<tenant>__<surface>`.",
    ]
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        if isinstance(partitions, dg.MultiPartitionsDefinition):
            kind = "daily × tenant_surface"
        elif partitions is None:
            kind = "none"
        else:
            kind = "tenant_surface"
        reads = ", ".join(f"`{p.to_user_string()}`" for p in sorted(node.parent_keys)) or "—"
        feeds = ", ".join(f"`{c.to_user_string()}`" for c in sorted(node.child_keys)) or "—"
        lines += [
            "",
            f"## {key.to_user_string()}",
            "",
            " ".join((node.description or "").split()),
            "",
            markdown_table(
                ["group", "kinds", "partitions", "reads", "feeds"],
                [[node.group_name, ", ".join(sorted(node.kinds)), kind, reads, feeds]],
            ),
        ]
        checks = sorted(graph.get_check_keys_for_assets([key]), key=lambda c: c.name)
        if checks:
            rows = []
            for check in checks:
                spec = graph.get_check_spec(check)
                text = spec.description or ""
                page = runbook(check.name).removeprefix("docs/")
                text = text.split(" (runbook:")[0]
                rows.append(
                    [
                        f"`{check.name}`",
                        "yes" if spec.blocking else "",
                        text,
                        f"[{page.rsplit('/', 1)[-1]}](../{page})",
                    ]
                )
            lines += ["", markdown_table(["check", "blocking", "passes when", "runbook"], rows)]
    repository = defs.get_repository_def()
    jobs = sorted(
        (j for j in repository.get_all_jobs() if not j.name.startswith("__")),
        key=lambda j: j.name,
    )
    lines += [
        "",
        "## Jobs, schedules and sensors",
        "",
        markdown_table(
            ["job", "what"],
            [[f"`{j.name}`", " ".join((j.description or "").split())] for j in jobs],
        ),
        "",
        markdown_table(
            ["schedule or sensor", "runs", "default status"],
            [
                [f"`{s.name}`", f"`{s.cron_schedule}` UTC", s.default_status.value]
                for s in repository.schedule_defs
            ]
            + [[f"`{s.name}`", "sensor", s.default_status.value] for s in repository.sensor_defs],
        ),
    ]
    return "\n".join(lines) + "\n"


PAGES: dict[str, Callable[[], str]] = {
    "cli.md": cli_page,
    "config.md": config_page,
    "schemas.md": schemas_page,
    "exit-codes.md": exit_codes_page,
    "layout.md": layout_page,
    "assets.md": assets_page,
}
