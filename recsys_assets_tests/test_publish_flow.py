import json

import dagster as dg
import orjson
import pytest

from recsys_assets.artifacts.validate import validate_manifest
from recsys_assets.graph import build_definitions
from recsys_assets.publish.resources import publish_targets
from recsys_assets.runner import execute
from recsys_assets_tests.conftest import REPO, event, lines
from recsys_assets_tests.s3_fixtures import s3_connection, s3_server  # noqa: F401

TINY = (REPO / "testdata/events/tiny/exposure.jsonl").read_bytes()
KEY = "2026-01-01|demo__home"


def tick(defs: dg.Definitions, instance, cursor: str | None):
    sensor = defs.resolve_sensor_def("publish_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = sensor.evaluate_tick(context)
    return result.run_requests, result.cursor


def publish_requested(defs, instance, requests) -> None:
    for request in requests:
        outcome = execute(defs, "publish_job", request.partition_key, instance)
        assert outcome.success, outcome.messages


def manifest(config) -> dict | None:
    _, registry = publish_targets(config).stores()
    return registry.manifest("demo", "home")


@pytest.fixture(params=["fs", "s3"])
def backend_config(request, make_config):
    """A config whose object store and registry are local, or on S3 (moto)."""
    if request.param == "fs":
        return make_config
    connection = request.getfixturevalue("s3_connection")

    def build(**overrides):
        store = {
            "type": "s3",
            "s3": {
                "endpoint": connection.endpoint,
                "bucket": connection.bucket,
                "access_key": connection.access_key,
                "secret_key": connection.secret_key,
                "prefix": "recsys",
                "use_ssl": False,
            },
        }
        return make_config(object_store=store, **overrides)

    return build


def test_materialize_tick_publish_manifest(backend_config, write_day, instance):
    write_day(TINY)
    config = backend_config()
    defs = build_definitions(config)
    requests, cursor = tick(defs, instance, None)  # deploy: seeds the cursor
    assert requests == []
    assert execute(defs, "recsys_daily", KEY, instance).success
    requests, cursor = tick(defs, instance, cursor)
    assert [r.partition_key for r in requests] == [KEY]
    publish_requested(defs, instance, requests)

    current = manifest(config)
    assert validate_manifest(current) == []
    assert sorted(current["current"]) == ["cooc", "implicit", "popularity", "session_seq"]
    scheme = "s3://" if config.object_store.type == "s3" else "file:///"
    assert all(uri.startswith(scheme) for uri in current["current"].values())
    object_store, _ = publish_targets(config).stores()
    blob = object_store.read_bytes(
        current["current"]["popularity"].split("/recsys/", 1)[-1]
        if scheme == "s3://"
        else "demo/home/popularity/" + current["current"]["popularity"].rsplit("/", 1)[1]
    )
    assert orjson.loads(blob)["items"][0] == {"item_id": "A", "count": 2}

    again, cursor = tick(defs, instance, cursor)  # nothing new: no second run
    assert again == []


def test_failed_artifact_check_is_never_published(make_config, write_day, instance):
    crawler = [event(session_id="bot", item_id=f"I{i}", time=f"08:00:{i:02d}") for i in range(6)]
    write_day(lines(*crawler, event(session_id="h", item_id="A")))
    config = make_config(limits={"max_items_per_session": 3, "max_excluded_event_ratio": 0.5})
    defs = build_definitions(config)
    _, cursor = tick(defs, instance, None)
    assert not execute(defs, "recsys_daily", KEY, instance).success
    requests, cursor = tick(defs, instance, cursor)
    assert requests == []
    assert json.loads(cursor)["pending"] == {}  # failed, not waiting: nothing to re-check
    assert manifest(config) is None


def test_backfill_of_an_older_day_keeps_current_on_the_newest(make_config, write_day, instance):
    for day in ("2026-01-01", "2026-01-02"):
        write_day(lines(event(day=day, item_id=f"X{day[-1]}")), day=day)
    config = make_config()
    defs = build_definitions(config)
    for day in ("2026-01-02", "2026-01-01"):  # newest first, then the backfill
        key = f"{day}|demo__home"
        assert execute(defs, "recsys_daily", key, instance).success
        assert execute(defs, "publish_job", key, instance).success
    _, registry = publish_targets(config).stores()
    version = manifest(config)["current"]["popularity"].rsplit("/", 1)[1].removesuffix(".json")
    record = registry.record("demo", "home", "popularity", version)
    assert record["window"]["end"] == "2026-01-03T00:00:00Z"
    assert len(registry.records("demo", "home", "popularity")) == 2  # the backfill is recorded


def test_republishing_changes_nothing(make_config, write_day, instance):
    write_day(TINY)
    config = make_config()
    defs = build_definitions(config)
    assert execute(defs, "recsys_daily", KEY, instance).success
    assert execute(defs, "publish_job", KEY, instance).success
    path = config.out_dir / "registry/current/demo/home/manifest.json"
    before = path.read_bytes()
    assert execute(defs, "publish_job", KEY, instance).success
    assert path.read_bytes() == before


def test_failed_publish_leaves_current_untouched(make_config, write_day, instance):
    write_day(TINY)
    config = make_config()
    defs = build_definitions(config)
    assert execute(defs, "recsys_daily", KEY, instance).success
    assert execute(defs, "publish_job", KEY, instance).success
    path = config.out_dir / "registry/current/demo/home/manifest.json"
    before = path.read_bytes()
    # a new day whose staged popularity blob is tampered after its checks passed
    # (as large as the first, or no_collapse would hold it back before publish is reached)
    day2 = TINY.replace(b"2026-01-01", b"2026-01-02") + lines(event(day="2026-01-02", item_id="Z"))
    write_day(day2, day="2026-01-02")
    key2 = "2026-01-02|demo__home"
    assert execute(defs, "recsys_daily", key2, instance).success
    folder = config.out_dir / "artifacts/demo/home/popularity/2026-01-02_2026-01-03"
    version = (folder / "current.version").read_text().strip()
    blob = folder / f"{version}.json"
    blob.write_bytes(blob.read_bytes().replace(b'"count":1', b'"count":7'))
    outcome = execute(defs, "publish_job", key2, instance)
    assert not outcome.success
    assert any("popularity" in m and "version" in m for m in outcome.messages)
    assert path.read_bytes() == before


def test_freshness_check_per_tenant_surface(make_config, write_day, instance):
    write_day(TINY)
    config = make_config()
    defs = build_definitions(config)
    assert execute(defs, "recsys_daily", KEY, instance).success
    assert execute(defs, "publish_job", KEY, instance).success
    outcome = execute(defs, "freshness_job", "demo__home", instance)
    assert outcome.checks == {"manifest_freshness:fresh": False}  # 2026-01-02 is long gone
    schedule = defs.resolve_schedule_def("freshness_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_partition_waits_until_every_type_is_checked(make_config, write_day, instance):
    write_day(TINY)
    config = make_config()
    defs = build_definitions(config)
    _, cursor = tick(defs, instance, None)
    assert execute(defs, "ingest_job", KEY, instance).success
    assert execute(defs, "popularity_job", KEY, instance).success  # one type of four so far
    requests, cursor = tick(defs, instance, cursor)
    assert requests == []
    assert list(json.loads(cursor)["pending"]) == [KEY]
    assert execute(defs, "recsys_daily", KEY, instance).success
    requests, cursor = tick(defs, instance, cursor)
    assert [r.partition_key for r in requests] == [KEY]
    assert json.loads(cursor)["pending"] == {}


def test_first_tick_after_deploy_requests_nothing_already_built(make_config, write_day, instance):
    write_day(TINY)
    config = make_config()
    defs = build_definitions(config)
    assert execute(defs, "recsys_daily", KEY, instance).success
    requests, cursor = tick(defs, instance, None)  # deployed after the build: seeds only
    assert requests == []
    requests, _ = tick(defs, instance, cursor)
    assert requests == []  # the overlap re-read does not bring it back
