"""Implicit (ALS) payload: shape, caps, seen-item filtering, ordering and determinism.

ALS scores cannot be computed by hand; the tests pin what a user of the artifact relies on.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys_assets.artifacts.implicit_als import (
    _FILTERED,
    _ranked,
    _recommend_unseen,
    implicit_payload,
)

SMALL = {"factors": 8, "iterations": 5, "random_state": 7}


def user_item_counts() -> pl.DataFrame:
    """20 users over 10 items in two taste groups; user u00 saw only A and B."""
    rows = [("u00", "A", 3), ("u00", "B", 1)]
    rng = np.random.default_rng(3)
    for user in range(1, 20):
        group = ["A", "B", "C", "D", "E"] if user % 2 else ["F", "G", "H", "I", "J"]
        for item in rng.choice(group, size=3, replace=False):
            rows.append((f"u{user:02d}", str(item), int(rng.integers(1, 5))))
    rows.append(("u19", "A", 1))
    frame = pl.DataFrame(
        rows, schema={"user_id": pl.String, "item_id": pl.String, "count": pl.Int64}, orient="row"
    )
    return frame.sort(["user_id", "item_id"])


def test_recommendations_exclude_seen_items_and_are_sorted_and_rounded():
    counts = user_item_counts()
    payload, stats = implicit_payload(counts, **SMALL, max_items_per_user=4)
    users = [row["user_id"] for row in payload["users"]]
    assert users == sorted(users) and len(set(users)) == len(users)
    seen = {
        user: set(items) for user, items in counts.group_by("user_id").agg("item_id").iter_rows()
    }
    for row in payload["users"]:
        items = row["items"]
        assert 1 <= len(items) <= 4
        assert not {entry["item_id"] for entry in items} & seen[row["user_id"]]
        keys = [(-entry["score"], entry["item_id"]) for entry in items]
        assert keys == sorted(keys)
        for entry in items:
            assert entry["score"] >= 0 and round(entry["score"], 6) == entry["score"]
            assert type(entry["score"]) in (int, float)
    first = payload["users"][0]
    assert first["user_id"] == "u00"
    assert {entry["item_id"] for entry in first["items"]}.isdisjoint({"A", "B"})
    assert stats == {
        "users": 20,
        "items": 10,
        "interactions": counts.height,
        "users_kept": 20,
        "users_written": 20,
    }


def test_same_input_gives_identical_payloads_whatever_the_thread_count():
    counts = user_item_counts()
    first = implicit_payload(counts, **SMALL, num_threads=1)
    assert implicit_payload(counts, **SMALL, num_threads=1) == first
    assert implicit_payload(counts, **SMALL, num_threads=2) == first
    assert implicit_payload(counts, **{**SMALL, "random_state": 8}) != first


def test_user_cap_keeps_the_most_active_users_sorted_by_id():
    counts = user_item_counts()
    payload, stats = implicit_payload(counts, **SMALL, max_users=3, max_items_per_user=2)
    activity = (
        counts.group_by("user_id")
        .agg(pl.col("count").sum())
        .sort(["count", "user_id"], descending=[True, False])
    )
    assert [row["user_id"] for row in payload["users"]] == sorted(activity["user_id"].head(3))
    assert all(len(row["items"]) <= 2 for row in payload["users"])
    assert stats["users_kept"] == 3


def test_a_user_who_saw_everything_gets_no_row():
    counts = pl.DataFrame(
        {"user_id": ["u1", "u1", "u2"], "item_id": ["A", "B", "A"], "count": [1, 2, 1]}
    )
    payload, stats = implicit_payload(counts, **SMALL)
    assert [row["user_id"] for row in payload["users"]] == ["u2"]
    assert [entry["item_id"] for entry in payload["users"][0]["items"]] == ["B"]
    assert stats["users_written"] == 1
    empty, stats = implicit_payload(counts.clear(), **SMALL)
    assert empty == {"users": []} and stats["users"] == 0


def test_ties_after_rounding_and_clipping_are_broken_by_item_then_cut():
    ids = np.array([[5, 3, 4, 2, 9], [1, 2, 0, 0, 0]])
    raw = np.array(
        [
            [0.5000001, 0.4999999, -0.2, -0.3, _FILTERED],
            [0.9, 0.1, _FILTERED, _FILTERED, _FILTERED],
        ],
        dtype=np.float32,
    )
    rows, items, scores = _ranked(ids, raw, 4)
    # Row 0: 3 and 5 both round to 0.5; 4 and 2 clip to 0; the filtered slot goes.
    assert rows.tolist() == [0, 0, 0, 0, 1, 1]
    assert items.tolist() == [3, 5, 2, 4, 1, 2]
    assert scores.tolist() == [0.5, 0.5, 0.0, 0.0, 0.9, 0.1]


def test_recommend_unseen_matches_implicit_filtering():
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(0)
    matrix = sp.random(300, 120, density=0.08, format="lil", random_state=1, dtype=np.float32)
    matrix[5, :] = 1.0  # a user who saw every item
    matrix = matrix.tocsr()
    matrix.data[:] = rng.integers(1, 4, matrix.nnz)
    matrix.sort_indices()
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(factors=6, iterations=3, random_state=0, num_threads=1)
        model.fit(matrix, show_progress=False)
        users = np.arange(0, 300, 3)
        expected_ids, expected = model.recommend(users, matrix[users], N=12)
        ids, raw = _recommend_unseen(model, matrix, users, 12)
    valid = expected > _FILTERED
    assert np.array_equal(raw > _FILTERED, valid)
    assert np.array_equal(ids[valid], expected_ids[valid])
    # Users are scored in other batches than implicit's own call, and BLAS may block a
    # product by its size (OpenBLAS does on some processors), so the last bit of a float32
    # score can differ; artifacts round scores to 6 decimals.
    np.testing.assert_allclose(raw[valid], expected[valid], rtol=1e-6, atol=1e-7)


def test_bad_parameters_name_their_config_key():
    with pytest.raises(ValueError, match="artifacts.implicit.factors must be an integer >= 1"):
        implicit_payload(user_item_counts(), factors=0)
    with pytest.raises(ValueError, match="artifacts.implicit.regularization must be a number > 0"):
        implicit_payload(user_item_counts(), regularization=-1.0)
