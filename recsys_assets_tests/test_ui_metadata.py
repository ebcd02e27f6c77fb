"""What the UI shows for an asset: group, kinds, owners from config, and on a materialization
the figures a user plots as plain numbers, rejects by reason, previews and the runbook pages."""

import dagster as dg
import orjson

from recsys_assets.artifacts.envelope import EncodedList
from recsys_assets.graph import build_definitions
from recsys_assets.runner import execute
from recsys_assets_tests.conftest import cycled_events, event, lines

KEY = "2026-01-01|demo__home"


def _metadata(instance, asset: str) -> dict:
    record = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return record.asset_materialization.metadata


def test_assets_carry_groups_kinds_and_the_configured_owners(make_config):
    config = make_config(
        owners=["team:recsys", "oncall@example.com"],
        object_store={"type": "s3", "s3": {"bucket": "b", "endpoint": "http://127.0.0.1:9"}},
    )
    graph = build_definitions(config).resolve_asset_graph()
    canonical = graph.get(dg.AssetKey("canonical_exposures"))
    assert canonical.group_name == "events"
    assert {"polars", "parquet"} <= canonical.kinds
    assert "s3" not in canonical.kinds  # canonical_dir is local here
    publish = graph.get(dg.AssetKey("publish"))
    assert publish.group_name == "publish" and "s3" in publish.kinds
    assert graph.get(dg.AssetKey("db_signals")).kinds == {"postgres"}
    for key in graph.get_all_asset_keys():
        assert graph.get(key).owners == ["team:recsys", "oncall@example.com"], key
        assert graph.get(key).description, key


def test_materializations_show_numbers_previews_and_runbooks(make_config, write_day, instance):
    write_day(
        lines(*cycled_events(30, sessions=4, items=3, users=2), "{not json", event(item_id=""))
    )
    config = make_config(limits={"max_bad_row_ratio": 0.5})
    assert execute(build_definitions(config), "recsys_daily", KEY, instance).success
    canonical = _metadata(instance, "canonical_exposures")
    assert canonical["rows"].value == 30  # plain ints: the UI plots them over days
    assert sum(v.value for k, v in canonical.items() if k.startswith("rejects.")) == 2
    assert isinstance(canonical["seconds"], dg.FloatMetadataValue)
    preview = canonical["preview"].value
    assert "| item_id | exposures | users |" in preview
    assert "| I0 | 10 | 2 |" in preview  # the most exposed item first, ties by id
    assert "rejects by reason" in preview

    cooc = _metadata(instance, "cooc")
    assert "**neighbors**" in cooc["preview"].value
    assert "| I0 |" in cooc["preview"].value
    session_seq = _metadata(instance, "session_seq")["preview"].value
    assert "**users**" in session_seq and "| u0 |" in session_seq  # from an EncodedList's bytes
    assert "**transitions**" in session_seq
    assert isinstance(_metadata(instance, "popularity")["rows_items"], dg.IntMetadataValue)


def test_a_failing_guard_names_its_runbook_page(make_config, write_day, instance):
    write_day(lines(event(), "{not json"))
    config = make_config()
    outcome = execute(build_definitions(config), "recsys_daily", KEY, instance)
    assert not outcome.success
    record = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey("canonical_exposures"), "bad_row_ratio")
    )
    evaluation = record.event.dagster_event.event_specific_data
    assert not evaluation.passed
    assert "runbook: docs/runbooks/bad-row-ratio.md" in evaluation.description


def test_encoded_list_head_reads_only_what_it_shows():
    rows = [
        {"items": [{"item_id": f"é{i}", "score": i / 3}], "user_id": f"u{i}"} for i in range(5000)
    ]
    encoded = EncodedList(orjson.dumps(rows), len(rows))
    assert encoded.head(3) == rows[:3]
    assert encoded._items is None  # the whole list was not parsed
    assert encoded.head(6000) == rows
