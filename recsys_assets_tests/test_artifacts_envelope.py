"""Envelope, JCS bytes and versions: checked against the rfc8785 reference implementation."""

from __future__ import annotations

import hashlib
import math
import struct
from datetime import date, datetime

import numpy as np
import orjson
import polars as pl
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_assets.artifacts import envelope, ranking
from recsys_assets.artifacts.envelope import (
    build_document,
    canonical_bytes,
    disabled_marker,
    es6_number,
    is_disabled_marker,
    json_scores,
    round_scores,
    serialize,
    verify_blob,
    version_of,
)
from recsys_assets.artifacts.ranking import nest_json

HASH = "ab" * 32
BUILT = "2026-01-02T03:04:05Z"

finite = st.floats(allow_nan=False, allow_infinity=False)
# Strings with quotes, backslashes, control characters and non-BMP text, which JCS escapes
# (or not) in its own way; surrogates excluded since neither side encodes them.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | finite | st.integers(-(2**53) + 1, 2**53 - 1) | text,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(max_codepoint=0x7F), max_size=6), children, max_size=4
        )
    ),
    max_leaves=25,
)


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, list | dict):
        for child in value.values() if isinstance(value, dict) else value:
            yield from _floats(child)


def _payload() -> dict:
    return {"items": [{"item_id": "A", "count": 2}, {"item_id": "B", "count": 1}]}


def test_document_fields_follow_the_spec_order_and_omit_an_empty_segment():
    document = build_document(
        "popularity",
        "demo",
        "home",
        "",
        date(2026, 1, 1),
        date(2026, 1, 2),
        _payload(),
        HASH,
        BUILT,
    )
    assert list(document) == ["v", "artifact_type", "tenant", "surface", "window", "items", "build"]
    assert document["window"] == {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
    assert list(document["build"]) == ["built_at", "version", "source_hash"]
    blob = serialize(document)
    assert blob.startswith(b'{"v":1,"artifact_type":"popularity","tenant":"demo","surface":"home",')
    with_segment = build_document(
        "popularity",
        "demo",
        "home",
        "vip",
        date(2026, 1, 1),
        date(2026, 1, 8),
        _payload(),
        HASH,
        BUILT,
    )
    assert list(with_segment)[4:6] == ["segment", "window"]
    assert with_segment["build"]["version"] != document["build"]["version"]


def test_version_is_sha256_of_rfc8785_without_build_and_ignores_built_at():
    document = build_document(
        "popularity",
        "demo",
        "home",
        "",
        date(2026, 1, 1),
        date(2026, 1, 2),
        _payload(),
        HASH,
        BUILT,
    )
    unbuilt = {key: value for key, value in document.items() if key != "build"}
    expected = hashlib.sha256(rfc8785.dumps(unbuilt)).hexdigest()
    assert document["build"]["version"] == expected
    later = build_document(
        "popularity",
        "demo",
        "home",
        "",
        date(2026, 1, 1),
        date(2026, 1, 2),
        _payload(),
        HASH,
        "2027-01-01T00:00:00Z",
    )
    assert later["build"]["version"] == expected
    assert serialize(later) != serialize(document)


def test_verify_blob_recomputes_and_detects_tampering():
    document = build_document(
        "cooc",
        "demo",
        "home",
        "",
        date(2026, 1, 1),
        date(2026, 1, 2),
        {"neighbors": [{"item_id": "A", "items": [{"item_id": "B", "count": 1}]}]},
        HASH,
        BUILT,
    )
    blob = serialize(document)
    assert verify_blob(blob) == (True, document["build"]["version"], [])
    tampered = blob.replace(b'"count":1', b'"count":2')
    ok, recomputed, problems = verify_blob(tampered)
    assert not ok and recomputed != document["build"]["version"]
    assert "does not match the recomputed version" in problems[0]
    assert verify_blob(b"{not json")[0] is False
    assert verify_blob(b"[1]")[2] == ["blob must hold a JSON object, got list"]
    assert verify_blob(b'{"v":1}')[2] == ["document has no build.version to verify"]


def test_scores_are_rounded_and_integral_ones_written_as_ints():
    scores = json_scores([1.0, 0.1234564, 2.0000004, -0.0000001, 3e-7, 0.5])
    assert scores == [1, 0.123456, 2, 0, 0, 0.5]
    assert [type(score) for score in scores] == [int, float, int, int, int, float]
    with pytest.raises(ValueError, match="finite"):
        json_scores([float("nan")])


def test_small_scores_are_written_as_jcs_numbers_in_the_blob():
    document = {
        "v": 1,
        "items": [{"item_id": "A", "score": 0.000003}, {"item_id": "B", "score": 1}],
    }
    assert (
        serialize(document)
        == b'{"v":1,"items":[{"item_id":"A","score":0.000003},{"item_id":"B","score":1}]}'
    )
    assert canonical_bytes(document) == rfc8785.dumps(document)


def test_disabled_marker_has_head_enabled_false_and_reason_but_no_build():
    marker = disabled_marker(
        "content_sim",
        "demo",
        "home",
        "",
        date(2026, 1, 1),
        date(2026, 1, 2),
        "no catalog configured",
    )
    assert marker == {
        "v": 1,
        "artifact_type": "content_sim",
        "tenant": "demo",
        "surface": "home",
        "window": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"},
        "enabled": False,
        "reason": "no catalog configured",
    }
    assert is_disabled_marker(marker)
    assert not is_disabled_marker({"v": 1})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"artifact_type": "nope"}, "artifact_type must be one of"),
        ({"source_hash": "xyz"}, "source_hash must be 64"),
        ({"built_at": "yesterday"}, "built_at must be an RFC 3339"),
        ({"window_end_exclusive": date(2026, 1, 1)}, "must be after its start"),
        ({"payload": {"build": 1}}, "would overwrite envelope fields"),
        ({"tenant": ""}, "tenant must be a non-empty string"),
    ],
)
def test_build_document_refuses_bad_input(change, message):
    arguments = {
        "artifact_type": "popularity",
        "tenant": "demo",
        "surface": "home",
        "segment": "",
        "window_start": date(2026, 1, 1),
        "window_end_exclusive": date(2026, 1, 2),
        "payload": _payload(),
        "source_hash": HASH,
        "built_at": BUILT,
    }
    with pytest.raises(ValueError, match=message):
        build_document(**{**arguments, **change})


