"""Catalog parsing and TF-IDF content similarity (checked against scikit-learn)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from recsys_assets.artifacts.content_sim import CATALOG_SCHEMA, content_sim_payload, parse_catalog


def catalog(rows: list[tuple[str, list[str] | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [row[0] for row in rows],
            "tags": [row[1] for row in rows],
            "namespace": [row[2] for row in rows],
            "price": [None] * len(rows),
            "created_at": [None] * len(rows),
        },
        schema=CATALOG_SCHEMA,
    )


def test_csv_catalog_with_aliases_separators_and_rejects():
    data = (
        b"ID,Tag_List,PRICE,created_at,Surface,color\n"
        b'a,"Red, Shoes",10.5,2026-01-01T02:00:00+02:00,,blue\n'
        b"b,red|boots,abc,,,\n"
        b"\n"
        b"c,blue; shoes ;,,,home,\n"
        b"d,,,,,\n"
        b"a,again,,,,\n"
        b"a,same id other namespace,,,web,\n"
        b"f,red,1,2026-13-01T00:00:00Z,,\n"
        b"g,too,many,fields,,,,\n"
    )
    frame, rejects = parse_catalog(data, "csv")
    assert dict(frame.schema) == CATALOG_SCHEMA
    assert frame.rows() == [
        ("a", ["Red", "Shoes"], None, 10.5, datetime(2026, 1, 1, tzinfo=UTC)),
        ("a", ["same id other namespace"], "web", None, None),
        ("c", ["blue", "shoes"], "home", None, None),
        ("d", [], None, None, None),
    ]
    assert [(reject["line"], reject["reason"]) for reject in rejects] == [
        (3, "price must be a number, got 'abc'"),
        (7, "duplicate item_id 'a' with no namespace (first on line 2)"),
        (9, "created_at must be an RFC 3339 timestamp, got '2026-13-01T00:00:00Z'"),
        (10, "expected 6 fields as in the header, got 8"),
    ]
    assert rejects[0]["raw"] == "b,red|boots,abc,,,"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"name,tags\nx,y\n", "no item id column"),
        (b"id,item_id\n1,2\n", "both give item_id"),
        (b"", "no header row"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_unusable_csv_catalogs_raise(data, message):
    with pytest.raises(ValueError, match=message):
        parse_catalog(data, "csv")


def test_jsonl_catalog():
    data = (
        b'{"item_id": 7, "tags": ["x", " Y "], "price": 2, "namespace": "home", "extra": 1}\n'
        b"\n"
        b'{"ITEM_ID": "b", "tags": "x|z", "created_at": "2026-01-01T00:00:00Z"}\n'
        b"{not json}\n"
        b"[1, 2]\n"
        b'{"item_id": "c", "id": "d"}\n'
        b'{"item_id": "e", "tags": [1]}\n'
        b'{"item_id": ""}\n'
    )
    frame, rejects = parse_catalog(data, "jsonl")
    assert frame.rows() == [
        ("7", ["x", "Y"], "home", 2.0, None),
        ("b", ["x", "z"], None, None, datetime(2026, 1, 1, tzinfo=UTC)),
    ]
    assert [reject["line"] for reject in rejects] == [4, 5, 6, 7, 8]
    assert rejects[1]["reason"] == "expected a JSON object, got list"
    assert rejects[2]["reason"] == "two keys give item_id; keep one"
    with pytest.raises(ValueError, match="format must be 'csv' or 'jsonl'"):
        parse_catalog(data, "xml")  # type: ignore[arg-type]


def test_hand_computed_tfidf_cosine():
    payload, stats = content_sim_payload(
        catalog(
            [
                ("a", ["red", "shoes"], None),
                ("b", ["Red ", "boots", "red"], None),
                ("c", ["blue"], None),
            ]
        ),
        surface="home",
    )
    # n = 3, idf = ln(4 / (1 + df)) + 1: red (df 2) and shoes/boots (df 1). a and b share red.
    red, single = math.log(4 / 3) + 1, math.log(4 / 2) + 1
    cosine = round(red**2 / (red**2 + single**2), 6)
    assert payload == {
        "items": [
            {
                "item_id": "a",
                "tags": ["red", "shoes"],
                "similar": [{"item_id": "b", "score": cosine}],
            },
            {
                "item_id": "b",
                "tags": ["boots", "red"],
                "similar": [{"item_id": "a", "score": cosine}],
            },
            {"item_id": "c", "tags": ["blue"], "similar": []},
        ]
    }
    assert stats["tags"] == 4 and stats["similar_written"] == 2
    # "Above" the threshold: a score equal to it is left out.
    strict, _ = content_sim_payload(
        catalog(
            [("a", ["red", "shoes"], None), ("b", ["red", "boots"], None), ("c", ["blue"], None)]
        ),
        surface="home",
        min_similarity=cosine,
    )
    assert all(item["similar"] == [] for item in strict["items"])


def test_namespace_rules_untagged_items_and_the_item_cap():
    rows = [
        ("a", ["x"], "web"),  # another surface's row: skipped
        ("b", ["x", "y"], None),
        ("b", ["z"], "home"),  # explicit namespace wins over the row without one
        ("c", ["z"], None),
        ("d", [], None),  # no tags: skipped
        ("e", ["  ", None], "home"),  # only blank tags: skipped
        ("f", ["z"], None),
    ]
    payload, stats = content_sim_payload(
        catalog(rows), surface="home", min_similarity=0.0, max_items=2
    )
    assert [item["item_id"] for item in payload["items"]] == ["b", "c"]
    assert payload["items"][0] == {
        "item_id": "b",
        "tags": ["z"],
        "similar": [{"item_id": "c", "score": 1}],
    }
    assert stats == {
        "catalog_rows": 7,
        "other_namespace_rows": 1,
        "items_without_tags": 2,
        "items": 3,
        "items_written": 2,
        "tags": 1,
        "similar_written": 2,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_learn_tfidf_cosine(seed):
    rng = np.random.default_rng(seed)
    vocabulary = [f"t{n}" for n in range(12)]
    rows = [
        (f"item{n:03d}", list(rng.choice(vocabulary, size=rng.integers(1, 5), replace=False)), None)
        for n in range(80)
    ]
    k, floor = 5, 0.2
    payload, _ = content_sim_payload(
        catalog(rows), surface="home", max_neighbors_per_item=k, min_similarity=floor
    )

    ids = [row[0] for row in rows]
    vectors = TfidfVectorizer(analyzer=lambda tags: tags).fit_transform([row[1] for row in rows])
    cosine = np.round((vectors @ vectors.T).toarray(), 6)
    for index, item in enumerate(payload["items"]):
        assert item["item_id"] == ids[index]
        candidates = [
            (-cosine[index, j], ids[j])
            for j in range(len(ids))
            if j != index and cosine[index, j] > floor
        ]
        expected = [(item_id, -score) for score, item_id in sorted(candidates)[:k]]
        got = [(entry["item_id"], entry["score"]) for entry in item["similar"]]
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert np.allclose([g[1] for g in got], [e[1] for e in expected], atol=1e-6, rtol=0)


def test_bad_parameters_and_frames_are_refused():
    frame = catalog([("a", ["x"], None)])
    with pytest.raises(ValueError, match="min_similarity must be a number >= 0"):
        content_sim_payload(frame, surface="home", min_similarity=-0.1)
    with pytest.raises(ValueError, match="catalog needs column tags"):
        content_sim_payload(frame.drop("tags"), surface="home")
