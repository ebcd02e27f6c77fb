"""What an operator must never see: an empty or collapsed artifact published over the live
one, one tenant's failure holding up the others, files the online service cannot read,
and failures buried under Dagster's log. Every failure leaves the live manifest's bytes as
they were."""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from recsys_assets.publish.collapse import no_collapse, row_counts
from recsys_assets_tests.conftest import event, lines
from recsys_assets_tests.test_cli import BIN, cli, write_config, write_days

RUN_DAY = ["--start", "2026-01-02"]


def good_day(day: str, items: str = "ABCDEFGH") -> bytes:
    return lines(
        *(
            event(
                day=day,
                time=f"08:00:0{i % 10}",
                session_id=f"s{i // 3}",
                user_id=f"u{i // 3}",
                item_id=item,
            )
            for i, item in enumerate(items)
        )
    )


def manifest_path(tmp_path: Path, tenant: str = "demo", surface: str = "home") -> Path:
    return tmp_path / f"out/registry/current/{tenant}/{surface}/manifest.json"


def run(config: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return cli(["run", "--config", str(config), *extra], env)


@pytest.fixture
def live(tmp_path, cli_env):
    """Day 2026-01-01 built and published; returns the live manifest's bytes."""
    write_days(tmp_path, {"2026-01-01": good_day("2026-01-01")})
    result = run(write_config(tmp_path), cli_env, "--start", "2026-01-01")
    assert result.returncode == 0, result.stdout + result.stderr
    return manifest_path(tmp_path).read_bytes()


def test_a_mistyped_raw_source_dir_fails_naming_the_path(tmp_path, cli_env, live):
    config = write_config(tmp_path, "typo.json", raw_source={"type": "fs", "dir": "/no/such/dir"})
    result = run(config, cli_env, *RUN_DAY)
    assert result.returncode == 1
    assert "canonical_exposures:source_present" in result.stdout
    assert "/no/such/dir/demo/home/exposure.2026-01-02.jsonl" in result.stdout
    assert "limits.allow_missing_source" in result.stdout
    assert manifest_path(tmp_path).read_bytes() == live
    marker = json.loads(
        (tmp_path / "out/canonical/demo/home/markers/exposures/2026-01-02.json").read_text()
    )
    assert marker["source_missing"] is True


def test_incremental_over_undelivered_days_fails_and_keeps_the_checkpoint(tmp_path, cli_env, live):
    config = write_config(tmp_path)
    result = run(config, cli_env, "--incremental", "--end", "2026-01-03")
    assert result.returncode == 1
    assert "2026-01-02" in result.stdout and "2026-01-03" in result.stdout  # both tried
    assert result.stdout.count("source_present") >= 2
    assert manifest_path(tmp_path).read_bytes() == live
    checkpoint = json.loads((tmp_path / "out/checkpoints/demo/home.json").read_text())
    assert checkpoint["last_success_day"] == "2026-01-01"
    # Delivered late, the day is taken up by the next incremental run.
    write_days(tmp_path, {"2026-01-02": good_day("2026-01-02")})
    again = run(config, cli_env, "--incremental", "--end", "2026-01-02")
    assert again.returncode == 0, again.stdout + again.stderr
    assert manifest_path(tmp_path).read_bytes() != live


def test_a_flat_file_without_the_day_is_a_missing_source(tmp_path, cli_env):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "exposure.jsonl").write_bytes(good_day("2026-01-01"))
    config = write_config(tmp_path)
    assert run(config, cli_env, "--start", "2026-01-01").returncode == 0
    live = manifest_path(tmp_path).read_bytes()
    result = run(config, cli_env, *RUN_DAY)
    assert result.returncode == 1
    assert "source_present" in result.stdout and "exposure.jsonl" in result.stdout
    assert manifest_path(tmp_path).read_bytes() == live


