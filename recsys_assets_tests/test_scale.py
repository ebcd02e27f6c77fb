"""A day bigger than memory is worked in pieces (SPEC §3; issue 18): canonical sorts it a
time bucket at a time, spilling the others to disk, and daily_aggregates sums it a shard of
sessions and of users at a time. The pieces must not show in any result."""

import datetime as dt
import io

import dagster as dg
import orjson
import polars as pl
import pytest

from benchmarks.generate import generate
from recsys_assets.aggregates import store as store_module
from recsys_assets.aggregates.daily import AGGREGATE_KINDS, as_frame, daily_aggregates
from recsys_assets.aggregates.store import aggregate_partition, write_aggregates
from recsys_assets.aggregates.window import aggregate_params, load_window
from recsys_assets.events import canonical as canon
from recsys_assets.events import spill
from recsys_assets.events.store import CanonicalStore, exposures_key
from recsys_assets.graph import build_definitions
from recsys_assets.metadata import PREVIEW_ROWS
from recsys_assets.quality import evaluate as ev
from recsys_assets.runner import execute

DAY = dt.date(2026, 1, 1)
PARTITION = canon.Partition("demo", "home", DAY)
KEY = "2026-01-01|demo__home"


@pytest.fixture(scope="module")
def raw_day(tmp_path_factory) -> bytes:
    """A generated day with every kind of bad line, anonymous users and duplicates."""
    root = tmp_path_factory.mktemp("scale")
    generate(root, events=30_000, items=400, users=900, day=DAY, bad_fraction=0.03, seed=11)
    return (root / "demo" / "home" / "exposure.2026-01-01.jsonl").read_bytes()


def test_a_day_sorted_in_spilled_time_buckets_is_the_day_sorted_at_once(
    raw_day, tmp_path, monkeypatch
):
    whole = canon.canonical_from_day_file(raw_day, PARTITION)
    monkeypatch.setattr(spill, "SPILL_BUDGET_BYTES", 64 * 1024)  # spill every few blocks
    monkeypatch.setattr(spill, "ROW_GROUP_ROWS", 4_000)  # row groups across buckets
    folder = tmp_path / "spill"
    folder.mkdir()
    cut = canon.canonical_from_day_file(
        raw_day, PARTITION, buckets=7, block_bytes=256 * 1024, spill_dir=str(folder)
    )
    monkeypatch.setattr(spill, "SPILL_BUDGET_BYTES", 1 << 40)
    again = canon.canonical_from_day_file(raw_day, PARTITION, block_bytes=256 * 1024)

    assert cut.buckets == 7 and cut.spilled_bytes > 0 and whole.spilled_bytes == 0
    assert list(folder.iterdir()) == []  # the spill is removed once the day is written
    assert cut.parquet == again.parquet  # the bytes do not depend on the buckets
    assert cut.events.equals(whole.events)
    assert cut.events["ts"].is_sorted()
    assert cut.counts == whole.counts and cut.counts["duplicates"] > 0
    assert cut.rejects.equals(whole.rejects) and cut.rejects.height > 0
    assert cut.top_items.equals(whole.top_items)
    top = whole.events.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    assert whole.top_items["item_id"].to_list() == top["item_id"].head(PREVIEW_ROWS).to_list()


def test_buckets_are_not_needed_to_be_full_or_balanced(tmp_path):
    """A day whose events all fall in one hour leaves most buckets empty."""
    lines = "".join(
        f'{{"v":1,"ts":"2026-01-01T23:59:{i % 60:02d}Z","tenant":"demo","surface":"home",'
        f'"session_id":"s{i % 7}","item_id":"i{i % 5}"}}\n'
        for i in range(500)
    ).encode()
    result = canon.canonical_from_day_file(lines, PARTITION, buckets=24, destination=tmp_path / "x")
    # (second, session, item) repeats every lcm(60, 7, 5) = 420 lines: 80 exact duplicates
    assert (result.counts["rows"], result.counts["duplicates"]) == (420, 80)
    assert result.parquet == tmp_path / "x"
    assert pl.read_parquet(tmp_path / "x").equals(
        canon.canonical_from_day_file(lines, PARTITION).events
    )


