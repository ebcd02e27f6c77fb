import datetime as dt
import io
import json

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_assets.events.canonical import (
    SORT_KEYS,
    Partition,
    attribute,
    canonical_from_day_file,
    canonical_from_flat_file,
    unattributed,
)
from recsys_assets.events.parse import decode_lines
from recsys_assets_tests.conftest import event, lines

DAY = Partition("demo", "home", dt.date(2026, 1, 1))

BAD = {
    "malformed_json": '{"v":1,"ts":',
    "not_object": "[1, 2]",
    "unsupported_version": json.dumps(event(v=2)),
    "bad_type": json.dumps(event(item_id=5)),
    "missing_field": json.dumps({k: v for k, v in event().items() if k != "session_id"}),
    "empty_field": json.dumps(event(item_id="   ")),
    "negative_rank": json.dumps(event(rank=-1)),
    "bad_timestamp": json.dumps(event(ts="2026-01-01 8am")),
    "outside_window": json.dumps(event(day="2025-12-31", time="23:59:59")),
    "wrong_partition": json.dumps(event(tenant="acme")),
    "invalid_utf8": b'{"v":1,"item_id":"\xff"}',
}


def test_every_bad_kind_is_rejected_with_its_reason():
    for reason, raw in BAD.items():
        data = raw if isinstance(raw, bytes) else raw.encode()
        result = canonical_from_day_file(data + b"\n", DAY)
        assert result.rejects["reason"].to_list() == [reason], raw
        assert result.events.height == 0
        assert result.rejects["detail"][0]


def test_verdicts_do_not_depend_on_neighbours():
    """The fast path (clean block) and the strict gate (block with a bad line) agree."""
    tricky = [
        json.dumps(event(session_id="s\u00e9")),
        '{"v":1,"ts":"2026-01-01T08:00:00Z","tenant":"demo","surface":"home",'
        '"session_id":"s1","item_id":"A","x":{"item_id":5}}',
        json.dumps(event(user_id=None)),
        json.dumps(event(rank=0)),
    ]
    alone = canonical_from_day_file(lines(*tricky), DAY)
    mixed = canonical_from_day_file(lines(*tricky, "{broken"), DAY)
    assert alone.events.equals(mixed.events)
    assert alone.rejects.height == 0 and mixed.rejects["reason"].to_list() == ["malformed_json"]


def test_accounting_lines_equal_rows_rejects_duplicates_blanks():
    data = lines(
        event(),
        event(),  # exact duplicate
        "",
        "   ",
        event(item_id="B", time="08:00:01", user_id="  u1 ", rank=2),
        "{oops",
        event(v=3),
    )
    result = canonical_from_day_file(data, DAY)
    c = result.counts
    assert (c["lines"], c["rows"], c["rejects"], c["duplicates"], c["blank_lines"]) == (
        7,
        2,
        2,
        1,
        2,
    )
    assert c["lines"] == c["rows"] + c["rejects"] + c["duplicates"] + c["blank_lines"]
    assert result.events["user_id"].to_list() == [None, "u1"]  # trimmed
    assert result.rejects["line"].to_list() == [6, 7]


def test_dedup_can_be_switched_off():
    result = canonical_from_day_file(lines(event(), event()), DAY, dedup_exact=False)
    assert result.events.height == 2 and result.counts["duplicates"] == 0


def test_timestamps_are_compared_in_utc():
    data = lines(
        event(ts="2026-01-01T01:30:00+02:00"),  # 2025-12-31T23:30Z: outside
        event(ts="2026-01-02T00:30:00+01:00", item_id="B"),  # 2026-01-01T23:30Z: inside
        event(ts="2026-01-01t10:00:00.123456789z", item_id="C"),
    )
    result = canonical_from_day_file(data, DAY)
    assert result.events["item_id"].to_list() == ["C", "B"]
    assert result.events["ts"][1] == dt.datetime(2026, 1, 1, 23, 30, tzinfo=dt.UTC)
    assert result.rejects["reason"].to_list() == ["outside_window"]


