"""Offline evaluation of artifacts on a held-out day (pure: frames and blobs in, numbers out).

Two tasks, on the day after an artifact's window:

- next-item: each consecutive pair (item_t -> item_t+1, item_t+1 != item_t) within a session
  is a case; an item-keyed list (cooc neighbors, session_seq transitions, content_sim
  similar) is the row of item_t, a user-keyed list (implicit, session_seq users) is the
  session's user's list, popularity is the one global list; item_t itself is left out of
  every list.
- user-level: each user with history in the window and items on the day they had not seen
  is a case, those items its targets; a user-keyed list is the user's list, an item-keyed
  one the sum of the rows of the user's window items (scores added), popularity the global
  list; items the user had seen are left out.

Metrics at K=10 per list and task: HR (a target in the first K), NDCG (targets' discounted
gain over the ideal), MRR (1 / rank of the first target in the first K, else 0), coverage
(share of cases that got a non-empty list) and cases. Everything is joins and group-bys over
(key, item, rank) frames; no loop over cases. Only the ranks of the targets are computed:
a target's rank after leaving items out is its rank less the left-out items ranked before
it, found with one as-of join.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import orjson
import polars as pl

K = 10
TASKS = ("next_item", "user")
# The lists an artifact type offers: name -> (top-level field, key field, inner list field,
# keyed by). session_seq has two: its transitions (item-keyed) and its users' lists.
LISTS: dict[str, tuple[str, str, str, str, str]] = {
    "popularity": ("popularity", "items", "", "", "global"),
    "cooc": ("cooc", "neighbors", "item_id", "items", "item"),
    "content_sim": ("content_sim", "items", "item_id", "similar", "item"),
    "implicit": ("implicit", "users", "user_id", "items", "user"),
    "session_seq": ("session_seq", "transitions", "item_id", "items", "item"),
    "session_seq_users": ("session_seq", "users", "user_id", "items", "user"),
}
# The task a type is judged on (beats_baseline, no_regression): what it is built for.
PRIMARY = {
    "cooc": ("cooc", "next_item"),
    "content_sim": ("content_sim", "next_item"),
    "session_seq": ("session_seq", "next_item"),
    "implicit": ("implicit", "user"),
    "popularity": ("popularity", "next_item"),
}
ENTRY_SCHEMA = {"key": pl.String, "item": pl.String, "rank": pl.Int32, "score": pl.Float64}


_ENTRY = pl.Struct({"item_id": pl.String, "count": pl.Float64, "score": pl.Float64})
_LINE = {"key": pl.String, "entries": pl.List(_ENTRY)}


_NO_ENTRIES = msgspec.Raw(b"[]")


class _Keyed(msgspec.Struct):
    item_id: str | None = None
    user_id: str | None = None
    items: msgspec.Raw = _NO_ENTRIES
    similar: msgspec.Raw = _NO_ENTRIES


class _Lists(msgspec.Struct):
    items: list[msgspec.Raw] | None = None  # popularity's entries, content_sim's rows
    neighbors: list[_Keyed] | None = None
    users: list[_Keyed] | None = None
    transitions: list[_Keyed] | None = None


_LISTS = msgspec.json.Decoder(_Lists)
_KEYED = msgspec.json.Decoder(_Keyed)


@dataclass(frozen=True)
class RankedList:
    """One list of an artifact: each row's key and its entries, still JSON.

    A blob is scanned once, natively, leaving the entries undecoded; only the rows asked
    for become a frame (`entries`), so evaluating a sample of cases on a 200 MB artifact
    decodes that sample's rows, not the blob.
    """

    keys: list[str]
    rows: list[msgspec.Raw]  # each a JSON array of {"item_id", "count" | "score"}

    def entries(self, keys: pl.Series | None = None, depth: int | None = None) -> pl.DataFrame:
        """(key, item, rank, score) of the rows whose key is in `keys` (all when None),
        rank 0-based in the blob's order, the first `depth` of each row."""
        wanted = None if keys is None else set(keys.drop_nulls().to_list())
        lines = [
            b'{"key":' + orjson.dumps(key) + b',"entries":' + bytes(row) + b"}"
            for key, row in zip(self.keys, self.rows, strict=True)
            if wanted is None or key in wanted
        ]
        if not lines:
            return pl.DataFrame(schema=ENTRY_SCHEMA)
        frame = (
            pl.read_ndjson(io.BytesIO(b"\n".join(lines)), schema=_LINE)
            .explode("entries")
            .filter(pl.col("entries").is_not_null())
            .unnest("entries")
            .with_columns(rank=pl.int_range(pl.len(), dtype=pl.Int32).over("key"))
        )
        if depth is not None:
            frame = frame.filter(pl.col("rank") < depth)
        return frame.select(
            "key",
            pl.col("item_id").alias("item"),
            "rank",
            pl.coalesce("score", "count").fill_null(0.0).alias("score"),
        )