def test_aggregates_in_shards_are_the_day_aggregated_at_once(raw_day):
    events = canon.canonical_from_day_file(raw_day, PARTITION)
    assert events.events["user_id"].null_count() > 0  # anonymous events stay out of users
    scan = pl.scan_parquet(io.BytesIO(events.parquet))
    whole = daily_aggregates(scan, max_items_per_session=20, transition_window=4)
    for shards in (2, 5):
        parts = daily_aggregates(scan, max_items_per_session=20, transition_window=4, shards=shards)
        for kind in AGGREGATE_KINDS:
            assert as_frame(kind, parts[kind]).equals(as_frame(kind, whole[kind])), (shards, kind)
    stats = whole["cooc_stats"].row(0, named=True)
    assert stats["excluded_sessions"] > 0  # the crawler cut-off is per whole session


def test_quality_cases_sampled_in_parts_are_the_day_sampled_at_once(raw_day):
    """The held-out day's cases (artifact_quality) read a part of the sampling hash at a
    time are the cases of the whole day: the same sessions and users, the same order."""
    events = canon.canonical_from_day_file(raw_day, PARTITION)
    scan = pl.scan_parquet(io.BytesIO(events.parquet))
    history = (
        events.events.filter(pl.col("user_id").is_not_null() & (pl.col("rank") % 3 == 0))
        .select(pl.col("user_id").alias("user"), pl.col("item_id").alias("item"))
        .unique()
    )
    pairs = ev.next_item_cases(scan, 10**9).height
    users = ev.user_cases(scan, history, 10**9)[0]["user"].n_unique()
    assert pairs > 20_000 and users > 500
    # a sample cut in the first part, in a later part, and none (the whole day)
    for max_cases, max_users in ((500, 40), (pairs * 3 // 4, users * 3 // 4), (10**9, 10**9)):
        whole = ev.next_item_cases(events.events, max_cases)
        targets, seen = ev.user_cases(events.events, history, max_users)
        assert whole.height == pairs if max_cases >= pairs else 0 < whole.height <= max_cases
        assert targets["user"].n_unique() == min(users, max_users)
        for parts in (2, 5):
            assert ev.next_item_cases(scan, max_cases, parts).equals(whole), (max_cases, parts)
            cut_targets, cut_seen = ev.user_cases(scan, history, max_users, parts)
            assert cut_targets.sort(["user", "target"]).equals(targets.sort(["user", "target"]))
            assert cut_seen.sort(["user", "item"]).equals(seen.sort(["user", "item"]))


def test_a_day_re_aggregated_for_a_window_is_worked_in_shards(raw_day, make_config, monkeypatch):
    """A window over a day aggregated under other parameters re-aggregates it from its
    canonical file, cut into shards as the asset cuts it, and sums what the asset would."""
    before = make_config(limits={"max_items_per_session": 30})
    store = CanonicalStore(location=str(before.out_dir))
    store.write(PARTITION, canon.canonical_from_day_file(raw_day, PARTITION), "test")
    entry = before.tenants[0]
    old = aggregate_params(before, entry)
    day = aggregate_partition(store, PARTITION, old, before.scale.shard_events)
    assert day.shards == 1
    write_aggregates(store, PARTITION, day.aggregates, old, day.canonical["content_hash"])

    after = make_config(limits={"max_items_per_session": 12}, scale={"shard_events": 7_000})
    cuts = []
    real = store_module.daily_aggregates
    monkeypatch.setattr(
        store_module,
        "daily_aggregates",
        lambda *args, shards, **kwargs: cuts.append(shards) or real(*args, shards=shards, **kwargs),
    )
    data = load_window(store, after, entry, DAY, 1, list(AGGREGATE_KINDS))
    assert data.days_recomputed == [DAY]
    assert len(cuts) == 1 and cuts[0] == -(-day.canonical["counts"]["rows"] // 7_000) >= 3
    expected = daily_aggregates(
        pl.scan_parquet(io.BytesIO(store.store().read_bytes(exposures_key(PARTITION)))),
        **aggregate_params(after, entry),
    )
    for kind in AGGREGATE_KINDS:
        assert as_frame(kind, data.frames[kind]).equals(as_frame(kind, expected[kind])), kind
    assert data.frames["cooc_stats"]["excluded_sessions"].item() > 0  # the new cut-off


def _outputs(config) -> tuple[dict, dict]:
    """Content hashes of the canonical and aggregates markers, and the artifact versions."""
    canonical = config.out_dir / "canonical" / "demo" / "home" / "markers"
    exposures = orjson.loads((canonical / "exposures" / "2026-01-01.json").read_bytes())
    aggregates = orjson.loads((canonical / "aggregates" / "2026-01-01.json").read_bytes())
    versions = {
        path.parent.parent.name: path.stem
        for path in (config.out_dir / "artifacts" / "demo" / "home").glob("*/*/*.json")
    }
    hashes = {"exposures": exposures["content_hash"], **aggregates["content_hashes"]}
    return hashes, versions


def test_a_day_in_pieces_through_the_graph_gives_the_same_versions(
    raw_day, make_config, write_day, instance, tmp_path
):
    write_day(raw_day)
    limits = {
        "max_bad_row_ratio": 0.1,
        "max_items_per_session": 30,
        "max_excluded_event_ratio": 0.9,
    }
    whole = make_config(limits=limits)
    assert execute(build_definitions(whole), "recsys_daily", KEY, instance).success

    folder = tmp_path / "spill"  # made when missing
    scale = {"bucket_bytes": len(raw_day) // 5, "shard_events": 8_000, "spill_dir": str(folder)}
    cut = make_config(limits=limits, out_dir=str(tmp_path / "cut"), scale=scale)
    outcome = execute(build_definitions(cut), "recsys_daily", KEY, instance)
    assert outcome.success, outcome.messages

    assert _outputs(cut) == _outputs(whole)
    assert len(_outputs(whole)[1]) >= 4
    assert list(folder.iterdir()) == []
    canonical, aggregates = (
        instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.metadata
        for name in ("canonical_exposures", "daily_aggregates")
    )
    assert canonical["buckets"].value == 6 and aggregates["shards"].value >= 3


class _BrokenStream(io.BytesIO):
    """A source that fails part way, as a dropped connection would."""

    def read(self, size: int = -1) -> bytes:
        if self.tell() > len(self.getbuffer()) // 2:
            raise OSError("connection reset by peer")
        return super().read(size)


def test_a_failure_part_way_leaves_no_spill_behind(raw_day, tmp_path, monkeypatch):
    monkeypatch.setattr(spill, "SPILL_BUDGET_BYTES", 64 * 1024)
    spilled = []
    write_held = spill.TimeBuckets._write_held

    def recorded(self):
        write_held(self)
        spilled.append(sorted(p.name for p in self._spill.iterdir()))

    monkeypatch.setattr(spill.TimeBuckets, "_write_held", recorded)
    folder = tmp_path / "spill"
    folder.mkdir()
    with pytest.raises(OSError, match="connection reset"):
        canon.canonical_from_day_file(
            _BrokenStream(raw_day),
            PARTITION,
            buckets=5,
            block_bytes=128 * 1024,
            spill_dir=str(folder),
            destination=tmp_path / "day.parquet",
        )
    assert spilled and spilled[-1]  # buckets were on disk when the source failed
    assert list(folder.iterdir()) == []


def test_scale_settings_are_checked_and_the_spill_folder_resolves(make_config, tmp_path):
    config = make_config(scale={"spill_dir": "scratch/spill"})
    assert config.scale.spill_dir == str(tmp_path / "scratch" / "spill")
    with pytest.raises(ValueError, match=r"scale\.shard_events"):
        make_config(scale={"shard_events": 0})
