"""Validation of artifact documents: good ones pass, broken ones say what is wrong."""

from __future__ import annotations

import json
from datetime import date

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from recsys_assets.artifacts.envelope import build_document, disabled_marker, serialize
from recsys_assets.artifacts.validate import (
    SCHEMA_DIR,
    Caps,
    Expected,
    _entry_ok,
    _entry_validator,
    validate_blob,
    validate_document,
    validate_manifest,
)

START, END = date(2026, 1, 1), date(2026, 1, 2)
HASH = "0" * 64


def scored(*pairs):
    return [{"item_id": item, "score": score} for item, score in pairs]


PAYLOADS = {
    "popularity": {"items": [{"item_id": "A", "count": 2}, {"item_id": "B", "count": 1}]},
    "cooc": {
        "neighbors": [
            {"item_id": "A", "items": [{"item_id": "B", "count": 1}]},
            {"item_id": "B", "items": [{"item_id": "A", "count": 1}]},
        ]
    },
    "implicit": {"users": [{"user_id": "u1", "items": scored(("C", 0.5), ("D", 0.000001))}]},
    "content_sim": {
        "items": [
            {"item_id": "A", "tags": ["red", "shoes"], "similar": scored(("B", 1))},
            {"item_id": "B", "tags": ["red"], "similar": []},
        ]
    },
    "session_seq": {
        "users": [{"user_id": "u1", "items": scored(("B", 2), ("A", 1))}],
        "transitions": [{"item_id": "A", "items": scored(("C", 1.5), ("B", 1))}],
    },
}


def document(artifact_type: str, payload=None, segment: str = "") -> dict:
    return build_document(
        artifact_type,
        "demo",
        "home",
        segment,
        START,
        END,
        PAYLOADS[artifact_type] if payload is None else payload,
        HASH,
        "2026-01-02T00:00:00Z",
    )


def expected(artifact_type: str, **change) -> Expected:
    fields = {
        "artifact_type": artifact_type,
        "tenant": "demo",
        "surface": "home",
        "segment": "",
        "window_start": START,
        "window_end_exclusive": END,
    }
    return Expected(**{**fields, **change})


@pytest.mark.parametrize("artifact_type", list(PAYLOADS))
def test_good_documents_and_their_blobs_pass(artifact_type):
    built = document(artifact_type)
    assert validate_document(built, expected(artifact_type), Caps()) == []
    assert validate_blob(serialize(built), expected(artifact_type), Caps()) == []


def test_disabled_marker_passes_and_is_checked_against_the_partition():
    marker = disabled_marker("content_sim", "demo", "home", "", START, END, "no catalog configured")
    assert validate_document(marker, expected("content_sim"), Caps()) == []
    assert validate_document(marker, expected("content_sim", tenant="other"), Caps()) == [
        "tenant is 'demo', expected 'other'"
    ]
    broken = {**marker, "reason": ""}
    assert validate_document(broken, expected("content_sim"), Caps()) == [
        "schema: $.reason: '' should be non-empty"
    ]


def test_tampered_blob_fails_the_version_check():
    blob = serialize(document("popularity")).replace(b'"count":2', b'"count":3')
    problems = validate_blob(blob, expected("popularity"), Caps())
    assert len(problems) == 1 and "does not match the recomputed version" in problems[0]
    assert validate_blob(b"{oops", expected("popularity"), Caps())[0].startswith(
        "blob is not valid JSON"
    )


def test_identity_must_match_the_partition():
    problems = validate_document(
        document("cooc", segment="vip"),
        expected("cooc", surface="web", window_end_exclusive=date(2026, 1, 8)),
        Caps(),
    )
    assert problems == [
        "surface is 'home', expected 'web'",
        "segment is 'vip', expected '' ('' means absent)",
        "window is {'start': '2026-01-01T00:00:00Z', 'end': '2026-01-02T00:00:00Z'}, expected "
        "{'start': '2026-01-01T00:00:00Z', 'end': '2026-01-08T00:00:00Z'}",
    ]
    assert validate_document(document("cooc"), expected("popularity"), Caps())[0].startswith(
        "schema: "
    )


def test_oversized_documents_name_the_cap():
    caps = Caps(
        max_items_per_artifact=1,
        max_neighbors_per_item=1,
        max_items_per_user=1,
        max_users=1,
        max_items=1,
    )
    assert validate_document(document("popularity"), expected("popularity"), caps) == [
        "$.items: 2 entries exceed limits.max_items_per_artifact = 1"
    ]
    assert validate_document(document("implicit"), expected("implicit"), caps) == [
        "$.users[0].items: 2 entries exceed limits.max_items_per_user = 1"
    ]
    problems = validate_document(document("content_sim"), expected("content_sim"), caps)
    assert problems == ["$.items: 2 rows exceed artifacts.content_sim.max_items = 1"]
    problems = validate_document(document("session_seq"), expected("session_seq"), caps)
    assert problems == [
        "$.users[0].items: 2 entries exceed limits.max_items_per_user = 1",
        "$.transitions[0].items: 2 entries exceed limits.max_neighbors_per_item = 1",
    ]