def test_order_is_deterministic_with_tie_breaks():
    data = [
        event(item_id=i, session_id=s, rank=r)
        for i, s, r in [("B", "s2", 1), ("A", "s2", 1), ("C", "s1", None), ("A", "s1", 3)]
    ]
    forward = canonical_from_day_file(lines(*data), DAY).events
    backward = canonical_from_day_file(lines(*reversed(data)), DAY).events
    assert forward.equals(backward)
    assert forward.select("session_id", "item_id").rows() == [
        ("s1", "A"),
        ("s1", "C"),
        ("s2", "A"),
        ("s2", "B"),
    ]


def test_blocks_give_the_partition_of_one_block():
    """Cut into blocks of a few lines, with bad, blank and duplicate lines on both sides of
    the cuts, a file gives the same events, rejects (line numbers and raw text) and counts."""
    raw = [
        event(),
        BAD["malformed_json"],
        "",
        event(item_id="B", time="08:00:01", rank=1),
        BAD["bad_type"],
        event(),  # a duplicate of the first line, in another block
        "   ",
        BAD["invalid_utf8"].decode("utf-8", "replace"),
        event(item_id="C", user_id=" u1 "),
        BAD["not_object"],
        event(ts="2026-01-01T10:00:00.123456789Z", item_id="D"),
        BAD["outside_window"],
        event(item_id="B", time="08:00:01", rank=1),
    ]
    data = lines(*raw).replace("\ufffd".encode(), b"\xff")
    whole = canonical_from_day_file(data, DAY, block_bytes=len(data))
    assert whole.counts["rejects"] == 5 and whole.counts["duplicates"] == 2
    for block_bytes in (1, 50, 150, 400):
        for source in (data, io.BytesIO(data)):  # bytes, or a stream read as it goes
            cut = canonical_from_day_file(source, DAY, block_bytes=block_bytes)
            assert cut.events.equals(whole.events), block_bytes
            assert cut.rejects.equals(whole.rejects), block_bytes
            assert cut.counts == whole.counts, block_bytes


def test_reject_keeps_its_raw_line_in_a_crlf_file():
    data = lines(event(), "{bad", event(item_id="B"), BAD["negative_rank"]).replace(b"\n", b"\r\n")
    result = canonical_from_day_file(data, DAY)
    assert result.rejects.select("line", "raw").rows() == [
        (2, "{bad"),
        (4, BAD["negative_rank"]),
    ]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-01-01T08:00:00Z", "2026-01-01T08:00:00"),
        ("2026-01-01T08:00:00.5Z", "2026-01-01T08:00:00.500000"),
        ("2026-01-01T08:00:00.123456Z", "2026-01-01T08:00:00.123456"),
        ("2026-01-01T08:00:00.1234567Z", "2026-01-01T08:00:00.123456"),
        ("2026-01-01t08:00:00z", "2026-01-01T08:00:00"),
        ("2026-01-01 08:00:00Z", "2026-01-01T08:00:00"),
        ("2026-01-01T09:30:00+01:30", "2026-01-01T08:00:00"),
        ("2026-01-01T23:59:60Z", None),
        ("2026-01-32T08:00:00Z", None),
        ("2026-02-29T08:00:00Z", None),
        ("2026-01-01T08:00Z", None),
        ("2026-01-01T08:00:00", None),
    ],
)
def test_timestamps_parse_as_rfc_3339(ts, expected):
    result = canonical_from_day_file(lines(event(ts=ts)), Partition("demo", "home", DAY.day))
    if expected is None:
        assert result.rejects["reason"].to_list() in (["bad_timestamp"], ["outside_window"])
        return
    when = dt.datetime.fromisoformat(expected).replace(tzinfo=dt.UTC)
    assert result.events["ts"].to_list() == [when]