def test_an_allowed_empty_day_is_still_kept_from_collapsing_live(tmp_path, cli_env, live):
    """allow_missing_source builds the empty day; no_collapse keeps it from replacing live,
    until an operator forces it, which the audit log records."""
    config = write_config(tmp_path, "lenient.json", limits={"allow_missing_source": True})
    result = run(config, cli_env, *RUN_DAY)
    assert result.returncode == 1
    summary = result.stdout.split("summary:", 1)[1]
    assert "popularity:no_collapse" in summary and "cooc:no_collapse" in summary
    live_version = json.loads(live)["current"]["popularity"].rsplit("/", 1)[1][:-5]
    assert (
        f"popularity collapsed: 0 items vs 8 live (0.000) against live version {live_version}"
        in (result.stdout)
    )
    assert manifest_path(tmp_path).read_bytes() == live

    forced = run(
        config,
        cli_env,
        *RUN_DAY,
        "--allow-collapse",
        "all",
        "--reason",
        "shop closed",
        "--actor",
        "ops@example",
    )
    assert forced.returncode == 0, forced.stdout + forced.stderr
    manifest = json.loads(manifest_path(tmp_path).read_text())
    assert manifest["current"]["popularity"] != json.loads(live)["current"]["popularity"]
    audit = [
        json.loads(line)
        for line in (tmp_path / "out/registry/audit/demo/home.jsonl").read_text().splitlines()
    ]
    forced_types = {a["artifact_type"] for a in audit if a["action"] == "allow_collapse"}
    assert {"popularity", "cooc", "implicit", "session_seq"} <= forced_types
    assert {a["actor"] for a in audit} == {"ops@example"}
    assert {a["reason"] for a in audit} == {"shop closed"}


def test_no_collapse_rule():
    rows = {"users": 40, "transitions": 10}
    live_rows = {"users": 50, "transitions": 30}
    verdict = no_collapse("session_seq", rows, live_rows, "v" * 64, 0.5)
    assert not verdict.passed and verdict.collapsed == ["transitions"]
    assert "10 transitions vs 30 live" in verdict.message and "v" * 64 in verdict.message
    assert no_collapse("session_seq", rows, live_rows, "v" * 64, 0.25).passed
    assert not no_collapse("cooc", {"neighbors": 0}, {"neighbors": 1}, "v" * 64, 0.0).passed
    assert no_collapse("cooc", {"neighbors": 0}, {"neighbors": 0}, "v" * 64, 0.5).passed
    assert no_collapse("cooc", {"neighbors": 0}, None, None, 0.5).passed  # nothing live


def test_row_counts_read_only_the_top_level_lists():
    blob = json.dumps(
        {
            "v": 1,
            "users": [{"user_id": "u", "items": [{"item_id": "a"}] * 3}] * 2,
            "transitions": [],
            "build": {"items": [1, 2, 3]},
        }
    ).encode()
    assert row_counts("session_seq", blob) == {"users": 2, "transitions": 0}


def test_one_tenants_failure_does_not_stop_the_others(tmp_path, cli_env):
    tenants = [{"tenant": "demo", "surface": "home"}, {"tenant": "acme", "surface": "home"}]
    write_days(tmp_path, {"2026-01-01": lines(event(), "{bad", "{bad")})  # demo: bad rows
    acme = tmp_path / "raw/acme/home/exposure.2026-01-01.jsonl"
    acme.parent.mkdir(parents=True)
    acme.write_bytes(good_day("2026-01-01").replace(b'"demo"', b'"acme"'))
    config = write_config(tmp_path, tenants=tenants)
    result = run(config, cli_env, "--start", "2026-01-01")
    assert result.returncode == 1
    summary = result.stdout.split("summary:", 1)[1]
    assert "demo/home       2026-01-01  FAILED   canonical_exposures:bad_row_ratio" in summary
    assert "acme/home       2026-01-01  ok" in summary
    assert manifest_path(tmp_path, "acme").exists()
    assert not manifest_path(tmp_path, "demo").exists()

    fail_fast = run(config, cli_env, "--start", "2026-01-01", "--fail-fast")
    assert fail_fast.returncode == 1
    assert "acme/home" not in fail_fast.stdout.split("summary:", 1)[1]


