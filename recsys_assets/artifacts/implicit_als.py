"""Implicit payload (SPEC §4): collaborative recommendations from ALS (the `implicit` library).

The model trains on every known user's exposures of the window (implicit's confidence:
alpha * the BM25-weighted count by default, `artifacts.implicit.weighting`: on the quality
benchmark it lifts HR@10 on the user task by about a quarter over raw counts, while log
counts lose a fifth), so that the item factors use all the evidence; only the most active users
(exposures, ties by id), at most `artifacts.implicit.max_users`, get a row. Recommendations
leave out the items the user was already shown, as `filter_already_liked_items=True` does:
an artifact of things the user has seen adds nothing. A user who has seen every item gets
no row.

Determinism: factors are seeded by `random_state`; BLAS runs single-threaded while fitting and
scoring (threadpoolctl, which works even when numpy was imported before OPENBLAS_NUM_THREADS
could be set); ALS and scoring run on `num_threads` threads (0: all cores), each user's and
item's solve being independent of scheduling, so the thread count does not change a bit.
Another CPU or BLAS build may change the last bits of the scores, hence the version.

Ranking: each user's best max_items_per_user + 16 unseen items are taken from ALS; their
scores are clipped at 0, rounded to 6 decimals and re-sorted by (score descending, item id),
then cut to max_items_per_user. Ties at the cut are thus broken by id among those
candidates, which is exact unless more than 16 further items tie at the cut score (in
practice only clipped zeros can).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys_assets.aggregates.daily import Aggregate, as_coded
from recsys_assets.artifacts.envelope import round_scores
from recsys_assets.artifacts.ranking import check_cap, most_active, nest_json

# Score of a slot without an item (implicit's filtered score): float32's lowest value.
_FILTERED = np.finfo(np.float32).min
# Extra candidates asked of ALS so that ties at the cut are broken by id among them.
_TIE_MARGIN = 16


def implicit_payload(
    user_item_counts: Aggregate,
    *,
    factors: int = 64,
    regularization: float = 0.05,
    alpha: float = 1.0,
    iterations: int = 15,
    random_state: int = 42,
    max_users: int = 100_000,
    max_items_per_user: int = 50,
    num_threads: int = 0,
    weighting: str = "bm25",
) -> tuple[dict[str, Any], dict[str, int]]:
    """`{"users": [{"user_id", "items": [{"item_id", "score"}]}]}` sorted by user id, and stats.

    `user_item_counts` is the merged aggregate, coded or as a frame. Stats: users (known
    users), items, interactions (user-item pairs), users_kept (the max_users most active),
    users_written (kept users with at least one recommendation).
    """
    check_cap("artifacts.implicit.factors", factors)
    check_cap("artifacts.implicit.iterations", iterations)
    check_cap("artifacts.implicit.max_users", max_users)
    check_cap("limits.max_items_per_user", max_items_per_user)
    for name, value in (("regularization", regularization), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"artifacts.implicit.{name} must be a number > 0, got {value!r}")
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
        raise ValueError(f"num_threads must be an integer >= 0 (0: all cores), got {num_threads!r}")

    counts = as_coded("user_item_counts", user_item_counts)
    users, items = counts.rows, counts.columns
    stats = {
        "users": users.len(),
        "items": items.len(),
        "interactions": counts.nnz,
        "users_kept": 0,
        "users_written": 0,
    }
    if users.len() == 0:
        return {"users": []}, stats
    matrix = counts.matrix.astype(np.float32)
    kept = most_active(np.asarray(matrix.sum(axis=1)).ravel(), max_users)
    confidence = weighted(matrix, weighting)
    stats["users_kept"] = int(kept.size)

    candidates = min(items.len(), max_items_per_user + _TIE_MARGIN)
    with threadpool_limits(limits=1, user_api="blas"):
        # Imported here so that implicit's BLAS check sees the single-threaded pool.
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=random_state,
            num_threads=num_threads,
        )
        model.fit(confidence, show_progress=False)
        ids, raw = _recommend_unseen(model, matrix, kept, candidates)

    user_index, item, score = _ranked(ids, raw, max_items_per_user)
    written, row = np.unique(user_index, return_inverse=True)
    rows = nest_json(
        users.gather(kept[written]),
        row,
        items,
        item,
        score,
        row_key="user_id",
        list_key="items",
        value_key="score",
    )
    stats["users_written"] = len(rows)
    return {"users": rows}, stats


WEIGHTINGS = ("none", "bm25", "log")


def weighted(matrix: sp.csr_matrix, weighting: str) -> sp.csr_matrix:
    """The user-item counts as ALS's confidence: as they are, BM25-weighted (implicit's
    `bm25_weight`, K1=100, B=0.8: damps heavy users and popular items) or log(1 + count).
    The pattern of seen items stays the same."""
    if weighting == "none":
        return matrix
    if weighting == "log":
        out = matrix.copy()
        out.data = np.log1p(out.data)
        return out
    if weighting == "bm25":
        from implicit.nearest_neighbours import bm25_weight

        return bm25_weight(matrix, K1=100, B=0.8).tocsr().astype(np.float32)
    raise ValueError(
        f"artifacts.implicit.weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}"
    )


def _recommend_unseen(
    model: Any, matrix: sp.csr_matrix, users: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's `n` best unseen items, best first: (item codes, scores), users x n.

    Same result as recommend(..., filter_already_liked_items=True), faster: implicit filters
    row by row in Python under the GIL, which serializes its threads. Here each user asks
    for n plus its seen count (rounded up to a power of two, so users group into a few
    calls) unfiltered, and seen items are dropped with one vectorized lookup.
    """
    seen_counts = np.diff(matrix.indptr)[users]
    extra = 2 ** np.ceil(np.log2(np.maximum(seen_counts, 16))).astype(np.int64)
    ids = np.zeros((users.size, n), dtype=np.int64)
    raw = np.full((users.size, n), _FILTERED, dtype=np.float32)
    n_items = matrix.shape[1]
    for more in np.unique(extra).tolist():
        members = np.flatnonzero(extra == more)
        rows = matrix[users[members]]
        found, scores = model.recommend(
            users[members], rows, N=min(n_items, n + more), filter_already_liked_items=False
        )
        # (member, item) keys of the seen items are sorted: CSR rows in order, columns sorted.
        seen_keys = (
            np.repeat(np.arange(members.size), np.diff(rows.indptr)) * n_items + rows.indices
        )
        keys = np.arange(members.size)[:, None] * n_items + found
        at = np.minimum(np.searchsorted(seen_keys, keys), max(seen_keys.size - 1, 0))
        seen = seen_keys[at] == keys if seen_keys.size else np.zeros(keys.shape, dtype=bool)
        # Unseen first, keeping the score order, then the first n.
        order = np.argsort(seen, axis=1, kind="stable")[:, :n]
        width = order.shape[1]
        ids[members, :width] = np.take_along_axis(found, order, axis=1)
        raw[members, :width] = np.where(
            np.take_along_axis(seen, order, axis=1),
            _FILTERED,
            np.take_along_axis(scores, order, axis=1),
        )
    return ids, raw


