"""Benchmark of the artifacts' quality: the metrics table per type and task, beside simple
references computed here on the same held-out day.

    python benchmarks/run_quality.py [--events-per-day 300000] [--days 3]
                                     [--set artifacts.implicit.weighting=bm25 ...]

Data: a synthetic shop with a known structure (generated once under benchmarks/.data/):
items belong to topics, each topic has an order in which shoppers tend to walk its items
(the next item is the topic's successor with probability 0.5, another item of the topic
otherwise, by popularity), users prefer two topics, a third of the sessions are anonymous;
the catalog tags items with their topic (and a noisy second tag). No interaction data set
ships inside a package these machines can install, so the structure is synthetic and known.

The graph runs in process over the days (canonical, aggregates, artifacts, quality,
publish) with the SPEC defaults and `--set` overrides; the last day is held out: its
`artifact_quality` report scores the artifacts of the day before. The references, built
here from the same training day with nothing but polars and the libraries:
popularity (exposures per item), item-item co-occurrence (distinct items per session,
pairs counted), first-order transitions (next-item counts within sessions: session_seq's
kind), TF-IDF cosine of the tags straight from scikit-learn (content_sim's kind) and ALS
straight from `implicit` (its defaults but for 64 factors, 15
iterations, seed 42, `recommend(filter_already_liked_items=True)`), each under the same
caps as the artifacts (`limits.max_items_per_artifact` rows, the most exposed anchors;
`max_neighbors_per_item`; `max_items_per_user`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from benchmarks.measure import report, stage  # noqa: E402
from benchmarks.run_canonical import DATA  # noqa: E402
from recsys_assets.config import parse_config  # noqa: E402
from recsys_assets.graph import build_definitions  # noqa: E402
from recsys_assets.quality import evaluate as ev  # noqa: E402
from recsys_assets.runner import default_instance, execute  # noqa: E402

DAY0 = dt.date(2026, 1, 1)
TOPICS, PER_TOPIC = 200, 40
LIMITS = {
    "max_events_per_run": 50_000_000,
    "max_sessions_per_run": 10_000_000,
    "max_users_per_run": 10_000_000,
    "max_distinct_items_per_run": 10_000_000,
    "max_excluded_event_ratio": 1.0,
}


def generate(root: Path, events_per_day: int, days: int, seed: int = 11) -> Path:
    """Per-day files of the synthetic shop and its catalog, once per size and seed."""
    raw = root / "raw"
    done = root / "done"
    if done.exists():
        return raw
    rng = random.Random(seed)
    items = [[f"t{t:03d}-i{i:02d}" for i in range(PER_TOPIC)] for t in range(TOPICS)]
    successor = [dict(zip(topic, rng.sample(topic, len(topic)), strict=True)) for topic in items]
    weights = [1.0 / (i + 1) for i in range(PER_TOPIC)]
    users = [f"u{u:06d}" for u in range(events_per_day // 20)]
    favourite = {u: (rng.randrange(TOPICS), rng.randrange(TOPICS)) for u in users}
    for n in range(days):
        day = DAY0 + dt.timedelta(days=n)
        path = raw / "demo/home" / f"exposure.{day}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        written, session = 0, 0
        with path.open("w") as out:
            while written < events_per_day:
                session += 1
                user = rng.choice(users)
                topic = rng.choice(favourite[user]) if rng.random() < 0.8 else rng.randrange(TOPICS)
                item = rng.choices(items[topic], weights)[0]
                start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(
                    seconds=rng.randrange(80_000)
                )
                known = rng.random() > 0.3
                for step in range(rng.randint(3, 12)):
                    event = {
                        "v": 1,
                        "ts": (start + dt.timedelta(seconds=5 * step))
                        .isoformat()
                        .replace("+00:00", "Z"),
                        "tenant": "demo",
                        "surface": "home",
                        "session_id": f"{day:%m%d}-{session}",
                        "item_id": item,
                        "rank": step,
                        **({"user_id": user} if known else {}),
                    }
                    out.write(json.dumps(event, separators=(",", ":")) + "\n")
                    written += 1
                    if rng.random() < 0.5:
                        item = successor[topic][item]
                    else:
                        item = rng.choices(items[topic], weights)[0]
    with (root / "catalog.csv").open("w") as out:
        out.write("item_id,tags\n")
        for t, topic in enumerate(items):
            for item in topic:
                out.write(f"{item},topic-{t}|noise-{rng.randrange(50)}\n")
    done.touch()
    return raw


def _override(raw: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    *path, last = key.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node[last] = json.loads(value) if value[:1] in "[{0123456789-tf" else value


def references(
    train: pl.DataFrame, max_rows: int, max_neighbors: int, max_per_user: int
) -> dict[str, pl.DataFrame]:
    """The simple references' lists (key, item, rank, score) from the training day, under
    the artifacts' caps (rows, neighbors, items per user)."""
    popularity = train.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    refs = {
        "ref_popularity": popularity.head(max_rows).select(
            pl.lit("").alias("key"),
            pl.col("item_id").alias("item"),
            pl.int_range(pl.len(), dtype=pl.Int32).alias("rank"),
            pl.col("len").cast(pl.Float64).alias("score"),
        )
    }
    sessions = train.select("session_id", "item_id").unique()
    pairs = (
        sessions.join(sessions, on="session_id")
        .filter(pl.col("item_id") != pl.col("item_id_right"))
        .group_by("item_id", "item_id_right")
        .len()
        .sort(["item_id", "len", "item_id_right"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(pl.len(), dtype=pl.Int32).over("item_id"))
        .filter(pl.col("rank") < max_neighbors)
        .join(popularity.head(max_rows).select("item_id"), on="item_id", how="semi")
    )
    refs["ref_cooc"] = pairs.select(
        pl.col("item_id").alias("key"),
        pl.col("item_id_right").alias("item"),
        "rank",
        pl.col("len").cast(pl.Float64).alias("score"),
    )
    ordered = train.sort(["session_id", "ts", "rank", "item_id"])
    steps = (
        ordered.with_columns(next=pl.col("item_id").shift(-1).over("session_id"))
        .filter(pl.col("next").is_not_null() & (pl.col("next") != pl.col("item_id")))
        .group_by("item_id", "next")
        .len()
        .sort(["item_id", "len", "next"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(pl.len(), dtype=pl.Int32).over("item_id"))
        .filter(pl.col("rank") < max_neighbors)
    )
    predecessors = (
        steps.group_by("item_id")
        .agg(pl.col("len").sum())
        .sort(["len", "item_id"], descending=[True, False])
    )
    refs["ref_transitions"] = steps.join(
        predecessors.head(max_rows).select("item_id"), on="item_id", how="semi"
    ).select(
        pl.col("item_id").alias("key"),
        pl.col("next").alias("item"),
        "rank",
        pl.col("len").cast(pl.Float64).alias("score"),
    )
    from implicit.als import AlternatingLeastSquares

    known = train.filter(pl.col("user_id").is_not_null())
    counts = known.group_by("user_id", "item_id").len()
    user_ids = counts["user_id"].unique().sort()
    item_ids = counts["item_id"].unique().sort()
    rows = counts["user_id"].cast(pl.Enum(user_ids)).to_physical().to_numpy()
    cols = counts["item_id"].cast(pl.Enum(item_ids)).to_physical().to_numpy()
    matrix = sp.csr_matrix(
        (counts["len"].to_numpy().astype(np.float32), (rows, cols)),
        shape=(user_ids.len(), item_ids.len()),
    )
    model = AlternatingLeastSquares(factors=64, iterations=15, random_state=42)
    model.fit(matrix, show_progress=False)
    everyone = np.arange(user_ids.len())
    n = max_per_user
    ids, scores = model.recommend(everyone, matrix, N=n, filter_already_liked_items=True)
    valid = scores > np.finfo(np.float32).min
    refs["ref_implicit"] = pl.DataFrame(
        {
            "key": user_ids.gather(np.repeat(everyone, n)[valid.ravel()]),
            "item": item_ids.gather(ids.ravel()[valid.ravel()]),
            "rank": np.tile(np.arange(n, dtype=np.int32), everyone.size)[valid.ravel()],
            "score": scores.ravel()[valid.ravel()].astype(np.float64),
        }
    )
    return refs


def content_reference(catalog: Path, max_neighbors: int, min_similarity: float) -> pl.DataFrame:
    """TF-IDF cosine over the tags straight from scikit-learn: the reference of content_sim."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    frame = pl.read_csv(catalog)
    tags = frame["tags"].str.replace_all("|", " ", literal=True).to_list()
    vectors = TfidfVectorizer(token_pattern=r"[^ ]+").fit_transform(tags)
    similarity = (vectors @ vectors.T).tocoo()
    items = frame["item_id"]
    pairs = pl.DataFrame(
        {
            "key": items.gather(similarity.row),
            "item": items.gather(similarity.col),
            "score": similarity.data,
        }
    ).filter((pl.col("key") != pl.col("item")) & (pl.col("score") >= min_similarity))
    return (
        pairs.sort(["key", "score", "item"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(pl.len(), dtype=pl.Int32).over("key"))
        .filter(pl.col("rank") < max_neighbors)
        .select("key", "item", "rank", "score")
    )


KEYED = {
    "ref_popularity": "global",
    "ref_cooc": "item",
    "ref_transitions": "item",
    "ref_content_sim": "item",
    "ref_implicit": "user",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events-per-day", type=int, default=300_000)
    parser.add_argument("--days", type=int, default=3, help="days in all; the last is held out")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. artifacts.session_seq.window=5",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = []
    root = DATA / f"quality-{args.events_per_day}x{args.days}"
    with stage("generate", results):
        raw_dir = generate(root, args.events_per_day, args.days)
    held_out = DAY0 + dt.timedelta(days=args.days - 1)
    with tempfile.TemporaryDirectory(prefix="recsys-quality-") as tmp:
        raw_config = {
            "start_date": DAY0.isoformat(),
            "tenants": [{"tenant": "demo", "surface": "home"}],
            "out_dir": tmp,
            "raw_source": {"dir": str(raw_dir)},
            "catalog": {"path": str(root / "catalog.csv")},
            "limits": LIMITS,
            "quality": {"min_cases": 1},
        }
        for assignment in args.set:
            _override(raw_config, assignment)
        config = parse_config(raw_config)
        os.environ["DAGSTER_HOME"] = str(Path(tmp) / "dagster")
        defs = build_definitions(config)
        instance = default_instance()
        assert execute(defs, "catalog_job", "demo__home", instance).success
        for n in range(args.days):
            day = DAY0 + dt.timedelta(days=n)
            with stage(f"run {day}", results):
                key = f"{day}|demo__home"
                outcome = execute(defs, "recsys_daily", key, instance)
                if not outcome.success:
                    raise SystemExit(f"{day}: {outcome.reason}")
                execute(defs, "publish_job", key, instance)
            steps = {step.step: step.seconds for step in outcome.steps}
        report_path = Path(tmp) / f"artifacts/demo/home/quality/{held_out}.json"
        ours = json.loads(report_path.read_text())["metrics"]["candidate"]
        events = {
            d: pl.read_ndjson(raw_dir / "demo/home" / f"exposure.{d}.jsonl")
            for d in (held_out - dt.timedelta(days=1), held_out)
        }
    train, test = (
        events[d].with_columns(pl.col("ts").str.to_datetime(time_zone="UTC"))
        for d in (held_out - dt.timedelta(days=1), held_out)
    )
    with stage("references", results):
        limits = config.limits
        refs = references(
            train,
            limits.max_items_per_artifact,
            limits.max_neighbors_per_item,
            limits.max_items_per_user,
        )
        refs["ref_content_sim"] = content_reference(
            root / "catalog.csv",
            limits.max_neighbors_per_item,
            config.artifacts.content_sim.min_similarity,
        )
        quality = config.quality
        cases = ev.next_item_cases(test, quality.max_cases)
        history = (
            train.filter(pl.col("user_id").is_not_null())
            .select(pl.col("user_id").alias("user"), pl.col("item_id").alias("item"))
            .unique()
        )
        targets, seen = ev.user_cases(test, history, quality.max_users)
        theirs = {
            name: {
                "next_item": ev.evaluate_next_item(frame, KEYED[name], cases).as_dict(),
                "user": ev.evaluate_user(frame, KEYED[name], targets, seen).as_dict(),
            }
            for name, frame in refs.items()
        }
    table = {**ours, **theirs}
    print(
        f"\nheld-out day {held_out}, {args.events_per_day:,} events a day; overrides: "
        f"{', '.join(args.set) or 'none'}"
    )
    print(
        f"{'list':<18} {'task':<9} {'HR@10':>7} {'NDCG@10':>8} {'MRR@10':>7} "
        f"{'coverage':>8} {'cases':>7}"
    )
    for name in sorted(table, key=lambda n: (n.startswith("ref_"), n)):
        for task in ev.TASKS:
            m = table[name][task]
            print(
                f"{name:<18} {task:<9} {m['hr@10']:7.4f} {m['ndcg@10']:8.4f} "
                f"{m['mrr@10']:7.4f} {m['coverage']:8.4f} {m['cases']:7d}"
            )
    print(f"steps of the held-out day: {', '.join(f'{k} {v:.2f}s' for k, v in steps.items())}")
    report(results)
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.set, "metrics": table}, indent=2))


if __name__ == "__main__":
    main()
