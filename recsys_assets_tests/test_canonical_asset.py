import datetime as dt
import json

import dagster as dg
import orjson
import polars as pl

from recsys_assets.events.store import CanonicalStore
from recsys_assets.graph import build_definitions
from recsys_assets.partitions import parse_partition_key
from recsys_assets.runner import execute
from recsys_assets_tests.conftest import event, lines

KEY = "2026-01-01|demo__home"


def snapshot(root) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_materialization_writes_partition_rejects_and_marker(make_config, write_day, instance):
    write_day(lines(event(), event(item_id="B", time="08:00:01"), event(), "", "{bad", event(v=9)))
    config = make_config(limits={"max_bad_row_ratio": 0.5})
    outcome = execute(build_definitions(config), "ingest_job", KEY, instance)
    assert outcome.success, outcome.messages

    store = CanonicalStore(location=config.canonical_location)
    events, marker = store.read_events(parse_partition_key(KEY))
    assert events["item_id"].to_list() == ["A", "B"]
    assert marker["counts"]["duplicates"] == 1 and marker["counts"]["blank_lines"] == 1
    assert marker["rejects_by_reason"] == {"malformed_json": 1, "unsupported_version": 1}
    rejects = [
        json.loads(x)
        for x in (config.out_dir / "canonical/demo/home/rejects/2026-01-01.jsonl")
        .read_text()
        .splitlines()
    ]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (5, "malformed_json"),
        (6, "unsupported_version"),
    ]
    assert rejects[0]["raw"] == "{bad"

    materialization = instance.get_latest_materialization_event(dg.AssetKey("canonical_exposures"))
    metadata = materialization.asset_materialization.metadata
    assert metadata["rows"].value == 2
    rejects = {k: v.value for k, v in metadata.items() if k.startswith("rejects.")}
    assert rejects == {"rejects.malformed_json": 1, "rejects.unsupported_version": 1}
    assert metadata["content_hash"].value == marker["content_hash"]
    assert outcome.checks == {
        f"canonical_exposures:{name}": True
        for name in (
            "source_present",
            "bad_row_ratio",
            "event_volume",
            "cardinality",
            "events_in_window",
        )
    }
    assert marker["source_missing"] is False


def test_rerun_changes_no_byte_and_no_mtime(make_config, write_day, instance):
    write_day(lines(*[event(item_id=f"I{i}", time=f"08:00:{i:02d}") for i in range(30)], "{x"))
    config = make_config(limits={"max_bad_row_ratio": 0.5})
    defs = build_definitions(config)
    assert execute(defs, "ingest_job", KEY, instance).success
    before = snapshot(config.out_dir)
    assert execute(defs, "ingest_job", KEY, instance).success
    assert snapshot(config.out_dir) == before


def test_failing_guard_fails_the_run_and_names_the_rule(make_config, write_day, instance):
    write_day(lines(event(), "{bad"))
    config = make_config()  # max_bad_row_ratio 0.01, one reject in two lines
    outcome = execute(build_definitions(config), "recsys_daily", KEY, instance)
    assert not outcome.success
    assert any("bad_row_ratio" in c and "0.500000" in c for c in outcome.failed_checks)


def test_empty_day_file_is_an_empty_partition(make_config, write_day, instance):
    write_day(b"")
    config = make_config(limits={"min_events_per_run": 0})
    assert execute(build_definitions(config), "ingest_job", KEY, instance).success
    events, marker = CanonicalStore(location=config.canonical_location).read_events(
        parse_partition_key(KEY)
    )
    assert events.height == 0 and marker["counts"]["lines"] == 0
    assert marker["source_missing"] is False


def test_missing_source_fails_unless_allowed(make_config, tmp_path, instance):
    outcome = execute(build_definitions(make_config()), "ingest_job", KEY, instance)
    assert not outcome.success
    (failed,) = outcome.failed_checks
    assert failed.startswith("canonical_exposures:source_present")
    assert str(tmp_path / "raw/demo/home/exposure.2026-01-01.jsonl") in failed
    lenient = make_config(limits={"allow_missing_source": True})
    assert execute(build_definitions(lenient), "ingest_job", KEY, instance).success
    events, marker = CanonicalStore(location=lenient.canonical_location).read_events(
        parse_partition_key(KEY)
    )
    assert events.height == 0 and marker["source_missing"] is True


def test_min_events_guard(make_config, instance):
    config = make_config(limits={"min_events_per_run": 1})
    outcome = execute(build_definitions(config), "ingest_job", KEY, instance)
    assert not outcome.success
    assert any("event_volume" in c and "0 events" in c for c in outcome.failed_checks)


def test_flat_file_attributes_lines_and_quarantines_the_rest(make_config, tmp_path, instance):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "exposure.jsonl").write_bytes(
        lines(
            event(),
            event(day="2026-01-02", item_id="B"),
            event(surface="pdp", item_id="C"),
            event(tenant="ghost", item_id="D"),
            event(item_id="   "),
            "{broken",
            {"v": 1, "item_id": "E"},
        )
    )
    config = make_config(
        tenants=[{"tenant": "demo", "surface": "home"}, {"tenant": "demo", "surface": "pdp"}],
        limits={"max_bad_row_ratio": 0.6},
    )
    defs = build_definitions(config)
    assert execute(defs, "ingest_job", KEY, instance).success
    assert execute(defs, "ingest_job", "2026-01-02|demo__home", instance).success
    store = CanonicalStore(location=config.canonical_location)
    day1, marker = store.read_events(parse_partition_key(KEY))
    day2, _ = store.read_events(parse_partition_key("2026-01-02|demo__home"))
    assert day1["item_id"].to_list() == ["A"] and day2["item_id"].to_list() == ["B"]
    assert marker["counts"]["rejects"] == 1  # the empty item_id of demo/home 2026-01-01
    quarantine = list((config.out_dir / "canonical/_unattributed").glob("*.jsonl"))
    assert len(quarantine) == 1
    orphans = [orjson.loads(x) for x in quarantine[0].read_bytes().splitlines()]
    assert [(o["line"], o["reason"]) for o in orphans] == [
        (4, "unknown_tenant_surface"),
        (6, "malformed_json"),
        (7, "missing_field"),
    ]


def test_schedule_requests_previous_day_for_every_tenant_surface(make_config):
    config = make_config(
        tenants=[{"tenant": "demo", "surface": "home"}, {"tenant": "acme", "surface": "web"}]
    )
    defs = build_definitions(config)
    schedule = defs.resolve_schedule_def("recsys_daily_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=dt.datetime(2026, 3, 5, 1, 0, tzinfo=dt.UTC),
            repository_def=defs.get_repository_def(),
        )
        result = schedule.evaluate_tick(context)
    keys = sorted(r.partition_key for r in result.run_requests)
    assert keys == ["2026-03-04|acme__web", "2026-03-04|demo__home"]


def test_canonical_parquet_schema(make_config, write_day, instance):
    write_day(lines(event(user_id="u", request_id="r", rank=3)))
    config = make_config()
    assert execute(build_definitions(config), "ingest_job", KEY, instance).success
    frame = pl.read_parquet(config.out_dir / "canonical/demo/home/exposures/2026-01-01.parquet")
    assert frame.schema == pl.Schema(
        {
            "ts": pl.Datetime("us", "UTC"),
            "tenant": pl.String,
            "surface": pl.String,
            "session_id": pl.String,
            "item_id": pl.String,
            "user_id": pl.String,
            "request_id": pl.String,
            "rank": pl.Int64,
        }
    )