def test_window_days_must_be_dates_not_datetimes():
    with pytest.raises(TypeError, match="datetime.date"):
        build_document(
            "popularity",
            "demo",
            "home",
            "",
            datetime(2026, 1, 1),
            date(2026, 1, 2),
            _payload(),
            HASH,
            BUILT,
        )


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        0.5,
        1e-6,
        5e-6,
        1e-5,
        1e-7,
        2.5e-7,
        1e16,
        1.5e16,
        1e21,
        1e22,
        123.456,
        2.0**60,
        1e300,
        5e-324,
        0.1 + 0.2,
        -0.0,
        -1e-7,
        1.7976931348623157e308,
    ],
)
def test_es6_number_matches_rfc8785(value):
    assert es6_number(value).encode() == rfc8785.dumps(value)


@settings(max_examples=3000, deadline=None)
@given(st.integers(0, 2**64 - 1))
def test_es6_number_matches_rfc8785_on_any_double(bits):
    value = struct.unpack("<d", struct.pack("<Q", bits))[0]
    if math.isfinite(value):
        assert es6_number(value).encode() == rfc8785.dumps(value)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_canonical_bytes_equal_rfc8785(value):
    assert canonical_bytes(value) == rfc8785.dumps(value)
    # What a blob reader sees after parsing the written bytes canonicalizes the same way
    # (short of integral floats beyond 2**53, which read back as out-of-range integers).
    if all(abs(number) < 2**53 for number in _floats(value)):
        assert canonical_bytes(orjson.loads(serialize(value))) == rfc8785.dumps(value)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(text.filter(bool), st.floats(0, 1e6, allow_nan=False)), max_size=20),
    text,
)
def test_version_of_a_scored_payload_equals_the_rfc8785_sha256(entries, tenant_like):
    document = {
        "v": 1,
        "artifact_type": "implicit",
        "tenant": tenant_like,
        "users": [
            {"user_id": item_id, "items": [{"item_id": item_id, "score": score}]}
            for item_id, score in zip(
                [e[0] for e in entries], json_scores([e[1] for e in entries]), strict=True
            )
        ],
        "build": {"version": "ignored"},
    }
    unbuilt = {key: value for key, value in document.items() if key != "build"}
    assert version_of(document) == hashlib.sha256(rfc8785.dumps(unbuilt)).hexdigest()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            text.filter(bool),
            st.lists(st.tuples(text.filter(bool), st.integers(-(10**15), 10**15))),
        ),
        max_size=6,
        unique_by=lambda row: row[0],
    ).map(lambda rows: [(row_id, entries) for row_id, entries in rows if entries]),
    st.sampled_from([("user_id", "items", "score"), ("a", "z", "count")]),
    st.sampled_from([1, 2, 3, 1 << 18]),
)
def test_a_list_written_ahead_is_the_rfc8785_form_of_its_rows(rows, keys, part):
    """`nest_json` bytes, alone and inside a document, are what JCS makes of the same dicts,
    whatever the blocks of rows written on the threads (of 1-3 entries: a row each)."""
    row_key, list_key, value_key = keys
    items = sorted({item for _, entries in rows for item, _ in entries})
    saved, ranking._NEST_PART = ranking._NEST_PART, part
    try:
        encoded = nest_json(
            pl.Series([row_id for row_id, _ in rows], dtype=pl.String),
            np.repeat(np.arange(len(rows)), [len(entries) for _, entries in rows]),
            pl.Series(items, dtype=pl.String),
            np.array([items.index(item) for _, entries in rows for item, _ in entries], dtype=int),
            np.array([value for _, entries in rows for _, value in entries], dtype=np.int64),
            row_key=row_key,
            list_key=list_key,
            value_key=value_key,
        )
    finally:
        ranking._NEST_PART = saved
    nested = [
        {row_key: row_id, list_key: [{"item_id": i, value_key: v} for i, v in entries]}
        for row_id, entries in rows
    ]
    assert encoded.data == rfc8785.dumps(nested)
    assert encoded == nested and len(encoded) == len(nested)
    document = {"v": 1, "rows": encoded, "score": 0.5}
    plain = {"v": 1, "rows": nested, "score": 0.5}
    assert canonical_bytes(document) == rfc8785.dumps(plain)
    assert orjson.loads(serialize(document)) == plain


