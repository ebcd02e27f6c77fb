"""The quality gate: artifacts scored on the held-out day, a broken build kept from
publishing by no_regression, and too few cases skipped with the reason."""

import datetime as dt
import json
import random

import dagster as dg
import orjson
import polars as pl
import pytest

from recsys_assets.artifacts.envelope import build_document, window_json
from recsys_assets.artifacts.staging import ArtifactStore, ArtifactWindow
from recsys_assets.graph import build_definitions
from recsys_assets.quality import evaluate as ev
from recsys_assets.quality.assets import QUALITY
from recsys_assets.runner import execute
from recsys_assets_tests.conftest import event, lines
from recsys_assets_tests.test_publish_flow import tick

CLUSTERS = [[f"c{c}-i{i}" for i in range(6)] for c in range(8)]


def structured_day(day: str, seed: int) -> bytes:
    """Sessions that walk one cluster's items in order: co-occurrence and transitions know
    what comes next, popularity does not."""
    rng = random.Random(seed)
    out = []
    for s in range(160):
        cluster = CLUSTERS[rng.randrange(len(CLUSTERS))]
        start = rng.randrange(len(cluster) - 3)
        user = f"u{rng.randrange(40)}"
        for step, item in enumerate(cluster[start : start + 4]):
            out.append(
                event(
                    day=day,
                    time=f"{8 + s // 60:02d}:{s % 60:02d}:{step:02d}",
                    session_id=f"{day}-s{s}",
                    user_id=user,
                    item_id=item,
                )
            )
    return lines(*out)


def quality_results(instance, key: str) -> dict[str, dg.AssetCheckEvaluation]:
    records = instance.fetch_materializations(QUALITY, limit=50).records
    assert any(str(r.partition_key) == key for r in records)
    infos = instance.event_log_storage.get_asset_check_partition_info(
        [k for k in build_keys()], partition_keys=[key]
    )
    return {i.check_key.name: i for i in infos}


def build_keys():
    from recsys_assets.publish.assets import gate_keys

    return [
        k
        for t in ("popularity", "cooc", "implicit", "session_seq")
        for k in gate_keys(t)
        if k.asset_key == QUALITY
    ]


def published_days(config, instance) -> dg.Definitions:
    """The first two days built, checked and published; the graph's definitions."""
    defs = build_definitions(config)
    for day in ("2026-01-01", "2026-01-02"):
        key = f"{day}|demo__home"
        assert execute(defs, "recsys_daily", key, instance).success
        assert execute(defs, "publish_job", key, instance).success
    return defs


@pytest.fixture
def three_days(write_day):
    for n, day in enumerate(("2026-01-01", "2026-01-02", "2026-01-03")):
        write_day(structured_day(day, n), day=day)


def test_evaluation_by_hand():
    events = pl.DataFrame(
        {
            "ts": [dt.datetime(2026, 1, 2, 8, 0, i, tzinfo=dt.UTC) for i in range(6)],
            "session_id": ["s1", "s1", "s1", "s2", "s2", "s2"],
            "rank": [0, 1, 2, 0, 1, 2],
            "item_id": ["A", "B", "C", "A", "A", "D"],
            "user_id": ["u1", "u1", "u1", None, None, None],
        }
    )
    cases = ev.next_item_cases(events, 100)
    assert cases.select("current", "target").rows() == [("A", "B"), ("B", "C"), ("A", "D")]
    cooc = {
        "artifact_type": "cooc",
        "neighbors": [
            {"item_id": "A", "items": [{"item_id": "C", "count": 3}, {"item_id": "B", "count": 2}]},
            {"item_id": "B", "items": [{"item_id": "A", "count": 2}, {"item_id": "C", "count": 1}]},
        ],
    }
    entries = ev.list_entries("cooc", orjson.dumps(cooc))["cooc"]
    m = ev.evaluate_next_item(entries, "item", cases)
    # A->B at rank 2, B->C at rank 2, A->D missing
    assert (m.hr, m.mrr, m.cases, m.coverage) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 3, 1)
    popularity = {
        "artifact_type": "popularity",
        "items": [
            {"item_id": "A", "count": 9},
            {"item_id": "D", "count": 5},
            {"item_id": "C", "count": 3},
        ],
    }
    pop = ev.list_entries("popularity", orjson.dumps(popularity))["popularity"]
    m = ev.evaluate_next_item(pop, "global", cases)
    # B->C: C at rank 3 (B not in the list); A->D: A left out, so D is first
    assert (m.hr, m.mrr) == (pytest.approx(2 / 3), pytest.approx((1 / 3 + 1) / 3))
    history = pl.DataFrame({"user": ["u1", "u1"], "item": ["A", "X"]})
    targets, seen = ev.user_cases(events, history, 10)
    assert sorted(targets.rows()) == [("u1", "B"), ("u1", "C")]  # A was seen
    m = ev.evaluate_user(pop, "global", targets, seen)
    # list without A: D, C -> C at rank 2 of 2 relevant
    assert m.ndcg == pytest.approx((1 / 1.5849625) / (1 + 1 / 1.5849625), rel=1e-6)
    m = ev.evaluate_user(entries, "item", targets, seen)  # row of A: C, B -> both first
    assert (m.hr, m.ndcg, m.mrr) == (1.0, pytest.approx(1.0), 1.0)


