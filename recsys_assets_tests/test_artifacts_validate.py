"""Validation of artifact documents: good ones pass, broken ones say what is wrong."""

from __future__ import annotations

import json
from datetime import date

import orjson
import pytest
from hypothesis import given, settings
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