def test_broken_orders_and_self_neighbors_are_reported():
    unsorted = {"items": [{"item_id": "B", "count": 1}, {"item_id": "A", "count": 2}]}
    assert validate_document(document("popularity", unsorted), expected("popularity"), Caps()) == [
        "$.items[1]: breaks the order (count descending, then item_id ascending, unique ids):"
        " (1, 'B') then (2, 'A')"
    ]
    tie = {"items": [{"item_id": "B", "count": 1}, {"item_id": "A", "count": 1}]}
    assert (
        "breaks the order"
        in validate_document(document("popularity", tie), expected("popularity"), Caps())[0]
    )
    rows = {
        "neighbors": [
            {"item_id": "B", "items": []},
            {"item_id": "A", "items": [{"item_id": "A", "count": 1}]},
        ]
    }
    assert validate_document(document("cooc", rows), expected("cooc"), Caps()) == [
        "$.neighbors[1]: breaks the order (item_id ascending, unique): 'B' then 'A'",
        "$.neighbors[1]: 'A' lists itself",
    ]
    tags = {"items": [{"item_id": "A", "tags": ["Red", "blue"], "similar": []}]}
    assert validate_document(document("content_sim", tags), expected("content_sim"), Caps()) == [
        "$.items[0].tags ['Red', 'blue'] must be trimmed, lower-case, sorted ascending"
    ]


def test_filters_are_checked_when_given():
    caps = Caps(min_cooc_support=2, min_similarity=1.0)
    assert validate_document(document("cooc"), expected("cooc"), caps) == [
        "$.neighbors[0].items[0]: count 1 is not at least limits.min_cooc_support = 2",
        "$.neighbors[1].items[0]: count 1 is not at least limits.min_cooc_support = 2",
    ]
    assert validate_document(document("content_sim"), expected("content_sim"), caps) == [
        "$.items[0].similar[0]: score 1 is not above artifacts.content_sim.min_similarity = 1.0"
    ]


def test_schema_breaking_documents_get_json_paths():
    bad = {
        "users": [
            {
                "user_id": "",
                "items": scored(("A", -1), ("", 0.5)) + [{"item_id": "B", "score": 1, "x": 1}],
            }
        ]
    }
    problems = validate_document(document("implicit", bad), expected("implicit"), Caps())
    assert problems == [
        "schema: $.users[0].user_id: '' should be non-empty",
        "schema: $.users[0].items[0].score: -1 is less than the minimum of 0",
        "schema: $.users[0].items[1].item_id: '' should be non-empty",
        "schema: $.users[0].items[2]: Additional properties are not allowed ('x' was unexpected)",
    ]
    missing = {key: value for key, value in document("popularity").items() if key != "build"}
    assert validate_document(missing, expected("popularity"), Caps()) == [
        "schema: $: 'build' is a required property"
    ]
    assert validate_document([], expected("popularity"), Caps()) == [
        "artifact must be a JSON object, got list"
    ]


def test_many_bad_entries_are_summarized():
    bad = {"users": [{"user_id": "u", "items": scored(*[(f"i{n}", -1) for n in range(9)])}]}
    problems = validate_document(document("implicit", bad), expected("implicit"), Caps())
    assert len(problems) == 6 and problems[-1] == "schema: 4 more entries do not match their schema"


def test_manifest_schema():
    good = {
        "v": 1,
        "tenant": "demo",
        "surface": "home",
        "updated_at": "2026-01-02T00:00:00Z",
        "current": {
            "popularity": "file:///srv/x/demo/home/popularity/ab.json",
            "cooc": "s3://bucket/demo/home/cooc/cd.json",
        },
    }
    assert validate_manifest(good) == []
    bad = {**good, "extra": 1, "current": {"nope": "file:///x", "cooc": "http://x"}}
    problems = validate_manifest(bad)
    assert "schema: $: Additional properties are not allowed ('extra' was unexpected)" in problems
    assert any("'nope' is not one of" in problem for problem in problems)
    assert any("'http://x' does not match" in problem for problem in problems)


def test_schema_files_are_valid_draft_2020_12():
    import jsonschema

    names = sorted(path.name for path in SCHEMA_DIR.glob("*.v1.json"))
    assert names == [
        f"{name}.v1.json"
        for name in (
            "content_sim",
            "cooc",
            "disabled",
            "implicit",
            "manifest",
            "popularity",
            "session_seq",
        )
    ]
    for name in names:
        jsonschema.Draft202012Validator.check_schema(json.loads((SCHEMA_DIR / name).read_text()))


entry_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.lists(st.integers(-3, 3), max_size=1),
)
entries = st.one_of(
    st.dictionaries(st.sampled_from(["item_id", "score", "count", "x"]), entry_values, max_size=4),
    entry_values,
)