def test_files_are_readable_by_others_per_the_umask(tmp_path, cli_env):
    write_days(tmp_path, {"2026-01-01": good_day("2026-01-01")})

    def run_with_umask(mask: int, out: str) -> Path:
        config = write_config(tmp_path, f"{out}.json", out_dir=str(tmp_path / out))
        result = subprocess.run(
            [str(BIN / "recsys-assets"), "run", "--config", str(config), "--start", "2026-01-01"],
            env=cli_env,
            capture_output=True,
            text=True,
            preexec_fn=lambda: os.umask(mask),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return tmp_path / out

    shared = run_with_umask(0o022, "shared")
    files = [p for p in shared.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert {".json", ".parquet", ".jsonl", ".version"} <= {p.suffix for p in files}
    assert shared / "registry/current/demo/home/manifest.json" in files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    private = run_with_umask(0o077, "private")
    manifest = private / "registry/current/demo/home/manifest.json"
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600


def test_failures_are_one_line_and_dagsters_log_only_with_verbose(tmp_path, cli_env, live):
    write_days(tmp_path, {"2026-01-02": good_day("2026-01-02")})
    # The same input gives the same version: learn day 2's popularity version elsewhere,
    # then put a folder where its published blob would go, so that publishing fails.
    other = write_config(tmp_path, "other.json", out_dir=str(tmp_path / "other"))
    assert run(other, cli_env, *RUN_DAY).returncode == 0
    (published,) = (tmp_path / "other/objectstore/demo/home/popularity").iterdir()
    (tmp_path / "out/objectstore/demo/home/popularity" / published.name).mkdir()
    config = write_config(tmp_path)
    result = run(config, cli_env, *RUN_DAY)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert " - dagster - " not in result.stdout + result.stderr  # Dagster's own log lines
    failed = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert len(failed) == 1
    assert "publish failed, current manifest unchanged: popularity: reading back blob" in failed[0]
    assert manifest_path(tmp_path).read_bytes() == live

    verbose = run(config, cli_env, *RUN_DAY, "-v")
    assert verbose.returncode == 1 and " - dagster - " in verbose.stderr


def test_config_and_usage_problems_exit_2_at_load(tmp_path, cli_env, live):
    no_catalog = write_config(
        tmp_path, "catalog.json", catalog={"path": str(tmp_path / "missing.csv")}
    )
    result = run(no_catalog, cli_env, *RUN_DAY)
    assert result.returncode == 2
    assert "catalog.path: no such file" in result.stderr and "missing.csv" in result.stderr
    config = write_config(tmp_path)
    rollback = cli(
        [
            "rollback",
            "--config",
            str(config),
            "--tenant",
            "demo",
            "--surface",
            "home",
            "--type",
            "cooc",
            "--version",
            "deadbeef",
        ],
        cli_env,
    )
    assert rollback.returncode == 2 and "'deadbeef'" in rollback.stderr
    for key, expected in [
        ("2026-01-02|demo_home", "no tenant__surface part"),
        ("2026-01-02|acme__home", "acme/home is not configured"),
        ("2025-12-31|demo__home", "before the config's start_date"),
    ]:
        bad = cli(["ingest", "--config", str(config), "--partition", key], cli_env)
        assert bad.returncode == 2, bad.stderr
        assert expected in bad.stderr and "Traceback" not in bad.stderr
    assert manifest_path(tmp_path).read_bytes() == live


def test_windows_do_not_reach_before_start_date(tmp_path, cli_env, monkeypatch):
    from dagster import AssetKey, DagsterInstance

    write_days(tmp_path, {d: good_day(d) for d in ("2026-01-01", "2026-01-02")})
    config = write_config(tmp_path, artifacts={"cooc": {"window_days": 3}})
    result = run(config, cli_env, "--start", "2026-01-01", "--end", "2026-01-02")
    assert result.returncode == 0, result.stdout + result.stderr
    monkeypatch.setenv("DAGSTER_HOME", cli_env["DAGSTER_HOME"])
    with DagsterInstance.get() as instance:
        records = instance.fetch_materializations(AssetKey("cooc"), limit=10).records
        found = {str(r.partition_key): r.asset_materialization.metadata for r in records}
    metadata = found["2026-01-02|demo__home"]
    assert metadata["days_missing"].value == []
    assert metadata["days_present"].value == ["2026-01-01", "2026-01-02"]
    assert metadata["window_start"].value == "2025-12-31"  # the nominal window (SPEC §4)