def ranked_lists(artifact_type: str, blob: Any) -> dict[str, RankedList]:
    """The lists of an artifact blob by name (see `LISTS`); popularity's one row is keyed
    ""."""
    document = _LISTS.decode(blob)
    out = {}
    for name, (of_type, field, key_field, _, _) in LISTS.items():
        if of_type != artifact_type:
            continue
        raw = getattr(document, field) or []
        if not key_field:  # popularity: its entries are the one row
            out[name] = RankedList([""], [msgspec.Raw(b"[" + b",".join(raw) + b"]")])
            continue
        rows = [_KEYED.decode(r) for r in raw] if field == "items" else raw
        inner = "similar" if field == "items" else "items"
        out[name] = RankedList(
            [getattr(r, key_field) for r in rows],
            [getattr(r, inner) for r in rows],
        )
    return out


def list_entries(artifact_type: str, blob: Any) -> dict[str, pl.DataFrame]:
    """Every row of every list of an artifact blob as (key, item, rank, score) frames."""
    return {name: ranked.entries() for name, ranked in ranked_lists(artifact_type, blob).items()}


# The cases are whole sessions and users taken in the order of this seeded hash of their id.
_SAMPLE_SEED = 17


def hash_part(ids: pl.Expr, parts: int, part: int) -> pl.Expr:
    """Whether each id falls in `part` of `parts` equal ranges of the sampling hash: part 0
    holds the ids a sample takes first, so a sample built a part at a time can stop early.
    One part is every id (a filter on it is no filter)."""
    if parts == 1:
        return pl.lit(True)
    step = -(-(2**64) // parts)
    return ids.hash(seed=_SAMPLE_SEED) // pl.lit(step, dtype=pl.UInt64) == part


def next_item_cases(
    events: pl.DataFrame | pl.LazyFrame, max_cases: int, parts: int = 1
) -> pl.DataFrame:
    """(case, user, item_t, target) of a day's events (a frame or a scan of the day's
    file), at most `max_cases`, kept by whole sessions chosen by a hash of their id (the
    same sessions on every run). With `parts` > 1 the day is read a part of that hash's
    range at a time, first part first, until the sample is full: the same cases, with one
    part of the day in memory."""
    scan = events.lazy().select("ts", "session_id", "rank", "item_id", "user_id")
    order = ["session_id", "ts", "rank", "item_id"]
    taken, room = [], max_cases
    for part in range(parts):
        pairs = (
            scan.filter(hash_part(pl.col("session_id"), parts, part))
            .sort(order)
            .with_columns(target=pl.col("item_id").shift(-1).over("session_id"))
            .filter(pl.col("target").is_not_null() & (pl.col("target") != pl.col("item_id")))
            .collect()
        )
        chosen = _sampled(pairs, "session_id", room)
        taken.append(chosen)
        room -= chosen.height
        if chosen.height < pairs.height:  # full: the parts after hold none of the sample
            break
    pairs = pl.concat(taken).sort(order) if len(taken) > 1 else taken[0]
    return pairs.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("case"),
        pl.col("user_id").alias("user"),
        pl.col("item_id").alias("current"),
        "target",
    )