@settings(max_examples=500, deadline=None)
@given(entries, st.sampled_from(["counted", "scored"]))
def test_fast_entry_check_agrees_with_the_schema(entry, definition):
    for artifact_type in ("popularity", "implicit"):
        if definition == "counted" and artifact_type == "implicit":
            continue
        if definition == "scored" and artifact_type == "popularity":
            continue
        validator = _entry_validator(artifact_type, definition)
        # Round-trip through JSON so values are what a parsed blob holds.
        value = orjson.loads(orjson.dumps(entry))
        assert _entry_ok(value, definition) == validator.is_valid(value), value


# The fast path (msgspec structs, arrays) against the slow one (jsonschema, Python): on
# documents that are good, nearly good or broken in one of the ways a builder could break
# them, the fast path either gives the slow path's verdict or hands the blob over to it.
ids = st.sampled_from(["A", "B", "C", "d", "é", ""])
numbers = st.one_of(
    st.integers(-1, 4),
    st.floats(-0.5, 3, allow_nan=False).map(lambda x: round(x, 6)),
    st.sampled_from([2.0, 1e-7, 1e16, 2**53, "1", None, True]),
)
rows_of_entries = st.lists(st.tuples(ids, numbers), max_size=4)


def _entries(pairs, value: str, tidy: bool) -> list:
    if tidy:  # what a builder writes: unique ids, values >= 0, by value descending then id
        clean = {i: v for i, v in pairs if i and isinstance(v, int | float) and v >= 0}
        clean = {i: int(v) if value == "count" else v for i, v in clean.items()}
        pairs = sorted(clean.items(), key=lambda p: (-p[1], p[0]))
    return [{"item_id": i, value: v} for i, v in pairs]


def _payload(artifact_type: str, data, tidy: bool) -> dict:
    value = "count" if artifact_type in ("popularity", "cooc") else "score"
    if artifact_type == "popularity":
        return {"items": _entries(data.draw(rows_of_entries), value, tidy)}
    lists = {"cooc": ["neighbors"], "implicit": ["users"], "content_sim": ["items"]}
    lists["session_seq"] = ["users", "transitions"]
    payload = {}
    for name in lists[artifact_type]:
        key = "user_id" if name == "users" else "item_id"
        inner = "similar" if artifact_type == "content_sim" else "items"
        anchors = data.draw(st.lists(ids, max_size=3))
        if tidy:
            anchors = sorted({a for a in anchors if a})
        rows = []
        for anchor in anchors:
            row = {key: anchor, inner: _entries(data.draw(rows_of_entries), value, tidy)}
            if tidy and key == "item_id":
                row[inner] = [e for e in row[inner] if e["item_id"] != anchor]
            if artifact_type == "content_sim":
                tags = data.draw(
                    st.lists(st.sampled_from(["red", "Red", "blue", " x"]), max_size=3)
                )
                row = {"item_id": anchor, "tags": sorted(set(tags)) if tidy else tags, **row}
            rows.append(row)
        payload[name] = rows
    return payload


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(list(PAYLOADS)),
    st.booleans(),
    st.sampled_from(["none", "version", "tenant", "extra", "caps", "reorder"]),
    st.data(),
)
def test_fast_verdict_agrees_with_the_slow_one(artifact_type, tidy, damage, data):
    from recsys_assets.artifacts.validate import _fast_verdict, _slow_verdict

    payload = _payload(artifact_type, data, tidy)
    try:
        document = build_document(
            artifact_type, "demo", "home", "", START, END, payload, HASH, "2026-01-02T00:00:00Z"
        )
    except ValueError:  # a payload without a JCS form (e.g. 2**53 + a float) gets no version
        document = {**document_of(artifact_type), **payload}
    if damage == "version":
        document["build"] = {**document["build"], "version": "f" * 64}
    elif damage == "tenant":
        document["tenant"] = "other"
    elif damage == "extra":
        document["extra"] = 1
    elif damage == "reorder":
        document = dict(reversed(document.items()))
    try:
        blob = serialize(document)
    except ValueError:
        blob = orjson.dumps(document)
    caps = Caps(max_items_per_artifact=2, max_items_per_user=2) if damage == "caps" else Caps()
    if artifact_type == "cooc":
        caps = Caps(**{**caps.__dict__, "min_cooc_support": 1})
    if artifact_type == "content_sim":
        caps = Caps(**{**caps.__dict__, "min_similarity": 0.1})
    slow = _slow_verdict(blob, expected(artifact_type), caps)
    fast = _fast_verdict(blob, expected(artifact_type), caps)
    event(f"slow: {'bad' if slow.problems else 'good'}, fast: {fast is not None}")
    if fast is not None:
        assert slow.problems == [] and fast.version == slow.version, (slow, document)
    elif slow.problems == []:
        # Only an integral float count, which the schema admits and the builders never
        # write, may take the slow path when the document is good.
        assert b".0" in blob or b"e" in blob, document


def document_of(artifact_type: str) -> dict:
    return document(artifact_type, {name: [] for name in PAYLOADS[artifact_type]})
