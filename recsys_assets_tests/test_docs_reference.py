"""The generated reference pages list everything the code has: every CLI flag (from the
parser), every config key (from the model's JSON schema), every file a real run writes (from
the output tree) and every asset check, each with its runbook page."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from recsys_assets.cli import build_parser
from recsys_assets.config import AppConfig
from recsys_assets.reference import PAGES, flags, layout_entries, subcommands

REPO = Path(__file__).resolve().parent.parent
LOCATIONS = {
    "canonical_dir": "canonical",
    "artifacts_dir": "artifacts",
    "object_store": "objectstore",
    "registry_dir": "registry",
    "checkpoint_dir": "checkpoints",
}


def _sections(page: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_cli_page_lists_every_subcommand_and_flag():
    sections = _sections(PAGES["cli.md"]())
    parser = build_parser()
    assert set(subcommands(parser)) <= set(sections)
    for name, sub in subcommands(parser).items():
        for action in flags(sub):
            for option in action.option_strings:
                assert f"`{option}`" in sections[name], f"{name} {option} missing"
            assert action.help, f"{name} {action.option_strings[0]} has no help text"


def _schema_keys(schema: dict, defs: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a pydantic JSON schema, independently of the generator's walk."""
    keys = set()
    for name, spec in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        keys.add(path)
        for candidate in [spec, *spec.get("anyOf", []), spec.get("items", {})]:
            ref = candidate.get("$ref") or candidate.get("items", {}).get("$ref")
            if ref:
                many = candidate.get("type") == "array" or spec.get("type") == "array"
                target = defs[ref.rsplit("/", 1)[-1]]
                keys |= _schema_keys(target, defs, f"{path}[]." if many else f"{path}.")
    return keys


def test_config_page_lists_every_key_with_its_meaning():
    page = PAGES["config.md"]()
    schema = AppConfig.model_json_schema()
    keys = _schema_keys(schema, schema["$defs"])
    assert len(keys) > 80
    rows = {m[0]: m[1] for m in re.findall(r"^\| `([^`]+)` \|.*\| ([^|]*) \|$", page, re.M)}
    missing = keys - set(rows)
    assert not missing, f"config keys missing from the reference: {sorted(missing)}"
    assert not set(rows) - keys, "the reference lists keys the model does not have"
    blank = [k for k, meaning in rows.items() if not meaning.strip()]
    assert not blank, f"config keys without a meaning (add a docstring in config.py): {blank}"


def _pattern(key: str) -> re.Pattern[str]:
    text = re.escape(key)
    for placeholder, regex in (
        (re.escape("<seg>/"), "(?:[^/]+/)?"),
        ("YYYY\\-MM\\-DD", r"\d{4}-\d{2}-\d{2}"),
        ("NNNNNN", r"\d{6}"),
    ):
        text = text.replace(placeholder, regex)
    text = re.sub(r"<[A-Za-z0-9]+>", "[^/]+", text)
    text = re.sub(r"\\\{([^}]*)\\\}", lambda m: "(?:" + m[1].replace(",", "|") + ")", text)
    return re.compile(text + "$")


@pytest.fixture(scope="module")
def sample_output(tmp_path_factory) -> Path:
    """The sample config's output tree: make smoke's when it is there, else a fresh run."""
    made = REPO / ".out" / "sample"
    if (made / "registry").is_dir():
        return made
    out = tmp_path_factory.mktemp("sample")
    raw = json.loads((REPO / "configs/env/sample.json").read_text())
    raw["out_dir"] = str(out)
    config = out / "config.json"
    config.write_text(json.dumps(raw))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path_factory.mktemp("home"))}
    subprocess.run(
        [
            str(REPO / ".venv/bin/recsys-assets"),
            "run",
            "--config",
            str(config),
            "--start",
            "2026-01-01",
            "--end",
            "2026-01-03",
        ],
        check=True,
        env=env,
        cwd=REPO,
        capture_output=True,
    )
    return out


def test_layout_page_covers_every_file_a_run_writes(sample_output: Path):
    patterns = {loc: [] for loc in LOCATIONS}
    for location, key, _ in layout_entries():
        patterns[location].append(_pattern(key))
    unexplained = []
    seen = 0
    for location, folder in LOCATIONS.items():
        for path in (sample_output / folder).rglob("*"):
            if path.is_file():
                seen += 1
                relative = path.relative_to(sample_output / folder).as_posix()
                if not any(p.match(relative) for p in patterns[location]):
                    unexplained.append(f"{folder}/{relative}")
    assert seen > 50
    assert not unexplained, f"files the layout page does not explain: {unexplained[:10]}"


def test_assets_page_names_every_check_and_its_runbook_page():
    page = PAGES["assets.md"]()
    from recsys_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    for check in graph.asset_check_keys:
        assert f"`{check.name}`" in _sections(page)[check.asset_key.to_user_string()]
        description = graph.get_check_spec(check).description
        page_path = re.search(r"runbook: (docs/runbooks/[a-z-]+\.md)", description)
        assert page_path, f"{check.name}: its UI description names no runbook"
        assert (REPO / page_path[1]).is_file(), f"{page_path[1]} does not exist"


def test_schemas_page_has_every_schema_file():
    page = PAGES["schemas.md"]()
    for path in (REPO / "schemas").rglob("*.json"):
        assert str(path.relative_to(REPO)) in page