def test_a_good_build_passes_and_its_report_is_written(make_config, three_days, instance):
    config = make_config(quality={"min_cases": 20})
    published_days(config, instance)
    results = quality_results(instance, "2026-01-02|demo__home")
    assert {name: r.latest_execution_status.value for name, r in results.items()} == {
        name: "SUCCEEDED" for name in results
    }
    report = json.loads(
        (config.out_dir / "artifacts/demo/home/quality/2026-01-02.json").read_text()
    )
    metrics = report["metrics"]["candidate"]
    assert report["cases"]["next_item"] > 300
    for name in ("cooc", "session_seq"):
        assert metrics[name]["next_item"]["hr@10"] > 2 * metrics["popularity"]["next_item"]["hr@10"]
    materialization = instance.fetch_materializations(QUALITY, limit=1).records[0]
    metadata = materialization.asset_materialization.metadata
    assert metadata["cooc.next_item.hr@10"].value == metrics["cooc"]["next_item"]["hr@10"]

    # Day 2's artifacts and their publish say how they differ from day 1's, then live.
    staged = config.out_dir / "artifacts/demo/home/popularity/2026-01-01_2026-01-02"
    day1 = (staged / "current.version").read_text().strip()
    (popularity,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            dg.AssetKey("popularity"), asset_partitions=["2026-01-02|demo__home"]
        ),
        limit=1,
    ).records
    difference = popularity.asset_materialization.metadata
    assert difference["live_difference.live_version"].value == day1
    overlap = difference["live_difference.popularity.overlap@10"].value
    assert 0 < overlap <= 1
    assert difference["live_difference.popularity.top100_new"].value >= 0
    (publish,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey("publish"), asset_partitions=["2026-01-02|demo__home"]),
        limit=1,
    ).records
    published = publish.asset_materialization.metadata
    differences = published["live_difference"].data["popularity"]
    assert differences["popularity.overlap@10"] == overlap and differences["live_version"] == day1
    assert published["manifest_before"].data["current"]["popularity"].endswith(f"{day1}.json")


def test_a_broken_build_is_kept_from_publishing(make_config, three_days, instance):
    config = make_config(quality={"min_cases": 20})
    defs = published_days(config, instance)
    manifest = config.out_dir / "registry/current/demo/home/manifest.json"
    live = manifest.read_bytes()
    live_cooc = json.loads(live)["current"]["cooc"].rsplit("/", 1)[1].removesuffix(".json")
    # Day 2's cooc rebuilt broken: each anchor gets the next anchor's neighbor list. Still
    # a well-formed artifact: only evaluation can tell.
    store = ArtifactStore(location=config.artifacts_location)
    window = ArtifactWindow("demo", "home", "", "cooc", dt.date(2026, 1, 2), dt.date(2026, 1, 3))
    _, blob = store.current(window)
    document = json.loads(blob)
    rows = document["neighbors"]
    shuffled = [
        {"item_id": row["item_id"], "items": rows[(i + 1) % len(rows)]["items"]}
        for i, row in enumerate(rows)
    ]
    broken = build_document(
        "cooc",
        "demo",
        "home",
        "",
        window.start,
        window.end,
        {"neighbors": shuffled},
        document["build"]["source_hash"],
        document["build"]["built_at"],
    )
    assert document["window"] == window_json(window.start, window.end)
    store.stage(window, broken)

    key = "2026-01-03|demo__home"
    _, cursor = tick(defs, instance, None)  # the sensor is deployed: seeds its cursor
    outcome = execute(defs, "recsys_daily", key, instance)
    assert not outcome.success
    requests, _ = tick(defs, instance, cursor)
    assert requests == []  # the sensor does not publish it either
    (failure,) = [f for f in outcome.failed_checks if "cooc_no_regression" in f]
    assert "cooc HR@10 0.0" in failure and f"live version {live_cooc}" in failure
    assert "max_relative_drop 0.2" in failure, failure
    publish = execute(defs, "publish_job", key, instance)
    assert not publish.success
    assert "artifact_quality:cooc_no_regression" in publish.reason
    assert manifest.read_bytes() == live


def test_too_few_cases_pass_as_skipped_with_the_reason(make_config, three_days, instance):
    config = make_config(quality={"min_cases": 100_000})
    defs = build_definitions(config)
    for day in ("2026-01-01", "2026-01-02"):
        assert execute(defs, "recsys_daily", f"{day}|demo__home", instance).success
    outcome = execute(defs, "recsys_daily", "2026-01-02|demo__home", instance)
    assert outcome.success
    (record,) = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(QUALITY, "cooc_beats_baseline"), limit=1
    )
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.passed and evaluation.metadata["skipped"].value is True
    assert evaluation.description.startswith("skipped: ")
    assert "cases < quality.min_cases 100000" in evaluation.description


def test_a_held_out_day_read_in_parts_scores_the_same(make_config, three_days, instance, tmp_path):
    """A held-out day past scale.shard_events is sampled a part at a time: the same cases,
    so the same report, and the samples stay within max_cases and max_users."""
    quality = {"min_cases": 20, "max_cases": 300, "max_users": 15}
    reports = []
    for name, scale in (("whole", {}), ("cut", {"shard_events": 100})):
        config = make_config(quality=quality, scale=scale, out_dir=str(tmp_path / name))
        published_days(config, instance)
        path = config.out_dir / "artifacts/demo/home/quality/2026-01-02.json"
        reports.append(orjson.loads(path.read_bytes()))
    whole, cut = reports
    assert cut == whole
    assert 200 < whole["cases"]["next_item"] <= 300
    assert 0 < whole["cases"]["user_1d"] <= 15
