import json

from recsys_assets_tests.conftest import event, lines
from recsys_assets_tests.test_cli import cli, write_config, write_days


def current_version(tmp_path, artifact_type: str) -> str:
    manifest = json.loads((tmp_path / "out/registry/current/demo/home/manifest.json").read_text())
    return manifest["current"][artifact_type].rsplit("/", 1)[1].removesuffix(".json")


def test_run_publish_rollback_pin_unpin_status(tmp_path, cli_env):
    days = {f"2026-01-0{d}": lines(event(day=f"2026-01-0{d}", item_id=f"I{d}")) for d in (1, 2, 3)}
    write_days(tmp_path, days)
    config = str(write_config(tmp_path))
    result = cli(
        ["run", "--config", config, "--start", "2026-01-01", "--end", "2026-01-02"], cli_env
    )
    assert result.returncode == 0, result.stderr
    assert "current manifest:" in result.stdout
    day2 = current_version(tmp_path, "popularity")

    status = cli(["status", "--config", config], cli_env)
    assert status.returncode == 1  # 2026-01-03 is long past: stale
    assert "STALE" in status.stdout and day2[:12] in status.stdout

    rollback = cli(
        [
            "rollback",
            "--config",
            config,
            "--tenant",
            "demo",
            "--surface",
            "home",
            "--type",
            "popularity",
            "--previous",
            "--reason",
            "bad day",
            "--actor",
            "oncall@example",
        ],
        cli_env,
    )
    assert rollback.returncode == 0, rollback.stderr
    day1 = current_version(tmp_path, "popularity")
    assert day1 != day2
    assert "PINNED" in cli(["status", "--config", config], cli_env).stdout

    # a newer day publishes its records but leaves the pinned pointer alone
    assert cli(["run", "--config", config, "--start", "2026-01-03"], cli_env).returncode == 0
    assert current_version(tmp_path, "popularity") == day1
    assert current_version(tmp_path, "cooc") != day1

    unpin = cli(
        [
            "unpin",
            "--config",
            config,
            "--tenant",
            "demo",
            "--surface",
            "home",
            "--type",
            "popularity",
            "--reason",
            "fixed",
        ],
        cli_env,
    )
    assert unpin.returncode == 0, unpin.stderr
    assert cli(["publish", "--config", config, "--start", "2026-01-03"], cli_env).returncode == 0
    assert current_version(tmp_path, "popularity") not in (day1, day2)

    audit = [
        json.loads(x)
        for x in (tmp_path / "out/registry/audit/demo/home.jsonl").read_text().splitlines()
    ]
    assert [(a["action"], a["actor"], a["reason"]) for a in audit] == [
        ("rollback", "oncall@example", "bad day"),
        ("unpin", audit[1]["actor"], "fixed"),
    ]
    assert audit[0]["from"] == day2 and audit[0]["to"] == day1


def test_rollback_to_an_unknown_version_fails_clearly(tmp_path, cli_env):
    write_days(tmp_path, {"2026-01-01": lines(event())})
    config = str(write_config(tmp_path))
    assert cli(["run", "--config", config, "--start", "2026-01-01"], cli_env).returncode == 0
    before = (tmp_path / "out/registry/current/demo/home/manifest.json").read_bytes()
    result = cli(
        [
            "rollback",
            "--config",
            config,
            "--tenant",
            "demo",
            "--surface",
            "home",
            "--type",
            "cooc",
            "--version",
            "0" * 64,
        ],
        cli_env,
    )
    assert result.returncode == 1 and "no recorded version" in result.stderr
    assert (tmp_path / "out/registry/current/demo/home/manifest.json").read_bytes() == before
    usage = cli(
        [
            "rollback",
            "--config",
            config,
            "--tenant",
            "demo",
            "--surface",
            "home",
            "--type",
            "nope",
            "--previous",
        ],
        cli_env,
    )
    assert usage.returncode == 2
