import json

import dagster as dg
import orjson

from recsys_assets.graph import build_definitions
from recsys_assets.runner import execute
from recsys_assets_tests.conftest import REPO, cycled_events, event, lines

TINY = (REPO / "testdata/events/tiny/exposure.jsonl").read_bytes()
KEY = "2026-01-01|demo__home"


def staged(config, artifact_type: str, start: str = "2026-01-01", end: str = "2026-01-02"):
    folder = config.out_dir / "artifacts/demo/home" / artifact_type / f"{start}_{end}"
    version = (folder / "current.version").read_text().strip()
    return json.loads((folder / f"{version}.json").read_text()), folder


def test_reference_outputs_on_the_tiny_sample(make_config, write_day, instance):
    write_day(TINY)
    config = make_config()
    outcome = execute(build_definitions(config), "recsys_daily", KEY, instance)
    assert outcome.success, outcome.messages
    popularity, _ = staged(config, "popularity")
    assert popularity["items"] == [
        {"item_id": "A", "count": 2},
        {"item_id": "B", "count": 1},
        {"item_id": "C", "count": 1},
        {"item_id": "D", "count": 1},
    ]
    assert list(popularity)[:5] == ["v", "artifact_type", "tenant", "surface", "window"]
    assert popularity["window"] == {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
    cooc, _ = staged(config, "cooc")
    assert cooc["neighbors"] == [
        {"item_id": "A", "items": [{"item_id": "B", "count": 1}, {"item_id": "C", "count": 1}]},
        {"item_id": "B", "items": [{"item_id": "A", "count": 1}]},
        {"item_id": "C", "items": [{"item_id": "A", "count": 1}]},
    ]
    assert all(outcome.checks.values()), outcome.checks


def test_rerun_changes_no_file_and_keeps_the_version(make_config, write_day, instance):
    write_day(lines(*cycled_events(20, sessions=3, items=5, users=2)))
    config = make_config()
    defs = build_definitions(config)
    assert execute(defs, "recsys_daily", KEY, instance).success
    before = {p: p.read_bytes() for p in (config.out_dir / "artifacts").rglob("*") if p.is_file()}
    assert execute(defs, "recsys_daily", KEY, instance).success
    after = {p: p.read_bytes() for p in (config.out_dir / "artifacts").rglob("*") if p.is_file()}
    assert before == after


def test_window_over_days_with_one_missing(make_config, write_day, instance):
    write_day(lines(event(item_id="A"), event(item_id="B", time="09:00:00")), day="2026-01-01")
    write_day(lines(event(day="2026-01-03", item_id="A")), day="2026-01-03")
    config = make_config(artifacts={"popularity": {"window_days": 3}})
    defs = build_definitions(config)
    for day in ("2026-01-01", "2026-01-03"):  # 2026-01-02 never built
        assert execute(defs, "recsys_daily", f"{day}|demo__home", instance).success
    document, _ = staged(config, "popularity", "2026-01-01", "2026-01-04")
    assert document["items"] == [{"item_id": "A", "count": 2}, {"item_id": "B", "count": 1}]
    event_record = instance.get_latest_materialization_event(dg.AssetKey("popularity"))
    metadata = event_record.asset_materialization.metadata
    assert metadata["days_missing"].data == ["2026-01-02"]
    assert metadata["days_present"].data == ["2026-01-01", "2026-01-03"]


def test_next_day_of_a_window_updates_the_window_state(make_config, write_day, instance):
    write_day(lines(event(item_id="A"), event(item_id="B", time="08:01:00")), day="2026-01-01")
    write_day(
        lines(event(day="2026-01-02", item_id="A"), event(day="2026-01-02", item_id="C")),
        day="2026-01-02",
    )
    config = make_config(artifacts={"cooc": {"window_days": 2}})
    defs = build_definitions(config)
    merges = []
    for day in ("2026-01-01", "2026-01-02"):
        assert execute(defs, "recsys_daily", f"{day}|demo__home", instance).success
        record = instance.get_latest_materialization_event(dg.AssetKey("cooc"))
        merges.append(record.asset_materialization.metadata["window_merge"].data)
    assert merges == [
        {"cooc_pairs": "summed"},
        {"cooc_pairs": "updated (+1 -0 days)"},
    ]
    document, _ = staged(config, "cooc", "2026-01-01", "2026-01-03")
    assert document["neighbors"] == [
        {"item_id": "A", "items": [{"item_id": "B", "count": 1}, {"item_id": "C", "count": 1}]},
        {"item_id": "B", "items": [{"item_id": "A", "count": 1}]},
        {"item_id": "C", "items": [{"item_id": "A", "count": 1}]},
    ]


def test_disabled_type_materializes_as_marker_and_blocks_nothing(make_config, write_day, instance):
    write_day(TINY)
    config = make_config(artifacts={"implicit": {"enabled": False}})
    outcome = execute(build_definitions(config), "recsys_daily", KEY, instance)
    assert outcome.success, outcome.messages
    assert "implicit" in outcome.materialized
    assert outcome.checks["implicit:valid"] is True
    assert not (config.out_dir / "artifacts/demo/home/implicit").exists()


def test_tampered_artifact_fails_its_check(make_config, write_day, instance):
    write_day(TINY)
    config = make_config()
    defs = build_definitions(config)
    assert execute(defs, "recsys_daily", KEY, instance).success
    document, folder = staged(config, "popularity")
    path = folder / f"{document['build']['version']}.json"
    path.write_bytes(path.read_bytes().replace(b'"count":2', b'"count":3'))
    outcome = execute(defs, "popularity_job", KEY, instance)
    assert not outcome.success
    assert any("popularity:valid" in c and "version" in c for c in outcome.failed_checks)


def test_failing_canonical_check_skips_every_artifact(make_config, write_day, instance):
    write_day(lines(event(), "{bad"))
    config = make_config()
    outcome = execute(build_definitions(config), "recsys_daily", KEY, instance)
    assert not outcome.success
    # content_sim reads the catalog, not the exposures: it is the only one that still runs
    assert sorted(outcome.materialized) == ["canonical_exposures", "content_sim"]
    assert not (config.out_dir / "artifacts").exists()


def test_crawler_guard_blocks_cooc(make_config, write_day, instance):
    crawler = [event(session_id="bot", item_id=f"I{i}", time=f"08:00:{i:02d}") for i in range(6)]
    write_day(lines(*crawler, event(session_id="h", item_id="A")))
    config = make_config(limits={"max_items_per_session": 3, "max_excluded_event_ratio": 0.5})
    outcome = execute(build_definitions(config), "recsys_daily", KEY, instance)
    assert not outcome.success
    failed = " ".join(outcome.failed_checks)
    assert "cooc:excluded_event_ratio" in failed and "0.857143" in failed


def test_blob_version_recomputes_with_rfc8785(make_config, write_day, instance):
    import hashlib

    import rfc8785

    write_day(lines(*cycled_events(40, sessions=4, items=7, users=3)))
    config = make_config()
    assert execute(build_definitions(config), "recsys_daily", KEY, instance).success
    for artifact_type in ("popularity", "cooc", "implicit", "session_seq"):
        document, folder = staged(config, artifact_type)
        unbuilt = {k: v for k, v in document.items() if k != "build"}
        assert hashlib.sha256(rfc8785.dumps(unbuilt)).hexdigest() == document["build"]["version"]
        assert orjson.loads((folder / f"{document['build']['version']}.json").read_bytes())