def user_cases(
    events: pl.DataFrame | pl.LazyFrame,
    history: pl.DataFrame | Callable[[int, int], pl.DataFrame],
    max_users: int,
    parts: int = 1,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(user, target) pairs: the day's items each user with window history had not seen,
    for at most `max_users` users chosen by a hash of their id; and those users' history
    (user, item). `history` is the window's (user, item) pairs, or gives those of the users
    in `part` of `parts` (see `hash_part`). With `parts` > 1 the users are worked a part at
    a time, first part first, until the sample is full: the same cases."""
    scan = events.lazy().filter(pl.col("user_id").is_not_null())
    if isinstance(history, pl.DataFrame):
        pairs = history

        def history_of(parts: int, part: int) -> pl.DataFrame:
            return pairs.filter(hash_part(pl.col("user"), parts, part))

    else:
        history_of = history
    taken, room = [], max_users
    for part in range(parts):
        day = (
            scan.filter(hash_part(pl.col("user_id"), parts, part))
            .select(pl.col("user_id").alias("user"), pl.col("item_id").alias("item"))
            .collect()
        )
        seen = history_of(parts, part).join(day.select("user").unique(), on="user", how="semi")
        targets = day.unique().join(seen, on=["user", "item"], how="anti")
        eligible = targets.select("user").unique().join(seen, on="user", how="semi")
        chosen = _sampled(eligible, "user", room)
        taken.append(
            (
                targets.join(chosen, on="user", how="semi").rename({"item": "target"}),
                seen.join(chosen, on="user", how="semi"),
            )
        )
        room -= chosen.height
        if chosen.height < eligible.height:
            break
    return pl.concat(t for t, _ in taken), pl.concat(s for _, s in taken)


def _sampled(frame: pl.DataFrame, column: str, limit: int) -> pl.DataFrame:
    """At most `limit` rows of `frame`, taken by whole groups of `column` in the order of a
    seeded hash of their value, so the same cases are chosen on every run."""
    if frame.height <= limit:
        return frame
    sizes = (
        frame.group_by(column)
        .len()
        .with_columns(_h=pl.col(column).hash(seed=_SAMPLE_SEED))
        .sort(["_h", column])
    )
    keep = sizes.filter(pl.col("len").cum_sum() <= limit).select(column)
    return frame.join(keep, on=column, how="semi")


@dataclass(frozen=True)
class Metrics:
    hr: float
    ndcg: float
    mrr: float
    coverage: float
    cases: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "hr@10": round(self.hr, 6),
            "ndcg@10": round(self.ndcg, 6),
            "mrr@10": round(self.mrr, 6),
            "coverage": round(self.coverage, 6),
            "cases": self.cases,
        }


def _ranks_after_leaving_out(
    targets: pl.DataFrame, entries: pl.DataFrame, left_out: pl.DataFrame
) -> pl.DataFrame:
    """Each (case, key, target) with the target's rank in the key's list once the case's
    `left_out` items (case, item) are removed; targets not in the list are dropped."""
    found = targets.join(
        entries.select("key", pl.col("item").alias("target"), "rank"), on=["key", "target"]
    )
    gone = (
        left_out.join(targets.select("case", "key").unique(), on="case")
        .join(entries.select("key", "item", "rank"), on=["key", "item"])
        .select("case", pl.col("rank").alias("gone_rank"))
        .sort(["case", "gone_rank"])
        .with_columns(gone=pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("case"))
    )
    if gone.is_empty():
        return found.with_columns(pl.col("rank").alias("kept_rank"))
    found = found.sort(["case", "rank"]).join_asof(
        gone,
        left_on="rank",
        right_on="gone_rank",
        by="case",
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    )
    return found.with_columns(kept_rank=pl.col("rank") - pl.col("gone").fill_null(0).cast(pl.Int32))


def _metrics(ranked: pl.DataFrame, cases: pl.DataFrame, covered: int) -> Metrics:
    """Metrics from the kept ranks of found targets; `cases` has one row per case with its
    number of targets (`relevant`)."""
    n = cases.height
    if not n:
        return Metrics(0.0, 0.0, 0.0, 0.0, 0)
    hits = ranked.filter(pl.col("kept_rank") < K)
    per_case = hits.group_by("case").agg(
        dcg=(1.0 / (pl.col("kept_rank").cast(pl.Float64) + 2.0).log(2)).sum(),
        first=pl.col("kept_rank").min(),
    )
    ideal_gain = 1.0 / np.log2(np.arange(K) + 2.0)
    ideal = np.cumsum(ideal_gain)
    joined = per_case.join(cases.select("case", "relevant"), on="case")
    idcg = ideal[np.minimum(joined["relevant"].to_numpy(), K) - 1]
    return Metrics(
        hr=per_case.height / n,
        ndcg=float((joined["dcg"].to_numpy() / idcg).sum()) / n,
        mrr=float((1.0 / (per_case["first"].to_numpy() + 1.0)).sum()) / n,
        coverage=covered / n,
        cases=n,
    )


def _covered(keys: pl.DataFrame, entries: pl.DataFrame, left_out: pl.DataFrame) -> int:
    """Cases (case, key) whose list keeps an entry once their left-out items are removed."""
    sizes = entries.group_by("key").len()
    gone = (
        left_out.join(keys, on="case")
        .join(entries.select("key", "item"), on=["key", "item"])
        .group_by("case")
        .len(name="gone")
    )
    counted = keys.join(sizes, on="key").join(gone, on="case", how="left")
    return counted.filter(pl.col("len") > pl.col("gone").fill_null(0)).height


def evaluate_next_item(entries: pl.DataFrame, keyed_by: str, cases: pl.DataFrame) -> Metrics:
    """A list's metrics on next-item cases (see `next_item_cases`)."""
    key = {"item": pl.col("current"), "user": pl.col("user"), "global": pl.lit("")}[keyed_by]
    keys = cases.select("case", key.alias("key")).filter(pl.col("key").is_not_null())
    targets = keys.join(cases.select("case", "target"), on="case")
    left_out = cases.select("case", pl.col("current").alias("item"))
    ranked = _ranks_after_leaving_out(targets, entries, left_out)
    counted = cases.select("case", pl.lit(1, dtype=pl.Int64).alias("relevant"))
    return _metrics(ranked, counted, _covered(keys, entries, left_out))


def summed_rows(entries: pl.DataFrame, history: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """Each user's list from an item-keyed artifact: the rows of the user's window items
    added up, best first (score, then item id), seen items kept (left out later)."""
    summed = (
        history.join(users, on="user", how="semi")
        .join(
            entries.select(pl.col("key").alias("item"), pl.col("item").alias("next"), "score"),
            on="item",
        )
        .group_by("user", "next")
        .agg(pl.col("score").sum())
        .sort(["user", "score", "next"], descending=[False, True, False])
    )
    return summed.select(
        pl.col("user").alias("key"),
        pl.col("next").alias("item"),
        pl.int_range(pl.len(), dtype=pl.Int32).over("user").alias("rank"),
        "score",
    )


def evaluate_user(
    entries: pl.DataFrame, keyed_by: str, targets: pl.DataFrame, history: pl.DataFrame
) -> Metrics:
    """A list's metrics on user-level cases (see `user_cases`): one case per user."""
    users = targets.select("user").unique().sort("user")
    users = users.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("case"))
    if keyed_by == "item":
        entries = summed_rows(entries, history, users.select("user"))
        keyed_by = "user"
    key = pl.col("user") if keyed_by == "user" else pl.lit("")
    keys = users.select("case", key.alias("key"))
    with_case = targets.join(users, on="user")
    ranked = _ranks_after_leaving_out(
        with_case.select("case", key.alias("key"), "target"),
        entries,
        history.join(users, on="user").select("case", "item"),
    )
    relevant = with_case.group_by("case").len(name="relevant")
    left_out = history.join(users, on="user").select("case", "item")
    return _metrics(ranked, relevant, _covered(keys, entries, left_out))


def evaluate(
    lists: dict[str, pl.DataFrame],
    next_cases: pl.DataFrame,
    user_targets: pl.DataFrame,
    history: pl.DataFrame,
) -> dict[str, dict[str, Metrics]]:
    """Metrics of each list (see `LISTS`) on both tasks."""
    out = {}
    for name, entries in lists.items():
        keyed_by = LISTS[name][4]
        out[name] = {
            "next_item": evaluate_next_item(entries, keyed_by, next_cases),
            "user": evaluate_user(entries, keyed_by, user_targets, history),
        }
    return out


def difference(
    candidate: dict[str, RankedList], live: dict[str, RankedList], sample: int = 2_000
) -> dict[str, float | int]:
    """How a version differs from the live one, per list (see `LISTS`): rows (anchors,
    users) added and removed, the mean overlap of the first K items of the rows both have
    (at most `sample` of them, chosen by a seeded hash of their key; popularity: its one
    list), and for popularity the mean rank change of its first 100 items that live lists
    too, and how many of them live does not list."""
    out: dict[str, float | int] = {}
    for name in sorted(set(candidate) & set(live)):
        mine, theirs = candidate[name], live[name]
        if name == "popularity":
            first, last = mine.entries(), theirs.entries()
            mine_keys, their_keys = first.select("item"), last.select("item")
            common = pl.Series("key", [""])
        else:
            mine_keys = pl.DataFrame({"item": mine.keys}, schema={"item": pl.String})
            their_keys = pl.DataFrame({"item": theirs.keys}, schema={"item": pl.String})
            both = mine_keys.join(their_keys, on="item")
            common = _sampled(both, "item", sample)["item"].rename("key")
        out[f"{name}.rows_added"] = mine_keys.join(their_keys, on="item", how="anti").height
        out[f"{name}.rows_removed"] = their_keys.join(mine_keys, on="item", how="anti").height
        tops = [ranked.entries(common, depth=K).select("key", "item") for ranked in (mine, theirs)]
        shared = tops[0].join(tops[1], on=["key", "item"]).group_by("key").len()
        overlap = (
            common.to_frame()
            .join(shared, on="key", how="left")
            .select((pl.col("len").fill_null(0) / K).mean())
            .item()
        )
        out[f"{name}.overlap@10"] = round(float(overlap or 0.0), 6)
        if name == "popularity":
            top = first.filter(pl.col("rank") < 100).select("item", "rank")
            moved = top.join(last.select("item", pl.col("rank").alias("live")), on="item")
            change = moved.select((pl.col("rank") - pl.col("live")).abs().mean()).item()
            out["popularity.mean_rank_change_top100"] = round(float(change or 0.0), 6)
            out["popularity.top100_new"] = top.height - moved.height
    return out
