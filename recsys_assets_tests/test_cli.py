import json
import subprocess
import sys
from pathlib import Path

from recsys_assets_tests.conftest import REPO, event, lines

BIN = Path(sys.executable).parent


def cli(args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "recsys-assets"), *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def write_config(tmp_path: Path, name: str = "config.json", **overrides: object) -> Path:
    raw = {
        "start_date": "2026-01-01",
        "tenants": [{"tenant": "demo", "surface": "home"}],
        "out_dir": str(tmp_path / "out"),
        "raw_source": {"type": "fs", "dir": str(tmp_path / "raw")},
        **overrides,
    }
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return path


def write_days(tmp_path: Path, days: dict[str, bytes]) -> None:
    for day, data in days.items():
        path = tmp_path / "raw/demo/home" / f"exposure.{day}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_run_over_days_is_idempotent_and_checkpoints(tmp_path, cli_env):
    write_days(
        tmp_path, {"2026-01-01": lines(event()), "2026-01-02": lines(event(day="2026-01-02"))}
    )
    config = write_config(tmp_path)
    first = cli(
        ["run", "--config", str(config), "--start", "2026-01-01", "--end", "2026-01-02"], cli_env
    )
    assert first.returncode == 0, first.stderr
    assert "2026-01-01 demo/home run: ok" in first.stdout
    assert "2026-01-02 demo/home run: ok" in first.stdout
    checkpoint = json.loads((tmp_path / "out/checkpoints/demo/home.json").read_text())
    assert checkpoint["last_success_day"] == "2026-01-02"
    before = tree(tmp_path / "out")
    again = cli(
        ["run", "--config", str(config), "--start", "2026-01-01", "--end", "2026-01-02"], cli_env
    )
    assert again.returncode == 0
    assert tree(tmp_path / "out") == before

    write_days(tmp_path, {"2026-01-03": lines(event(day="2026-01-03"))})
    incremental = cli(
        ["run", "--config", str(config), "--incremental", "--end", "2026-01-03"], cli_env
    )
    assert incremental.returncode == 0, incremental.stderr
    assert "2026-01-03 demo/home run: ok" in incremental.stdout
    assert "2026-01-01" not in incremental.stdout


def test_failed_blocking_check_exits_1_naming_the_check(tmp_path, cli_env):
    write_days(tmp_path, {"2026-01-01": lines(event(), "{bad")})
    config = write_config(tmp_path)
    result = cli(
        ["run", "--config", str(config), "--start", "2026-01-01", "--end", "2026-01-02"], cli_env
    )
    assert result.returncode == 1
    assert "canonical_exposures:bad_row_ratio" in result.stderr
    assert "2026-01-02 demo/home run: FAILED" in result.stderr  # goes on: no file that day
    assert not (tmp_path / "out/checkpoints/demo/home.json").exists()
    fail_fast = cli(
        ["run", "--config", str(config), "--start", "2026-01-01", "--end", "2026-01-02"]
        + ["--fail-fast"],
        cli_env,
    )
    assert fail_fast.returncode == 1
    assert "2026-01-02" not in fail_fast.stdout + fail_fast.stderr  # stops at the failing day


def test_usage_and_config_errors_exit_2(tmp_path, cli_env):
    config = write_config(tmp_path)
    assert cli(["run", "--config", str(config)], cli_env).returncode == 2  # no --start
    bad_date = cli(["run", "--config", str(config), "--start", "2026-02-30"], cli_env)
    assert bad_date.returncode == 2 and "2026-02-30" in bad_date.stderr
    too_long = cli(
        ["run", "--config", str(config), "--start", "2026-01-01", "--end", "2027-06-01"], cli_env
    )
    assert too_long.returncode == 2 and "max_days_backfill" in too_long.stderr
    incremental = cli(
        ["run", "--config", str(config), "--incremental", "--end", "2026-01-02"], cli_env
    )
    assert incremental.returncode == 2 and "no checkpoint" in incremental.stderr
    broken = write_config(tmp_path, "broken.json", limits={"max_items_per_session": -3})
    result = cli(["ingest", "--config", str(broken), "--start", "2026-01-01"], cli_env)
    assert result.returncode == 2
    assert "limits.max_items_per_session" in result.stderr and "-3" in result.stderr
    unknown = cli(
        [
            "ingest",
            "--config",
            str(config),
            "--tenant",
            "nope",
            "--surface",
            "x",
            "--start",
            "2026-01-01",
        ],
        cli_env,
    )
    assert unknown.returncode == 2 and "nope/x is not configured" in unknown.stderr


def test_unsafe_names_are_refused_before_any_file_is_written(tmp_path, cli_env):
    config = write_config(tmp_path, tenants=[{"tenant": "../escape", "surface": "home"}])
    result = cli(["run", "--config", str(config), "--start", "2026-01-01"], cli_env)
    assert result.returncode == 2 and "is not allowed" in result.stderr
    assert not (tmp_path / "out").exists()


def test_validate_reports_on_existing_partitions(tmp_path, cli_env):
    write_days(tmp_path, {"2026-01-01": lines(event(), event(item_id="B"))})
    config = write_config(tmp_path)
    assert (
        cli(["ingest", "--config", str(config), "--start", "2026-01-01"], cli_env).returncode == 0
    )
    stricter = write_config(tmp_path, "strict.json", limits={"max_events_per_run": 1})
    result = cli(["validate", "--config", str(stricter), "--start", "2026-01-01"], cli_env)
    assert result.returncode == 1
    assert "event_volume" in result.stderr and "2 events" in result.stderr


def test_version(cli_env):
    result = cli(["version"], cli_env)
    assert result.returncode == 0 and result.stdout.startswith("recsys-assets ")


def test_dagster_asset_materialize_from_the_repo_root(tmp_path, cli_env):
    write_days(tmp_path, {"2026-01-01": lines(event(), event(item_id="B"))})
    env = {**cli_env, "RECSYS_CONFIG": str(write_config(tmp_path))}
    result = subprocess.run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "recsys_assets",
            "--select",
            "canonical_exposures",
            "--partition",
            "2026-01-01|demo__home",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out/canonical/demo/home/exposures/2026-01-01.parquet").exists()
    assert (tmp_path / "out/canonical/demo/home/markers/exposures/2026-01-01.json").exists()


def test_code_location_loads_as_the_ui_loads_it(tmp_path, cli_env):
    """What `dagster dev` does first: load and validate every definition of the location."""
    env = {**cli_env, "RECSYS_CONFIG": str(REPO / "configs/env/sample.json")}
    result = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "recsys_assets"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