def test_flat_file_blocks_give_the_attribution_of_one_block():
    raw = [
        event(),
        event(day="2026-01-02", item_id="B"),
        "{broken",
        event(tenant="ghost"),
        {"v": 1, "item_id": "E"},
        event(item_id="   "),
        event(surface="pdp", item_id="C"),
        "",
        event(),
    ]
    data = lines(*raw)
    known = {("demo", "home"), ("demo", "pdp")}
    whole = attribute(data, known, block_bytes=len(data))
    for block_bytes in (1, 100):
        cut = attribute(data, known, block_bytes=block_bytes)
        for partition in (DAY, Partition("demo", "pdp", DAY.day)):
            got = canonical_from_flat_file(cut, partition)
            expected = canonical_from_flat_file(whole, partition)
            assert got.events.equals(expected.events) and got.rejects.equals(expected.rejects)
            assert got.counts == expected.counts
        assert unattributed(cut).equals(unattributed(whole))
    assert unattributed(whole).select("line", "reason").rows() == [
        (3, "malformed_json"),
        (4, "unknown_tenant_surface"),
        (5, "missing_field"),
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 1, 2, "1", 1.0, None]),
        "ts": st.sampled_from(["2026-01-01T08:00:00Z", "2026-01-01T08:00:00+00:00", "nope", 5]),
        "tenant": st.sampled_from(["demo", " demo ", "", "acme", 1]),
        "surface": st.sampled_from(["home", "home ", None]),
        "session_id": st.text(max_size=5) | st.integers(),
        "item_id": st.text(max_size=5) | json_values,
        "user_id": st.none() | st.text(max_size=4),
        "rank": st.none() | st.integers(min_value=-3, max_value=3) | st.floats(allow_nan=False),
        "extra": json_values,
    },
)
# Lines as machines write them (compact, ASCII), which polars may read without the gate.
# (Not with a repeated key: polars keeps the first value and msgspec checks every one, so
# such a line's verdict depends on the path it takes, as it did before blocks.)
short_ids = st.text(alphabet="ab1 -{[tf", max_size=4)
compact_fields = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 2, None]),
        "ts": st.sampled_from(["2026-01-01T08:00:00Z", "2026-01-01T08:00:00.25Z", "20260101"]),
        "tenant": st.sampled_from(["demo", "acme", " demo"]),
        "surface": st.just("home"),
        "session_id": short_ids | st.integers(),
        "item_id": short_ids | st.booleans() | st.just({"a": [1]}),
        "user_id": st.none() | short_ids,
        "rank": st.none() | st.integers(min_value=-1, max_value=2),
        "extra": st.booleans() | st.integers() | st.just([]),
    },
)
compact_lines = compact_fields.map(lambda d: json.dumps(d, separators=(",", ":")))
raw_lines = st.one_of(
    fields.map(lambda d: json.dumps(d, ensure_ascii=False)),
    fields.map(lambda d: json.dumps(d)[: max(1, len(json.dumps(d)) // 2)]),
    st.text(max_size=20).filter(lambda s: "\n" not in s and "\r" not in s),
    compact_lines,
    compact_lines,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(raw_lines, max_size=12), st.integers(min_value=1, max_value=300))
def test_parser_keeps_every_line_and_never_raises(raw, block_bytes):
    data = ("\n".join(raw) + "\n").encode() if raw else b""
    decoded = decode_lines(data)
    result = canonical_from_day_file(data, DAY)
    c = result.counts
    assert c["lines"] == len(raw)
    assert c["lines"] == c["rows"] + c["rejects"] + c["duplicates"] + c["blank_lines"]
    assert result.rejects["reason"].null_count() == 0
    assert result.events.null_count().select("ts", "session_id", "item_id").row(0) == (0, 0, 0)
    assert (result.events["session_id"].str.strip_chars() == result.events["session_id"]).all()
    # sorted, without exact duplicates
    assert result.events.equals(
        result.events.sort(SORT_KEYS, nulls_last=True).unique(maintain_order=True)
    )
    # each line judged alone gives the same verdict as inside the batch
    for index, line in enumerate(raw[:4]):
        alone = decode_lines((line + "\n").encode()).frame
        batch = decoded.frame.filter(pl.col("line_no") == index + 1)
        assert alone.drop("line_no").equals(batch.drop("line_no"))
    # and so does its block, whatever its size
    cut = canonical_from_day_file(data, DAY, block_bytes=block_bytes)
    assert cut.events.equals(result.events) and cut.rejects.equals(result.rejects)
    assert cut.counts == result.counts
