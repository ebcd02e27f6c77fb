import json
import os
from pathlib import Path

import dagster as dg
import pytest

from recsys_assets.config import AppConfig, parse_config

REPO = Path(__file__).resolve().parent.parent


def event(day: str = "2026-01-01", time: str = "08:00:00", **fields: object) -> dict:
    base = {
        "v": 1,
        "ts": f"{day}T{time}Z",
        "tenant": "demo",
        "surface": "home",
        "session_id": "s1",
        "item_id": "A",
    }
    return {**base, **fields}


def cycled_events(n: int, sessions: int, items: int, users: int) -> list[dict]:
    """`n` events a minute apart from 08:00, session, item and user ids cycling through their
    counts (`s0..`, `I0..`, `u0..`): a small day with repeats in every dimension."""
    return [
        event(
            session_id=f"s{i % sessions}",
            item_id=f"I{i % items}",
            user_id=f"u{i % users}",
            time=f"08:{i:02d}:00",
        )
        for i in range(n)
    ]


def lines(*items: object) -> bytes:
    """JSON Lines bytes; dicts are serialized, strings are taken as raw lines."""
    out = [json.dumps(i) if isinstance(i, dict) else str(i) for i in items]
    return ("\n".join(out) + "\n").encode()


@pytest.fixture
def make_config(tmp_path: Path):
    """A config rooted in tmp_path; keyword arguments override top-level keys."""

    def build(**overrides: object) -> AppConfig:
        raw = {
            "start_date": "2026-01-01",
            "tenants": [{"tenant": "demo", "surface": "home"}],
            "out_dir": str(tmp_path / "out"),
            "raw_source": {"type": "fs", "dir": str(tmp_path / "raw")},
        }
        raw.update(overrides)
        return parse_config(raw, "test", root=tmp_path)

    return build


@pytest.fixture
def write_day(tmp_path: Path):
    def write(data: bytes, day: str = "2026-01-01", tenant: str = "demo", surface: str = "home"):
        path = tmp_path / "raw" / tenant / surface / f"exposure.{day}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return write


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    os.makedirs(env["DAGSTER_HOME"], exist_ok=True)
    env.pop("RECSYS_CONFIG", None)
    return env