scores = st.one_of(
    st.floats(0, 9e8),
    st.floats(0, 2e-6),
    st.sampled_from([0.0, 1e-6, 0.5, 1.0, 3.0, 0.000123, 999_999_999.999999, 1e-7]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(text.filter(bool), scores), min_size=1), min_size=1, max_size=5))
def test_scores_written_ahead_are_the_rfc8785_form_of_the_rounded_floats(rows):
    """Float scores in `nest_json` (implicit's users) are written as JCS writes the rounded
    number, whatever it is: whole, below 1e-5, many digits."""
    items = sorted({item for entries in rows for item, _ in entries})
    values = round_scores(np.array([v for entries in rows for _, v in entries]))
    encoded = nest_json(
        pl.Series([f"u{n}" for n in range(len(rows))], dtype=pl.String),
        np.repeat(np.arange(len(rows)), [len(entries) for entries in rows]),
        pl.Series(items, dtype=pl.String),
        np.array([items.index(item) for entries in rows for item, _ in entries], dtype=int),
        values,
        row_key="user_id",
        list_key="items",
        value_key="score",
    )
    scored = iter(json_scores(values))
    nested = [
        {"user_id": f"u{n}", "items": [{"item_id": i, "score": next(scored)} for i, _ in entries]}
        for n, entries in enumerate(rows)
    ]
    assert encoded.data == rfc8785.dumps(nested)


def test_scores_beyond_what_is_written_exactly_are_refused():
    for bad in (-0.5, 1e9, float("nan")):
        with pytest.raises(ValueError, match="nest_json writes floats"):
            nest_json(
                pl.Series(["u"]), np.array([0]), pl.Series(["i"]), np.array([0]),
                np.array([bad]), row_key="user_id", list_key="items", value_key="score",
            )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(1, 9))
def test_float_scan_in_slices_finds_floats_across_slice_edges(value, size):
    """Big documents are scanned for floats to correct slice by slice; tiny slices put the
    edges everywhere."""
    original = envelope._SCAN_SLICE
    envelope._SCAN_SLICE = size
    try:
        assert canonical_bytes(value) == rfc8785.dumps(value)
    finally:
        envelope._SCAN_SLICE = original
