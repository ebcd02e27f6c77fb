import json

import pytest

from recsys_assets.config import ConfigError, load_config, parse_config

MINIMAL = {"start_date": "2026-01-01", "tenants": [{"tenant": "demo", "surface": "home"}]}


def test_defaults_follow_the_spec(tmp_path):
    config = parse_config(MINIMAL, root=tmp_path)
    assert config.limits.max_bad_row_ratio == 0.01
    assert config.limits.max_items_per_session == 200
    assert config.artifacts.implicit.factors == 64
    assert config.artifacts.session_seq.window == 3
    assert config.publish.freshness_hours == 36
    assert config.canonical_location == str(tmp_path / ".out" / "canonical")
    assert config.raw_source.dir == tmp_path / "testdata/events/tiny"
    assert config.object_store.dir == tmp_path / ".out" / "objectstore"


def test_legacy_keys_and_aliases(tmp_path):
    config = parse_config(
        {
            **MINIMAL,
            "raw_events_dir": "events",
            "object_store_dir": "/srv/blobs",
            "raw_source": {"type": "file"},
            "db": {"dsn": "postgresql://x/y"},
        },
        root=tmp_path,
    )
    assert config.raw_source.type == "fs"
    assert config.raw_source.dir == tmp_path / "events"
    assert str(config.object_store.dir) == "/srv/blobs"
    assert config.raw_source.postgres.dsn == "postgresql://x/y"


def test_env_var_values(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_TEST_DSN", "postgresql://secret@db/x")
    config = parse_config({**MINIMAL, "db": {"dsn": "${RECSYS_TEST_DSN}"}}, root=tmp_path)
    assert config.db.dsn == "postgresql://secret@db/x"
    with pytest.raises(ConfigError, match="db.dsn: environment variable RECSYS_NOT_SET_X"):
        parse_config({**MINIMAL, "db": {"dsn": "${RECSYS_NOT_SET_X}"}}, root=tmp_path)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"bogus": 1}, "unknown key bogus"),
        ({"limits": {"max_items_per_sesion": 3}}, "unknown key limits.max_items_per_sesion"),
        (
            {"limits": {"max_items_per_session": -3}},
            "limits.max_items_per_session: must be greater than 0, got -3",
        ),
        ({"limits": {"max_bad_row_ratio": 2}}, "limits.max_bad_row_ratio"),
        ({"start_date": "2026-13-01"}, "start_date: expected a date YYYY-MM-DD, got '2026-13-01'"),
        ({"raw_source": {"type": "ftp"}}, "raw_source.type: must be 'fs', 's3' or 'postgres'"),
        ({"dedup_exact": "yes"}, "dedup_exact: must be a valid boolean, got 'yes'"),
        (
            {
                "tenants": [
                    {
                        "tenant": "demo",
                        "surface": "home",
                        "artifacts": {"cooc": {"window_days": "x"}},
                    }
                ]
            },
            "artifacts.cooc.window_days",
        ),
        (
            {"tenants": [{"tenant": "demo", "surface": "home", "artifacts": {"nope": {}}}]},
            "unknown artifact type 'nope'",
        ),
        ({"tenants": []}, "tenants"),
    ],
)
def test_bad_config_names_key_and_value(tmp_path, overrides, expected):
    with pytest.raises(ConfigError) as error:
        parse_config({**MINIMAL, **overrides}, "env.json", root=tmp_path)
    assert expected in str(error.value)
    assert "env.json" in str(error.value)


@pytest.mark.parametrize("name", ["de__mo", "a..b", "../etc", "-x", "x-", "a/b", "", "ü"])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="is not allowed"):
        parse_config({**MINIMAL, "tenants": [{"tenant": name, "surface": "home"}]}, root=tmp_path)


def test_tenant_overrides_merge_with_global_settings(tmp_path):
    config = parse_config(
        {
            **MINIMAL,
            "artifacts": {"cooc": {"window_days": 7}},
            "tenants": [
                {"tenant": "demo", "surface": "home", "artifacts": {"cooc": {"enabled": False}}}
            ],
        },
        root=tmp_path,
    )
    settings = config.artifact_settings(config.tenants[0], "cooc")
    assert settings.window_days == 7 and settings.enabled is False


def test_load_config_reports_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config(path)
    path.write_text(json.dumps(MINIMAL))
    assert load_config(path).tenants[0].key == "demo__home"