def _ranked(
    ids: np.ndarray, raw: np.ndarray, per_user: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, item code, score) of each user's best items, by score descending then item code.

    `ids` and `raw` are recommend()'s (users x candidates) arrays, best first; filtered
    slots are dropped, scores clipped at 0 and rounded before the tie-break.
    """
    score = np.clip(round_scores(raw), 0.0, None)
    valid = raw > _FILTERED
    ids = ids.astype(np.int64)
    # Rounding and clipping keep each row non-increasing, so only rows with equal adjacent
    # scores need reordering: sort those by (run of equal scores, item code).
    tied = np.flatnonzero(((score[:, 1:] == score[:, :-1]) & valid[:, 1:]).any(axis=1))
    if tied.size:
        changed = np.zeros((tied.size, score.shape[1]), dtype=np.int64)
        changed[:, 1:] = score[tied, 1:] != score[tied, :-1]
        width = int(ids.max()) + 1
        key = np.cumsum(changed, axis=1) * width + ids[tied]
        key[~valid[tied]] = (score.shape[1] + 1) * width
        order = np.argsort(key, axis=1, kind="stable")
        for array in (ids, score, valid):
            array[tied] = np.take_along_axis(array[tied], order, axis=1)
    ids, score, valid = ids[:, :per_user], score[:, :per_user], valid[:, :per_user]
    rows = np.broadcast_to(np.arange(ids.shape[0])[:, None], ids.shape)
    return rows[valid], ids[valid], score[valid]
